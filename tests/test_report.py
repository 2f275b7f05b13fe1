"""The report plugin: plots, report.html, `tuneforge report RUN` and `tuneforge runs [DIR]`.

One real tiny training run (module scoped) feeds every test; other run folders are copies of
it with files edited, or written by hand (regression: no regression task exists yet).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ok, one_line_error, run_cli
from tinymodels import make_texts, write_csv

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CLASSIFICATION_PLOTS = {
    "learning_curves.png",
    "lr_schedule.png",
    "confusion_matrix.png",
    "class_counts.png",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    """A finished run of the tiny BERT (3 epochs, oversampled), with the report plugin on."""
    root = tmp_path_factory.mktemp("report-project")
    write_csv(root / "data.csv", make_texts(240, seed=1))
    cfg = {
        "task": "text-classification",
        "data": {"path": "data.csv"},
        "model": {"name": "hf-sequence-classification", "checkpoint": str(tiny_models["bert"])},
        "balancer": "oversample",
        "trainer": {
            "epochs": 3,
            "batch_size": 16,
            "lr": 3e-3,
            "monitor": "accuracy",
            "early_stopping_patience": None,
            "log_every_n_steps": 5,
        },
        "output": {"dir": str(root / "runs" / "tiny")},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = run_cli("run", str(root / "config.yaml"), cwd=root)
    ok(proc)
    assert "could not be written" not in proc.stderr, proc.stderr
    return root / "runs" / "tiny"


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoint"))
    return dest


def images(page: str) -> list[str]:
    return re.findall(r'<img src="(data:image/png;base64,[^"]+)"', page)


def test_a_finished_run_has_plots_and_a_self_contained_report(trained: Path) -> None:
    plots = {p.name for p in (trained / "plots").iterdir()}
    assert plots == CLASSIFICATION_PLOTS
    for name in plots:
        assert (trained / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (trained / "report.html").read_text(encoding="utf-8")
    assert "Reliability diagram (test split)" in page  # task.calibration: auto
    assert len(images(page)) == 4 + 1 + 1  # the plots, the reliability diagram, the F1 bars
    for section in (
        "Test metrics",
        "majority baseline",
        "Data quality",
        "Split and balance",
        "train (balanced)",
        "Curves and plots",
        "Config",
        "hf-sequence-classification",
    ):
        assert section in page, section
    assert "<h1>tiny</h1>" in page  # the final name, not the partial folder's
    assert "Refinement advice" not in page  # no advisor fired
    # One file: nothing is loaded from elsewhere, no script.
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert [p.name for p in trained.parent.iterdir()] == ["tiny"]  # no partial folder left


def test_report_command_rebuilds_plots_and_report(trained: Path, tmp_path: Path) -> None:
    run = copy_run(trained, tmp_path / "tiny")
    shutil.rmtree(run / "plots")
    (run / "report.html").unlink()
    out = ok(run_cli("report", str(run)))
    assert f"report: {run / 'report.html'}" in out
    assert {p.name for p in (run / "plots").iterdir()} == CLASSIFICATION_PLOTS
    assert len(images((run / "report.html").read_text())) == 4 + 1 + 1  # + reliability, F1 bars


def test_a_truncated_history_line_is_skipped_with_a_warning(trained: Path, tmp_path: Path) -> None:
    run = copy_run(trained, tmp_path / "tiny")
    history = run / "history.jsonl"
    lines = history.read_text().splitlines()
    history.write_text("\n".join(lines[:-1] + [lines[-1][: len(lines[-1]) // 2]]))
    proc = run_cli("report", str(run))
    ok(proc)
    warning = f"tuneforge: warning: {history}: line {len(lines)} is truncated or corrupt; skipped"
    assert proc.stderr.strip().splitlines() == [warning], proc.stderr
    assert (run / "plots" / "learning_curves.png").is_file()


def test_report_refuses_a_run_that_never_finished(trained: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    partial = runs / ".killed.partial-4242"
    partial.mkdir(parents=True)
    shutil.copy(trained / "config.yaml", partial / "config.yaml")
    (partial / "history.jsonl").write_text('{"step": 5, "epoch": null, "spl')
    line = one_line_error(run_cli("report", str(partial)))
    assert "never finished" in line and "'killed'" in line
    # The name the run would have had: only its partial folder exists.
    line = one_line_error(run_cli("report", str(runs / "killed")))
    assert "never finished" in line and ".killed.partial-4242" in line
    no_run_json = copy_run(trained, runs / "no-run-json")
    (no_run_json / "run.json").unlink()
    assert "(no run.json)" in one_line_error(run_cli("report", str(no_run_json)))
    trial = copy_run(trained, runs / "trial")
    (trial / "run.json").write_text(json.dumps({"status": "trained", "trial": 0}))
    assert "status is 'trained'" in one_line_error(run_cli("report", str(trial)))
    assert "not found" in one_line_error(run_cli("report", str(runs / "missing")))
    assert sorted(p.name for p in partial.iterdir()) == ["config.yaml", "history.jsonl"]


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        target = data
        *parents, last = key.split("__")
        for parent in parents:
            target = target[parent]
        target[last] = value
    path.write_text(json.dumps(data))


def test_runs_lists_and_sorts_runs(trained: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    a = copy_run(trained, runs / "a")
    b = copy_run(trained, runs / "b")
    edit_json(a / "metrics.json", test__accuracy=0.5, best_value=0.6, epochs_run=3)
    edit_json(b / "metrics.json", test__accuracy=0.9, best_value=0.8, epochs_run=2)
    edit_json(
        b / "run.json",
        seconds=99.0,
        started=json.loads((a / "run.json").read_text())["started"] + 1,
    )
    (runs / ".c.partial-77").mkdir()
    shutil.copy(trained / "config.yaml", runs / ".c.partial-77" / "config.yaml")

    listed = json.loads(ok(run_cli("runs", str(runs), "--json")))
    assert [r["run"] for r in listed] == ["a", "b", "c"]
    assert [r["status"] for r in listed] == ["completed", "completed", "incomplete"]
    first = listed[0]
    assert first["task"] == "text-classification" and first["lr"] == 3e-3
    assert first["batch"] == 16 and first["monitor"] == "val.accuracy"
    assert first["test"]["accuracy"] == 0.5 and "f1_macro" in first["test"]

    table = ok(run_cli("runs", str(runs), "--sort", "test.accuracy")).splitlines()
    header = table[0].split()
    for column in ("run", "task", "model", "status", "lr", "batch", "epochs", "best_epoch"):
        assert column in header, header
    assert {"val.accuracy", "test.accuracy", "test.f1_macro", "seconds"} <= set(header)
    assert set(table[1]) <= {"-", " "}
    names = [line.split()[0] for line in table[2:5]]
    assert names == ["b", "a", "c"]  # best first, missing values last
    assert "1 incomplete run" in "\n".join(table)
    widths = {len(line) for line in table[:2]}
    assert len(widths) == 1  # fixed width: the rule is as wide as the header

    table = ok(run_cli("runs", str(runs), "--sort", "test.accuracy", "--asc")).splitlines()
    assert [line.split()[0] for line in table[2:5]] == ["a", "b", "c"]
    table = ok(run_cli("runs", str(runs), "--sort", "seconds", "--desc")).splitlines()
    assert table[2].split()[0] == "b"
    table = ok(run_cli("runs", str(runs), "--sort", "epochs")).splitlines()
    assert [line.split()[0] for line in table[2:4]] == ["b", "a"]

    assert "no such column" in one_line_error(run_cli("runs", str(runs), "--sort", "nope"))
    assert "not found" in one_line_error(run_cli("runs", str(tmp_path / "nowhere")))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ok(run_cli("runs", str(empty))).strip() == f"no runs in {empty}"
    # Default DIR is ./runs.
    assert "completed" in ok(run_cli("runs", cwd=tmp_path))


def write_regression_run(run: Path) -> Path:
    """A hand-written finished regression run folder (no regression task exists yet)."""
    import numpy as np

    rng = np.random.default_rng(0)
    run.mkdir(parents=True)
    secret_uri = "postgresql://bob:hunter2@db.example:5432/mlflow"
    config = {
        "task": "tabular-regression",
        "model": {"name": "mlp"},
        "trainer": {"lr": 0.01, "batch_size": 32},
        "callbacks": [{"name": "mlflow", "tracking_uri": secret_uri}],
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run / "labels.json").write_text(
        json.dumps({"classes": None, "label_column": "price", "problem": "regression"})
    )
    records = []
    for epoch in range(1, 6):
        for split, name, value in (
            ("train", "loss", 2.0 / epoch),
            ("val", "loss", 2.2 / epoch),
            ("val", "rmse", 1.5 / epoch),
        ):
            records.append(
                {"step": None, "epoch": epoch, "split": split, "name": name, "value": value}
            )
        step = epoch * 10
        records.append(
            {"step": step, "epoch": None, "split": "train", "name": "lr", "value": 0.01 / epoch}
        )
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    y_true = rng.normal(10, 3, 60)
    y_pred = y_true + rng.normal(0, 1, 60)
    lines = ["row,y_true,y_pred"] + [
        f"{i},{t:.4f},{p:.4f}" for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True))
    ]
    (run / "predictions_test.csv").write_text("\n".join(lines) + "\n")
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "best_epoch": 5,
                "epochs_run": 5,
                "monitor": "val.rmse",
                "monitor_mode": "min",
                "best_value": 0.3,
                "val": {"loss": 0.44, "rmse": 0.3},
                "test": {"loss": 0.5, "rmse": 0.98, "r2": 0.89},
            }
        )
    )
    (run / "split.json").write_text(
        json.dumps(
            {
                "train": list(range(100)),
                "val": list(range(100, 130)),
                "test": list(range(130, 190)),
                "balanced_train": list(range(100)),
                "notes": ["stratified on 5 target bins"],
                "class_counts": {"train": {}, "val": {}, "test": {}, "train_balanced": {}},
            }
        )
    )
    (run / "findings.json").write_text(
        json.dumps(
            {
                "findings": [
                    {
                        "validator": "outliers",
                        "kind": "outlier",
                        "severity": "warning",
                        "message": "3 rows with <b>extreme</b> price",
                        "count": 3,
                        "rows": [1, 2, 3],
                        "action": "none",
                    }
                ],
                "rows_loaded": 190,
                "rows_kept": 190,
            }
        )
    )
    (run / "advice.json").write_text(
        json.dumps(
            [
                {
                    "diagnosis": "overfitting <script>alert(1)</script>",
                    "evidence": "val loss rose for 3 epochs while train loss fell",
                    "patch": {"trainer.weight_decay": 0.1, "model.dropout": 0.3},
                }
            ]
        )
    )
    (run / "run.json").write_text(
        json.dumps({"status": "completed", "task": "tabular-regression", "seconds": 12.5})
    )
    return run


def test_regression_plots_masked_secrets_and_advice(tmp_path: Path) -> None:
    from tuneforge.plugins.report.html import build_report

    run = write_regression_run(tmp_path / "runs" / "reg")
    report = build_report(run)
    assert report.warnings == []
    assert set(report.plots.written) == {
        "learning_curves.png",
        "lr_schedule.png",
        "pred_vs_true.png",
        "residuals.png",
    }
    assert set(report.plots.skipped) == {"confusion_matrix.png", "class_counts.png"}
    for name in report.plots.written:
        assert (run / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    page = report.path.read_text()
    assert len(images(page)) == 4
    assert "hunter2" not in page and "postgresql://bob:***@db.example:5432/mlflow" in page
    assert "Refinement advice" in page and "trainer.weight_decay" in page
    assert "<script>" not in page and "overfitting &lt;script&gt;" in page
    assert "&lt;b&gt;extreme&lt;/b&gt;" in page and "stratified on 5 target bins" in page
    # The CLI does the same, and `runs` lists the run with its regression metrics.
    ok(run_cli("report", str(run)))
    listed = json.loads(ok(run_cli("runs", str(run.parent), "--json")))
    assert listed[0]["test"] == {"loss": 0.5, "rmse": 0.98, "r2": 0.89}
    header = ok(run_cli("runs", str(run.parent))).splitlines()[0].split()
    assert "val.rmse" in header and "test.rmse" in header and "test.r2" in header


def test_mask_secrets() -> None:
    from tuneforge.secrets import mask_secrets

    assert mask_secrets("uri: https://u:p%40ss@host/x") == "uri: https://u:***@host/x"
    assert mask_secrets("http://host:5000/path") == "http://host:5000/path"
    assert mask_secrets("mysql://root:pw@h") == "mysql://root:***@h"
    assert mask_secrets("a@b.c and ftp://anon@h") == "a@b.c and ftp://anon@h"


def test_a_failing_report_never_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuneforge.plugins import report
    from tuneforge.run import RunContext

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    ctx = RunContext(
        config=None,
        run_dir=not_a_folder,
        final_dir=tmp_path / "run",
        task="t",
        problem="classification",
    )
    report.on_run_end(run=ctx, metrics={}, status="completed")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "report could not be written" in err[0], err
    report.on_run_end(run=ctx, metrics={}, status="failed")  # nothing to do
    assert capsys.readouterr().err == ""


def test_the_plugin_module_is_light() -> None:
    code = (
        "import sys, tuneforge.plugins.report, tuneforge.plugins.report.commands; "
        "heavy = {'matplotlib', 'pandas', 'sklearn', 'torch'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver",
)
def test_the_report_renders_in_headless_chromium(trained: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(60)
        driver.get((trained / "report.html").as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        assert "tiny" in driver.title
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not severe, severe
        state = driver.execute_script(
            "return Array.from(document.images).map("
            "i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt]);"
        )
        assert len(state) >= 4, state
        for complete, width, height, alt in state:
            assert complete and width > 0 and height > 0, alt
        headings = driver.execute_script(
            "return Array.from(document.querySelectorAll('h2')).map(h => h.textContent);"
        )
        assert {"Test metrics", "Data quality", "Split and balance", "Config"} <= set(headings)
        # issue 18's sections, present on a default classification run
        assert {"Error analysis", "Calibration and thresholds", "Explanations"} <= set(headings)
    finally:
        driver.quit()
