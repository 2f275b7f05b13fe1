"""Data quality in the pipeline: fail_on, leakage, class health, declared classes, bad files,
weighted sampling and the focal loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tuneforge.plugins.balancers import WeightedSampler
from tuneforge.plugins.losses import classification_loss

from conftest import one_line_error, run_cli
from tinymodels import make_texts, write_csv


def nothing_written(project) -> bool:
    runs = project.root / "runs"
    return not runs.exists() or not any(runs.iterdir())


def test_fail_on_turns_a_finding_into_an_error(project) -> None:
    rows = make_texts(60)
    rows.append((rows[0][0], "technical" if rows[0][1] != "technical" else "billing"))
    write_csv(project.root / "conflict.csv", rows)
    cfg = project.config(data={"path": "conflict.csv"}, fail_on=["conflicting-labels"])
    err = one_line_error(run_cli("run", str(cfg)))
    assert "fail_on 'conflicting-labels' (conflicting-labels)" in err and "rows 0, 60" in err
    assert nothing_written(project)


def test_leakage_check_compares_the_final_splits(project) -> None:
    rows = make_texts(80, seed=3)
    rows += rows[:30]  # 30 exact duplicates
    write_csv(project.root / "dups.csv", rows)
    grouped = project.config(data={"path": "dups.csv"})
    report = json.loads(run_cli("validate", str(grouped), "--json").stdout)
    leak = next(f for f in report["findings"] if f["kind"] == "leakage")
    assert leak["severity"] == "info" and leak["count"] == 0  # duplicates kept together
    loose = project.config(
        "loose.yaml", data={"path": "dups.csv"}, split={"group_duplicates": False}
    )
    report = json.loads(run_cli("validate", str(loose), "--json").stdout)
    leak = next(f for f in report["findings"] if f["kind"] == "leakage")
    assert leak["severity"] == "error" and leak["count"] > 0 and "train/test" in leak["message"]
    strict = project.config(
        "strict.yaml",
        data={"path": "dups.csv"},
        split={"group_duplicates": False},
        fail_on=["leakage"],
    )
    assert "fail_on 'leakage'" in one_line_error(run_cli("run", str(strict)))
    assert nothing_written(project)


def _with_tiny_class(project, n: int = 2):
    rows = make_texts(90, seed=5) + [(f"refund crash parcel {i}", "account") for i in range(n)]
    return write_csv(project.root / "tiny.csv", rows)


def test_tiny_class_kept_in_train_by_default(project) -> None:
    _with_tiny_class(project)
    report = json.loads(
        run_cli("validate", str(project.config(data={"path": "tiny.csv"})), "--json").stdout
    )
    small = next(
        f
        for f in report["findings"]
        if f["kind"] == "small-class" and f["details"]["class"] == "account"
    )
    assert "kept in train only" in small["message"] and small["rows"] == [90, 91]
    assert (
        report["class_counts"]["train"]["account"] == 2
        and report["class_counts"]["test"]["account"] == 0
    )
    assert any("kept in train only" in note for note in report["split_notes"])


def test_tiny_class_dropped_or_merged_by_policy(project) -> None:
    _with_tiny_class(project)
    drop = project.config(
        data={"path": "tiny.csv"}, validators=[{"name": "class-size", "policy": "drop"}]
    )
    report = json.loads(run_cli("validate", str(drop), "--json").stdout)
    small = next(
        f
        for f in report["findings"]
        if f["kind"] == "small-class" and f["details"]["class"] == "account"
    )
    assert small["action"] == "dropped 2 rows" and report["rows_kept"] == 90
    assert "account" not in report["class_counts"]["train"]  # classes recomputed after validation
    merge = project.config(
        "merge.yaml",
        data={"path": "tiny.csv"},
        trainer={"epochs": 1},
        validators=[{"name": "class-size", "merge_into": "other"}],
    )
    proc = run_cli("run", str(merge))
    assert proc.returncode == 0, proc.stderr
    run = project.root / "runs" / "run"
    assert json.loads((run / "labels.json").read_text())["classes"] == [
        "billing",
        "other",
        "shipping",
        "technical",
    ]
    findings = json.loads((run / "findings.json").read_text())["findings"]
    assert any(f["action"] == "relabelled 2 rows" for f in findings)


def test_declared_classes(project) -> None:
    declared = project.config(
        data={"path": "data.csv", "classes": ["billing", "shipping", "technical", "refunds"]}
    )
    report = json.loads(run_cli("validate", str(declared), "--json").stdout)
    assert any(
        f["kind"] == "unused-class" and "refunds" in f["message"] for f in report["findings"]
    )
    missing = project.config(
        "missing.yaml", data={"path": "data.csv", "classes": ["billing", "shipping"]}
    )
    err = one_line_error(run_cli("validate", str(missing)))
    assert (
        "label 'technical' is not in data.classes ['billing', 'shipping']" in err and "row " in err
    )


def test_bad_files(project) -> None:
    (project.root / "latin.csv").write_bytes(
        "text,label\nok,a\ncaf\xe9 ol\xe9,b\n".encode("latin-1")
    )
    err = one_line_error(run_cli("validate", str(project.config(data={"path": "latin.csv"}))))
    assert "latin.csv: line 3 (byte 0xe9) is not valid utf-8" in err and "data.read_options" in err
    (project.root / "ragged.csv").write_text("text,label\nhello,a\nworld,b,extra\n")
    err = one_line_error(run_cli("validate", str(project.config(data={"path": "ragged.csv"}))))
    assert "line 3 has 3 fields where the header has 2" in err
    write_csv(
        project.root / "same.csv", [("refund my card", "billing"), ("parcel late", "shipping")] * 20
    )
    err = one_line_error(run_cli("run", str(project.config(data={"path": "same.csv"}))))
    assert "the val and test splits are empty: 40 rows in 2 distinct examples" in err
    assert nothing_written(project)


def test_weighted_sampler_draws_classes_evenly(tiny_models) -> None:
    from test_components import _imbalanced

    from tuneforge.config import TrainerConfig
    from tuneforge.trainer import Trainer

    data, rows = _imbalanced()  # 60 / 30 / 10
    plan = WeightedSampler().plan(data, rows, np.random.default_rng(0))
    labels = data.label_ids()
    dataset = [{"y": int(y)} for y in labels]
    trainer = Trainer(TrainerConfig(batch_size=50, seed=0))
    loader = trainer._loader(
        dataset, lambda b: torch.tensor([x["y"] for x in b]), 50, True, plan.sample_weights
    )
    from tuneforge.sampling import find_sampler, set_epoch

    sampler = find_sampler(loader)
    epochs = []
    for epoch in range(20):  # a new draw each epoch, as the trainer selects it
        set_epoch(loader, sampler, epoch)
        epochs.append(torch.cat(list(loader)).numpy())
    assert not np.array_equal(epochs[0], epochs[1])
    drawn = np.concatenate(epochs)
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.allclose(share, [1 / 3] * 3, atol=0.03), share


def test_focal_loss() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0]])
    target = torch.tensor([0, 2, 1])
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert classification_loss(None, 0.0 + 1e-12)(logits, target) == pytest.approx(
        ce.item(), rel=1e-6
    )
    p_t = torch.softmax(logits, -1)[torch.arange(3), target]
    expected = (-((1 - p_t) ** 2) * p_t.log()).mean()
    assert classification_loss(None, 2.0)(logits, target) == pytest.approx(
        expected.item(), rel=1e-6
    )
    w = np.array([1.0, 2.0, 3.0])
    weighted = classification_loss(w, 2.0)(logits, target)
    ww = torch.tensor(w, dtype=torch.float32)[target]
    assert weighted == pytest.approx(
        ((-((1 - p_t) ** 2) * p_t.log()) * ww).sum().item() / ww.sum().item(), rel=1e-6
    )


def test_focal_loss_balancer_trains(project) -> None:
    cfg = project.config(balancer={"name": "focal-loss", "gamma": 2.0, "class_weights": True})
    proc = run_cli("run", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "balancer: focal loss (gamma 2)" in proc.stdout
    metrics = json.loads((project.root / "runs" / "run" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > metrics["test"]["majority_baseline_accuracy"] + 0.2


DOWN_WEIGHT = """
from tuneforge import hookimpl
from tuneforge.components import Finding, Validator, ValidatorConfig


