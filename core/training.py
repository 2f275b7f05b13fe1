"""Training a prepared run into its run folder: validate -> split -> balance -> datasets ->
train -> best checkpoint -> test evaluation -> commit (``tuneforge run``). Modality and problem
work is the task plugin's."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import tuneforge
from tuneforge.checkpoint import STATE_DIR
from tuneforge.components import (
    BalancePlan,
    TrialPruned,
)
from tuneforge.config import (
    Distribution,
    ModelRef,
    RunConfig,
    TunerRef,
    dump_config,
    instantiate,
)
from tuneforge.console import Console
from tuneforge.data import TaskData, WeightedExamples
from tuneforge.errors import ConfigError, DataError, UserError
from tuneforge.manager import PluginManager, resolve_local
from tuneforge.run import RunContext, RunFolder, storage_error
from tuneforge.sampling import is_main_process, process_count, process_rank
from tuneforge.secrets import mask_tree
from tuneforge.split import Split

if TYPE_CHECKING:  # pragma: no cover
    from tuneforge.trainer import StateOptions

from tuneforge.prepare import Log, Prepared, leakage_check, prepare, run_validators, split_data


def evaluate_metrics(prep: Prepared, logits: Any, labels: Any, loss_fn: Any) -> dict[str, float]:
    return metric_values(prep.task, prep.metrics, logits, labels, loss_fn)


def metric_values(
    task: Any, metrics: dict[str, Any], logits: Any, labels: Any, loss_fn: Any
) -> dict[str, float]:
    """``loss`` (``loss_fn``, the evaluation loss) and each of ``metrics`` (name -> Metric) of
    the model's ``logits`` against the dataset's ``labels`` (CPU tensors): what ``metrics.json``
    records for a split (``tuneforge evaluate`` too)."""
    out = (
        {"loss": float(loss_fn(logits, labels.to(logits.device)).item())}
        if labels is not None
        else {}
    )
    y_pred, y_score = task.predictions(logits)
    y_true = labels.numpy()
    for name, metric in metrics.items():
        out[name] = float(metric(y_true, y_pred, y_score))
    return out


def baseline_advice(test: dict[str, float], metrics: dict[str, Any], monitor: str) -> list[str]:
    """A recommendation for each reference model of the task (:meth:`Task.baselines`, keys
    holding ``baseline`` and ending in ``_<metric>``) that beats the trained model on test in
    the run's headline metric: the monitored one, else the first of ``metrics:``."""
    import math

    headline = monitor if monitor in metrics else next(iter(metrics), None)
    model = test.get(headline) if headline else None
    if headline is None or model is None or not math.isfinite(model):
        return []
    greater = metrics[headline].greater_is_better
    out = []
    for key, value in test.items():
        if "baseline" not in key or not key.endswith(f"_{headline}") or not math.isfinite(value):
            continue
        # the longest metric name the key ends with: baseline_ridge_rmse is rmse, not mse
        if max((m for m in metrics if key.endswith(f"_{m}")), key=len) != headline:
            continue
        if (value > model) if greater else (value < model):
            name = key[: -len(headline) - 1].replace("baseline_", "").replace("_baseline", "")
            out.append(
                f"the {name.replace('_', ' ')} baseline beats the model on test {headline} "
                f"({value:.4g} vs {model:.4g}): prefer it for this data, or give the model more "
                "data, epochs or capacity before trusting it"
            )
    return out


@dataclass
class Outcome:
    """A trained run: its folder and, while in memory, how to evaluate the best model on test."""

    folder: RunFolder
    context: RunContext
    train_metrics: dict[str, Any]
    best_value: float | None
    evaluate_test: Callable[[], tuple[dict[str, float], Any]] | None = None
    #: The run's training state (its data after validation, split, task), while in memory.
    training: TrainingRun | None = None


