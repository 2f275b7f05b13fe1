"""``tuneforge predict``: a run folder's best checkpoint applied to new inputs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.components import ModelBuilder, Preprocessor, Task
from tuneforge.config import RunConfig, build_config
from tuneforge.errors import ConfigError, DataError, UserError, short
from tuneforge.manager import PluginManager, make_plugin_manager
from tuneforge.prepare import Log, build_component, make_component


def predict(
    run_dir: Path,
    input_path: Path,
    output: Path | None,
    log: Log,
    disable: list[str] = (),
    local: list[str] = (),
    engine: str = "torch",
    onnx_dir: Path | None = None,
) -> Path:
    """Load a run's checkpoint and write predictions for ``input_path``.

    A run that did not complete (a ``.failed-`` or ``.partial-`` folder) is used with a warning
    on stderr naming its best checkpoint so far; one without a checkpoint is refused. The
    output is checked before any work and written atomically. ``engine`` ``onnx`` (or
    ``onnx-int8``) runs the run's ONNX export in ``onnx_dir`` (default ``RUN/onnx``) with
    onnxruntime instead of the torch model (:mod:`tuneforge.onnx_engine`); the logits go to
    the same task methods.
    """
    from tuneforge.data import check_output_file, write_table

    best_checkpoint(run_dir)  # refuse a run without one (or warn) before any work
    model_file = None
    if engine != "torch":  # a missing or stale export is refused before any work too
        from tuneforge.onnx_engine import exported_model

        model_file = exported_model(run_dir, onnx_dir, engine)
    if output is None:
        output = run_dir / "predictions" / f"{input_path.stem}.csv"
    check_output_file(output, "--output", source=input_path)  # before the model is loaded
    cfg, task = bound_task(run_dir, disable, local)
    labels_path = run_dir / "labels.json"
    labels = read_labels(labels_path)
    frame = task.load_inputs(input_path, cfg.data)
    if len(frame) == 0:
        raise DataError(f"{input_path}: no data rows to predict on (only a header?)")
    dataset = lambda: task.predict_dataset(frame, cfg.data)  # noqa: E731
    if model_file is None:
        logits, _ = model_outputs(run_dir, cfg, task, dataset, log)
    else:
        from tuneforge.onnx_engine import onnx_outputs

        logits = onnx_outputs(run_dir, model_file, cfg, task, dataset)
    columns = task.prediction_columns(logits, labels, labels_path)
    out = frame.copy()
    for name in columns.columns:
        out[name] = columns[name].to_numpy()
    write_table(out, output, "--output")
    log.result(f"wrote {len(out)} predictions to {output}")
    return output


def model_outputs(
    run_dir: Path, cfg: RunConfig, task: Task, dataset: Callable[[], Any], log: Log
) -> tuple[Any, Any]:
    """The run's model applied to a dataset: its logits and labels (None without labels).

    The one place a run's checkpoint is loaded for inference (``predict``, ``evaluate``): the
    best checkpoint (:func:`best_checkpoint`; the caller checked the run with it first, which
    warns) through ``task.load_artifacts``, then ``Trainer.predict`` with ``task.collate_fn``.
    ``task`` is bound to the run (:func:`bound_task`). ``dataset`` is a function of no
    arguments that makes the dataset with ``task`` (``task.predict_dataset``,
    ``task.make_dataset``): it is called after ``load_artifacts``, because what a dataset is
    made of (the tokenizer, a table's fitted feature preprocessing) is the checkpoint's.
    """
    from tuneforge.trainer import Trainer

    members = read_members(run_dir)
    if members is not None:  # a repeated run: the ensemble of its members
        ckpts = [best_checkpoint(m, warn=False) for m in members]
        return ensemble_outputs(ckpts, cfg, task, dataset, log)
    ckpt = best_checkpoint(run_dir, warn=False)
    trainer = Trainer(cfg.trainer.model_copy(), console=log)
    model = trainer.prepare_model(task.load_artifacts(ckpt))
    loader = trainer.loader(dataset(), task.collate_fn(trainer.on_cuda))
    return trainer.predict(model, loader)


def ensemble_outputs(
    checkpoints: list[Path], cfg: RunConfig, task: Task, dataset: Callable[[], Any], log: Log
) -> tuple[Any, Any]:
    """The ensemble of ``checkpoints`` (a repeated run's members) applied to a dataset: each
    loaded with ``task.load_artifacts`` and applied to ``dataset()`` made after it, then
    their logits combined by :meth:`Task.ensemble_outputs` (the mean of the members'
    logits by default); ``task`` is left in the last checkpoint's state."""
    from tuneforge.trainer import Trainer

    trainer = Trainer(cfg.trainer.model_copy(), console=log)
    outputs, labels = [], None
    for ckpt in checkpoints:
        model = trainer.prepare_model(task.load_artifacts(ckpt))
        loader = trainer.loader(dataset(), task.collate_fn(trainer.on_cuda))
        logits, labels = trainer.predict(model, loader)
        outputs.append(logits)
        del model
    return task.ensemble_outputs(outputs, checkpoints), labels


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


#: A repeated run's record of its members (:mod:`tuneforge.repeats`).
MEMBERS_FILE = "members.json"


def read_members(run_dir: Path) -> list[Path] | None:
    """The member run folders of a repeated run (cross-validation folds or seeds), from its
    ``members.json``; None for an ordinary run (no such file)."""
    import json

    path = run_dir / MEMBERS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{path}: unreadable or not valid JSON") from None
    names = record.get("members") if isinstance(record, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: no list of member folders under 'members'")
    root = run_dir.resolve()
    folders = [(run_dir / n).resolve() for n in names]
    for name, folder in zip(names, folders, strict=True):
        if root not in folder.parents:
            raise UserError(f"{path}: member {short(name)} is not inside the run folder")
    return folders


def best_checkpoint(run_dir: Path, warn: bool = True) -> Path:
    """The run folder's ``checkpoint/``; a run that did not complete is used with a warning
    on stderr (unless ``warn`` is false). For a repeated run (``members.json``), every
    member's checkpoint is checked so, and ``members.json`` is returned."""
    import sys

    if not run_dir.is_dir():
        siblings = sorted(p.name for p in run_dir.parent.glob(f".{run_dir.name}.partial-*"))
        hint = f" (only the unfinished {siblings[0]} beside it)" if siblings else ""
        raise UserError(f"run folder not found: {run_dir}{hint}")
    if not (run_dir / "config.yaml").is_file():
        status, why = run_status(run_dir)
        if status is not None or (run_dir / "members").is_dir():  # a run that never finished
            raise UserError(f"{run_dir}: the run did not complete ({why}): nothing to predict with")
        raise UserError(f"{run_dir} is not a tuneforge run folder (no config.yaml)")
    members = read_members(run_dir)
    if members is not None:  # a repeated run: the ensemble of its members' checkpoints
        for member in members:
            best_checkpoint(member, warn)
        return run_dir / MEMBERS_FILE
    status, why = run_status(run_dir)
    ckpt = run_dir / "checkpoint"
    if not ckpt.is_dir():
        if status == "completed":
            raise UserError(f"{run_dir}: no checkpoint/ folder")
        raise UserError(
            f"{run_dir}: the run did not complete ({why}) and saved no best checkpoint "
            "(no checkpoint/): nothing to predict with"
        )
    # trained: a tuner's trial, tested by its study
    if warn and status not in ("completed", "trained"):
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
    cfg, task, _ = bound_run(run_dir, disable, local)
    return cfg, task


def bound_run(
    run_dir: Path, disable: list[str], local: list[str]
) -> tuple[RunConfig, Task, PluginManager]:
    """:func:`bound_task`, and the plugin manager it was built with (its registries, hooks)."""
    from tuneforge.config import read_yaml

    try:
        cfg = build_config(read_yaml(run_dir / "config.yaml"))
    except ConfigError as exc:
        raise UserError(f"{run_dir / 'config.yaml'}: {exc}") from None
    pm = make_plugin_manager(cfg, run_dir, disable, local)
    regs = pm.registries
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
    return cfg, task, pm


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
