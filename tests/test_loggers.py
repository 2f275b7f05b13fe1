"""The csv, tensorboard and mlflow loggers: one real run with all three, read back with each
backend's own reader, and the bad inputs as a user sees them (real CLI subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import one_line_error, run_cli


def nothing_written(project) -> None:
    assert not (project.root / "runs").exists() or not any((project.root / "runs").iterdir())
    leftovers = [p.name for p in project.root.iterdir() if p.name.startswith(".tuneforge-probe")]
    assert leftovers == []


EPOCHS = 3


def test_csv_tensorboard_and_mlflow_in_one_run(project, monkeypatch) -> None:
    store = project.root / "tracking" / "mlruns"
    uri = store.as_uri()
    cfg = project.config(
        trainer={"epochs": EPOCHS},
        callbacks=[
            "csv",
            {"name": "tensorboard"},
            {"name": "mlflow", "tracking_uri": uri, "experiment": "tickets"},
        ],
    )
    proc = run_cli("run", str(cfg), cwd=project.root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"in experiment 'tickets' at {uri}" in proc.stdout
    assert not (project.root / "mlruns").exists()  # the default store is not touched
    run = project.root / "runs" / "run"
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    val_acc = [h["value"] for h in history if h["split"] == "val" and h["name"] == "accuracy"]
    assert len(val_acc) == EPOCHS
    loss_rows = [h for h in history if h["step"] and h["name"] == "loss"]
    steps, losses = [h["step"] for h in loss_rows], [h["value"] for h in loss_rows]
    assert steps
    test = json.loads((run / "metrics.json").read_text())["test"]

    # csv: one row per logged value, the same values as history.jsonl.
    rows = pd.read_csv(run / "metrics.csv")
    assert list(rows.columns) == ["step", "epoch", "split", "name", "value", "time"]
    val = rows[(rows.split == "val") & (rows.name == "accuracy")]
    assert val.epoch.tolist() == list(range(1, EPOCHS + 1)) and val.step.isna().all()
    assert val.value.tolist() == pytest.approx(val_acc)
    train = rows[(rows.split == "train") & (rows.name == "loss") & rows.step.notna()]
    assert train.step.astype(int).tolist() == steps
    assert train.value.tolist() == pytest.approx(losses)
    assert {"lr", "samples_per_s"} <= set(rows[rows.split == "train"].name)
    tested = rows[rows.split == "test"].set_index("name").value.to_dict()
    assert tested == pytest.approx(test)
    assert (rows.time > 1e9).all()

    # tensorboard: event files under <run>/tensorboard, read by TensorBoard's own reader.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/accuracy", "val/loss", "train_epoch/loss"} <= tags
    assert {f"test/{name}" for name in test} <= tags
    tb_val = acc.Scalars("val/accuracy")
    assert [e.step for e in tb_val] == list(range(1, EPOCHS + 1))
    assert [e.value for e in tb_val] == pytest.approx(val_acc, abs=1e-6)
    tb_loss = acc.Scalars("train/loss")
    assert [e.step for e in tb_loss] == steps
    assert [e.value for e in tb_loss] == pytest.approx(losses, rel=1e-5)
    assert acc.Scalars("test/accuracy")[-1].value == pytest.approx(test["accuracy"], abs=1e-6)
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "hf-sequence-classification" in text and "tracking_uri" in text

    # mlflow: the run read back through MLflow's client.
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tickets")
    (ml_run,) = client.search_runs([experiment.experiment_id])
    assert ml_run.info.status == "FINISHED" and ml_run.info.run_name == "run"
    params = ml_run.data.params
    assert params["trainer.lr"] == "0.003" and params["trainer.epochs"] == str(EPOCHS)
    assert params["model.name"] == "hf-sequence-classification"
    assert params["task"] == "text-classification"
    assert Path(params["data.path"]).is_absolute()
    assert ml_run.data.tags["tuneforge.run_folder"] == str(run)
    history_val = client.get_metric_history(ml_run.info.run_id, "val.accuracy")
    assert [m.step for m in history_val] == list(range(1, EPOCHS + 1))
    assert [m.value for m in history_val] == pytest.approx(val_acc)
    ml_loss = client.get_metric_history(ml_run.info.run_id, "train.loss")
    assert [m.step for m in ml_loss] == steps
    assert [m.value for m in ml_loss] == pytest.approx(losses)
    assert {"lr", "train_epoch.loss", "val.loss"} <= set(ml_run.data.metrics)
    for name, value in test.items():
        assert ml_run.data.metrics[f"test.{name}"] == pytest.approx(value)
    artifacts = {a.path for a in client.list_artifacts(ml_run.info.run_id)}
    assert artifacts == {
        "config.yaml",
        "metrics.json",
        "findings.json",
        "split.json",
        "labels.json",
    }
    local = Path(client.download_artifacts(ml_run.info.run_id, "config.yaml", str(project.root)))
    assert yaml.safe_load(local.read_text()) == yaml.safe_load((run / "config.yaml").read_text())

    # The loggers' files live in the run folder, which was committed as a whole.
    assert [p.name for p in (project.root / "runs").iterdir()] == ["run"]


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("postgresql://user:secret@db.example.com:5432/ml", "postgresql://user:***@db.example.com:5432/ml"),
        ("mysql+pymysql://:pw@host/db", "mysql+pymysql://:***@host/db"),
        ("postgresql://user:p@ss/w0rd@host/db", "postgresql://user:***@host/db"),
        ("redis://user:1234@host:6379", "redis://user:***@host:6379"),
        ("https://mlflow.example.com/api?token=abc&x=1", "https://mlflow.example.com/api?token=***&x=1"),
        ("http://localhost:5000", "http://localhost:5000"),
        ("http://host:5000/path@v2", "http://host:5000/path@v2"),
        ("https://user@host/x", "https://user@host/x"),
        ("file:///srv/mlruns", "file:///srv/mlruns"),
        ("databricks", "databricks"),
    ],
)  # fmt: skip
def test_mask_uri(uri: str, masked: str) -> None:
    from tuneforge.plugins.loggers import mask_secrets, mask_uri

    assert mask_uri(uri) == masked
    assert mask_secrets(f"tracking_uri: {uri}\nother: 1") == f"tracking_uri: {masked}\nother: 1"
    assert mask_secrets(json.dumps([{"uri": uri}])) == json.dumps([{"uri": masked}])


def test_mlflow_masks_passwords_and_marks_failed_runs(tmp_path: Path, monkeypatch) -> None:
    """In-process: params and the config.yaml artifact never hold a password; a failed run
    ends FAILED; a file: store is allowed without the user setting MLFLOW_ALLOW_FILE_STORE."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # restored after the test
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    from mlflow.tracking import MlflowClient

    from tuneforge.config import build_config, dump_config
    from tuneforge.plugins.loggers import MlflowLogger
    from tuneforge.run import RunContext

    secret = "postgresql://bob:hunter2@db.example.com/ml"
    uri = (tmp_path / "mlruns").as_uri()
    cfg = build_config(
        {
            "task": "text-classification",
            "data": {"path": "data.csv"},
            "callbacks": [{"name": "mlflow", "tracking_uri": secret}],
        }
    )
    run_dir = tmp_path / ".run.partial-1"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dump_config(cfg)))
    ctx = RunContext(cfg, run_dir, tmp_path / "run", "text-classification", "classification")
    logger = MlflowLogger(MlflowLogger.Config(tracking_uri=uri))
    logger.on_run_start(run=ctx)
    logger.on_epoch_end(run=ctx, epoch=1, metrics={"epoch": 1.0, "val.accuracy": 0.5})
    logger.on_run_end(run=ctx, metrics={}, status="failed")
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"
    client = MlflowClient(tracking_uri=uri)
    ml_run = client.get_run(logger.run_id)
    assert ml_run.info.status == "FAILED" and ml_run.info.run_name == "run"
    assert ml_run.data.metrics == {"val.accuracy": 0.5}
    callbacks = ml_run.data.params["callbacks"]
    assert "hunter2" not in callbacks and "bob:***@db.example.com" in callbacks
    local = client.download_artifacts(logger.run_id, "config.yaml", str(tmp_path))
    text = Path(local).read_text()
    assert "hunter2" not in text and "postgresql://bob:***@db.example.com/ml" in text