@dataclass
class TrainingRun:
    """What one run's training stages share: the prepared run, its folder and hooks, the data
    after validation and balancing, and (once built) the trainer, datasets and losses."""

    prep: Prepared
    folder: RunFolder
    log: Log
    data: TaskData
    split: Split
    plan: BalancePlan
    train_rows: np.ndarray
    ctx: RunContext
    hook: Any
    trial: int | None = None
    epoch_callback: Callable[[int, dict[str, float]], None] | None = None
    trainer: Any = None
    val_set: Any = None
    collate: Any = None
    eval_loss: Any = None
    #: Trainable and all parameters of the built model (``run.json``, the report).
    parameters: dict[str, Any] | None = None

    @property
    def ckpt(self) -> Path:
        """The best checkpoint (the folder is renamed when it is committed)."""
        return self.folder.path / "checkpoint"


def train(
    prep: Prepared,
    folder: RunFolder,
    log: Log,
    trial: int | None = None,
    epoch_callback: Callable[[int, dict[str, float]], None] | None = None,
    resume: Path | None = None,
) -> Outcome:
    """Validate, split, balance, train; writes everything but the test metrics into ``folder``.

    :param resume: a training-state checkpoint of this run (``state/step-NNNNNN``) to continue
        from; the data must give the split recorded in ``split.json``.

    :param epoch_callback: called with ``(epoch, row)`` after each epoch's history row is logged;
        it may raise :class:`~tuneforge.components.TrialPruned` to stop a tuner's trial.
    """
    data, split = validated_split(prep, log)
    prep.task.fit(data, split.train)  # train-split state (scaler, features)
    data, train_rows, plan = balanced(prep, data, split, log)
    ctx = RunContext(
        config=prep.config,
        run_dir=folder.path,
        final_dir=folder.final,
        task=prep.config.task.name,
        problem=prep.task.problem,
        classes=data.classes,
        split_sizes={"train": len(train_rows), "val": len(split.val), "test": len(split.test)},
        findings=[f.as_dict() for f in prep.findings],
        trial=trial,
    )
    write_records(prep, folder, data, split, train_rows, resume)
    main = is_main_process()  # other processes of a multi-process run observe nothing
    for cb in prep.callbacks if main else []:
        prep.pm.pm.register(cb)
    hook = prep.pm.hook if main else _NoHooks()
    run = TrainingRun(prep, folder, log, data, split, plan, train_rows, ctx, hook, trial)
    run.epoch_callback = epoch_callback
    try:
        hook.on_run_start(run=ctx)  # a logger that cannot connect fails here: nothing is kept
        return fit_model(run, resume)
    except BaseException as exc:
        end_run(prep, ctx, {}, "pruned" if isinstance(exc, TrialPruned) else "failed")
        raise


def validated_split(prep: Prepared, log: Log) -> tuple[TaskData, Split]:
    """The validators' policies applied, then the 70/15/15 split checked for leakage."""
    data = run_validators(prep)
    for f in prep.findings:
        log(f"  [{f.severity}] {f.validator}: {f.message} -> {f.action}")
    split = split_data(prep, data)
    for note in split.notes:
        log(f"  split: {note}")
    leak = leakage_check(prep, data, split)
    prep.findings.append(leak)
    if leak.severity != "info":
        log(f"  [{leak.severity}] split: {leak.message}")
        if "leakage" in prep.config.fail_on:
            raise DataError(f"{data.source}: fail_on 'leakage': {leak.message}")
    for i, (name, metric) in enumerate(prep.metrics.items()):
        try:  # a metric undefined on this data says why
            metric.check_data(data)
        except UserError as exc:
            raise ConfigError(f"metrics[{i}]", f"{name}: {exc}") from None
    return data, split


