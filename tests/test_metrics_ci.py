"""Classification metrics (roc_auc, average_precision, mcc, log_loss, brier, ece, and the
multi-label micro/macro areas), median_ae, and the bootstrap intervals of the test metrics
(core/bootstrap.py): values against scikit-learn or by hand, the vectorised resamples against
the metric itself, the intervals' behaviour, and a tiny run's metrics.json, console and
`evaluate` output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from tuneforge.bootstrap import bootstrap_intervals, interval_text
from tuneforge.components import Metric
from tuneforge.plugins.metrics import METRICS
from tuneforge.plugins.regression import METRICS as REGRESSION_METRICS

from conftest import ok, one_line_error, run_cli


def _probs(n: int, k: int, seed: int = 0, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    return y, (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def m(name: str) -> Metric:
    return METRICS[name]()


def test_binary_metrics_match_scikit_learn() -> None:
    y, p = _probs(300, 2)
    pred = p.argmax(axis=1)
    assert m("roc_auc")(y, pred, p) == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    ap = skm.average_precision_score(y, p[:, 1])
    assert m("average_precision")(y, pred, p) == pytest.approx(ap)
    assert m("mcc")(y, pred, p) == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert m("log_loss")(y, pred, p) == pytest.approx(skm.log_loss(y, p), rel=1e-6)
    assert m("brier")(y, pred, p) == pytest.approx(np.mean((p[:, 1] - y) ** 2), rel=1e-6)


def test_multiclass_metrics_match_scikit_learn_and_hand_values() -> None:
    y, p = _probs(400, 4, seed=1)
    pred = p.argmax(axis=1)
    auc = skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert m("roc_auc")(y, pred, p) == pytest.approx(auc, rel=1e-6)
    ap = skm.average_precision_score(label_binarize(y, classes=range(4)), p, average="macro")
    assert m("average_precision")(y, pred, p) == pytest.approx(ap, rel=1e-6)
    assert m("mcc")(y, pred, p) == pytest.approx(skm.matthews_corrcoef(y, pred))
    nll = -np.mean(np.log(p[np.arange(len(y)), y].astype(np.float64)))
    assert m("log_loss")(y, pred, p) == pytest.approx(nll, rel=1e-5)
    brier = np.mean(((p - np.eye(4)[y]) ** 2).sum(axis=1))  # summed over classes
    assert m("brier")(y, pred, p) == pytest.approx(brier, rel=1e-5)
    assert not m("log_loss").greater_is_better and not m("ece").greater_is_better


def test_ece_by_hand() -> None:
    # confidences 0.9 (bin 13) x2, one right; 0.6 (bin 9) x2, both right
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    # bin 13: |0.5 - 0.9| * 2/4 ; bin 9: |1.0 - 0.6| * 2/4
    assert m("ece")(y, p.argmax(1), p) == pytest.approx(0.2 + 0.2)


def test_a_class_missing_from_the_split() -> None:
    y, p = _probs(300, 3, seed=2)
    keep = y != 2  # no row of class 2, but the model still scores it
    y, p = y[keep], p[keep]
    pred = p.argmax(axis=1)
    # roc_auc: class 2 has no positive, left out of the one-vs-rest mean
    hand = np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in (0, 1)])
    assert m("roc_auc")(y, pred, p) == pytest.approx(hand)
    hand_ap = np.mean([skm.average_precision_score(y == c, p[:, c]) for c in (0, 1)])
    assert m("average_precision")(y, pred, p) == pytest.approx(hand_ap)
    # log_loss keeps every class as a label (scikit-learn would refuse 3 columns, 2 labels)
    assert m("log_loss")(y, pred, p) == pytest.approx(
        skm.log_loss(y, p, labels=[0, 1, 2]), rel=1e-6
    )
    assert m("brier")(y, pred, p) == pytest.approx(
        np.mean(((p - np.eye(3)[y]) ** 2).sum(axis=1)), rel=1e-5
    )
    # binary with one class only: undefined
    one = np.zeros(20, dtype=int)
    pp = np.tile([0.7, 0.3], (20, 1))
    assert math.isnan(m("roc_auc")(one, one, pp))
    assert math.isnan(m("average_precision")(one, one, pp))


def test_score_metrics_refuse_missing_probabilities() -> None:
    from tuneforge.errors import UserError

    with pytest.raises(UserError, match="roc_auc needs class probabilities"):
        m("roc_auc")(np.array([0, 1]), np.array([0, 1]), None)


def test_multilabel_areas_match_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random((200, 4)) < 0.3).astype(int)
    s = np.clip(y * 0.3 + rng.random((200, 4)) * 0.7, 0, 1)
    for avg in ("micro", "macro"):
        roc = METRICS[f"{avg}_roc_auc"]()(y, y, s)
        assert roc == pytest.approx(skm.roc_auc_score(y, s, average=avg))
        ap = METRICS[f"{avg}_average_precision"]()(y, y, s)
        assert ap == pytest.approx(skm.average_precision_score(y, s, average=avg))
    y[:, 0] = 0  # a label without positives: left out of the macro mean
    hand = np.mean([skm.roc_auc_score(y[:, j], s[:, j]) for j in (1, 2, 3)])
    assert METRICS["macro_roc_auc"]()(y, y, s) == pytest.approx(hand)


def test_median_absolute_error() -> None:
    y = np.array([1.0, 2.0, 3.0, 10.0])
    pred = np.array([1.5, 2.0, 5.0, 0.0])  # errors 0.5, 0, 2, 10 -> median 1.25
    metric = REGRESSION_METRICS["median_ae"]()
    assert metric(y, pred, None) == pytest.approx(1.25)
    assert not metric.greater_is_better


CASES = {
    "binary": (2, False),
    "multiclass": (4, False),
    "ties": (3, True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    "name", sorted(n for n in METRICS if "micro" not in n and "macro_" not in n)
)
def test_vectorised_resamples_equal_the_metric(name: str, case: str) -> None:
    k, ties = CASES[case]
    y, p = _probs(150, k, seed=4)
    if ties:  # rounded scores: many tied thresholds; class 2 rare (absent from resamples)
        p = np.round(p, 1) + 1e-9
        p = p / p.sum(axis=1, keepdims=True)
        y[y == 2] = 0
        y[:3] = 2
    pred = p.argmax(axis=1)
    rows = np.random.default_rng(5).integers(0, len(y), size=(12, len(y)))
    metric = m(name)
    direct = [metric(y[r], pred[r], p[r]) for r in rows]
    assert np.allclose(metric.resampled(y, pred, p, rows), direct, rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("name", ["micro_roc_auc", "macro_roc_auc", "micro_average_precision"])
def test_vectorised_multilabel_resamples(name: str) -> None:
    rng = np.random.default_rng(6)
    y = (rng.random((120, 3)) < 0.2).astype(int)
    s = np.round(np.clip(y * 0.3 + rng.random((120, 3)) * 0.7, 0, 1), 1)
    rows = rng.integers(0, 120, size=(9, 120))
    metric = METRICS[name]()
    direct = [metric(y[r], y[r], s[r]) for r in rows]
    assert np.allclose(metric.resampled(y, y, s, rows), direct, equal_nan=True)


def _accuracy_interval(n: int, seed: int = 0) -> list[float]:
    y, p = _probs(n, 3, seed=7, signal=1.5)
    found = bootstrap_intervals({"accuracy": m("accuracy")}, y, p.argmax(1), p, 500, seed=seed)
    assert found is not None
    return found.intervals["accuracy"]


def test_intervals_contain_the_estimate_are_seeded_and_shrink_with_rows() -> None:
    y, p = _probs(2000, 3, seed=7, signal=1.5)
    pred = p.argmax(1)
    chosen = {name: m(name) for name in ("accuracy", "f1_macro", "mcc", "roc_auc", "log_loss")}
    found = bootstrap_intervals(chosen, y, pred, p, 400, seed=1)
    assert found is not None and found.resamples == 400 and not found.reduced
    for name, metric in chosen.items():
        low, high = found.intervals[name]
        assert low < metric(y, pred, p) < high, name
    again = bootstrap_intervals(chosen, y, pred, p, 400, seed=1)
    assert again is not None and again.intervals == found.intervals
    other = bootstrap_intervals(chosen, y, pred, p, 400, seed=2)
    assert other is not None and other.intervals != found.intervals
    small, large = _accuracy_interval(250), _accuracy_interval(4000)
    assert (large[1] - large[0]) < 0.5 * (small[1] - small[0])
    assert bootstrap_intervals(chosen, y, pred, p, 0) is None
    record = found.record()
    assert record["method"] == "percentile bootstrap over test rows"
    assert record["resamples"] == 400 and record["rows"] == 2000 and record["seed"] == 1


class _Slow(Metric):
    """A metric without resampled(): called once per resample."""

    def __call__(self, y_true, y_pred, y_score) -> float:  # type: ignore[no-untyped-def]
        import time

        time.sleep(0.005)
        return float(np.mean(y_true == y_pred))


def test_per_resample_metrics_and_the_time_budget() -> None:
    y, p = _probs(300, 2, seed=8)
    pred = p.argmax(1)
    chosen = {"slow": _Slow(), "accuracy": m("accuracy")}
    found = bootstrap_intervals(chosen, y, pred, p, 1000, seed=3, budget_s=0.5)
    assert found is not None
    assert found.reduced == {"slow": 200}  # projected past the budget: the fewest allowed
    assert found.intervals["slow"] == pytest.approx(found.intervals["accuracy"], abs=0.05)
    # a regression metric (no resampled()) on every resample within the default budget
    t = np.linspace(0, 1, 300)
    found = bootstrap_intervals({"mse": REGRESSION_METRICS["mse"]()}, t, t + 0.1 * t, None, 300)
    assert found is not None and not found.reduced
    assert found.intervals["mse"][0] < np.mean((0.1 * t) ** 2) < found.intervals["mse"][1]


def test_a_metric_undefined_on_every_resample_has_no_interval() -> None:
    y = np.zeros(50, dtype=int)
    p = np.tile([0.8, 0.2], (50, 1))
    found = bootstrap_intervals({"roc_auc": m("roc_auc")}, y, y, p, 100, seed=0)
    assert found is not None and found.intervals == {"roc_auc": None}
    assert "roc_auc: undefined on 100 of 100 resamples: no interval" in found.notes


def test_interval_text() -> None:
    assert interval_text([0.89412, 0.929]) == " [0.8941, 0.9290]"
    assert interval_text(None) == "" and interval_text([float("nan"), 1.0]) == ""


def test_bootstrap_of_10k_rows_10_classes_gets_every_resample() -> None:
    """1000 resamples of 10,000 rows, 10 classes, the default metrics: all vectorised, none
    reduced (the time is measured in bench/bootstrap.py)."""
    y, p = _probs(10_000, 10, seed=9)
    names = ["accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "mcc", "roc_auc"]
    names += ["log_loss", "ece"]
    found = bootstrap_intervals({n: m(n) for n in names}, y, p.argmax(1), p, 1000, seed=0)
    assert found is not None and not found.reduced and found.resamples == 1000
    assert all(found.intervals[n] is not None for n in names), found.intervals


# -- a tiny run ------------------------------------------------------------------------------


def test_a_run_records_and_prints_test_intervals(project) -> None:
    cfg = project.config(trainer={"epochs": 1, "monitor": "loss"}, evaluation={"bootstrap": 300})
    proc = run_cli("run", str(cfg), cwd=project.root)
    out = ok(proc)
    run = project.root / "runs" / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    intervals = metrics["test_intervals"]
    assert {"accuracy", "roc_auc", "mcc", "log_loss", "ece"} <= set(intervals)
    assert "majority_baseline_accuracy" not in intervals and "loss" not in intervals
    for name, (low, high) in intervals.items():
        assert low <= high, name
    low, high = intervals["accuracy"]
    assert low <= metrics["test"]["accuracy"] <= high
    method = metrics["test_interval_method"]
    assert method["resamples"] == 300 and method["seed"] == 42 and method["confidence"] == 0.95
    assert method["rows"] == len(json.loads((run / "split.json").read_text())["test"])
    line = next(x for x in out.splitlines() if x.startswith("test: "))
    assert f"accuracy {metrics['test']['accuracy']:.4f} [{low:.4f}, {high:.4f}]" in line
    page = (run / "report.html").read_text(encoding="utf-8")
    assert f"<span class=ci>[{low:.4f}, {high:.4f}]</span>" in page
    assert "<h2>Error analysis</h2>" in page
    # tuneforge evaluate: the same intervals on another labelled file
    proc = run_cli("evaluate", str(run), "--input", str(project.data), cwd=project.root)
    shown = ok(proc)
    saved = json.loads((run / "evaluations" / "data" / "metrics.json").read_text())
    assert saved["interval_method"]["rows"] == 240
    lo, hi = saved["intervals"]["accuracy"]
    assert f"{saved['accuracy']:.4f} [{lo:.4f}, {hi:.4f}]" in shown


def test_bootstrap_off_and_bad_values(project) -> None:
    cfg = project.config(trainer={"epochs": 1}, evaluation={"bootstrap": 0})
    ok(run_cli("run", str(cfg), cwd=project.root))
    metrics = json.loads((project.root / "runs" / "run" / "metrics.json").read_text())
    assert "test_intervals" not in metrics and "test_interval_method" not in metrics
    bad = project.config("bad.yaml", evaluation={"bootstrap": -5})
    assert "evaluation.bootstrap" in one_line_error(run_cli("run", str(bad), cwd=project.root))
    bad = project.config("bad2.yaml", evaluation={"resamples": 10})
    assert "evaluation.resamples" in one_line_error(run_cli("run", str(bad), cwd=project.root))


def test_docs_list_the_new_metrics() -> None:
    text = (Path(__file__).parent.parent / "docs" / "config.md").read_text()
    for name in ("roc_auc", "average_precision", "mcc", "log_loss", "brier", "ece", "median_ae"):
        assert f"| `{name}` |" in text, name
