"""Temperature scaling, ECE and decision thresholds (issue 18, items 2 and 3): the fit on
synthetic logits, the problem kinds' after_training and checkpoint files, and a tiny BERT run
that predicts and evaluates with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.special import expit, softmax

from tuneforge.errors import UserError
from tuneforge.plugins import calibration as cal
from tuneforge.plugins import thresholds as th

from conftest import SHARED_DATA, ok, one_line_error, run_cli
from tinymodels import make_texts, write_csv

# -- synthetic logits ------------------------------------------------------------------------


def synthetic(n: int, k: int, t0: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``z * t0`` whose labels are drawn from ``softmax(z)``: the true temperature
    is ``t0`` (``t0 > 1``: over-confident logits)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    p = softmax(z, axis=-1)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z * t0, y


@pytest.mark.parametrize("t0", [0.5, 2.5])
def test_the_fit_recovers_a_known_temperature(t0: float) -> None:
    logits, y = synthetic(6000, 4, t0)
    assert cal.fit_temperature(logits, y, "softmax") == pytest.approx(t0, rel=0.08)
    # the fitted temperature is the NLL minimum
    t = cal.fit_temperature(logits, y, "softmax")
    best = cal.nll(logits, y, t, "softmax")
    assert best <= cal.nll(logits, y, t * 1.05, "softmax")
    assert best <= cal.nll(logits, y, t / 1.05, "softmax")


def test_the_sigmoid_fit_recovers_a_shared_temperature() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (3000, 3))
    y = (rng.random(z.shape) < expit(z)).astype(int)
    assert cal.fit_temperature(z * 3.0, y, "sigmoid") == pytest.approx(3.0, rel=0.1)


def test_ece_drops_on_an_over_confident_case_and_argmax_is_unchanged() -> None:
    logits, y = synthetic(4000, 3, 3.0, seed=2)
    t = cal.fit_temperature(logits, y, "softmax")
    before = cal.expected_calibration_error(cal.probabilities(logits, 1.0, "softmax"), y, "softmax")
    after = cal.expected_calibration_error(cal.probabilities(logits, t, "softmax"), y, "softmax")
    assert before > 0.1 and after < before / 3, (before, after)
    assert (
        cal.probabilities(logits, t, "softmax").argmax(1) == logits.argmax(1)
    ).all()  # argmax unchanged


def test_ece_of_a_hand_made_case() -> None:
    # two rows at confidence 0.9 (one right), two at 0.6 (both right): bins 13 and 9
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    assert cal.expected_calibration_error(probs, y, "softmax") == pytest.approx(
        0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    )


# -- the problem kind's after_training without a model ---------------------------------------


def bare_task(**config):
    from tuneforge.plugins.problems import SingleLabelClassification

    class Bare(SingleLabelClassification):  # the problem base alone
        load = load_inputs = make_dataset = predict_dataset = collate_fn = None
        build_model = save_artifacts = None

        def load_artifacts(self, folder: Path) -> None:  # the problem's part only
            from tuneforge.plugins.calibration import read_temperature
            from tuneforge.plugins.thresholds import read_binary

            self.temperature, self.decision = read_temperature(folder), read_binary(folder)

    task = Bare(Bare.Config(**config))
    return task


def tensors(logits: np.ndarray, y: np.ndarray):
    import torch

    return lambda: (torch.tensor(logits, dtype=torch.float32), torch.tensor(y))


def test_after_training_writes_calibration_json_and_predictions_apply_it(tmp_path: Path) -> None:
    import torch

    logits, y = synthetic(3000, 3, 2.0, seed=3)
    task = bare_task()  # calibration: auto
    task.bind_classes(["a", "b", "c"])
    tuning = task.after_training(tensors(logits, y), tmp_path)
    record = json.loads((tmp_path / cal.CALIBRATION_FILE).read_text())
    t = record["temperature"]
    assert record["applied"] and t == pytest.approx(2.0, rel=0.1)
    c = tuning["calibration"]
    assert c["temperature"] == t and c["val"]["ece_after"] < c["val"]["ece_before"]
    assert c["val"]["nll_after"] < c["val"]["nll_before"]
    assert len(c["val"]["reliability"]["after"]) == cal.ECE_BINS
    fresh = bare_task()
    fresh.load_artifacts(tmp_path)
    pred, probs = fresh.predictions(torch.tensor(logits, dtype=torch.float32))
    np.testing.assert_allclose(probs, softmax(logits / t, axis=1), atol=1e-5)
    assert (pred == logits.argmax(1)).all()
    details = fresh.test_details(
        type("D", (), {"classes": ["a", "b", "c"]})(),
        np.arange(len(y)),
        torch.tensor(logits, dtype=torch.float32),
        torch.tensor(y),
    )
    assert details["calibration"]["ece_after"] < details["calibration"]["ece_before"]


def test_auto_keeps_t_1_when_the_model_is_calibrated_already(tmp_path: Path) -> None:
    logits, y = synthetic(3000, 3, 1.0, seed=4)
    task = bare_task()
    task.bind_classes(["a", "b", "c"])
    tuning = task.after_training(tensors(logits, y), tmp_path)
    assert not tuning["calibration"]["applied"] and task.temperature == 1.0
    assert json.loads((tmp_path / cal.CALIBRATION_FILE).read_text())["temperature"] == 1.0
    forced = bare_task(calibration="temperature")
    forced.bind_classes(["a", "b", "c"])
    assert forced.after_training(tensors(logits, y), tmp_path)["calibration"]["applied"]
    assert forced.temperature != 1.0


def test_calibration_none_writes_nothing_and_removes_a_stale_file(tmp_path: Path) -> None:
    logits, y = synthetic(500, 3, 2.0)
    (tmp_path / cal.CALIBRATION_FILE).write_text('{"temperature": 3.0}')  # a copied checkpoint
    task = bare_task(calibration="none")
    task.bind_classes(["a", "b", "c"])
    called = []
    assert task.after_training(lambda: called.append(1), tmp_path) == {}
    assert not called and list(tmp_path.iterdir()) == []
    assert task.temperature == 1.0


def test_a_damaged_calibration_file_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / cal.CALIBRATION_FILE).write_text('{"temperature": -1}')
    with pytest.raises(UserError, match=r"calibration.json: temperature is -1"):
        cal.read_temperature(tmp_path)
    (tmp_path / cal.CALIBRATION_FILE).write_text("{")
    with pytest.raises(UserError, match=r"calibration.json: unreadable \(not valid JSON\)"):
        cal.read_temperature(tmp_path)
    assert cal.read_temperature(tmp_path / "missing") == 1.0  # an older checkpoint


# -- thresholds ------------------------------------------------------------------------------


def binary_scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.3).astype(int)
    scores = np.clip(rng.normal(0.3 + 0.3 * truth, 0.15), 0.001, 0.999)
    return truth, scores


def test_f1_tuning_picks_the_f1_optimal_threshold() -> None:
    from sklearn.metrics import f1_score

    truth, scores = binary_scores(600)
    t, info = th.tune_threshold(truth, scores, th.ThresholdRule(metric="f1"))
    got = f1_score(truth, scores >= t)
    assert info["tuned"]["f1"] == pytest.approx(got)
    assert info["at_0.5"]["f1"] == pytest.approx(f1_score(truth, scores >= 0.5))
    grid = np.linspace(0.05, 0.95, 901)  # no other threshold in range does better
    assert got >= max(f1_score(truth, scores >= g) for g in grid) - 1e-12
    assert got > info["at_0.5"]["f1"]


def test_precision_and_recall_targets() -> None:
    truth, scores = binary_scores(800, seed=1)
    t, info = th.tune_threshold(truth, scores, th.ThresholdRule(metric="precision_at", target=0.8))
    pred = scores >= t
    assert info["reached"] and truth[pred].mean() >= 0.8
    # the best recall among thresholds reaching the precision
    for g in np.unique(scores):
        p = scores >= g
        if p.any() and truth[p].mean() >= 0.8:
            assert truth[p].sum() <= truth[pred].sum()
    t, info = th.tune_threshold(truth, scores, th.ThresholdRule(metric="recall_at", target=0.9))
    assert info["reached"] and (scores >= t)[truth == 1].mean() >= 0.9


def test_an_unreachable_precision_warns_and_takes_the_highest_precision() -> None:
    truth = np.array([1, 0, 1, 0, 0, 1, 0])
    scores = np.array([0.2, 0.9, 0.4, 0.5, 0.3, 0.8, 0.1])  # the top score is a negative
    t, info = th.tune_threshold(truth, scores, th.ThresholdRule(metric="precision_at", target=0.99))
    assert not info["reached"] and "precision 0.99 is not reached" in info["warning"]
    best = max(truth[scores >= g].mean() for g in scores)
    assert info["tuned"]["precision"] == pytest.approx(best)


def test_threshold_tuning_on_a_binary_task_and_predictions_apply_it(tmp_path, capsys) -> None:
    import torch

    rng = np.random.default_rng(5)
    z = rng.normal(0, 1.2, 2000)
    y = (rng.random(2000) < expit(z - 1.0)).astype(int)  # positives rarer than the logit says
    logits = np.stack([np.zeros_like(z), z * 2], axis=1)
    task = bare_task(threshold={"metric": "f1"}, positive_class="spam")
    task.bind_classes(["ham", "spam"])
    tuning = task.after_training(tensors(logits, y), tmp_path)
    entry = tuning["threshold"]
    saved = json.loads((tmp_path / "thresholds.json").read_text())
    assert saved["thresholds"] == {"spam": entry["threshold"]} and saved["positive_index"] == 1
    assert entry["tuned"]["f1"] >= entry["at_0.5"]["f1"] and entry["positive_class"] == "spam"
    assert len(entry["curve"]["precision"]) == len(entry["curve"]["recall"]) > 10
    fresh = bare_task(threshold={"metric": "f1"}, positive_class="spam")
    fresh.load_artifacts(tmp_path)
    pred, probs = fresh.predictions(torch.tensor(logits, dtype=torch.float32))
    assert (pred == (probs[:, 1] >= entry["threshold"])).all()
    # the tuned F1 is the F1 of the calibrated probabilities at that threshold
    from sklearn.metrics import f1_score

    assert f1_score(y, pred) == pytest.approx(entry["tuned"]["f1"])
    unreachable = bare_task(threshold={"metric": "precision_at", "target": 1.0})
    unreachable.bind_classes(["ham", "spam"])
    y[np.argmax(z)] = 0  # the most confident row is a negative: precision 1 is out of reach
    capsys.readouterr()
    out = unreachable.after_training(tensors(logits, y), tmp_path)
    assert "warning: task.threshold: precision 1 is not reached" in capsys.readouterr().out
    assert not out["threshold"]["reached"] and out["threshold"]["warning"]


@pytest.mark.parametrize(
    ("config", "classes", "message"),
    [
        ({"threshold": "tune"}, ["a", "b", "c"], "task.threshold: is for two classes"),
        ({"threshold": 0.3, "positive_class": "x"}, ["a", "b"], "task.positive_class: 'x' is"),
        ({"positive_class": "a"}, ["a", "b"], "task.positive_class: is for task.threshold"),
    ],
)
def test_threshold_config_against_the_classes(config, classes, message) -> None:
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        bare_task(**config).bind_classes(classes)


@pytest.mark.parametrize(
    "threshold",
    [1.5, 0, {"metric": "precision_at"}, {"metric": "f1", "target": 0.9}, {"metric": "auc"}],
)
def test_bad_threshold_keys_are_refused(threshold) -> None:
    from pydantic import ValidationError

    from tuneforge.plugins.multilabel import MultiLabelConfig
    from tuneforge.plugins.problems import SingleLabelConfig

    for model in (SingleLabelConfig, MultiLabelConfig):
        with pytest.raises(ValidationError):
            model(threshold=threshold)


# -- a tiny BERT run: binary, calibrated, thresholds tuned; predict and evaluate --------------


def _config(root: Path, bert: Path, task: dict, name: str) -> Path:
    cfg = {
        "task": {"name": "text-classification", **task},
        "data": {"path": "data.csv"},
        "model": {"name": "hf-sequence-classification", "checkpoint": str(bert)},
        "trainer": {
            "epochs": 3,
            "batch_size": 16,
            "lr": 3e-3,
            "monitor": "accuracy",
            "early_stopping_patience": None,
        },
        "output": {"dir": str(root / "runs" / name)},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _binary_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rows = make_texts(n, seed=seed, weights=(0.65, 0.35, 0.0))
    rng = np.random.default_rng(seed)
    flip = rng.random(n) < 0.12  # some label noise: probabilities are not all 0 or 1
    return [
        (t, ("shipping" if c == "billing" else "billing") if f else c)
        for (t, c), f in zip(rows, flip, strict=True)
    ]


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("calibration")
    write_csv(root / "data.csv", _binary_rows(240, seed=1))
    task = {"calibration": "temperature", "threshold": {"metric": "f1"}}
    ok(run_cli("run", str(_config(root, tiny_models["bert"], task, "run")), "-q", cwd=root))
    return root / "runs" / "run"


def _raw_logits(run: Path, frame: pd.DataFrame) -> np.ndarray:
    """The checkpoint's raw logits on ``frame`` through the prediction code path."""
    from tuneforge.console import Console
    from tuneforge.predict import bound_run, model_outputs

    cfg, task, _ = bound_run(run, [], [])
    logits, _ = model_outputs(
        run, cfg, task, lambda: task.predict_dataset(frame, cfg.data), Console("quiet")
    )
    return logits.float().numpy()