class DoubtTechnical(Validator):
    '''Doubts every 'technical' row: weight 0 in the loss.'''

    class Config(ValidatorConfig):
        policy: str = "down-weight"

    def check(self, data, task=None):
        rows = [int(r) for r in data.frame.index[data.frame[data.target] == "technical"]]
        return [Finding("doubt", "warning", f"{len(rows)} doubted", rows,
                        details={"weights": {r: 0.0 for r in rows}})]


@hookimpl
def register_validators(register):
    register("doubt-technical", DoubtTechnical)
"""


def test_down_weighted_rows_do_not_teach_the_model(project) -> None:
    """Weight 0 on every 'technical' training row: the model never learns to predict it."""
    (project.root / "doubt.py").write_text(DOWN_WEIGHT)
    cfg = project.config(plugins={"local": ["doubt.py"]}, validators=["doubt-technical"])
    proc = run_cli("run", str(cfg))
    assert proc.returncode == 0, proc.stderr
    run = project.root / "runs" / "run"
    [finding] = [
        f
        for f in json.loads((run / "findings.json").read_text())["findings"]
        if f["kind"] == "doubt"
    ]
    assert finding["action"].startswith("down-weighted ") and finding["action"].endswith(
        " rows in the loss"
    )
    import pandas as pd

    pred = pd.read_csv(run / "predictions_test.csv")
    assert (pred["y_pred"] == "technical").sum() == 0
    others = pred[pred["y_true"] != "technical"]
    assert (others["y_true"] == others["y_pred"]).mean() > 0.9  # the rest is learnt


def test_weighted_loss_is_the_weighted_mean_of_row_losses() -> None:
    from tuneforge.trainer import Trainer

    logits = torch.tensor([[2.0, 0.5], [0.1, 0.2], [-1.0, 3.0]])
    target = torch.tensor([0, 1, 1])
    w = torch.tensor([1.0, 0.0, 0.5])
    for loss_fn in (classification_loss(None), classification_loss(None, 2.0)):
        loss_fn.reduction = "none"
        per_row = loss_fn(logits, target)
        loss_fn.reduction = "mean"
        expected = (per_row * w).sum() / w.sum()
        assert Trainer._loss(loss_fn, logits, target, w).item() == pytest.approx(expected.item())
        assert loss_fn.reduction == "mean"
