"""Cross-validation (``split.folds``) and repeated seeds (``trainer.seeds``, ``--seeds``)
through the real CLI on tiny data: one parent run folder, complete member runs, the
``repeats`` summary, the ensemble at predict time, errors, and a tuner with seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from conftest import ok, one_line_error, run_cli

FAST = {"epochs": 2, "batch_size": 16, "lr": 3e-3, "monitor": "accuracy"}


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def members(run: Path) -> list[Path]:
    record = read(run / "members.json")
    return [run / m for m in record["members"]]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=12, max_value=300),
    k=st.integers(min_value=2, max_value=6),
    n_classes=st.integers(min_value=1, max_value=4),
    multilabel=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_folds_partition_the_rows_and_keep_duplicates_together(
    n: int, k: int, n_classes: int, multilabel: bool, seed: int
) -> None:
    from tuneforge.split import make_folds

    rng = np.random.default_rng(seed)
    index = pd.Index(rng.permutation(n * 2)[:n])
    groups = rng.integers(0, max(2 * k, n // 2), size=n)
    if multilabel:
        strata = (rng.random((n, n_classes + 1)) < 0.4).astype(int)
    else:
        strata = pd.Series(rng.integers(0, n_classes, size=n)).groupby(groups).transform("first")
        strata = strata.to_numpy()
    holdout = index[:3].to_numpy()
    if len(np.unique(groups[3:])) < 2 * k:
        with pytest.raises(ValueError, match="too few"):
            make_folds(index, k, seed, 0.2, strata, groups, holdout)
        return
    folds = make_folds(index, k, seed, 0.2, strata, groups, holdout)
    assert len(folds) == k
    tests = np.concatenate([f.test for f in folds])
    pool = set(index.tolist()) - set(holdout.tolist())
    assert sorted(tests.tolist()) == sorted(pool)  # every row in exactly one fold's test
    group_of = dict(zip(index.tolist(), groups.tolist(), strict=True))
    for f in folds:
        parts = [set(f.train.tolist()), set(f.val.tolist()), set(f.test.tolist())]
        assert parts[0] | parts[1] | parts[2] == pool and sum(map(len, parts)) == len(pool)
        assert all(len(p) for p in parts)
        where = [{group_of[r] for r in p} for p in parts]  # a group never straddles splits
        assert not (where[0] & where[1] or where[0] & where[2] or where[1] & where[2])


def test_folds_cross_validate_a_text_task(project) -> None:
    cfg = project.config(split={"folds": 3}, trainer={**FAST, "early_stopping_patience": None})
    out = ok(run_cli("run", str(cfg), "-q"))
    run = project.root / "runs" / "run"
    assert read(run / "members.json") == {
        "kind": "folds",
        "members": ["members/fold-1", "members/fold-2", "members/fold-3"],
        "final": "ensemble",
    }
    assert read(run / "run.json")["status"] == "completed"
    folds = members(run)
    for m in folds:  # each member is a complete ordinary run
        assert read(m / "run.json")["status"] == "completed"
        assert (m / "checkpoint").is_dir() and (m / "config.yaml").is_file()
    metrics = read(run / "metrics.json")
    rep = metrics["repeats"]
    assert rep["kind"] == "folds" and rep["n"] == 3
    member_metrics = [read(m / "metrics.json") for m in folds]
    for key in ("test.accuracy", "test.f1_macro", "val.accuracy"):
        section, name = key.split(".")
        expected = [mm[section][name] for mm in member_metrics]
        assert rep["values"][key] == pytest.approx(expected)
        s = rep["summary"][key]
        assert s["mean"] == pytest.approx(np.mean(expected))
        assert s["std"] == pytest.approx(np.std(expected, ddof=1))
        half = stats.t.ppf(0.975, 2) * s["std"] / np.sqrt(3)
        assert s["ci95"] == pytest.approx([s["mean"] - half, s["mean"] + half])
    # no test split given: the run's test is the mean of the folds' held-out scores
    assert metrics["test_is"] == "mean of folds' held-out scores"
    assert metrics["test"]["accuracy"] == pytest.approx(rep["summary"]["test.accuracy"]["mean"])
    assert metrics["best_value"] == pytest.approx(
        np.mean([mm["best_value"] for mm in member_metrics])
    )
    # every kept row is in exactly one fold's test split; a fold's train/val/test are disjoint
    splits = [read(m / "split.json") for m in folds]
    tests = [set(s["test"]) for s in splits]
    kept = set(splits[0]["train"]) | set(splits[0]["val"]) | tests[0]
    assert sum(len(t) for t in tests) == len(kept) == len(set().union(*tests))
    for s in splits:
        parts = [set(s[k]) for k in ("train", "val", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert parts[0] | parts[1] | parts[2] == kept
    assert sorted(read(run / "split.json")["test"]) == sorted(kept)
    oof = pd.read_csv(run / "predictions_test.csv")  # out-of-fold predictions, every row once
    assert sorted(oof["row"]) == sorted(kept)
    assert "fold-3" in out and "95% t-interval" in out
    report = (run / "report.html").read_text()
    assert "Cross-validation folds" in report and "95% interval" in report
    # evaluate on the parent: the ensemble, with baselines fitted on every row the folds saw
    pd.read_csv(project.data).head(40).to_csv(project.root / "some.csv", index=False)
    some = str(project.root / "some.csv")
    got = json.loads(ok(run_cli("evaluate", str(run), "-i", some, "--json")))
    assert got["notes"] == [] and "majority_baseline_accuracy" in got, got["notes"]


def _probs(path: Path) -> np.ndarray:
    frame = pd.read_csv(path)
    return frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()


def test_seeds_share_the_split_and_predict_with_the_ensemble(project) -> None:
    cfg = project.config(trainer={**FAST, "early_stopping_patience": None})
    ok(run_cli("run", str(cfg), "-q", "--seeds", "2"))
    run = project.root / "runs" / "run"
    seed0, seed1 = members(run)
    assert [seed0.name, seed1.name] == ["seed-0", "seed-1"]
    split0, split1 = read(seed0 / "split.json"), read(seed1 / "split.json")
    for key in ("train", "val", "test"):
        assert split0[key] == split1[key]
    assert yaml.safe_load((seed0 / "config.yaml").read_text())["trainer"]["seed"] == 0
    assert yaml.safe_load((seed1 / "config.yaml").read_text())["trainer"]["seed"] == 1
    parent_cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert parent_cfg["trainer"]["seeds"] == [0, 1]
    metrics = read(run / "metrics.json")
    assert metrics["repeats"]["kind"] == "seeds" and metrics["repeats"]["seeds"] == [0, 1]
    assert metrics["test_is"].startswith("the members' ensemble")
    assert len(pd.read_csv(run / "predictions_test.csv")) == len(split0["test"])
    # predict on the parent: softmax of the mean of the members' logits
    frame = pd.read_csv(project.data).drop(columns=["label"]).head(25)
    frame.to_csv(project.root / "new.csv", index=False)
    outs = {}
    for name, folder in (("parent", run), ("s0", seed0), ("s1", seed1)):
        dest = project.root / f"p-{name}.csv"
        ok(run_cli("predict", str(folder), "-i", str(project.root / "new.csv"), "-o", str(dest)))
        outs[name] = _probs(dest)
    mean_logits = (np.log(outs["s0"]) + np.log(outs["s1"])) / 2  # logits up to a row constant
    expected = np.exp(mean_logits) / np.exp(mean_logits).sum(axis=1, keepdims=True)
    assert np.allclose(outs["parent"], expected, atol=1e-4)
    assert not np.allclose(outs["s0"], outs["s1"], atol=1e-4)  # the seeds trained differently


def test_tabular_regression_folds_with_a_given_test_file_score_the_ensemble_once(
    tmp_path: Path,
) -> None:
    from test_tabular import linear_table, write_config

    frame = linear_table(n=190)
    frame.iloc[:150].to_csv(tmp_path / "data.csv", index=False)
    frame.iloc[150:].to_csv(tmp_path / "test.csv", index=False)
    cfg = write_config(
        tmp_path,
        data={"path": "data.csv", "test_path": "test.csv", "target": "y"},
        split={"folds": 3},
        trainer={"epochs": 6, "batch_size": 32},
    )
    ok(run_cli("run", str(cfg), "-q"))
    run = tmp_path / "runs" / "run"
    metrics = read(run / "metrics.json")
    rmse = metrics["repeats"]["values"]["test.rmse"]  # each fold's held-out score
    folds = members(run)
    assert rmse == pytest.approx([read(m / "metrics.json")["test"]["rmse"] for m in folds])
    given_test = set(read(run / "split.json")["test"])
    assert len(given_test) == 40
    for m in folds:  # the given test rows are in no fold
        s = read(m / "split.json")
        assert not given_test & (set(s["train"]) | set(s["val"]) | set(s["test"]))
    # the ensemble, scored once on the given test file, in target units
    assert metrics["test_is"].startswith("the members' ensemble")
    scored = pd.read_csv(run / "predictions_test.csv")
    assert set(scored["row"]) == given_test
    expected = float(np.sqrt(np.mean((scored["y_true"] - scored["y_pred"]) ** 2)))
    assert metrics["test"]["rmse"] == pytest.approx(expected, rel=1e-4)
    assert "baseline_ridge_rmse" in metrics["test"]
    # predict on the parent: the mean of the members' predictions (in target units)
    frame.drop(columns=["y"]).head(30).to_csv(tmp_path / "new.csv", index=False)
    preds = []
    for folder in [run, *folds]:
        dest = tmp_path / f"p-{folder.name}.csv"
        ok(run_cli("predict", str(folder), "-i", str(tmp_path / "new.csv"), "-o", str(dest)))
        preds.append(pd.read_csv(dest)["prediction"].to_numpy())
    assert np.allclose(preds[0], np.mean(preds[1:], axis=0), atol=1e-3)
    assert not np.allclose(preds[1], preds[2], atol=1e-3)


def test_too_many_folds_and_bad_repeat_settings_are_one_line_errors(project) -> None:
    small = project.root / "small.csv"
    pd.read_csv(project.data).head(12).to_csv(small, index=False)
    cfg = project.config(data={"path": "small.csv"}, split={"folds": 10})
    line = one_line_error(run_cli("run", str(cfg)))
    assert "small.csv" in line and "10 folds" in line and "12 rows" in line, line
    assert not (project.root / "runs").exists()  # nothing written
    # validate makes the folds as run does: the same refusal, and the folds when they fit
    assert one_line_error(run_cli("validate", str(cfg))) == line
    shown = ok(run_cli("validate", str(project.config(split={"folds": 3}))))
    assert "cross-validation: 3 folds" in shown and "fold-3:" in shown, shown
    cfg = project.config(split={"folds": 3}, trainer={"seeds": [0, 1]})
    assert "trainer.seeds" in one_line_error(run_cli("run", str(cfg)))
    cfg = project.config(trainer={"seeds": [1, 1]})
    assert "distinct" in one_line_error(run_cli("run", str(cfg)))
    cfg = project.config(split={"folds": 1})
    assert "split.folds" in one_line_error(run_cli("run", str(cfg)))
    assert "--seeds" in one_line_error(run_cli("run", str(project.config()), "--seeds", "0"))
    assert not (project.root / "runs").exists()


def test_a_tuner_with_seeds_scores_each_trial_by_the_mean_over_seeds(project) -> None:
    tuner = {"name": "grid", "space": {"trainer.lr": {"choice": [3e-3, 1e-3]}}}
    cfg = project.config(
        trainer={**FAST, "epochs": 1, "seeds": [0, 1], "early_stopping_patience": None},
        tuner=tuner,
    )
    ok(run_cli("run", str(cfg), "-q"))
    run = project.root / "runs" / "run"
    trials = pd.read_csv(run / "trials.csv")
    assert "val.accuracy per seed" in trials.columns
    for _, t in trials.iterrows():
        n = int(t["number"])
        first = read(run / "trials" / f"trial_{n:03d}" / "metrics.json")["best_value"]
        second = read(run / "trials" / f"trial_{n:03d}-seed-1" / "metrics.json")["best_value"]
        assert t["val.accuracy"] == pytest.approx((first + second) / 2)
        per_seed = [float(v) for v in str(t["val.accuracy per seed"]).split()]
        assert per_seed == pytest.approx([first, second], rel=1e-5)
    metrics = read(run / "metrics.json")
    assert "test" in metrics and metrics["study"]["trials"] == 2
