"""``tuneforge predict``: a run folder's best checkpoint applied to new inputs."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tuneforge.components import ModelBuilder, Preprocessor, Task
from tuneforge.config import RunConfig, build_config
from tuneforge.errors import ConfigError, DataError, UserError
from tuneforge.manager import make_plugin_manager
from tuneforge.prepare import Log, build_component, make_component


def predict(
    run_dir: Path,
    input_path: Path,
    output: Path | None,
    log: Log,
    disable: list[str] = (),
    local: list[str] = (),
) -> Path:
    """Load a run's checkpoint and write predictions for ``input_path``.

    A run that did not complete (a ``.failed-`` or ``.partial-`` folder) is used with a warning
    on stderr naming its best checkpoint so far; one without a checkpoint is refused. The
    output is checked before any work and written atomically.
    """
    from tuneforge.data import check_output_file, write_table
    from tuneforge.trainer import Trainer

    ckpt = best_checkpoint(run_dir)
    if output is None:
        output = run_dir / "predictions" / f"{input_path.stem}.csv"
    check_output_file(output, "--output", source=input_path)  # before the model is loaded
    cfg, task = bound_task(run_dir, disable, local)
    labels_path = run_dir / "labels.json"
    labels = read_labels(labels_path)
    frame = task.load_inputs(input_path, cfg.data)
    if len(frame) == 0:
        raise DataError(f"{input_path}: no data rows to predict on (only a header?)")
    trainer = Trainer(cfg.trainer.model_copy(), console=log)
    model = trainer.prepare_model(task.load_artifacts(ckpt))
    dataset = task.predict_dataset(frame, cfg.data)
    logits, _ = trainer.predict(model, trainer.loader(dataset, task.collate_fn(trainer.on_cuda)))
    columns = task.prediction_columns(logits, labels, labels_path)
    out = frame.copy()
    for name in columns.columns:
        out[name] = columns[name].to_numpy()
    write_table(out, output, "--output")
    log.result(f"wrote {len(out)} predictions to {output}")
    return output


def run_status(run_dir: Path) -> tuple[str | None, str]:
    """A run folder's ``run.json`` status (None when it has none) and why it is not complete."""
    import json
    import re

    from tuneforge.errors import short  # run.json is user-visible state, maybe damaged

    status, why = None, "no run.json: it was interrupted"
    if (run_dir / "run.json").is_file():
        try:
            record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
            status = record.get("status") if isinstance(record, dict) else None
        except (OSError, ValueError):
            record = None
        error = record.get("error") if isinstance(record, dict) else None
        error = str(error)[:200] if error else ""
        why = f"run.json status {short(status)}" + (f": {error}" if error else "")
        if not isinstance(record, dict):
            why = "run.json is unreadable or not valid JSON"
    partial = re.match(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)$", run_dir.name)
    if partial and status is None:
        pid = int(partial["pid"])
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if alive:
            why = f"it is still running as process {pid}; its checkpoint may change meanwhile"
    return status, why


def best_checkpoint(run_dir: Path) -> Path:
    """The run folder's ``checkpoint/``; a run that did not complete is used with a warning."""
    import sys

    if not run_dir.is_dir():
        siblings = sorted(p.name for p in run_dir.parent.glob(f".{run_dir.name}.partial-*"))
        hint = f" (only the unfinished {siblings[0]} beside it)" if siblings else ""
        raise UserError(f"run folder not found: {run_dir}{hint}")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a tuneforge run folder (no config.yaml)")
    status, why = run_status(run_dir)
    ckpt = run_dir / "checkpoint"
    if not ckpt.is_dir():
        if status == "completed":
            raise UserError(f"{run_dir}: no checkpoint/ folder")
        raise UserError(
            f"{run_dir}: the run did not complete ({why}) and saved no best checkpoint "
            "(no checkpoint/): nothing to predict with"
        )
    if status not in ("completed", "trained"):  # trained: a tuner's trial, tested by its study
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ckpt.stat().st_mtime))
        print(
            f"tuneforge: warning: {run_dir}: the run did not complete ({why}); predicting with "
            f"its best checkpoint so far, {ckpt} (saved {saved})",
            file=sys.stderr,
            flush=True,
        )
    return ckpt


def bound_task(run_dir: Path, disable: list[str], local: list[str]) -> tuple[RunConfig, Task]:
    """The run's config and its task, bound to the run's tokenizer, model and preprocessors."""
    from tuneforge.config import read_yaml

    try:
        cfg = build_config(read_yaml(run_dir / "config.yaml"))
    except ConfigError as exc:
        raise UserError(f"{run_dir / 'config.yaml'}: {exc}") from None
    regs = make_plugin_manager(cfg, run_dir, disable, local).registries
    task = build_component(regs, cfg.task, "task", Task)
    task.name = cfg.task.name
    if cfg.model is None:
        raise UserError(f"{run_dir / 'config.yaml'}: no model section")
    tokenizer = None if cfg.tokenizer is None else make_component(regs, cfg.tokenizer, "tokenizer")
    builder = build_component(regs, cfg.model, "model", ModelBuilder)
    preprocessors = [
        build_component(regs, r, f"preprocessors[{i}]", Preprocessor)
        for i, r in enumerate(cfg.preprocessors)
    ]
    task.bind(tokenizer, builder, preprocessors)
    return cfg, task


def read_labels(path: Path) -> dict[str, Any]:
    """``labels.json``: what the task recorded for its outputs (:meth:`Task.labels_record`)."""
    import json

    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path.parent}: no labels.json; not a complete run folder") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise UserError(f"{path}: unreadable ({reason})") from None
    if not isinstance(labels, dict):  # what it must hold is the task's (labels_record)
        raise UserError(f"{path}: not a labels file (a JSON object)")
    return labels
