"""Tabular tasks end to end on generated data: regression, classification, SMOTE, mixup,
missing values, predict round trips, baselines and tabular label noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import SHARED_DATA, ok, one_line_error, run_cli


def linear_table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """y = 3a - 2b + 1.5 [c == x] + 10 (+ small noise); a second target z = a + b."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["x", "y", "z"], size=n)
    y = 3 * a - 2 * b + np.where(c == "x", 1.5, 0.0) + 10 + rng.normal(scale=0.05, size=n)
    return pd.DataFrame({"id": np.arange(n), "a": a, "b": b, "c": c, "y": y, "z": a + b})


def write_config(root: Path, name: str = "config.yaml", **sections) -> Path:
    cfg = {
        "task": "tabular-regression",
        "data": {"path": "data.csv", "target": "y", "columns": {"exclude": "id, z"}},
        "model": {"name": "mlp", "hidden": 32, "layers": 1, "dropout": 0.0},
        "trainer": {"epochs": 25, "batch_size": 32, "lr": 0.01, "early_stopping_patience": None},
        "output": {"dir": str(root / "runs" / "run")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = root / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_tabular_regression_recovers_a_linear_target_and_predicts_in_target_units(
    tmp_path: Path,
) -> None:
    frame = linear_table()
    frame.loc[[3, 7, 11], "a"] = np.nan  # imputed with the train median, not dropped
    frame.to_csv(tmp_path / "data.csv", index=False)
    cfg = write_config(tmp_path, augmenters=[{"name": "gaussian-noise", "sigma": 0.01}])
    out = ok(run_cli("run", str(cfg)))
    run = tmp_path / "runs" / "run"
    assert "missing-features" in out and "baseline_ridge_mae" in out
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["r2"] > 0.95, metrics
    assert metrics["baseline_ridge_r2"] > 0.95 and "baseline_gradient_boosting_rmse" in metrics
    ckpt = run / "checkpoint"
    assert {"model.safetensors", "mlp.json", "tabular_preprocess.json", "target_scaler.json"} <= {
        p.name for p in ckpt.iterdir()
    }
    scaler = json.loads((ckpt / "target_scaler.json").read_text())
    train = json.loads((run / "split.json").read_text())["train"]
    assert scaler["mean"][0] == pytest.approx(frame.loc[train, "y"].mean())  # train split only
    prep = json.loads((ckpt / "tabular_preprocess.json").read_text())
    assert prep["fill"][prep["numeric"].index("a")] == pytest.approx(frame.loc[train, "a"].median())
    assert prep["numeric"] == ["a", "b"] and prep["categorical"] == ["c"]
    assert {"pred_vs_true.png", "residuals.png"} <= {p.name for p in (run / "plots").iterdir()}
    # predict: the same numbers as the run's test predictions, in target units
    test_preds = pd.read_csv(run / "predictions_test.csv")
    frame.drop(columns=["y"]).to_csv(tmp_path / "new.csv", index=False)
    ok(run_cli("predict", str(run), "-i", str(tmp_path / "new.csv"), "-o", str(tmp_path / "p.csv")))
    preds = pd.read_csv(tmp_path / "p.csv")
    assert np.allclose(
        preds.loc[test_preds["row"], "prediction"].to_numpy(), test_preds["y_pred"], atol=1e-4
    )
    assert np.abs(preds["prediction"] - frame["y"]).mean() < 0.6  # target units, not z-scores
    # a feature column missing at prediction time
    frame.drop(columns=["y", "b"]).to_csv(tmp_path / "bad.csv", index=False)
    line = one_line_error(run_cli("predict", str(run), "-i", str(tmp_path / "bad.csv")))
    assert "feature column 'b' is missing" in line and "bad.csv" in line


def test_multi_output_regression_writes_a_column_per_target(tmp_path: Path) -> None:
    linear_table(300, seed=1).to_csv(tmp_path / "data.csv", index=False)
    cfg = write_config(
        tmp_path,
        data={"target": ["y", "z"], "columns": {"numeric": "a, b", "categorical": "c"}},
        model={"name": "mlp", "hidden": 32, "layers": 1, "dropout": 0.0, "loss": "huber"},
        balancer={"name": "target-bins", "bins": 5},
        augmenters=[{"name": "tabular-mixup", "p": 0.3}],
    )
    ok(run_cli("run", str(cfg)))
    run = tmp_path / "runs" / "run"
    preds = pd.read_csv(run / "predictions_test.csv")
    assert {"y_true_y", "y_pred_y", "y_true_z", "y_pred_z"} <= set(preds.columns)
    assert (run / "plots" / "pred_vs_true.png").is_file()  # drawn for the first target
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["r2"] > 0.8, metrics
    linear_table(5, seed=2).drop(columns=["y", "z"]).to_csv(tmp_path / "new.csv", index=False)
    ok(run_cli("predict", str(run), "-i", str(tmp_path / "new.csv"), "-o", str(tmp_path / "p.csv")))
    assert {"prediction_y", "prediction_z"} <= set(pd.read_csv(tmp_path / "p.csv").columns)


def imbalanced_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "blue"], size=n)
    label = np.where(a + 0.5 * b > 1.0, "rare", "common")
    return pd.DataFrame({"a": a, "b": b, "colour": colour, "label": label})