def balanced(
    prep: Prepared, data: TaskData, split: Split, log: Log
) -> tuple[TaskData, np.ndarray, BalancePlan]:
    """The balancer's plan for the train split: its rows (resampled, plus any synthetic rows
    the balancer made, which join the data for training only)."""
    rng = np.random.default_rng(prep.config.split.seed)
    plan: BalancePlan = prep.balancer.plan(data, split.train, rng)
    train_rows = split.train if plan.indices is None else split.train[plan.indices]
    synthetic = plan.synthetic  # rows a balancer made (SMOTE): train only
    if synthetic is not None and len(synthetic):
        import pandas as pd

        data = data.subset(data.frame.index)
        data.frame = pd.concat([data.frame, synthetic])
        train_rows = np.concatenate([train_rows, synthetic.index.to_numpy()])
    log(f"split {split.sizes()} (train after balancing: {len(train_rows)}); balancer: {plan.note}")
    return data, train_rows, plan


def write_records(
    prep: Prepared,
    folder: RunFolder,
    data: TaskData,
    split: Split,
    train_rows: np.ndarray,
    resume: Path | None,
) -> None:
    """``config.yaml`` (resolved, passwords masked), ``findings.json``, ``split.json`` and
    ``labels.json``; a resumed run keeps its config and must split as it did."""
    cfg, task = prep.config, prep.task
    resolved = dump_config(cfg)
    resolved["data"]["path"] = str(Path(data.source).resolve())
    given_files = (("val_path", cfg.data.val_path), ("test_path", cfg.data.test_path))
    for key, given_path in given_files:  # given split files, as absolute as data.path
        if given_path is not None:
            resolved["data"][key] = str((prep.base_dir / given_path).resolve())
    resolved["plugins"]["local"] = [resolve_local(s, prep.base_dir) for s in cfg.plugins.local]
    if resume is None:  # a resumed run keeps its config.yaml as written
        folder.write_yaml("config.yaml", mask_tree(resolved))  # no passwords in the run folder
    else:
        _check_same_split(folder.path / "split.json", split, train_rows, data.source)
    folder.write_json(
        "findings.json",
        {
            "findings": [f.as_dict() for f in prep.findings],
            "rows_loaded": len(prep.data),
            "rows_kept": len(data),
        },
    )
    counts = {
        "train": task.label_counts(data, split.train),
        "val": task.label_counts(data, split.val),
        "test": task.label_counts(data, split.test),
        "train_balanced": task.label_counts(data, train_rows),
    }
    folder.write_json(
        "split.json",
        {
            **split.as_dict(),
            "balanced_train": [int(i) for i in train_rows],
            "class_counts": counts,
        },
    )
    folder.write_json(
        "labels.json",
        {
            **task.labels_record(data),
            "label_column": data.target,
            "inputs": data.inputs,
            "modalities": data.modalities,
            "problem": task.problem,
        },
    )


def fit_model(run: TrainingRun, resume: Path | None) -> Outcome:
    """Datasets, model and losses from the task, then :meth:`Trainer.fit` with the run's
    hooks; returns the outcome whose ``evaluate_test`` tests the best checkpoint."""
    from tuneforge.trainer import FitHooks, Trainer

    prep, task, data, plan = run.prep, run.prep.task, run.data, run.plan
    run.trainer = Trainer(prep.config.trainer, console=run.log)
    task.prepare()
    seed = prep.config.trainer.seed
    train_set = task.make_dataset(data, run.train_rows, prep.augmenters, seed)
    run.val_set = task.make_dataset(data, run.split.val, [], seed)
    run.collate = task.collate_fn(run.trainer.on_cuda)
    train_set, train_collate = weighted(run, train_set)
    model = task.build_model(data)
    run.parameters = parameter_info(model)
    n, total = run.parameters["trainable_parameters"], run.parameters["parameters"]
    run.log(f"model: {n:,} of {total:,} parameters trainable ({100 * n / max(total, 1):.2f}%)")
    depths = model_layers(task, model, prep.config.trainer)
    if depths is not None:
        run.parameters["layers"] = max(depths.values()) - 1
    loss_fn = task.loss_fn(plan.class_weights, focal_gamma=plan.focal_gamma)
    run.eval_loss = task.loss_fn(None)
    # Set-up is over (tokenizer, datasets, model, loss): a failure before this point, such as
    # a missing model.checkpoint folder, is a config error and leaves nothing behind.
    run.folder.training_started = True
    hooks = FitHooks(
        evaluate=lambda logits, labels: _evaluate(run, logits, labels),
        save_best=lambda unwrapped: _save_best(run, unwrapped),
        on_epoch_end=lambda epoch, row: _on_epoch_end(run, epoch, row),
        on_log=lambda step, values: _on_log(run, step, values),
        on_epoch_start=task.on_epoch_start,
    )
    sample_weights = plan.sample_weights
    if sample_weights is not None and plan.indices is not None:
        sample_weights = sample_weights[plan.indices]
    result = run.trainer.fit(
        model,
        train_set,
        run.val_set,
        train_collate,
        loss_fn,
        hooks,
        monitor=prep.monitor,
        mode=prep.mode,
        sample_weights=sample_weights,
        state=_state_options(run.folder, run.trial, resume, lambda: run.ckpt, run.ctx, prep),
        parameter_depths=depths,
    )
    if is_main_process() and not run.ckpt.exists():
        raise UserError(f"no checkpoint was saved: val.{prep.monitor} was never finite")
    train_metrics = _train_metrics(prep, result)
    return Outcome(
        run.folder,
        run.ctx,
        train_metrics,
        result.best_value,
        lambda: evaluate_test(run, train_metrics),
        run,
    )


