"""Regression building blocks (metrics, scaler, loss, validators, balancers) and
text-regression end to end with a tiny BERT (one text or a pair), plus text-pair
classification and the Bad-input cases of issue 5."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tuneforge.data import TaskData
from tuneforge.errors import DataError, UserError
from tuneforge.plugins import regression as R

from conftest import SHARED_DATA, one_line_error, run_cli
from tinymodels import make_texts

# -- building blocks ----------------------------------------------------------------------


def reg_data(y, extra: dict | None = None, target="y") -> TaskData:
    frame = pd.DataFrame({"x": np.arange(len(y), dtype=float), "y": y, **(extra or {})})
    return TaskData(
        frame, {"x": "x"}, target, None, "d.csv", "regression", modalities={"x": "tabular"}
    )


def test_metrics_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    t = rng.uniform(1, 5, 50)
    p = t + rng.normal(scale=0.3, size=50)
    m = {name: cls()(t, p, None) for name, cls in R.METRICS.items()}
    assert m["mse"] == pytest.approx(np.mean((t - p) ** 2))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((t - p) ** 2)))
    assert m["mae"] == pytest.approx(np.mean(np.abs(t - p)))
    assert m["r2"] == pytest.approx(1 - np.sum((t - p) ** 2) / np.sum((t - t.mean()) ** 2))
    assert m["mape"] == pytest.approx(np.mean(np.abs(t - p) / t))
    assert m["pearson"] == pytest.approx(np.corrcoef(t, p)[0, 1])
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    assert m["spearman"] == pytest.approx(np.corrcoef(ranks(t), ranks(p))[0, 1])
    assert R.R2.greater_is_better and not R.MAE.greater_is_better
    # multi-output: uniform average over outputs
    two = np.stack([t, 2 * t], axis=1)
    assert R.MAE()(two, two + 1.0, None) == pytest.approx(1.0)
    assert np.isnan(R.Pearson()(t, np.ones_like(t), None))  # undefined, not a crash


def test_mape_says_why_it_is_undefined_for_zero_or_negative_targets() -> None:
    data = reg_data([1.0, 2.0, -0.5, 3.0])
    with pytest.raises(UserError, match=r"mape is undefined for target 'y': 1 rows are zero or "):
        R.MAPE().check_data(data)
    with pytest.raises(UserError, match="zero or negative"):
        R.MAPE()(np.array([0.0, 1.0]), np.array([1.0, 1.0]), None)


def test_target_scaler_standardises_on_train_and_round_trips_as_json(tmp_path: Path) -> None:
    y = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    scaler = R.TargetScaler.fit(y, ["a", "b"])
    z = scaler.transform(y)
    assert np.allclose(z.mean(axis=0), 0) and np.allclose(z.std(axis=0), 1)
    scaler.save(tmp_path)
    assert json.loads((tmp_path / "target_scaler.json").read_text())["columns"] == ["a", "b"]
    back = R.TargetScaler.load(tmp_path)
    assert np.allclose(back.inverse(z), y)
    with pytest.raises(UserError, match="no target_scaler.json"):
        R.TargetScaler.load(tmp_path / "nope")


def test_regression_losses_standardise_targets_and_weight_rows() -> None:
    import torch

    scaler = R.TargetScaler(np.array([10.0]), np.array([2.0]), ["y"])
    out = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([10.0, 14.0])  # standardised: 0, 2
    assert R.regression_loss(scaler, "mse")(out, y).item() == pytest.approx(0.5)
    assert R.regression_loss(scaler, "l1")(out, y).item() == pytest.approx(0.5)
    assert R.regression_loss(scaler, "huber")(out, y).item() == pytest.approx(0.25)
    loss = R.regression_loss(scaler, "mse")
    loss.reduction = "none"
    assert loss(out, y).tolist() == pytest.approx([0.0, 1.0])


def test_parse_targets_names_the_row_and_column_of_text_and_refuses_constants() -> None:
    frame = pd.DataFrame({"y": ["1.5", "2", "high", "3"]})
    with pytest.raises(DataError, match=r"row 2: target column 'y' holds 'high', not a number"):
        R.parse_targets(frame, "y", "d.csv")
    with pytest.raises(DataError, match="same value \\(4\\) in every row"):
        R.parse_targets(pd.DataFrame({"y": [4, 4, 4]}), "y")
    ok = R.parse_targets(pd.DataFrame({"y": ["1", None, "2.5"]}), "y")
    assert ok["y"].isna().tolist() == [False, True, False]


def test_target_bins_are_quantiles_and_shrink_for_small_data() -> None:
    v = np.arange(1000.0)
    bins = R.target_bins(v)
    assert bins.max() == 9 and np.all(np.bincount(bins) == 100)
    assert R.target_bins(np.arange(50.0)).max() == 1  # 50 rows -> 2 bins
    spiky = np.r_[np.zeros(500), np.arange(500.0)]
    assert len(np.unique(R.target_bins(spiky))) < 10  # equal edges merge


# -- validators ---------------------------------------------------------------------------


def test_target_values_finds_missing_infinite_and_text_targets() -> None:
    data = reg_data(np.array([1.0, np.nan, np.inf, 2.0, 3.0]))
    kinds = {f.kind: f.rows for f in R.TargetValues().check(data)}
    assert kinds == {"missing-target": [1], "infinite-target": [2]}
    text = reg_data(pd.Series([1.0, "x", 2.0], dtype=object))
    assert {f.kind for f in R.TargetValues().check(text)} == {"non-numeric-target"}
    with pytest.raises(UserError, match="same value \\(2\\) in every row"):
        R.TargetValues().check(reg_data([2.0, 2.0, np.nan]))
    with pytest.raises(UserError, match="checks regression targets"):
        R.TargetValues().check(TaskData(pd.DataFrame({"y": [1]}), {}, "y", ["a"]))


def test_target_outliers_iqr_zscore_and_clip() -> None:
    y = np.r_[np.linspace(0, 1, 40), 25.0]
    [f] = R.TargetOutliers().check(reg_data(y))
    assert f.rows == [40] and f.relabel is None and "IQR" in f.message
    [z] = R.TargetOutliers(R.TargetOutliers.Config(method="zscore")).check(reg_data(y))
    assert z.rows == [40] and "robust z-score" in z.message
    cfg = R.TargetOutliers.Config(policy="clip", threshold=1.5)
    [c] = R.TargetOutliers(cfg).check(reg_data(y))
    q1, q3 = np.quantile(y, [0.25, 0.75])
    assert c.relabel == {40: pytest.approx(q3 + 1.5 * (q3 - q1))}
    assert R.TargetOutliers().check(reg_data(np.linspace(0, 1, 40))) == []


def test_capped_target_finds_a_spike_at_the_maximum() -> None:
    y = np.r_[np.linspace(1, 4, 200), np.full(30, 5.00001)]
    [f] = R.CappedTarget().check(reg_data(y))
    assert f.kind == "capped-target" and len(f.rows) == 30 and "maximum 5" in f.message
    assert R.CappedTarget().check(reg_data(np.linspace(1, 4, 200))) == []


def test_constant_columns_are_reported() -> None:
    data = reg_data(np.arange(5.0), {"k": [7] * 5})
    data.inputs = {"x": "x", "k": "k"}
    [f] = R.ConstantColumns().check(data)
    assert f.details["column"] == "k"


# -- balancers ----------------------------------------------------------------------------


def skewed(n: int = 500) -> TaskData:
    rng = np.random.default_rng(0)
    return reg_data(np.r_[rng.normal(0, 1, n - 20), rng.normal(6, 0.3, 20)])


def test_target_bins_weights_rare_targets_more_with_and_without_smoothing() -> None:
    data = skewed()
    rows = data.frame.index.to_numpy()
    y = data.frame["y"].to_numpy()
    for smoothing in (0.0, 2.0):
        cfg = R.TargetBins.Config(smoothing=smoothing, power=1.0)
        plan = R.TargetBins(cfg).plan(data, rows, np.random.default_rng(0))
        w = np.array([plan.row_weights[int(r)] for r in rows])
        assert w.mean() == pytest.approx(1.0)
        assert w[y > 5].mean() > 3 * w[np.abs(y) < 0.5].mean()
    plan = R.TargetBins(R.TargetBins.Config(mode="sampler")).plan(data, rows, None)
    assert plan.sample_weights is not None and len(plan.sample_weights) == len(rows)


def test_lds_smoothing_spreads_density_to_empty_neighbour_bins() -> None:
    bins = np.array([0] * 50 + [2] * 5)
    plain = R.lds_weights(bins, 4, 0.0, 1.0)
    smooth = R.lds_weights(bins, 4, 1.0, 1.0)
    assert plain[2] / plain[0] == pytest.approx(10.0)
    assert 1 < smooth[2] / smooth[0] < 10  # smoothing tempers the ratio


def test_oversample_bins_repeats_rare_target_rows() -> None:
    data = skewed()
    rows = data.frame.index.to_numpy()
    plan = R.OversampleBins(R.OversampleBins.Config(ratio=0.5)).plan(
        data, rows, np.random.default_rng(0)
    )
    picked = data.frame["y"].to_numpy()[plan.indices]
    assert (picked > 5).sum() > 100 and len(plan.indices) > len(rows)


def test_balancers_refuse_the_wrong_problem() -> None:
    from tuneforge.plugins.balancers import Oversample

    cls = TaskData(pd.DataFrame({"y": ["a", "b"]}), {}, "y", ["a", "b"])
    with pytest.raises(UserError, match="balances regression targets"):
        R.TargetBins().plan(cls, np.array([0, 1]), np.random.default_rng(0))
    with pytest.raises(UserError, match="for regression use target-bins"):
        Oversample().plan(skewed(), np.arange(10), np.random.default_rng(0))


# -- text regression end to end -----------------------------------------------------------

SCORE = {"billing": 1.0, "shipping": 3.0, "technical": 5.0}


def pair_rows(n: int, seed: int) -> pd.DataFrame:
    first, second = make_texts(n, seed=seed), make_texts(n, seed=seed + 100)
    return pd.DataFrame(
        {
            "s1": [t for t, _ in first],
            "s2": [t for t, _ in second],
            "score": [
                SCORE[a] + 0.5 * SCORE[b] for (_, a), (_, b) in zip(first, second, strict=True)
            ],
        }
    )


def text_config(root: Path, tiny: Path, **sections) -> Path:
    cfg = {
        "task": "text-regression",
        "data": {
            "path": "pairs.csv",
            "columns": {"text": "s1", "text_pair": "s2"},
            "target": "score",
        },
        "model": {"name": "hf-sequence-classification", "checkpoint": str(tiny)},
        "trainer": {"epochs": 6, "batch_size": 16, "lr": 3e-3, "early_stopping_patience": None},
        "output": {"dir": str(root / "runs" / "run")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_text_pair_regression_trains_predicts_and_reports_a_tfidf_baseline(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    pair_rows(240, 1).to_csv(tmp_path / "pairs.csv", index=False)
    cfg = text_config(
        tmp_path,
        tiny_models["bert"],
        augmenters=[{"name": "word-delete", "p": 0.2}],
        preprocessors=["lowercase"],
        balancer={"name": "target-bins", "bins": 6},
    )
    proc = run_cli("run", str(cfg))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "runs" / "run"
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["pearson"] > 0.6, metrics
    assert "baseline_tfidf_ridge_pearson" in metrics and "r2" in metrics
    assert (run / "checkpoint" / "target_scaler.json").is_file()
    cfg_json = json.loads((run / "checkpoint" / "config.json").read_text())
    assert cfg_json["problem_type"] == "regression" and len(cfg_json["id2label"]) == 1
    new = pair_rows(20, 7)
    new.drop(columns="score").to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "p.csv"
    proc = run_cli("predict", str(run), "-i", str(tmp_path / "new.csv"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    preds = pd.read_csv(out)["prediction"]
    assert 0.5 < preds.mean() < 8.0  # de-standardised: the targets' units (1.5 .. 7.5)
    assert np.corrcoef(preds, new["score"])[0, 1] > 0.5
    # a pair column missing at prediction time
    new.drop(columns=["s2", "score"]).to_csv(tmp_path / "bad.csv", index=False)
    line = one_line_error(run_cli("predict", str(run), "-i", str(tmp_path / "bad.csv")))
    assert "column 's2' (from data.columns.text_pair) not found" in line


def test_bad_regression_inputs_get_one_line_errors(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    frame = pair_rows(60, 2)
    bad = frame.assign(score=frame["score"].astype(object).where(frame.index != 4, "high"))
    bad.to_csv(tmp_path / "pairs.csv", index=False)
    cfg = text_config(tmp_path, tiny_models["bert"])
    line = one_line_error(run_cli("run", str(cfg)))
    assert "row 4: target column 'score' holds 'high', not a number" in line
    frame.assign(score=2.0).to_csv(tmp_path / "pairs.csv", index=False)
    assert "same value (2) in every row" in one_line_error(run_cli("run", str(cfg)))
    frame.assign(score=frame["score"] - 4).to_csv(tmp_path / "pairs.csv", index=False)
    cfg = text_config(tmp_path, tiny_models["bert"], metrics=["mae", "mape"])
    line = one_line_error(run_cli("run", str(cfg)))
    assert line.startswith("tuneforge: error: metrics[1]: mape: mape is undefined for target")
    assert "zero or negative" in line
    frame.to_csv(tmp_path / "pairs.csv", index=False)
    cfg = text_config(
        tmp_path, tiny_models["bert"], data={"columns": {"text": "s1", "text_pair": "sx"}}
    )
    assert "column 'sx' (from data.columns.text_pair) not found" in one_line_error(
        run_cli("run", str(cfg))
    )
    cfg = text_config(tmp_path, tiny_models["bert"], metrics=["accuracy"])
    err = one_line_error(run_cli("run", str(cfg)))
    assert "metrics[0].name: 'accuracy' supports classification problems; task " in err
    assert "is regression; for regression use: " in err and "rmse" in err
    assert not (tmp_path / "runs" / "run").exists()


def test_text_pairs_work_for_classification(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """NLI-style: the label depends on both texts (same topic or not)."""
    first, second = make_texts(240, seed=3), make_texts(240, seed=4)
    pd.DataFrame(
        {
            "premise": [t for t, _ in first],
            "hypothesis": [t for t, _ in second],
            "label": [a == b for (_, a), (_, b) in zip(first, second, strict=True)],
        }
    ).to_csv(tmp_path / "pairs.csv", index=False)
    cfg = text_config(
        tmp_path,
        tiny_models["bert"],
        task="text-classification",
        data={
            "columns": {"text": "premise", "text_pair": "hypothesis"},
            "target": None,
            "label": "label",
        },
        trainer={"epochs": 10, "monitor": "accuracy"},
    )
    proc = run_cli("run", str(cfg))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "runs" / "run" / "metrics.json").read_text())["test"]
    assert metrics["accuracy"] > metrics["majority_baseline_accuracy"] + 0.1, metrics


@pytest.mark.data
def test_california_validators_find_missing_values_and_capped_targets(tmp_path: Path) -> None:
    from tuneforge.config import DataConfig
    from tuneforge.plugins.tabular.checks import MissingFeatures
    from tuneforge.plugins.tabular.task import TabularRegressionTask

    task = TabularRegressionTask()
    data = task.load(
        DataConfig(
            path=SHARED_DATA / "california_housing" / "housing.csv", target="median_house_value"
        ),
        Path("/"),
    )
    [missing] = MissingFeatures().check(data, task)
    assert missing.details["column"] == "total_bedrooms" and len(missing.rows) == 207
    [capped] = R.CappedTarget().check(data, task)
    assert len(capped.rows) == 965 and capped.details["value"] == 500001


@pytest.mark.data
def test_stsb_reads_as_a_text_pair_regression() -> None:
    from tuneforge.config import DataConfig
    from tuneforge.plugins.text.regression import TextRegressionTask

    task = TextRegressionTask()
    task.name = "text-regression"
    data = task.load(
        DataConfig(
            path=SHARED_DATA / "stsb" / "dev.tsv",
            columns={"text": "sentence1", "text_pair": "sentence2"},
            target="score",
            read_options={"quoting": 3},
        ),
        Path("/"),
    )
    assert len(data) == 1500 and data.frame["score"].between(0, 5).all()
