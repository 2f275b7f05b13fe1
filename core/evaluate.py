"""``tuneforge evaluate``: a completed run's best model scored on any labelled file.

The file is read as the training data was (``Task.load_labelled``, labels in the run's terms)
and checked as ``predict`` checks its inputs (``Task.load_inputs``); the model's outputs come
from :func:`tuneforge.predict.model_outputs`. Every metric of the run (its ``metrics:`` and the
evaluation loss), the task's baselines (fitted on the run's training rows) and its test
details (per-class table, confusion matrix...) are saved in ``RUN/evaluations/NAME/``
(``metrics.json``, ``predictions.csv``), replacing an earlier evaluation of that name whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.components import Metric, Task
from tuneforge.config import RunConfig
from tuneforge.data import TaskData
from tuneforge.errors import DataError, UserError, short
from tuneforge.prepare import Log, build_component

#: The folder of a run that holds its evaluations, one sub-folder per name.
EVALUATIONS_DIR = "evaluations"
#: The files of one evaluation.
RESULTS_FILE, PREDICTIONS_FILE = "metrics.json", "predictions.csv"
#: Keys of an evaluation's ``metrics.json`` that are not metrics.
INFO_KEYS = ("name", "input", "rows", "details", "notes", "intervals", "interval_method")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


def evaluation_name(name: str | None, input_path: Path) -> str:
    """``--name``, or the input file's stem: letters, digits and ``. _ + -``, 100 at most."""
    chosen = input_path.stem if name is None else name
    if _NAME.match(chosen):
        return chosen
    rule = "1-100 letters, digits and . _ + -, starting with a letter or digit"
    if name is not None:
        raise UserError(f"--name {short(name)}: an evaluation name is {rule} (no path separators)")
    raise UserError(
        f"{input_path}: its name {short(chosen)} cannot name the evaluation ({rule}); "
        "give one with --name"
    )