def model_layers(task: Any, model: Any, cfg: Any) -> dict[str, int] | None:
    """The builder's parameter depths when ``trainer.layer_decay`` is set (a ConfigError
    naming the key and the model when it has none), and ``trainer.gradient_checkpointing``
    turned on through the builder, before the trainer prepares the model."""
    from tuneforge.components import ModelBuilder

    builder: ModelBuilder | None = task.model_builder
    what = type(builder).__name__ if builder is not None else type(task).__name__
    if cfg.gradient_checkpointing:
        if builder is None:
            raise ConfigError(
                "trainer.gradient_checkpointing", f"the task {what} has no model builder"
            )
        builder.enable_gradient_checkpointing(model)
    if cfg.layer_decay is None:
        return None
    depths = builder.parameter_depths(model) if builder is not None else None
    if not depths:
        raise ConfigError(
            "trainer.layer_decay",
            f"model {what} ({type(model).__name__}) has no layer structure (no parameter "
            "depths); set it to null",
        )
    return depths


def _train_metrics(prep: Prepared, result: Any) -> dict[str, Any]:
    """``metrics.json`` before the test split: the best epoch and its validation metrics."""
    best_row = result.history[(result.best_epoch or 1) - 1]
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "monitor": f"val.{prep.monitor}",
        "monitor_mode": prep.mode,
        "best_value": result.best_value,
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "train_seconds": result.seconds,
        "val": {k[4:]: v for k, v in best_row.items() if k.startswith("val.")},
    }


def weighted(run: TrainingRun, train_set: Any) -> tuple[Any, Any]:
    """The train set with per-row loss weights (validators' ``down-weight`` policy, the
    balancer's row weights), and its collate function; unchanged without weights."""
    weights = {r: w for r, w in run.prep.row_weights.items() if r in run.data.frame.index}
    for r, w in (run.plan.row_weights or {}).items():  # balancer loss weights
        weights[r] = weights.get(r, 1.0) * w
    if not weights:
        return train_set, run.collate
    row_w = np.array([weights.get(int(r), 1.0) for r in run.train_rows], dtype=np.float32)
    return WeightedExamples(train_set, row_w), WeightedExamples.collate(run.collate)


def _evaluate(run: TrainingRun, logits: Any, labels: Any) -> dict[str, float]:
    metrics = evaluate_metrics(run.prep, logits, labels, run.eval_loss)
    run.hook.on_evaluate(run=run.ctx, split="val", metrics=metrics)
    return metrics