def test_tabular_classification_with_smote_synthesises_train_rows_only(tmp_path: Path) -> None:
    frame = imbalanced_table()
    frame.to_csv(tmp_path / "data.csv", index=False)
    cfg = write_config(
        tmp_path,
        task="tabular-classification",
        data={"label": "label", "target": None, "columns": {}},
        balancer={"name": "smote", "k_neighbors": 3},
        trainer={"monitor": "f1_macro"},
    )
    out = ok(run_cli("run", str(cfg)))
    assert "smote: " in out and "synthetic training rows" in out
    run = tmp_path / "runs" / "run"
    split = json.loads((run / "split.json").read_text())
    synthetic = [r for r in split["balanced_train"] if r >= len(frame)]
    assert synthetic and not set(synthetic) & set(split["val"] + split["test"])
    counts = split["class_counts"]["train_balanced"]
    assert counts["rare"] == counts["common"]
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["f1_macro"] > 0.7, metrics
    assert {"majority_baseline_accuracy", "baseline_logistic_accuracy"} <= set(metrics)
    assert "baseline_gradient_boosting_f1_macro" in metrics


def test_smote_resamples_numeric_and_categorical_features_within_the_train_split() -> None:
    from tuneforge.data import TaskData
    from tuneforge.plugins.tabular.balance import Adasyn, Smote

    frame = imbalanced_table(200)
    data = TaskData(
        frame,
        {c: c for c in ("a", "b", "colour")},
        "label",
        ["common", "rare"],
        "t.csv",
        modalities={c: "tabular" for c in ("a", "b", "colour")},
    )
    train = frame.index.to_numpy()[:150]
    plan = Smote().plan(data, train, np.random.default_rng(0))
    new = plan.synthetic
    assert (new.index >= len(frame)).all() and set(new["label"]) == {"rare"}
    assert set(new["colour"]) <= {"red", "blue"}
    rare = frame.loc[train][frame.loc[train, "label"] == "rare"]
    assert rare["a"].min() - 1e-9 <= new["a"].min() and new["a"].max() <= rare["a"].max() + 1e-9
    with pytest.raises(Exception, match="adasyn: works on numeric features only"):
        Adasyn().plan(data, train, np.random.default_rng(0))


def test_bad_tabular_inputs_get_one_line_errors(tmp_path: Path) -> None:
    frame = linear_table(60)
    frame.to_csv(tmp_path / "data.csv", index=False)
    cfg = write_config(tmp_path, data={"columns": {"features": "a"}})
    line = one_line_error(run_cli("run", str(cfg)))
    assert "data.columns.features" in line and "numeric, categorical, exclude" in line
    cfg = write_config(tmp_path, data={"columns": {"numeric": "a, nope"}})
    assert "column 'nope' (from data.columns.numeric) not found" in one_line_error(
        run_cli("run", str(cfg))
    )
    frame.assign(a=frame["a"].astype(object).where(frame.index != 5, "ten")).to_csv(
        tmp_path / "data.csv", index=False
    )
    cfg = write_config(tmp_path, data={"columns": {"numeric": "a, b"}})
    line = one_line_error(run_cli("run", str(cfg)))
    assert "row 5: numeric feature 'a' holds 'ten'" in line
    cfg = write_config(tmp_path, balancer="smote")
    err = one_line_error(run_cli("run", str(cfg)))
    assert "balancer.name: 'smote' supports classification problems" in err
    assert "for regression use: none, resample-bins, target-bins" in err
    assert not (tmp_path / "runs" / "run").exists()


