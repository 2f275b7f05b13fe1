"""Honest round comparisons: val_outputs.npz, compare_rounds (paired bootstrap, Welch) and refine."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from tuneforge.advice import RunRecord, load_record
from tuneforge.compare import (
    BETTER,
    NOT_MEASURED,
    SAME,
    VAL_OUTPUTS,
    WORSE,
    compare_rounds,
    read_val_outputs,
    write_val_outputs,
)

from conftest import ok, run_cli
from tinymodels import make_texts, write_csv


def _config(root: Path, bert: Path, **trainer: object) -> Path:
    cfg = {
        "task": "text-classification",
        "data": {"path": "data.csv"},
        "model": {"name": "hf-sequence-classification", "checkpoint": str(bert)},
        "trainer": {
            "epochs": 2,
            "batch_size": 16,
            "lr": 3e-3,
            "monitor": "accuracy",
            "early_stopping_patience": None,
            **trainer,
        },
        "output": {"dir": str(root / "runs" / "run")},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    """One real tiny run (the tiny BERT on generated texts), trained once for the module."""
    root = tmp_path_factory.mktemp("compare")
    write_csv(root / "data.csv", make_texts(240, seed=1))
    ok(run_cli("run", str(_config(root, tiny_models["bert"])), "-q"))
    return root / "runs" / "run"


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _synthetic(run: Path, rows: np.ndarray, labels: np.ndarray, correct: np.ndarray) -> None:
    """Three-class logits that predict ``labels`` where ``correct``, the next class elsewhere."""
    pred = np.where(correct, labels, (labels + 1) % 3)
    logits = np.full((len(rows), 3), -1.0, dtype=np.float32)
    logits[np.arange(len(rows)), pred] = 2.0
    write_val_outputs(run, rows, torch.from_numpy(logits), torch.from_numpy(labels))


def _pair(trained: Path, tmp_path: Path, old_acc: float, new_acc: float, n: int = 200):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, n).astype(np.int64)
    rows = np.arange(1000, 1000 + n)
    old, new = _copy(trained, tmp_path / "old"), _copy(trained, tmp_path / "new")
    _synthetic(old, rows, labels, rng.permutation(n) < round(old_acc * n))
    _synthetic(new, rows, labels, rng.permutation(n) < round(new_acc * n))
    return load_record(old), load_record(new)


def test_every_run_writes_the_best_checkpoints_validation_outputs(trained: Path) -> None:
    out = read_val_outputs(trained)
    split = json.loads((trained / "split.json").read_text())
    assert out["rows"].dtype == np.int64 and out["rows"].tolist() == split["val"]
    assert out["logits"].dtype == np.float32 and out["logits"].shape == (len(split["val"]), 3)
    assert out["labels"].dtype == np.int64
    # The labels are the validation rows' classes, and the outputs are the best epoch's model:
    # their accuracy is the best_value that metrics.json records.
    classes = json.loads((trained / "labels.json").read_text())["classes"]
    with (trained.parent.parent / "data.csv").open() as fh:
        by_row = [r["label"] for r in csv.DictReader(fh)]
    assert [classes[i] for i in out["labels"]] == [by_row[r] for r in out["rows"]]
    metrics = json.loads((trained / "metrics.json").read_text())
    accuracy = float((out["logits"].argmax(1) == out["labels"]).mean())
    assert accuracy == pytest.approx(metrics["best_value"], abs=1e-9)
    assert not [p.name for p in trained.iterdir() if p.name.endswith(".tmp")]


def test_identical_rounds_show_no_measurable_change(trained: Path, tmp_path: Path) -> None:
    old = load_record(trained)
    new = load_record(_copy(trained, tmp_path / "same"))
    cmp = compare_rounds(old, new)
    assert cmp.verdict == SAME and cmp.measured and cmp.diff == 0.0
    assert cmp.ci95 == (0.0, 0.0)
    n = len(read_val_outputs(trained)["rows"])
    assert cmp.method == f"paired bootstrap over {n} common validation rows" and cmp.n == n
    assert cmp.old == cmp.new == pytest.approx(old.best_val())
    line = cmp.line(2, 1)
    assert line.startswith(f"round 2 vs round 1: val.accuracy {cmp.old:.4f} -> {cmp.new:.4f}")
    assert line.endswith("+0.0000..+0.0000, " + cmp.method + "): no measurable change")


def test_a_clearly_better_round_is_better_and_the_reverse_worse(
    trained: Path, tmp_path: Path
) -> None:
    old, new = _pair(trained, tmp_path, 0.5, 0.9)
    cmp = compare_rounds(old, new, n_boot=500)
    assert cmp.verdict == BETTER and cmp.n == 200
    assert cmp.old == pytest.approx(0.5) and cmp.new == pytest.approx(0.9)
    assert cmp.diff == pytest.approx(0.4)
    lo, hi = cmp.ci95
    assert 0.2 < lo < 0.4 < hi < 0.6  # about +-0.08 around +0.40 over 200 rows
    assert compare_rounds(old, new, seed=0, n_boot=500).ci95 == cmp.ci95  # seeded
    back = compare_rounds(new, old, n_boot=500)
    assert back.verdict == WORSE and back.diff == pytest.approx(-0.4)
    # The loss as the monitor (lower is better): each resample's mean cross-entropy.
    by_loss = compare_rounds(old, new, "val.loss", "min", n_boot=300)
    assert by_loss.verdict == BETTER and by_loss.diff < 0 and by_loss.ci95[1] < 0
    out = read_val_outputs(old.path)
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(out["logits"]), torch.from_numpy(out["labels"])
    )
    assert by_loss.old == pytest.approx(float(expected), rel=1e-5)


def test_a_small_difference_stays_inside_the_noise(trained: Path, tmp_path: Path) -> None:
    old, new = _pair(trained, tmp_path, 0.80, 0.82)  # 4 rows of 200
    cmp = compare_rounds(old, new, n_boot=500)
    assert cmp.verdict == SAME and cmp.ci95[0] < 0 < cmp.ci95[1]
    assert "improve" not in cmp.line(2, 1)


def test_rows_in_common_and_their_labels(trained: Path, tmp_path: Path) -> None:
    old, new = _copy(trained, tmp_path / "old"), _copy(trained, tmp_path / "new")
    labels = np.arange(60, dtype=np.int64) % 3  # the class of row r is r % 3
    _synthetic(old, np.arange(60), labels, np.ones(60, bool))
    _synthetic(new, np.arange(51, 111), labels, np.ones(60, bool))  # 9 rows in common
    cmp = compare_rounds(load_record(old), load_record(new))
    assert cmp.verdict == SAME and not cmp.measured
    assert cmp.reason == "only 9 common validation rows, at least 20 needed"
    assert cmp.line(2, 1).endswith("no measurable change (" + cmp.reason + ")")
    _synthetic(new, np.arange(200, 260), labels, np.ones(60, bool))
    assert "no common validation rows" in compare_rounds(load_record(old), load_record(new)).reason
    # Same rows, but 5 labels differ: those rows are left out, and the method says so.
    other = labels.copy()
    other[:5] = (other[:5] + 1) % 3
    _synthetic(new, np.arange(60), other, np.ones(60, bool))
    cmp = compare_rounds(load_record(old), load_record(new), n_boot=200)
    assert cmp.n == 55 and "(5 common rows with different labels left out)" in cmp.method


def test_a_run_folder_without_val_outputs_is_not_measured(trained: Path, tmp_path: Path) -> None:
    older = _copy(trained, tmp_path / "older")
    (older / VAL_OUTPUTS).unlink()
    old = load_record(older)
    cmp = compare_rounds(old, load_record(trained))
    assert cmp.verdict == NOT_MEASURED and cmp.ci95 is None and cmp.diff == 0.0
    assert f"has no {VAL_OUTPUTS}" in cmp.reason
    assert cmp.line(2, 1).endswith(f"(+0.0000): not measured: {cmp.reason}")
    (older / VAL_OUTPUTS).write_bytes(b"not a zip file")
    cmp = compare_rounds(load_record(older), load_record(trained))
    assert cmp.verdict == NOT_MEASURED and f"{VAL_OUTPUTS}: unreadable" in cmp.reason


def _repeated(values: list[float], kind: str = "seeds") -> RunRecord:
    metrics = {
        "monitor": "val.accuracy",
        "monitor_mode": "max",
        "best_value": float(np.mean(values)),
        "repeats": {"kind": kind, "n": len(values), "values": {"val.accuracy": values}},
    }
    return RunRecord(Path("runs/x"), {}, "completed", "", metrics, [], {}, {})


def test_repeated_rounds_are_compared_by_a_welch_interval() -> None:
    old, new = [0.80, 0.81, 0.79], [0.90, 0.91, 0.92]
    cmp = compare_rounds(_repeated(old), _repeated(new))
    assert cmp.verdict == BETTER and cmp.method == "Welch interval over 3 seeds" and cmp.n == 3
    assert cmp.diff == pytest.approx(0.11)
    # Welch's interval by hand: unequal variances, Welch-Satterthwaite degrees of freedom.
    va, vb = np.var(old, ddof=1) / 3, np.var(new, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert cmp.ci95 == pytest.approx((0.11 - half, 0.11 + half))
    assert compare_rounds(_repeated(new), _repeated(old)).verdict == WORSE
    noisy = compare_rounds(_repeated([0.7, 0.8, 0.9], "folds"), _repeated([0.75, 0.85, 0.95]))
    assert noisy.verdict == SAME and noisy.method == "Welch interval over 3 repeats"
    flat = compare_rounds(_repeated([0.8, 0.8], "folds"), _repeated([0.8, 0.8], "folds"))
    assert flat.verdict == SAME and flat.ci95 == (0.0, 0.0)
    assert flat.method == "Welch interval over 2 folds"
    single = RunRecord(Path("runs/one"), {}, "completed", "", {"best_value": 0.9}, [], {}, {})
    mixed = compare_rounds(_repeated(old), single)
    assert mixed.verdict == NOT_MEASURED and mixed.diff == pytest.approx(0.1)
    assert mixed.reason == "runs/x is repeated over seeds and runs/one is a single run: " + (
        "no common outputs to compare"
    )


def test_refine_stops_on_a_round_inside_the_noise(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    # A learning rate far too small: underfitting fires every round, and round 2's lr (3e-7)
    # changes next to nothing, so refine stops after it instead of training round 3.
    write_csv(tmp_path / "data.csv", make_texts(240, seed=1))
    cfg = _config(tmp_path, tiny_models["bert"], lr=1e-7, warmup_ratio=0.0)
    ok(run_cli("run", str(cfg), "-q"))
    run = tmp_path / "runs" / "run"
    out = ok(run_cli("refine", str(run), "--apply", "--rounds", "2", "-q"))
    r2 = tmp_path / "runs" / "run-r2"
    assert (r2 / VAL_OUTPUTS).is_file() and not (tmp_path / "runs" / "run-r3").exists()
    refine = json.loads((r2 / "refine.json").read_text())
    cmp = refine["comparison"]
    assert cmp["verdict"] == "no measurable change" and cmp["metric"] == "val.accuracy"
    assert cmp["ci95"][0] <= cmp["diff"] <= cmp["ci95"][1]
    assert cmp["method"].startswith("paired bootstrap over ")
    assert refine["keep"] == str(run)
    assert "round 2 vs round 1: val.accuracy " in out and "95% interval" in out
    assert "): no measurable change" in out
    assert "round 2: no measurable change, not better: stopping" in out
    assert f"the round to keep: round 1 ({run})" in out
    assert not [ln for ln in out.splitlines() if ln.startswith("round 2") and "improve" in ln]
    with (r2 / "refine.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["verdict"] for r in table] == ["-", "no measurable change"]
    assert float(table[1]["ci95_lo"]) == pytest.approx(cmp["ci95"][0])
    assert float(table[1]["diff"]) == pytest.approx(cmp["diff"])


def test_refine_of_an_older_run_folder_says_not_measured(trained: Path, tmp_path: Path) -> None:
    older = _copy(trained, tmp_path / "runs" / "old")
    (older / VAL_OUTPUTS).unlink()
    # A patch from a third-party advisor, so that the round is quick and certain to run.
    plugin = tmp_path / "one_epoch.py"
    plugin.write_text(
        "from tuneforge import hookimpl\n"
        "from tuneforge.components import Advisor, Diagnosis\n\n"
        "class OneEpoch(Advisor):\n"
        "    def diagnose(self, run):\n"
        "        return [Diagnosis('short', 'one epoch', {'trainer.epochs': 1}, {})]\n\n"
        "@hookimpl\n"
        "def register_advisors(register):\n"
        "    register('one-epoch', OneEpoch)\n"
    )
    out = ok(run_cli("refine", str(older), "--apply", "--plugin", str(plugin), "-q"))
    assert f"not measured: {older} has no {VAL_OUTPUTS}" in out
    refine = json.loads((tmp_path / "runs" / "old-r2" / "refine.json").read_text())
    assert refine["comparison"]["verdict"] == "not measured"
    assert refine["comparison"]["ci95"] is None