def _save_best(run: TrainingRun, unwrapped: Any) -> None:
    """The task's artifacts into ``.checkpoint.tmp``, then swapped in as ``checkpoint/``."""
    import shutil

    tmp = run.folder.path / ".checkpoint.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    run.prep.task.save_artifacts(unwrapped, tmp)
    if run.ckpt.exists():
        shutil.rmtree(run.ckpt)
    tmp.rename(run.ckpt)


def _on_epoch_end(run: TrainingRun, epoch: int, row: dict[str, float]) -> None:
    now = time.time()
    for key, value in row.items():
        if key != "epoch":
            split_name, _, name = key.partition(".")
            run.folder.log_history(
                {
                    "step": None,
                    "epoch": epoch,
                    "split": split_name,
                    "name": name,
                    "value": value,
                    "time": now,
                }
            )
    run.hook.on_epoch_end(run=run.ctx, epoch=epoch, metrics=row)
    if run.epoch_callback is not None:
        run.epoch_callback(epoch, row)


def _on_log(run: TrainingRun, step: int, values: dict[str, float]) -> None:
    now = time.time()
    for key, value in values.items():
        split_name, _, name = key.rpartition(".")
        run.folder.log_history(
            {
                "step": step,
                "epoch": None,
                "split": split_name or "train",
                "name": name,
                "value": value,
                "time": now,
            }
        )
    run.hook.on_log(run=run.ctx, step=step, values=values)


def evaluate_test(run: TrainingRun, train_metrics: dict[str, Any]) -> tuple[dict[str, float], Any]:
    """The best checkpoint on the test split, once: its metrics (with the task's baselines)
    and the prediction frame. On the main process alone (the others have finished): no
    collective calls. ``train_metrics`` gains the task's ``tuning`` and ``test_details``."""
    prep, task, trainer, data, split = run.prep, run.prep.task, run.trainer, run.data, run.split
    # The run folder's checkpoint: a study's copy of its best trial's, for a study.
    best_dir = Path(run.ctx.run_dir) / "checkpoint"
    best_model = trainer.prepare_model(task.load_artifacts(best_dir), local=True)

    # The validation outputs, computed once: for after_training and val_outputs.npz (refine
    # compares rounds on them, tuneforge.compare).
    val_logits, val_labels = trainer.predict(
        best_model, trainer.loader(run.val_set, run.collate, local=True)
    )
    if val_labels is not None:
        from tuneforge.compare import write_val_outputs

        write_val_outputs(run.ctx.run_dir, split.val, val_logits, val_labels)

    def predict_val() -> tuple[Any, Any]:
        return val_logits, val_labels

    tuning = task.after_training(predict_val, best_dir)  # e.g. thresholds on val
    if tuning:
        train_metrics["tuning"] = tuning
    test_set = task.make_dataset(data, split.test, [], prep.config.trainer.seed)
    test_dl = trainer.loader(test_set, run.collate, local=True)
    logits, labels = trainer.predict(best_model, test_dl)
    metrics = evaluate_metrics(prep, logits, labels, run.eval_loss)
    metrics.update(task.baselines(data, split, prep.metrics))  # reference models
    details = task.test_details(data, split.test, logits, labels)  # e.g. per label
    if details:
        train_metrics["test_details"] = details
    from tuneforge.bootstrap import split_intervals  # bootstrap intervals of the metrics

    cfg = prep.config
    train_metrics.update(
        split_intervals(task, prep.metrics, logits, labels, cfg.evaluation, cfg.trainer.seed)
    )
    run.hook.on_evaluate(run=run.ctx, split="test", metrics=metrics)
    from tuneforge.explain import explain_test_rows  # explanations/test.html; never fails

    explain_test_rows(
        run.ctx.run_dir,
        task,
        best_model,
        data.frame.loc[split.test],
        cfg.data,
        cfg.evaluation.explain_rows,
        cfg.trainer.seed,
    )
    return metrics, task.prediction_frame(data, split.test, logits, labels)


