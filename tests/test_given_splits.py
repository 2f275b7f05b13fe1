"""Given splits (issue 16, point 1): ``data.val_path`` / ``data.test_path`` files and a
``split.column``, through the real CLI on tiny generated data: where each split came from in
``split.json`` and the report, a missing validation split carved from train, validators on
each given split (a given test split kept as given), leakage between given parts, and the
one-line errors for bad split values and unseen labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.split import given_split

from conftest import ok, one_line_error, run_cli
from tinymodels import make_texts, write_csv

TRAINER = {"epochs": 2, "early_stopping_patience": None}


def _texts(root: Path, name: str, n: int, seed: int, **kw) -> Path:
    return write_csv(root / name, make_texts(n, seed=seed, **kw))


def _validate(cfg: Path) -> dict:
    return json.loads(ok(run_cli("validate", str(cfg), "--json")))


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(min_value=12, max_value=300),
    given_val=st.booleans(),
    n_classes=st.integers(min_value=1, max_value=4),
    seed=st.integers(0, 10_000),
)
def test_given_parts_stay_as_given_and_a_missing_one_is_carved_from_train(
    n: int, given_val: bool, n_classes: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    index = pd.Index(rng.permutation(n * 2)[:n])
    names = rng.choice(["train", "val", "test"] if given_val else ["train", "test"], size=n)
    names[:6] = ["train"] * 4 + ["val" if given_val else "test", "test"]
    groups = rng.integers(0, max(1, n // 2), size=n)  # duplicates, also across given parts
    strata = pd.Series(rng.integers(0, n_classes, size=n)).groupby(groups).transform("first")
    sources = {"train": "a.csv", "val": "dev.csv", "test": "test.csv"}
    s = given_split(index, names, sources, 0.7, 0.15, 0.15, seed, strata.to_numpy(), groups)
    rows = np.asarray(index)
    assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == sorted(rows.tolist())
    assert sorted(s.test.tolist()) == sorted(rows[names == "test"].tolist())  # as given
    if given_val:
        assert sorted(s.val.tolist()) == sorted(rows[names == "val"].tolist())
    else:
        assert (
            s.given["val"] == f"carved from train (stratified, seed {seed})"
            or s.given["val"] == f"carved from train (seed {seed})"
        )
        assert set(s.val.tolist()) <= set(rows[names == "train"].tolist())
        carved = set(s.val.tolist())
        for g in np.unique(groups[names == "train"]):  # train duplicates stay together
            members = set(rows[(groups == g) & (names == "train")].tolist())
            assert members <= carved or not members & carved


# -- text: files ------------------------------------------------------------------------------


def test_val_and_test_files_are_the_splits_as_given(project) -> None:
    _texts(project.root, "train.csv", 120, 1)
    _texts(project.root, "dev.csv", 30, 2)
    _texts(project.root, "test.csv", 25, 3)
    cfg = project.config(data={"path": "train.csv", "val_path": "dev.csv", "test_path": "test.csv"})
    report = _validate(cfg)
    assert report["split"] == {"train": 120, "val": 30, "test": 25}
    root = project.root.resolve()
    assert report["split_given"] == {
        "train": str(root / "train.csv"),
        "val": str(root / "dev.csv"),
        "test": str(root / "test.csv"),
    }
    notes = " ".join(report["split_notes"])
    assert "fractions do not apply" in notes
    assert f"row r is row r - 150 of {root / 'test.csv'}" in notes
    text = ok(run_cli("validate", str(cfg)))
    assert "split (given): {'train': 120, 'val': 30, 'test': 25}" in text
    # --set reaches the new keys too: without the val file, val is carved from train
    carved = json.loads(ok(run_cli("validate", str(cfg), "--json", "--set", "data.val_path=null")))
    assert carved["split"]["test"] == 25 and carved["split"]["val"] > 0
    assert carved["split_given"]["val"] == "carved from train (stratified, seed 42)"


def test_missing_val_is_carved_and_a_one_class_test_file_is_scored(project) -> None:
    _texts(project.root, "train.csv", 200, 1)
    rows = [r for r in make_texts(60, seed=5) if r[1] == "billing"][:20]
    write_csv(project.root / "test.csv", rows)  # only one of the three classes
    cfg = project.config(data={"path": "train.csv", "test_path": "test.csv"}, trainer=TRAINER)
    out = ok(run_cli("run", str(cfg)))
    run = project.root / "runs" / "run"
    split = json.loads((run / "split.json").read_text())
    assert split["given"] == {
        "train": str(project.root.resolve() / "train.csv"),
        "test": str(project.root.resolve() / "test.csv"),
        "val": "carved from train (stratified, seed 42)",
    }
    assert split["test"] == list(range(200, 220))  # after the 200 training rows
    assert set(split["train"]) | set(split["val"]) == set(range(200))
    assert not set(split["train"]) & set(split["val"])
    assert len(split["val"]) == round(200 * 0.15 / 0.85)  # val / (train + val) of the train rows
    assert any("no val split given: carved from the given train rows" in n for n in split["notes"])
    assert "carved from the given train rows" in out
    assert split["class_counts"]["test"] == {"billing": 20, "shipping": 0, "technical": 0}
    test = json.loads((run / "metrics.json").read_text())["test"]
    preds = pd.read_csv(run / "predictions_test.csv")
    assert len(preds) == 20 and set(preds["y_true"]) == {"billing"}
    assert test["accuracy"] == (preds["y_true"] == preds["y_pred"]).mean()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["test_path"] == str(project.root.resolve() / "test.csv")
    page = (run / "report.html").read_text()
    assert "The split was given" in page and "carved from train (stratified, seed 42)" in page


def test_a_test_label_the_training_data_lacks_names_the_file_and_row(project) -> None:
    _texts(project.root, "train.csv", 90, 1)
    rows = make_texts(10, seed=2)
    rows[6] = ("my parcel is lost", "returns")
    write_csv(project.root / "test.csv", rows)
    cfg = project.config(data={"path": "train.csv", "test_path": "test.csv"})
    line = one_line_error(run_cli("validate", str(cfg)))
    assert "test.csv: row 6: label 'returns'" in line
    missing = project.config(data={"path": "train.csv", "val_path": "nope.csv"})
    assert "nope.csv" in one_line_error(run_cli("validate", str(missing)))


# -- text: a split column ---------------------------------------------------------------------


def _with_column(root: Path, name: str, parts: list[str], seed: int = 1) -> Path:
    frame = pd.DataFrame(make_texts(len(parts), seed=seed), columns=["text", "label"])
    frame["part"] = parts
    frame.to_csv(root / name, index=False)
    return root / name


def test_a_split_column_with_custom_names(project) -> None:
    parts = ["tr"] * 100 + ["dev"] * 20 + ["heldout"] * 30
    _with_column(project.root, "all.csv", parts)
    values = {"train": "tr", "val": "dev", "test": "heldout"}
    cfg = project.config(data={"path": "all.csv"}, split={"column": "part", "values": values})
    report = _validate(cfg)
    assert report["split"] == {"train": 100, "val": 20, "test": 30}
    assert report["split_given"] == {
        "train": "column part=tr",
        "val": "column part=dev",
        "test": "column part=heldout",
    }
    # a column without val rows: val carved from the column's train rows
    _with_column(project.root, "two.csv", ["tr"] * 120 + ["heldout"] * 30)
    cfg = project.config(data={"path": "two.csv"}, split={"column": "part", "values": values})
    report = _validate(cfg)
    assert report["split"]["test"] == 30 and report["split"]["val"] == round(120 * 0.15 / 0.85)
    assert report["split_given"]["val"] == "carved from train (stratified, seed 42)"


def test_bad_split_columns_and_values_are_one_line_errors(project) -> None:
    parts = ["train"] * 50 + ["val"] * 10 + ["test"] * 10
    parts[57] = "validation"
    _with_column(project.root, "all.csv", parts)
    cfg = project.config(data={"path": "all.csv"}, split={"column": "part"})
    line = one_line_error(run_cli("validate", str(cfg)))
    assert "all.csv: row 57: split column 'part' holds 'validation', which names no split" in line
    assert "split.values" in line
    parts[57] = "val"
    _with_column(project.root, "all.csv", parts)
    _texts(project.root, "test.csv", 10, 4)
    twice = project.config(
        data={"path": "all.csv", "test_path": "test.csv"}, split={"column": "part"}
    )
    line = one_line_error(run_cli("validate", str(twice)))
    assert "row 60: split column 'part' puts it in test, but data.test_path gives" in line
    cases = {
        "unknown split": ({"column": "part", "values": {"dev": "val"}}, "split.values: "),
        "one value twice": ({"column": "part", "values": {"val": "test"}}, "val and test both"),
        "no such column": ({"column": "fold"}, "column 'fold' (from split.column) not found"),
        "an input column": ({"column": "text"}, "split.column: 'text' is an input or the target"),
        "values alone": ({"values": {"test": "dev"}}, "split.values needs split.column"),
    }
    for name, (split, expected) in cases.items():
        bad = project.config(data={"path": "all.csv"}, split=split)
        assert expected in one_line_error(run_cli("validate", str(bad))), name


# -- validators and leakage on given splits ---------------------------------------------------


def test_a_given_test_split_is_kept_intact_under_a_drop_policy(project) -> None:
    train = make_texts(100, seed=1)
    write_csv(project.root / "train.csv", train + train[:5])  # 5 duplicates in train
    test = make_texts(20, seed=3)
    write_csv(project.root / "test.csv", test + test[:4])  # 4 duplicates in test
    cfg = project.config(
        data={"path": "train.csv", "test_path": "test.csv"},
        validators=[{"name": "duplicates", "policy": "drop"}],
        split={"group_duplicates": False},
    )
    report = _validate(cfg)
    assert report["split"]["test"] == 24  # every row of the file, duplicates included
    assert report["split"]["train"] + report["split"]["val"] < 105  # train's duplicates dropped
    dup = {f["split"]: f for f in report["findings"] if f["kind"] == "duplicate"}
    assert dup["test"]["action"] == "kept: a given test split is scored as given"
    assert dup["test"]["message"].startswith("test split: ")
    assert dup["train"]["action"].startswith("dropped ")


def test_a_validator_that_cannot_check_a_small_given_split_says_so(project) -> None:
    _texts(project.root, "train.csv", 150, 1)
    rows = make_texts(60, seed=3)
    test = [r for r in rows if r[1] != "technical"][:20] + [r for r in rows if r[1] == "technical"][
        :2
    ]
    write_csv(project.root / "test.csv", test)
    cfg = project.config(
        data={"path": "train.csv", "test_path": "test.csv"}, validators=["label-noise"]
    )
    report = _validate(cfg)
    [skipped] = [f for f in report["findings"] if f["kind"] == "not-checked"]
    assert skipped["split"] == "test" and skipped["severity"] == "info"
    assert (
        skipped["message"].startswith("test split: not checked: ") and "folds" in skipped["message"]
    )
    assert report["split"]["test"] == 22


def test_leakage_between_given_parts_is_reported_and_fail_on_stops_the_run(project) -> None:
    train = make_texts(100, seed=1)
    write_csv(project.root / "train.csv", train)
    write_csv(project.root / "test.csv", make_texts(20, seed=3) + train[:3])
    cfg = project.config(data={"path": "train.csv", "test_path": "test.csv"}, trainer=TRAINER)
    report = _validate(cfg)
    leak = next(f for f in report["findings"] if f["kind"] == "leakage")
    assert leak["severity"] == "warning", leak
    assert "the split was given" in leak["message"] and "/test: " in leak["message"]
    assert {0, 1, 2, 120, 121, 122} <= set(leak["rows"])  # train rows 0-2 are test rows 20-22
    assert leak["action"].startswith("reported, not removed")
    assert report["split"]["test"] == 23  # nothing removed
    stop = project.config("stop.yaml", data={"path": "train.csv", "test_path": "test.csv"})
    stop.write_text(stop.read_text() + "fail_on: [leakage]\n")
    line = one_line_error(run_cli("run", str(stop)))
    assert "fail_on 'leakage'" in line and "the split was given" in line
    assert not (project.root / "runs").exists()  # nothing written


# -- tabular: a split column is no feature; a test file on a non-text task --------------------


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    return pd.DataFrame({"a": a, "b": b, "y": 3 * a - 2 * b + 10 + rng.normal(0, 0.05, n)})


def _tabular_config(root: Path, **sections) -> Path:
    cfg = {
        "task": "tabular-regression",
        "data": {"path": "data.csv", "target": "y"},
        "model": {"name": "mlp", "hidden": 16, "layers": 1, "dropout": 0.0},
        "trainer": {"epochs": 5, "batch_size": 32, "lr": 0.01, "early_stopping_patience": None},
        "output": {"dir": str(root / "runs" / "run")},
        **sections,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_a_tabular_split_column_is_not_a_feature(tmp_path: Path) -> None:
    frame = _table(200, 0)
    frame["fold"] = ["train"] * 140 + ["val"] * 30 + ["test"] * 30  # a text column
    frame.to_csv(tmp_path / "data.csv", index=False)
    cfg = _tabular_config(tmp_path, split={"column": "fold"})
    ok(run_cli("run", str(cfg)))
    run = tmp_path / "runs" / "run"
    features = json.loads((run / "checkpoint" / "tabular_preprocess.json").read_text())
    assert features["numeric"] == ["a", "b"] and features["categorical"] == []
    assert set(json.loads((run / "labels.json").read_text())["inputs"]) == {"a", "b"}
    split = json.loads((run / "split.json").read_text())
    assert split["test"] == list(range(170, 200)) and split["val"] == list(range(140, 170))
    assert split["given"]["test"] == "column fold=test"
    named = _tabular_config(
        tmp_path,
        data={"path": "data.csv", "target": "y", "columns": {"categorical": "fold"}},
        split={"column": "fold"},
    )
    line = one_line_error(run_cli("validate", str(named)))
    assert "data.columns.categorical: 'fold' is the split column" in line


def test_tabular_regression_with_a_test_file(tmp_path: Path) -> None:
    _table(200, 0).to_csv(tmp_path / "data.csv", index=False)
    _table(40, 1).to_csv(tmp_path / "test.csv", index=False)
    cfg = _tabular_config(
        tmp_path, data={"path": "data.csv", "target": "y", "test_path": "test.csv"}
    )
    ok(run_cli("run", str(cfg)))
    run = tmp_path / "runs" / "run"
    split = json.loads((run / "split.json").read_text())
    assert split["test"] == list(range(200, 240)) and len(split["val"]) > 0
    assert split["given"]["test"] == str((tmp_path / "test.csv").resolve())
    preds = pd.read_csv(run / "predictions_test.csv")
    truth = pd.read_csv(tmp_path / "test.csv")["y"]
    assert np.allclose(preds.sort_values("row")["y_true"].to_numpy(), truth.to_numpy())
    assert "r2" in json.loads((run / "metrics.json").read_text())["test"]