def test_a_binary_run_records_calibration_and_threshold(binary_run: Path) -> None:
    metrics = json.loads((binary_run / "metrics.json").read_text())
    tuning = metrics["tuning"]
    c, t = tuning["calibration"], tuning["threshold"]
    saved = json.loads((binary_run / "checkpoint" / "calibration.json").read_text())
    assert c["applied"] and c["temperature"] == saved["temperature"] > 0
    assert {"ece_before", "ece_after", "nll_before", "nll_after"} <= set(c["val"])
    assert c["val"]["nll_after"] <= c["val"]["nll_before"] + 1e-9  # the fit's own optimum
    assert t["metric"] == "f1" and t["positive_class"] == "shipping"
    assert t["tuned"]["f1"] >= t["at_0.5"]["f1"]
    thresholds = json.loads((binary_run / "checkpoint" / "thresholds.json").read_text())
    assert thresholds["thresholds"] == {"shipping": t["threshold"]}
    test = metrics["test_details"]["calibration"]
    assert test["temperature"] == saved["temperature"] and "ece_after" in test
    # the test predictions are the calibrated, thresholded ones
    preds = pd.read_csv(binary_run / "predictions_test.csv")
    positive = preds["prob_shipping"] >= t["threshold"]
    assert (preds["y_pred"] == np.where(positive, "shipping", "billing")).all()