def end_run(prep: Prepared, ctx: RunContext, metrics: dict[str, Any], status: str) -> None:
    """Call ``on_run_end``, then release the run's callbacks (registered in :func:`train`).

    For a run that is already failing (``failed``, ``pruned``), an error raised by an
    ``on_run_end`` hook is only noted: the run's first error is the one reported.
    """
    try:
        if is_main_process():
            try:
                prep.pm.hook.on_run_end(run=ctx, metrics=metrics, status=status)
            except Exception as exc:
                if status not in ("failed", "pruned"):
                    raise
                first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                print(f"note: on_run_end also failed: {type(exc).__name__}: {first}", flush=True)
    finally:
        for cb in prep.callbacks:
            if prep.pm.pm.is_registered(cb):
                prep.pm.pm.unregister(cb)


def run_info(prep: Prepared, started: float) -> dict[str, Any]:
    """``run.json`` of a completed run: status, versions, device, processes, plugins."""
    import torch

    processes = process_count()
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", processes) or processes)
    return {
        "status": "completed",
        "tuneforge": tuneforge.__version__,
        "task": prep.config.task.name,
        "started": started,
        "finished": time.time(),
        "seconds": time.time() - started,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cuda"
        if torch.cuda.is_available() and prep.config.trainer.device != "cpu"
        else "cpu",
        "processes": processes,
        "machines": max(1, processes // max(1, per_machine)),
        "plugins": sorted(i.name for i in prep.pm.infos.values() if not i.disabled and not i.error),
    }


def parameter_info(model: Any) -> dict[str, Any]:
    """Trainable and all parameter counts of ``model`` and the trainable share."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    share = trainable / total if total else 0.0
    return {"trainable_parameters": trainable, "parameters": total, "trainable_share": share}


def resource_info(training: TrainingRun | None) -> dict[str, Any]:
    """``run.json``'s parameter counts and peak memory: the process's peak RSS (MB) and, on
    CUDA, the peak of allocated GPU memory (MB)."""
    import resource
    import sys

    import torch

    info: dict[str, Any] = dict(training.parameters or {}) if training is not None else {}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    info["peak_rss_mb"] = round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        info["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return info


def finish(
    outcome: Outcome,
    prep: Prepared,
    log: Log,
    started: float,
    extra: dict[str, Any] | None = None,
    member: str | None = None,
) -> Path:
    """Evaluate the best checkpoint on test once, write metrics and commit the folder.

    ``member``: the run is that member of a repeated run, whose folder moves with its parent's:
    its console line names the member instead of a folder path that will not last.

    ``run.json`` says ``completed`` only under the final name (written just after the rename),
    so a folder killed before that never claims it; the run's last hooks (report, loggers) see
    the committed folder, still under the run's lock.
    """
    assert outcome.evaluate_test is not None
    folder = outcome.folder
    try:
        test, predictions = outcome.evaluate_test()
        metrics = {**outcome.train_metrics, "test": test, **(extra or {})}
        advice = baseline_advice(test, prep.metrics, prep.monitor)
        if advice:
            metrics["recommendations"] = advice
        folder.write_json("metrics.json", metrics)
        folder.write_text("predictions_test.csv", predictions.to_csv(index=False))
        for name, value in test.items():
            folder.log_history(
                {
                    "step": None,
                    "epoch": None,
                    "split": "test",
                    "name": name,
                    "value": value,
                    "time": time.time(),
                }
            )
        info = {**run_info(prep, started), **resource_info(outcome.training)}
        final = folder.commit(info, keep_lock=True)
    except BaseException:
        end_run(prep, outcome.context, {}, "failed")
        raise
    outcome.context.run_dir = final
    try:
        end_run(prep, outcome.context, test, "completed")
    finally:
        folder.release()
    from tuneforge.bootstrap import interval_text

    ci = metrics.get("test_intervals") or {}
    shown = "  ".join(f"{k} {v:.4f}{interval_text(ci.get(k))}" for k, v in test.items())
    log.result(f"test: {shown}")
    gpu = info.get("peak_gpu_memory_mb")
    log(f"peak memory: RSS {info['peak_rss_mb']:,.0f} MB" + (f", GPU {gpu:,.0f} MB" if gpu else ""))
    for line in metrics.get("recommendations", []):
        log.result(f"recommendation: {line}")
    log.result(f"member {member}: completed" if member else f"run folder: {final}")
    return final


def run(
    cfg: RunConfig,
    base_dir: Path,
    pm: PluginManager,
    log: Log,
    overwrite: bool = False,
    raw: dict[str, Any] | None = None,
    overrides: list[tuple[str, Any]] = (),
) -> Path:
    """Run a config end to end (or a study when ``tuner`` or ``model.candidates`` is set)."""
    started = time.time()
    if cfg.model is not None and cfg.model.candidates:
        for i, cand in enumerate(cfg.model.candidates):
            instantiate(pm.registries, "models", cand, f"model.candidates[{i}]")
        cfg = with_model_selection(cfg)
        raw, overrides = dump_config(cfg), []  # the overrides are part of cfg already
    main = is_main_process()
    if not main:  # under torchrun / accelerate launch only the main process prints
        log = Console("quiet", stream=open(os.devnull, "w"))  # noqa: SIM115
    prep = prepare(cfg, base_dir, pm)
    if cfg.tuner is not None:
        if process_count() > 1:
            raise ConfigError(
                "tuner",
                f"a study runs in one process, not under a {process_count()}-process launch; "
                "run it without torchrun / accelerate launch (each trial may still use a GPU)",
            )
        from tuneforge.study import run_study

        return run_study(prep, raw or dump_config(cfg), overrides, log, overwrite, started)
    overwrite = overwrite or cfg.output.overwrite
    if cfg.split.folds is not None or len(cfg.trainer.seeds or ()) > 1:
        from tuneforge.repeats import run_repeated

        if process_count() > 1:
            raise ConfigError(
                "split.folds" if cfg.split.folds is not None else "trainer.seeds",
                f"a repeated run runs in one process, not under a {process_count()}-process launch",
            )
        return run_repeated(prep, log, overwrite, started)
    if cfg.trainer.seeds:  # one seed: an ordinary run with that trainer seed
        prep.config.trainer.seed = cfg.trainer.seeds[0]
    # Only the main process writes the run folder; the others train beside it.
    folder = (
        RunFolder(cfg.output.dir, overwrite=overwrite) if main else ReplicaFolder(cfg.output.dir)
    )
    try:
        outcome = train(prep, folder, log)
        if not main:
            return folder.final
        return finish(outcome, prep, log, started)
    except BaseException as exc:
        error = close_failed(folder, exc, log)
        if error is exc:
            raise
        raise error from exc


def _check_same_split(path: Path, split: Split, train_rows: np.ndarray, source: str) -> None:
    """A resumed run must see the data it started with: the same split, row for row."""
    import json

    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({type(exc).__name__}); cannot resume") from None
    now = {**split.as_dict(), "balanced_train": [int(i) for i in train_rows]}
    for key in ("train", "val", "test", "balanced_train"):
        if [int(i) for i in saved.get(key, [])] != [int(i) for i in now[key]]:
            raise DataError(
                f"{source}: the data changed since the run started: its {key} split differs "
                f"from {path}; start a new run instead of resuming"
            )


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a folder by hard links (a checkpoint's files are never changed in place)."""
    import shutil

    for f in sorted(src.rglob("*")):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


def _state_options(
    folder: RunFolder,
    trial: int | None,
    resume: Path | None,
    ckpt_dir: Callable[[], Path],
    ctx: RunContext,
    prep: Prepared,
) -> StateOptions | None:
    """Training-state checkpoints for ``--resume``: a single one-process run keeps them in
    ``RUN/state``; its best checkpoint so far is linked into each (``best/``)."""
    import shutil

    from tuneforge.trainer import StateOptions

    if trial is not None or process_count() > 1:
        return None
    if resume is not None:  # the best model as of the checkpoint, not as of the kill
        best, ckpt = resume / "best", ckpt_dir()
        if ckpt.exists():
            shutil.rmtree(ckpt)
        if best.is_dir():
            tmp = folder.path / ".checkpoint.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            _link_tree(best, tmp)
            tmp.rename(ckpt)

    def on_checkpoint(tmp: Path) -> dict[str, Any]:
        if ckpt_dir().is_dir():
            _link_tree(ckpt_dir(), tmp / "best")
        return {
            "history_bytes": folder.history_size(),
            "base_dir": str(prep.base_dir),
            "started": ctx.started,
        }

    return StateOptions(folder.path / STATE_DIR, resume, on_checkpoint)


def with_model_selection(cfg: RunConfig) -> RunConfig:
    """``model.candidates`` as a study: a grid over ``model`` (or ``model`` joins the tuner's space).

    Every candidate trains on the same split; the best on validation is tested, once.
    """
    assert cfg.model is not None and cfg.model.candidates
    choices = [c.as_yaml() for c in cfg.model.candidates]
    out = cfg.model_copy(deep=True)
    out.model = ModelRef.model_validate(cfg.model.candidates[0].model_dump())
    if out.tuner is None:
        out.tuner = TunerRef(name="grid", space={"model": Distribution(choice=choices)})
    elif "model" in out.tuner.space:
        raise ConfigError(
            "model.candidates", "tuner.space also searches model: choose the models in one place"
        )
    else:
        out.tuner = TunerRef.model_validate(
            {
                **out.tuner.as_yaml(),
                "space": {"model": {"choice": choices}, **out.tuner.as_yaml()["space"]},
            }
        )
    return out


def model_label(model: Any) -> str:
    """``{"name": "timm", "model_name": "resnet18"}`` -> ``timm(model_name=resnet18)``."""
    if not isinstance(model, dict):
        return str(model)
    extras = ", ".join(f"{k}={v}" for k, v in model.items() if k != "name")
    return f"{model.get('name')}({extras})" if extras else str(model.get("name"))


class _NoHooks:
    """Lifecycle hooks as seen by the non-main processes of a multi-process run: silent."""

    def __getattr__(self, name: str) -> Callable[..., list[Any]]:
        return lambda **kwargs: []


class ReplicaFolder(RunFolder):
    """The run folder as a non-main process of a multi-process run sees it: writes nothing.

    The main process (global rank 0) creates, fills and commits the one run folder; the others
    train beside it and leave no trace on disk.
    """

    def __init__(self, final: Path, overwrite: bool = False) -> None:
        self.final = Path(final).resolve()
        self.path = self.final.parent / f".{self.final.name}.partial-rank{process_rank()}"
        self.training_started = False
        self.resumed = False
        self.committed = False
        self.overwrite = overwrite

    def write_text(self, name: str, text: str) -> None:
        pass

    def write_json(self, name: str, obj: Any) -> None:
        pass

    def write_yaml(self, name: str, obj: Any) -> None:
        pass

    def log_history(self, record: dict[str, Any]) -> None:
        pass

    def commit(self, info: dict[str, Any] | None = None) -> Path:
        self.committed = True
        return self.final

    def release(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def fail(self, error: BaseException) -> Path:
        return self.final


def close_failed(folder: RunFolder, exc: BaseException, log: Log) -> BaseException:
    """A failure before training leaves nothing; a crash during training keeps what it logged.

    Returns the exception to raise: ``exc``, or a one-line :class:`UserError` when it is a
    file-system failure (read-only, full, not a folder...) of the run folder. A folder
    committed already stays as it is; the run's lock is released in every case.
    """
    error = storage_error(exc, folder.final) or exc
    if folder.committed:
        folder.release()
    elif folder.training_started:
        kept = folder.fail(error)
        log.result(f"the run failed; what it logged is kept in {kept}")
    else:
        folder.abort()
    return error