def _clip(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def completed_run(run_dir: Path) -> None:
    """Refuse a run folder that did not complete: its evaluations would describe a model the
    run may still replace, in a folder it may still rename or remove."""
    from tuneforge.predict import best_checkpoint, run_status

    best_checkpoint(run_dir, warn=False)  # a run folder with a checkpoint
    status, why = run_status(run_dir)
    if status != "completed":
        raise UserError(
            f"{run_dir}: the run did not complete ({why}); evaluate saves its results in "
            "completed run folders only (tuneforge predict works with its best checkpoint "
            "so far)"
        )


def read_input(cfg: RunConfig, task: Task, input_path: Path, labels: dict[str, Any]) -> TaskData:
    """The labelled file as the training data was read, checked as predict checks inputs;
    every row must have its label (target)."""
    if not input_path.exists():
        raise DataError(f"{input_path}: input file not found")
    task.load_inputs(input_path, cfg.data)  # predict's checks of the input columns
    data = task.load_labelled(cfg.data, input_path.parent, input_path, labels)
    if len(data) == 0:
        raise DataError(f"{input_path}: no data rows to evaluate on (only a header?)")
    targets = [data.target] if isinstance(data.target, str) else list(data.target or [])
    if not targets:
        raise DataError(f"{input_path}: the task read no label column: nothing to score against")
    missing = data.frame[targets].isna().any(axis=1)
    if missing.any():
        row = int(data.frame.index[missing.to_numpy()][0])
        raise DataError(
            f"{input_path}: row {row}: no label or target (an empty cell in {', '.join(targets)}; "
            f"{int(missing.sum())} such rows): every row evaluated needs one"
        )
    return data


def _baselines(
    run_dir: Path,
    cfg: RunConfig,
    task: Task,
    data: TaskData,
    labels: dict[str, Any],
    metrics: dict[str, Metric],
) -> tuple[dict[str, float], list[str]]:
    """The task's baselines fitted on the run's training rows and scored on ``data``; when the
    training data cannot be had as the run saw it, none and a note that says why."""
    from tuneforge.data import concat_task_data
    from tuneforge.split import Split

    train_path = Path(cfg.data.path)
    try:
        record = json.loads((run_dir / "split.json").read_text(encoding="utf-8"))
        counts = (record.get("class_counts") or {}).get("train")
        if record.get("kind") == "folds":  # cross-validation: every row the folds saw
            learned = {
                int(r)
                for member in record["members"].values()
                for part in ("train", "val", "test")
                for r in member[part]
            }
            train_rows = np.asarray(sorted(learned), dtype=np.int64)
            counts = None
        else:
            train_rows = np.asarray([int(r) for r in record["train"]], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError):
        return {}, [f"baselines left out: {run_dir / 'split.json'} has no readable train rows"]
    try:
        train = task.load_labelled(cfg.data, run_dir, train_path, labels)
    except (UserError, OSError) as exc:
        return {}, [f"baselines left out: the training data cannot be read ({_clip(str(exc))})"]
    if not np.isin(train_rows, train.frame.index).all() or (
        isinstance(counts, dict) and task.label_counts(train, train_rows) != counts
    ):
        return {}, [
            f"baselines left out: {train_path} no longer holds the run's training rows as "
            "split.json records them (changed since the run?)"
        ]
    merged, origin = concat_task_data({"train": train.subset(train_rows), "input": data})
    test = merged.frame.index[(origin == "input").to_numpy()].to_numpy()
    split = Split(train=train_rows, val=train_rows[:0], test=test)
    try:
        return task.baselines(merged, split, metrics), []
    except ValueError as exc:  # a reference model that cannot fit these rows
        return {}, [f"baselines left out: {_clip(str(exc))}"]


def evaluate(
    run_dir: Path,
    input_path: Path,
    name: str | None,
    log: Log,
    disable: list[str] = (),
    local: list[str] = (),
) -> dict[str, Any]:
    """Score a completed run's best model on the labelled file ``input_path`` and save the
    results in ``RUN/evaluations/NAME/`` (``NAME``: ``name`` or the file's stem). Returns what
    its ``metrics.json`` holds. Bad input is refused before anything is written."""
    from tuneforge.predict import bound_run, model_outputs, read_labels
    from tuneforge.training import metric_values

    run_dir, input_path = Path(run_dir), Path(input_path)
    name = evaluation_name(name, input_path)
    completed_run(run_dir)
    cfg, task, pm = bound_run(run_dir, list(disable), list(local))
    labels = read_labels(run_dir / "labels.json")
    source = input_path.resolve()
    data = read_input(cfg, task, source, labels)
    metrics = {
        ref.name: build_component(pm.registries, ref, f"metrics[{i}]", Metric)
        for i, ref in enumerate(cfg.metrics or [])
    }
    rows = data.frame.index.to_numpy()
    logits, y = model_outputs(
        run_dir, cfg, task, lambda: task.make_dataset(data, rows, [], cfg.trainer.seed), log
    )
    results: dict[str, Any] = metric_values(task, metrics, logits, y, task.loss_fn(None))
    from tuneforge.bootstrap import split_intervals  # bootstrap intervals of the metrics

    found = split_intervals(task, metrics, logits, y, cfg.evaluation, cfg.trainer.seed)
    baselines, notes = _baselines(run_dir, cfg, task, data, labels, metrics)
    results.update(baselines)
    results.update(
        {
            "name": name,
            "input": str(source),
            "rows": len(rows),
            "details": task.test_details(data, rows, logits, y),
            "notes": notes,
        }
    )
    if found:
        results["intervals"] = found["test_intervals"]
        results["interval_method"] = found["test_interval_method"]
    _save(run_dir / EVALUATIONS_DIR / name, results, task.prediction_frame(data, rows, logits, y))
    pm.hook.on_evaluation_end(run_dir=run_dir, name=name, results=results)
    return results


def _save(final: Path, results: dict[str, Any], predictions: Any) -> None:
    """Write the evaluation into a new folder beside ``final``, then swap it in: a reader
    sees the old evaluation or the whole new one, never a mix."""
    from tuneforge.run import follow_umask, to_json

    parent = final.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{parent}: is a file, not the run's evaluations folder; move it away")
    try:
        parent.mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"{parent}: cannot create it ({exc.strerror or exc})") from None
    tmp = parent / f".{final.name}.tmp-{os.getpid()}"
    old = parent / f".{final.name}.old-{os.getpid()}"
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        tmp.mkdir()
        (tmp / RESULTS_FILE).write_text(to_json(results), encoding="utf-8")
        (tmp / PREDICTIONS_FILE).write_text(predictions.to_csv(index=False), encoding="utf-8")
        follow_umask(tmp)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            old.rename(final)  # the earlier evaluation stays
        raise UserError(f"{final}: cannot write the evaluation ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists():
        old.unlink()


def read_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """The saved evaluations of a run folder (their ``metrics.json``), by name; damaged ones
    are left out."""
    folder = Path(run_dir) / EVALUATIONS_DIR
    out = []
    for path in sorted(folder.glob(f"*/{RESULTS_FILE}")) if folder.is_dir() else ():
        if path.parent.name.startswith("."):
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def summary_lines(results: dict[str, Any]) -> list[str]:
    """A readable summary of an evaluation: metrics, baselines, the per-class table."""
    lines = [
        f"evaluation {results['name']}: {results['rows']} rows of {results['input']}",
    ]
    values = {k: v for k, v in results.items() if k not in INFO_KEYS}
    width = max((len(k) for k in values), default=0)
    from tuneforge.bootstrap import interval_text

    ci = results.get("intervals") or {}
    lines += [f"  {k:<{width}}  {_num(v)}{interval_text(ci.get(k))}" for k, v in values.items()]
    details = results.get("details") or {}
    table = details.get("per_class") or details.get("per_label")
    if isinstance(table, list) and table:
        key = "class" if "per_class" in details else "label"
        cols = [c for c in ("precision", "recall", "f1", "support") if c in table[0]]
        names = [str(r.get(key, "")) for r in table]
        w = max([len(key), *map(len, names)])
        lines.append(f"  {key:<{w}}  " + "  ".join(f"{c:>9}" for c in cols))
        for n, r in zip(names, table, strict=True):
            lines.append(f"  {n:<{w}}  " + "  ".join(f"{_num(r.get(c)):>9}" for c in cols))
    lines += [f"  note: {n}" for n in results.get("notes") or []]
    return lines


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