def test_predict_and_evaluate_apply_the_temperature_and_threshold(binary_run: Path) -> None:
    root = binary_run.parent.parent
    frame = pd.read_csv(root / "data.csv").head(60)
    frame[["text"]].to_csv(root / "new.csv", index=False)
    out = root / "predicted.csv"
    ok(run_cli("predict", str(binary_run), "-i", str(root / "new.csv"), "-o", str(out)))
    got = pd.read_csv(out)
    temperature = json.loads((binary_run / "checkpoint" / "calibration.json").read_text())
    threshold = json.loads((binary_run / "checkpoint" / "thresholds.json").read_text())
    t, cut = temperature["temperature"], threshold["thresholds"]["shipping"]
    assert t != 1.0
    expected = softmax(_raw_logits(binary_run, frame[["text"]]) / t, axis=1)
    np.testing.assert_allclose(got[["prob_billing", "prob_shipping"]], expected, atol=1e-5)
    positive = expected[:, 1] >= cut
    assert (got["prediction"] == np.where(positive, "shipping", "billing")).all()

    frame.to_csv(root / "labelled.csv", index=False)
    ok(run_cli("evaluate", str(binary_run), "--input", "labelled.csv", cwd=root))
    evaluated = pd.read_csv(binary_run / "evaluations" / "labelled" / "predictions.csv")
    np.testing.assert_allclose(evaluated[["prob_billing", "prob_shipping"]], expected, atol=1e-5)
    assert (evaluated["y_pred"] == got["prediction"]).all()
    results = json.loads((binary_run / "evaluations" / "labelled" / "metrics.json").read_text())
    accuracy = float((got["prediction"] == frame["label"]).mean())
    assert results["accuracy"] == pytest.approx(accuracy)
    assert results["details"]["calibration"]["temperature"] == t