def test_tensorboard_shared_log_dir_and_failed_run(tmp_path: Path) -> None:
    """In-process: an absolute log_dir gets one sub-folder per run; a failed run still closes
    its event file; an unwritable absolute log_dir is refused when the config is read."""
    from pydantic import ValidationError
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tuneforge.config import build_config
    from tuneforge.plugins.loggers import TensorBoardLogger
    from tuneforge.run import RunContext

    cfg = build_config({"task": "text-classification", "data": {"path": "data.csv"}})
    run_dir = tmp_path / ".run-7.partial-1"
    run_dir.mkdir()
    ctx = RunContext(cfg, run_dir, tmp_path / "run-7", "text-classification", "classification")
    shared = tmp_path / "tb"
    logger = TensorBoardLogger(TensorBoardLogger.Config(log_dir=str(shared)))
    logger.on_run_start(run=ctx)
    logger.on_log(run=ctx, step=5, values={"train.loss": 0.5, "lr": 1e-3})
    logger.on_epoch_end(run=ctx, epoch=1, metrics={"epoch": 1.0, "val.f1_macro": 0.25})
    logger.on_run_end(run=ctx, metrics={}, status="failed")
    assert logger.log_dir == shared / "run-7" and not (run_dir / "tensorboard").exists()
    acc = EventAccumulator(str(shared / "run-7"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/loss", "train/lr", "val/f1_macro"}
    assert [(e.step, e.value) for e in acc.Scalars("val/f1_macro")] == [(1, 0.25)]
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValidationError, match="is a file, not a folder"):
        TensorBoardLogger.Config(log_dir=str(blocker / "tb"))


def test_listing_the_loggers_imports_no_backend() -> None:
    code = (
        "import sys\n"
        "import tuneforge.plugins.loggers\n"
        "print(sorted(m for m in ('torch', 'tensorboard', 'mlflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    proc = run_cli("components", "callbacks")
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in ("csv", "tensorboard", "mlflow"))


@pytest.mark.parametrize(
    ("logger", "package", "pip"),
    [("tensorboard", "tensorboard", "tensorboard"), ("mlflow", "mlflow", "mlflow-skinny")],
)
def test_missing_package_is_a_config_error(project, logger: str, package: str, pip: str) -> None:
    # A package on PYTHONPATH that shadows the installed one and fails to import.
    shadow = project.root / "shadow" / package
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"raise ImportError('{package} is broken here')\n")
    cfg = project.config(callbacks=["csv", logger])
    err = one_line_error(
        run_cli("run", str(cfg), cwd=project.root, env={"PYTHONPATH": str(shadow.parent)})
    )
    assert err.startswith(
        f"tuneforge: error: callbacks[1]: {logger}: needs the package '{package}'"
    )
    assert f"pip install {pip}" in err and "is broken here" in err
    nothing_written(project)


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_unwritable_tracking_uri_fails_before_training(project, where: str) -> None:
    if where == "under-a-file":
        blocker = project.root / "not-a-folder"
        blocker.write_text("a file\n")
        uri, problem = f"file:{blocker}/mlruns", f"{blocker} is a file, not a folder"
    else:
        uri, problem = "file:/proc/nonexistent/mlruns", "cannot create folders in /proc"
    cfg = project.config(callbacks=["csv", {"name": "mlflow", "tracking_uri": uri}])
    err = one_line_error(run_cli("run", str(cfg), cwd=project.root))
    assert err.startswith("tuneforge: error: callbacks[1].tracking_uri: not writable: ")
    assert problem in err
    nothing_written(project)


def test_unreachable_tracking_store_is_one_line_with_the_password_masked(project) -> None:
    uri = "postgresql://bob:hunter2@127.0.0.1:9/mlflow"
    cfg = project.config(trainer={"epochs": 1}, callbacks=[{"name": "mlflow", "tracking_uri": uri}])
    proc = run_cli("run", str(cfg), cwd=project.root)
    err = one_line_error(proc)
    assert "mlflow logger: connecting to the tracking store at " in err
    assert "postgresql://bob:***@127.0.0.1:9/mlflow" in err
    assert "hunter2" not in proc.stdout + proc.stderr
    nothing_written(project)


def test_unknown_logger_parameter(project) -> None:
    cfg = project.config(callbacks=[{"name": "csv", "fiel": "m.csv"}])
    err = one_line_error(run_cli("run", str(cfg), cwd=project.root))
    assert "callbacks[0].fiel: unknown key (did you mean 'file'?)" in err
    cfg = project.config(callbacks=[{"name": "csv", "file": "history.jsonl"}])
    err = one_line_error(run_cli("run", str(cfg), cwd=project.root))
    assert "callbacks[0].file: history.jsonl belongs to the run folder itself" in err
    nothing_written(project)