def test_tabular_label_noise_uses_gradient_boosting_out_of_fold(tmp_path: Path) -> None:
    from tuneforge.config import DataConfig
    from tuneforge.plugins.label_noise import LabelNoise
    from tuneforge.plugins.tabular.task import TabularClassificationTask

    rng = np.random.default_rng(0)
    n = 400
    a, b = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame({"a": a, "b": b, "label": np.where(a > 0, "pos", "neg")})
    flipped = rng.choice(np.flatnonzero(np.abs(a) > 1.0), size=12, replace=False)
    frame.loc[flipped, "label"] = np.where(frame.loc[flipped, "label"] == "pos", "neg", "pos")
    path = tmp_path / "noise.csv"
    frame.to_csv(path, index=False)
    task = TabularClassificationTask()
    data = task.load(DataConfig(path=path, label="label"), Path("/"))
    [finding] = LabelNoise(LabelNoise.Config(folds=4)).check(data, task)
    assert "gradient boosting" in finding.details["probabilities"]
    found = set(finding.rows) & set(int(r) for r in flipped)
    assert len(found) >= 10 and len(finding.rows) <= 30, (len(found), len(finding.rows))


@pytest.mark.data
def test_wine_red_beats_the_mean_and_reports_ridge(tmp_path: Path) -> None:
    src = SHARED_DATA / "wine_quality" / "winequality-red.csv"
    cfg = write_config(
        tmp_path,
        data={"path": str(src), "target": "quality", "read_options": {"sep": ";"}, "columns": {}},
        model={"name": "mlp", "hidden": 64, "layers": 2, "dropout": 0.1},
        trainer={"epochs": 15, "batch_size": 64, "lr": 0.003},
    )
    ok(run_cli("run", str(cfg)))
    metrics = json.loads((tmp_path / "runs" / "run" / "metrics.json").read_text())["test"]
    assert metrics["mae"] < 0.60 and metrics["r2"] > 0.2, metrics
    assert 0.4 < metrics["baseline_ridge_mae"] < 0.6


def test_the_diabetes_example_runs_and_predicts_offline(tmp_path: Path) -> None:
    """The commands of docs/regression.md (shortened: 3 epochs)."""
    example = Path(__file__).resolve().parents[1] / "examples" / "diabetes"
    out = ok(
        run_cli("run", str(example / "config.yaml"), "--set", "trainer.epochs=3", cwd=tmp_path)
    )
    assert "baseline_ridge_mae" in out
    run = tmp_path / "runs" / "diabetes"
    ok(run_cli("predict", str(run), "-i", str(example / "new_patients.csv"), cwd=tmp_path))
    preds = pd.read_csv(run / "predictions" / "new_patients.csv")
    assert len(preds) == 10 and preds["prediction"].between(0, 500).all()


def test_mixup_and_gaussian_noise_augment_preprocessed_rows() -> None:
    import random

    from tuneforge.plugins.tabular.augment import GaussianNoise, Mixup
    from tuneforge.plugins.tabular.features import TabularDataset

    x_num = np.array([[0.0, 0.0], [10.0, 10.0]], dtype=np.float32)
    x_cat = np.array([[1], [2]], dtype=np.int64)
    mix = Mixup(Mixup.Config(p=1.0, alpha=1.0))
    ds = TabularDataset(x_num, x_cat, np.array([0, 1]), [mix], seed=0, n_classes=2)
    items = [ds[0] for _ in range(20)]
    probs = np.stack([it["labels"].numpy() for it in items])
    assert np.allclose(probs.sum(axis=1), 1.0) and (probs[:, 0] >= 0.5).all()
    mixed = [it for it in items if it["labels"][1] > 0]
    assert mixed and all(
        np.allclose(it["x_num"].numpy(), 10 * it["labels"][1].item()) for it in mixed
    )
    assert all(it["x_cat"].tolist() == [1] for it in items)  # the dominant row's category
    noisy = GaussianNoise(GaussianNoise.Config(sigma=0.5, p=1.0))(
        {"num": x_num[0], "cat": x_cat[0]}, random.Random(0)
    )
    assert not np.allclose(noisy["num"], 0.0) and noisy["cat"].tolist() == [1]
    plain = TabularDataset(x_num, x_cat, np.array([0, 1]), [], seed=0, n_classes=2)[1]
    assert plain["labels"].dtype == torch_int64()


def torch_int64():
    import torch

    return torch.int64
