"""``tuneforge evaluate RUN --input FILE``: a completed run's model scored on a labelled file,
through the real CLI on tiny runs (text classification and text regression)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tuneforge.evaluate import INFO_KEYS

from conftest import ok, one_line_error, run_cli
from tinymodels import make_texts, write_csv


def _config(root: Path, tiny: Path, **data) -> Path:
    cfg = {
        "task": "text-classification",
        "data": {"path": "data.csv", **data},
        "model": {"name": "hf-sequence-classification", "checkpoint": str(tiny)},
        "trainer": {
            "epochs": 4,
            "batch_size": 16,
            "lr": 3e-3,
            "monitor": "accuracy",
            "early_stopping_patience": None,
        },
        "output": {"dir": str(root / "runs" / "run")},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    """A completed text-classification run (the tiny BERT, seconds), shared by the tests."""
    root = tmp_path_factory.mktemp("evaluate")
    write_csv(root / "data.csv", make_texts(240, seed=1))
    ok(run_cli("run", str(_config(root, tiny_models["bert"])), "-q", cwd=root))
    return root / "runs" / "run"


def _evaluate(run: Path, *args: str, cwd: Path | None = None):
    return run_cli("evaluate", str(run), *args, cwd=cwd or run.parent.parent)


def _test_rows(run: Path) -> pd.DataFrame:
    """The run's own test split, read back from its data file by split.json's row numbers."""
    data = pd.read_csv(run.parent.parent / "data.csv")
    return data.loc[json.loads((run / "split.json").read_text())["test"]]


def test_evaluating_the_runs_test_rows_reproduces_its_test_metrics(trained: Path) -> None:
    root = trained.parent.parent
    rows = _test_rows(trained)
    rows.to_csv(root / "held_out.csv", index=False)
    proc = _evaluate(trained, "--input", "held_out.csv", "--json")
    got = json.loads(ok(proc))  # stdout holds the JSON alone
    test = json.loads((trained / "metrics.json").read_text())["test"]
    assert {k for k in got if k not in INFO_KEYS} == set(test)
    assert got["accuracy"] == test["accuracy"]  # the same rows, model and batches
    assert got["majority_baseline_accuracy"] == test["majority_baseline_accuracy"]
    for key in test:
        assert got[key] == pytest.approx(test[key], abs=1e-6), key
    assert got["name"] == "held_out" and got["rows"] == len(rows) and got["notes"] == []
    assert got["input"] == str((root / "held_out.csv").resolve())
    # the confusion matrix and per-class table agree with the metrics
    matrix = got["details"]["confusion_matrix"]
    counts = matrix["counts"]
    classes = json.loads((trained / "labels.json").read_text())["classes"]
    assert matrix["classes"] == classes
    assert sum(map(sum, counts)) == len(rows)
    assert sum(counts[i][i] for i in range(len(counts))) / len(rows) == pytest.approx(
        test["accuracy"]
    )
    per_class = got["details"]["per_class"]
    assert [r["class"] for r in per_class] == classes
    assert [r["support"] for r in per_class] == [sum(r) for r in counts]
    # saved under the run folder: the same JSON, and one prediction per row
    saved = trained / "evaluations" / "held_out"
    assert json.loads((saved / "metrics.json").read_text()) == got
    preds = pd.read_csv(saved / "predictions.csv")
    assert list(preds["row"]) == list(range(len(rows)))
    assert (preds["y_true"] == rows["label"].to_numpy()).all()
    assert (preds["y_true"] == preds["y_pred"]).mean() == pytest.approx(test["accuracy"])
    # the run's own metrics.json now records the test split's details too
    assert json.loads((trained / "metrics.json").read_text())["test_details"]["per_class"]
    # and the report shows the evaluation
    report = (trained / "report.html").read_text()
    assert "id=evaluations" in report and "held_out" in report
    assert "Confusion matrix: true class" in report


def test_a_summary_by_default_and_a_named_evaluation_replaced_whole(trained: Path) -> None:
    root = trained.parent.parent
    write_csv(root / "new.csv", make_texts(30, seed=9))
    write_csv(root / "fewer.csv", make_texts(12, seed=10))
    out = ok(_evaluate(trained, "--input", "new.csv", "--name", "dev-1"))
    assert "evaluation dev-1: 30 rows of" in out
    assert "accuracy" in out and "majority_baseline_accuracy" in out
    assert "precision" in out and "support" in out  # the per-class table
    assert f"saved in {trained / 'evaluations' / 'dev-1'}" in out
    ok(_evaluate(trained, "--input", "fewer.csv", "--name", "dev-1"))
    saved = json.loads((trained / "evaluations" / "dev-1" / "metrics.json").read_text())
    assert saved["rows"] == 12 and saved["input"].endswith("fewer.csv")
    assert len(pd.read_csv(trained / "evaluations" / "dev-1" / "predictions.csv")) == 12
    # no temporary or old folder left beside it
    assert not [p.name for p in (trained / "evaluations").iterdir() if p.name.startswith(".")]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "content", "args", "expected"),
    [
        ("missing", None, (), "not found"),
        ("nolabel", "text\nhello there\n", (), "'label'"),
        ("unknown", "text,label\nhello there,giraffe\n", (), "row 0: label 'giraffe'"),
        ("empty", "text,label\n", (), "no data rows"),
        ("wrongcols", "sentence,label\nhello,a\n", (), "column 'text'"),
        ("blank", "text,label\nhello there,\n", (), "row 0: no label or target"),
        ("named", "text,label\nhi,x\n", ("--name", "../escape"), "--name '../escape'"),
        ("named2", "text,label\nhi,x\n", ("--name", "a/b"), "no path separators"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    trained: Path, name: str, content: str | None, args: tuple[str, ...], expected: str
) -> None:
    root = trained.parent.parent
    path = root / f"bad_{name}.csv"
    if content is not None:
        _write(path, content)
    before = _listing(trained / "evaluations")
    line = one_line_error(_evaluate(trained, "--input", path.name, *args))
    assert expected in line, line
    if content is not None and not args:
        assert str(path.name) in line, line  # names the file
    after = _listing(trained / "evaluations")
    assert after == before


def test_a_file_in_place_of_the_evaluations_folder_is_a_one_line_error(
    trained: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("evaluations"))
    (run / "evaluations").write_text("x")
    _test_rows(trained).to_csv(tmp_path / "rows.csv", index=False)
    line = one_line_error(run_cli("evaluate", str(run), "--input", "rows.csv", cwd=tmp_path))
    assert "evaluations" in line and "is a file" in line, line
    assert (run / "evaluations").read_text() == "x"


def test_an_unfinished_run_is_refused(trained: Path) -> None:
    partial = trained.parent / ".other.partial-999999"
    shutil.copytree(trained, partial, ignore=shutil.ignore_patterns("evaluations", "run.json"))
    write_csv(trained.parent.parent / "some.csv", make_texts(10, seed=3))
    line = one_line_error(_evaluate(partial, "--input", "some.csv"))
    assert "did not complete" in line and "predict" in line
    assert not (partial / "evaluations").exists()
    line = one_line_error(_evaluate(trained.parent / "nope", "--input", "some.csv"))
    assert "run folder not found" in line


def test_without_the_training_data_the_baselines_are_left_out_with_a_note(
    trained: Path,
) -> None:
    root = trained.parent.parent
    moved = trained.parent / "moved"
    shutil.copytree(trained, moved, ignore=shutil.ignore_patterns("evaluations"))
    cfg = yaml.safe_load((moved / "config.yaml").read_text())
    cfg["data"]["path"] = str(root / "gone.csv")
    (moved / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    _test_rows(trained).to_csv(root / "again.csv", index=False)
    got = json.loads(ok(_evaluate(moved, "--input", "again.csv", "--json")))
    test = json.loads((trained / "metrics.json").read_text())["test"]
    assert got["accuracy"] == test["accuracy"]
    assert "majority_baseline_accuracy" not in got
    assert len(got["notes"]) == 1 and "baselines left out" in got["notes"][0]
    assert "gone.csv" in got["notes"][0]


def test_a_regression_run_is_evaluated_with_its_metrics(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    from test_regression import pair_rows, text_config

    pair_rows(160, 1).to_csv(tmp_path / "pairs.csv", index=False)
    cfg = text_config(tmp_path, tiny_models["bert"], trainer={"epochs": 3})
    ok(run_cli("run", str(cfg), "-q", cwd=tmp_path))
    run = tmp_path / "runs" / "run"
    data = pd.read_csv(tmp_path / "pairs.csv")
    data.loc[json.loads((run / "split.json").read_text())["test"]].to_csv(
        tmp_path / "held.csv", index=False
    )
    got = json.loads(ok(run_cli("evaluate", str(run), "-i", "held.csv", "--json", cwd=tmp_path)))
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert {k for k in got if k not in INFO_KEYS} == set(test)
    assert {"rmse", "mae", "r2", "baseline_tfidf_ridge_rmse"} <= set(got)
    for key in test:
        assert got[key] == pytest.approx(test[key], rel=1e-5, abs=1e-6), key
    preds = pd.read_csv(run / "evaluations" / "held" / "predictions.csv")
    assert len(preds) == got["rows"]
    # a row without a target is refused, naming it
    _write(tmp_path / "hole.csv", "s1,s2,score\na b,c d,1.5\ne f,g h,2.5\ni j,k l,\n")
    line = one_line_error(run_cli("evaluate", str(run), "-i", "hole.csv", cwd=tmp_path))
    assert "hole.csv: row 2: no label or target" in line
    assert not (run / "evaluations" / "hole").exists()
