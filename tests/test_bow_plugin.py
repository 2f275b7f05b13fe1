"""The third-party "bring your own torch model" distribution (examples/plugins/tuneforge-bow),
pip-installed into this environment for real and used through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ok, one_line_error, run_cli
from tinymodels import make_texts, write_csv

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bow_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    src = tmp_path_factory.mktemp("bow") / "tuneforge-bow"
    shutil.copytree(ROOT / "examples" / "plugins" / "tuneforge-bow", src)  # build outside the repo
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    try:
        yield
    finally:
        subprocess.run(
            [*pip, "uninstall", "-y", "-q", "tuneforge-bow"], check=True, capture_output=True
        )


def bow_config(project, tokenizer: Path, name: str = "config.yaml", **model) -> Path:
    """The project's config with the bag-of-words model and the tiny tokenizer named."""
    path = project.config(name, trainer={"lr": 0.02, "epochs": 5})
    cfg = yaml.safe_load(path.read_text())
    cfg["model"] = {"name": "bag-of-words", **model}
    cfg["tokenizer"] = {"name": "hf-tokenizer", "checkpoint": str(tokenizer)}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_the_distribution_is_listed_without_importing_torch(bow_plugin: None) -> None:
    info = {i["name"]: i for i in json.loads(ok(run_cli("plugins", "--json")))}["bow"]
    assert info["distribution"] == "tuneforge-bow" and info["version"] == "0.1.0"
    assert info["components"] == {"models": ["bag-of-words"]}
    assert info["hooks"] == ["register_models"]
    [line] = [ln for ln in ok(run_cli("components", "models")).splitlines() if "bag-of-words" in ln]
    assert "bow" in line and "EmbeddingBag" in line
    code = (
        "import sys\n"
        "from tuneforge.cli import main\n"
        "assert main(['components', 'models']) == 0\n"
        "print('HEAVY', [m for m in ('torch', 'safetensors') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "bag-of-words" in out.stdout and "HEAVY []" in out.stdout, out.stdout


def test_a_run_trains_it_from_scratch_and_predict_loads_it(
    bow_plugin: None, project, tiny_models: dict[str, Path]
) -> None:
    cfg = bow_config(project, tiny_models["bert"], embedding_dim=32, mode="mean")
    ok(run_cli("run", str(cfg)))
    run = project.root / "runs" / "run"
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    ckpt = run / "checkpoint"
    record = json.loads((ckpt / "bow.json").read_text())
    assert record["format"] == "tuneforge-bow" and record["embedding_dim"] == 32
    assert record["problem"] == "classification" and record["n_outputs"] == 3
    assert sorted(record["output_names"]) == ["billing", "shipping", "technical"]
    assert (ckpt / "bow.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
    test = json.loads((run / "metrics.json").read_text())["test"]
    # three classes, separable by their words: far better than chance and the majority class
    assert test["accuracy"] >= 0.8 > test["majority_baseline_accuracy"] + 0.1, test

    rows = make_texts(30, seed=7)
    write_csv(project.root / "new.csv", [(t, "") for t, _ in rows], ("text", "unused"))
    out = project.root / "predictions.csv"
    ok(run_cli("predict", str(run), "-i", str(project.root / "new.csv"), "-o", str(out)))
    pred = pd.read_csv(out)
    assert len(pred) == 30
    probs = pred[["prob_billing", "prob_shipping", "prob_technical"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert (pred["prediction"] == [label for _, label in rows]).mean() >= 0.8

    # a damaged checkpoint is a user error naming the file, not a traceback
    (ckpt / "bow.json").write_text(json.dumps({**record, "mode": "median"}))
    line = one_line_error(run_cli("predict", str(run), "-i", str(project.root / "new.csv")))
    assert str(ckpt / "bow.json") in line and "mode" in line


SCORE = {"billing": 1.0, "shipping": 3.0, "technical": 5.0}


def regression_rows() -> pd.DataFrame:
    """One text per row, its target the score of its class."""
    rows = make_texts(240, seed=3)
    return pd.DataFrame({"text": [t for t, _ in rows], "y": [SCORE[c] for _, c in rows]})


def multilabel_rows() -> pd.DataFrame:
    """One or two texts joined per row, its labels their classes (``billing|technical``)."""
    first, second = make_texts(240, seed=3), make_texts(240, seed=4)
    texts, labels = [], []
    for i, ((a, la), (b, lb)) in enumerate(zip(first, second, strict=True)):
        both = i % 2 == 0 and la != lb
        texts.append(f"{a} {b}" if both else a)
        labels.append("|".join(sorted({la, lb})) if both else la)
    return pd.DataFrame({"text": texts, "y": labels})


@pytest.mark.parametrize(
    ("task", "rows", "data", "monitor", "score", "outputs"),
    [
        ("text-regression", regression_rows, {"target": "y"}, "rmse", "pearson", ["y"]),
        ("text-multilabel", multilabel_rows, {"label": "y"}, "micro_f1", "micro_f1", None),
    ],
    ids=["text-regression", "text-multilabel"],
)
def test_it_trains_on_the_other_text_problems(
    bow_plugin: None,
    project,
    tiny_models: dict[str, Path],
    task,
    rows,
    data,
    monitor,
    score,
    outputs,
) -> None:
    rows().to_csv(project.root / "rows.csv", index=False)
    cfg = bow_config(project, tiny_models["bert"], hidden_dim=16)
    raw = yaml.safe_load(cfg.read_text())
    raw.update(task=task, data={"path": "rows.csv", **data})
    raw["trainer"]["monitor"] = monitor
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    ok(run_cli("run", str(cfg)))
    run = project.root / "runs" / "run"
    record = json.loads((run / "checkpoint" / "bow.json").read_text())
    assert record["problem"] == json.loads((run / "labels.json").read_text())["problem"]
    assert record["output_names"] == (outputs or ["billing", "shipping", "technical"])
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test[score] > 0.8, test


def test_a_misspelt_or_bad_model_key_is_a_one_line_error(
    bow_plugin: None, project, tiny_models: dict[str, Path]
) -> None:
    cfg = bow_config(project, tiny_models["bert"], embedding_dimm=32)
    line = one_line_error(run_cli("validate", str(cfg)))
    assert "model.embedding_dimm: unknown key (did you mean 'embedding_dim'?)" in line, line
    cfg = bow_config(project, tiny_models["bert"], "bad.yaml", mode="median")
    line = one_line_error(run_cli("run", str(cfg)))
    assert "model.mode" in line and "'mean', 'sum' or 'max'" in line, line
    assert not (project.root / "runs").exists() or not any((project.root / "runs").iterdir())