def test_the_report_shows_the_reliability_diagram_and_pr_curve(binary_run: Path) -> None:
    from tuneforge.plugins.report.html import build_report

    html = build_report(binary_run).path.read_text()
    assert "<section id=calibration>" in html
    assert "Reliability diagram (test split)" in html
    assert "Precision-recall curve on val with the chosen threshold" in html


def test_calibration_none_and_no_threshold_leave_the_checkpoint_as_before(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    write_csv(tmp_path / "data.csv", make_texts(120, seed=2))
    cfg = _config(tmp_path, tiny_models["bert"], {"calibration": "none"}, "plain")
    ok(run_cli("run", str(cfg), "-q", cwd=tmp_path))
    run = tmp_path / "runs" / "plain"
    assert not (run / "checkpoint" / "calibration.json").exists()
    assert not (run / "checkpoint" / "thresholds.json").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "tuning" not in metrics and "calibration" not in metrics["test_details"]
    # a threshold on three classes is refused before training, naming the key
    bad = _config(tmp_path, tiny_models["bert"], {"threshold": "tune"}, "bad")
    line = one_line_error(run_cli("run", str(bad), cwd=tmp_path))
    assert "task.threshold: is for two classes; the data has 3" in line


# -- multi-label: calibration first, then thresholds on calibrated probabilities ------------


def test_multilabel_calibrates_before_tuning_thresholds(tmp_path: Path) -> None:
    import torch

    from tuneforge.plugins import multilabel as ml

    class Bare(ml.MultiLabelClassification):
        load = load_inputs = make_dataset = predict_dataset = collate_fn = None
        build_model = save_artifacts = load_artifacts = None

    rng = np.random.default_rng(7)
    z = rng.normal(0, 2, (1500, 3))
    y = (rng.random(z.shape) < expit(z)).astype(np.float32)
    logits = z * 2.5  # over-confident
    ml.write_thresholds(tmp_path, ["a", "b", "c"], np.full(3, 0.5), "tune: 0.5 until tuned")
    task = Bare(ml.MultiLabelConfig(threshold={"metric": "precision_at", "target": 0.8}))
    tuning = task.after_training(tensors(logits, y), tmp_path)
    c = tuning["calibration"]
    assert c["kind"] == "sigmoid" and c["temperature"] == pytest.approx(2.5, rel=0.1)
    assert c["val"]["ece_after"] < c["val"]["ece_before"]
    names, saved = ml.read_thresholds(tmp_path)
    probs = expit(logits / c["temperature"])
    for j, name in enumerate(names):  # thresholds reach the precision on calibrated probs
        assert saved[j] == tuning["thresholds"][name]
        predicted = probs[:, j] >= saved[j]
        assert y[predicted, j].mean() >= 0.8
    pred, got = task.predictions(torch.tensor(logits, dtype=torch.float32))
    np.testing.assert_allclose(got, probs, atol=1e-5)
    assert (pred == (probs >= saved)).all()
    assert set(tuning["threshold"]["curves"]) == {"a", "b", "c"}


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.heavy
def test_bench_script_runs_on_a_small_slice(tmp_path: Path) -> None:
    import subprocess
    import sys

    if not (SHARED_DATA / "sms_spam").is_dir():
        pytest.skip("no sms_spam data")
    bench = Path(__file__).resolve().parents[1] / "bench" / "calibration.py"
    proc = subprocess.run(
        [sys.executable, str(bench), "--rows", "300", "--epochs", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sms_spam" in proc.stdout and "ECE" in proc.stdout
