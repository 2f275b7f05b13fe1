"""The pipeline: load -> validate -> split -> balance -> augment -> tokenize -> train ->
evaluate -> run folder. Modality-specific work is delegated to the task plugin."""

from __future__ import annotations

import copy
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import tuneforge
from tuneforge.checkpoint import STATE_DIR
from tuneforge.components import (
    Augmenter,
    BalancePlan,
    Balancer,
    Finding,
    Metric,
    ModelBuilder,
    Preprocessor,
    Task,
    Trial,
    TrialPruned,
    Validator,
)
from tuneforge.config import (
    ComponentRef,
    Distribution,
    ModelRef,
    RunConfig,
    TunerRef,
    build_config,
    dump_config,
    instantiate,
)
from tuneforge.console import Console
from tuneforge.data import TaskData, WeightedExamples, class_list
from tuneforge.errors import ConfigError, DataError, PluginError, UserError
from tuneforge.manager import PluginManager, make_plugin_manager, resolve_local  # noqa: F401
from tuneforge.run import RunContext, RunFolder, RunLock, storage_error
from tuneforge.sampling import is_main_process, process_count, process_rank
from tuneforge.secrets import mask_tree
from tuneforge.split import Split, make_split

Log = Console  # info lines via log(...), results via log.result(...)


@dataclass
class Prepared:
    """A config resolved into components, with its data loaded (nothing written yet)."""

    config: RunConfig
    base_dir: Path
    pm: PluginManager
    task: Any
    data: TaskData
    validators: list[tuple[ComponentRef, Any]]
    balancer: Any
    augmenters: list[Any]
    preprocessors: list[Any]
    tokenizer: Any
    model_builder: Any
    metrics: dict[str, Any]
    callbacks: list[Any]
    monitor: str
    mode: str
    findings: list[Finding] = field(default_factory=list)
    #: Per-row loss weights from validators with policy ``down-weight`` (row -> weight).
    row_weights: dict[int, float] = field(default_factory=dict)


def _with_defaults(cfg: RunConfig, defaults: dict[str, Any]) -> RunConfig:
    # getattr/setattr below: RunConfig's own section fields, by name
    cfg = cfg.model_copy(deep=True)
    for key in ("validators", "metrics"):
        if getattr(cfg, key) is None and key in defaults:
            setattr(cfg, key, [ComponentRef.model_validate(v) for v in defaults[key]])
    for key in ("tokenizer", "model"):
        if getattr(cfg, key) is None and key in defaults:
            ref_type = ModelRef if key == "model" else ComponentRef
            setattr(cfg, key, ref_type.model_validate(defaults[key]))
    return cfg


def build_component(regs: Any, kind: str, ref: ComponentRef, path: str, base: type) -> Any:
    """:func:`~tuneforge.config.instantiate` a component that must subclass ``base`` (its
    kind's contract in :mod:`tuneforge.components`): core calls only what ``base`` declares."""
    comp = instantiate(regs, kind, ref, path)
    if not isinstance(comp, base):
        entry = regs[kind].get(ref.name)
        raise PluginError(
            f"{path}.name: {ref.name!r} from plugin {entry.plugin!r} is a "
            f"{type(comp).__qualname__}, not a tuneforge.components.{base.__name__}: a "
            f"{kind[:-1]} must subclass it"
        )
    return comp


def prepare(cfg: RunConfig, base_dir: Path, pm: PluginManager) -> Prepared:
    """Resolve every component and load the data. Raises before anything is written."""
    regs = pm.registries
    task = build_component(regs, "tasks", cfg.task, "task", Task)
    task.name = cfg.task.name
    cfg = _with_defaults(cfg, task.defaults())
    validators = [
        (ref, build_component(regs, "validators", ref, f"validators[{i}]", Validator))
        for i, ref in enumerate(cfg.validators or [])
    ]
    balancer = build_component(regs, "balancers", cfg.balancer, "balancer", Balancer)
    augmenters = [
        build_component(regs, "augmenters", r, f"augmenters[{i}]", Augmenter)
        for i, r in enumerate(cfg.augmenters)
    ]
    preprocessors = [
        build_component(regs, "tokenizers", r, f"preprocessors[{i}]", Preprocessor)
        for i, r in enumerate(cfg.preprocessors)
    ]
    if cfg.model is None:
        raise ConfigError("model", f"required: task {cfg.task.name!r} has no default model")
    if cfg.model.candidates:
        # Model selection: every candidate must resolve; the first stands in for validation.
        for i, cand in enumerate(cfg.model.candidates):
            build_component(regs, "models", cand, f"model.candidates[{i}]", ModelBuilder)
        cfg = cfg.model_copy(deep=True)
        cfg.model = ModelRef.model_validate(cfg.model.candidates[0].model_dump())
    # Tasks whose inputs need no tokenizer (tabular) have none by default.
    tokenizer = (
        None
        if cfg.tokenizer is None
        else instantiate(regs, "tokenizers", cfg.tokenizer, "tokenizer")
    )
    model_builder = build_component(regs, "models", cfg.model, "model", ModelBuilder)
    metrics = {}
    for i, ref in enumerate(cfg.metrics or []):
        metric = build_component(regs, "metrics", ref, f"metrics[{i}]", Metric)
        if metric.problem not in ("any", task.problem):
            raise ConfigError(
                f"metrics[{i}].name",
                f"{ref.name!r} is a {metric.problem} metric; task {task.name!r} is {task.problem}",
            )
        metrics[ref.name] = metric
    callbacks = [
        instantiate(regs, "callbacks", r, f"callbacks[{i}]") for i, r in enumerate(cfg.callbacks)
    ]
    monitor = cfg.trainer.monitor
    if monitor != "loss" and monitor not in metrics:
        raise ConfigError(
            "trainer.monitor",
            f"{monitor!r} is not computed; choose loss or one of the "
            f"metrics: {', '.join(metrics) or 'none'}",
        )
    mode = cfg.trainer.monitor_mode
    if mode == "auto":
        mode = (
            "min" if monitor == "loss" else ("max" if metrics[monitor].greater_is_better else "min")
        )
    data = task.load(cfg.data, base_dir)
    modalities = set(data.modalities.values())
    for i, (ref, comp) in enumerate(
        zip(cfg.augmenters + cfg.preprocessors, augmenters + preprocessors, strict=True)
    ):
        mods = set(comp.modalities)
        if mods and not mods & modalities:
            section = "augmenters" if i < len(augmenters) else "preprocessors"
            j = i if i < len(augmenters) else i - len(augmenters)
            raise ConfigError(
                f"{section}[{j}].name",
                f"{ref.name!r} works on {sorted(mods)} inputs; "
                f"task {task.name!r} has {sorted(modalities)}",
            )
    return Prepared(
        cfg,
        base_dir,
        pm,
        task,
        data,
        validators,
        balancer,
        augmenters,
        preprocessors,
        tokenizer,
        model_builder,
        metrics,
        callbacks,
        monitor,
        mode,
    )


def run_validators(prep: Prepared) -> TaskData:
    """Apply each validator's policy in order; returns the data that survives."""
    data = prep.data
    findings: list[Finding] = []
    for i, (ref, validator) in enumerate(prep.validators):
        policy = validator.policy
        try:
            found = validator.check(data, prep.task)
        except UserError as exc:
            raise DataError(f"validators[{i}] ({ref.name}): {exc}") from None
        for f in found:
            f.validator = ref.name
            f.kind = str(f.kind)  # a FindingKind member as its plain value, in messages too
            if policy == "fail" and f.severity != "info" and (f.rows or f.severity == "error"):
                raise DataError(
                    f"{data.source}: validators[{i}] ({ref.name}, policy fail): {f.message}"
                )
            if f.kind in prep.config.fail_on and f.severity != "info":
                raise DataError(f"{data.source}: fail_on {f.kind!r} ({ref.name}): {f.message}")
            if f.relabel:
                frame = data.frame.copy()
                for row, value in f.relabel.items():
                    frame.loc[row, data.target] = value
                data = data.subset(frame.index)
                data.frame = frame
                f.action = f"relabelled {len(f.relabel)} rows"
            elif policy == "down-weight" and (f.weights or f.details.get("weights")):
                # ``details["weights"]``: where plugins written before ``Finding.weights`` put them
                raw = f.weights or f.details["weights"]
                weights = {int(r): float(w) for r, w in raw.items()}
                for row, w in weights.items():
                    prep.row_weights[row] = min(prep.row_weights.get(row, 1.0), w)
                f.action = f"down-weighted {len(weights)} rows in the loss"
            elif policy == "drop" and (f.drop if f.drop is not None else f.rows):
                drop = f.drop if f.drop is not None else f.rows
                keep = data.frame.index.difference(drop)
                data = data.subset(keep)
                f.action = f"dropped {len(drop)} rows"
            else:
                f.action = "reported" if policy != "drop" else "nothing to drop"
            findings.append(f)
    prep.findings = findings
    if len(data) == 0:
        raise DataError(
            f"{data.source}: no rows left after validation (the validators dropped all "
            f"{len(prep.data)} rows); see their policies"
        )
    if data.classes is not None:
        left = data.frame[data.target].nunique()
        if left < 2:
            raise DataError(
                f"{data.source}: only {left} class left after validation; classification "
                "needs at least two"
            )
        if not prep.config.data.classes:
            # Classes the validators removed or merged away are not trained on.
            data = data.subset(data.frame.index)
            data.classes = class_list(data.frame[data.target])
    return data


def leakage_check(prep: Prepared, data: TaskData, split: Split) -> Finding:
    """Compare the final splits: the same content (task's duplicate key) in two splits leaks."""
    keys = prep.task.content_keys(data)
    if keys is None:
        return Finding("leakage", "info", "not checked: the task defines no content key")
    by_split = {"train": split.train, "val": split.val, "test": split.test}
    parts = {name: set(keys.loc[r]) for name, r in by_split.items()}
    shared = {
        pair: parts[pair[0]] & parts[pair[1]]
        for pair in (("train", "val"), ("train", "test"), ("val", "test"))
    }
    rows = sorted(
        int(r) for (a, b), common in shared.items() for r in keys.index[keys.isin(common)]
    )
    if not rows:
        return Finding("leakage", "info", "no example appears in two splits", validator="split")
    counts = ", ".join(f"{a}/{b}: {len(c)}" for (a, b), c in shared.items() if c)
    return Finding(
        "leakage",
        "error",
        f"examples shared between splits ({counts}): rows {rows[:10]}",
        rows,
        validator="split",
        action="reported (set split.group_duplicates: true to prevent it)",
    )


def split_data(prep: Prepared, data: TaskData) -> Split:
    s = prep.config.split
    strata = None
    if s.stratify:
        strata = prep.task.stratify_labels(data)
        if strata is None and data.classes is not None:
            strata = data.label_ids()
    groups = None
    keys = prep.task.content_keys(data) if s.group_duplicates else None
    if keys is not None:
        groups = keys.to_numpy()
    split = make_split(
        data.frame.index, s.train, s.val, s.test, s.seed, strata=strata, groups=groups
    )
    empty = [name for name, r in (("val", split.val), ("test", split.test)) if len(r) == 0]
    if empty:
        n_groups = len(set(groups)) if groups is not None else len(data)
        raise DataError(
            f"{data.source}: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} "
            f"empty: {len(data)} rows in {n_groups} distinct examples (duplicates stay together) "
            "are too few to split 70/15/15; add data or drop duplicates"
        )
    return split


def class_counts(data: TaskData, rows: np.ndarray) -> dict[str, int]:
    if data.classes is None:
        return {}
    ids = data.subset(rows).label_ids()
    counts = np.bincount(ids, minlength=len(data.classes))
    return {str(c): int(n) for c, n in zip(data.classes, counts, strict=True)}


def evaluate_metrics(prep: Prepared, logits: Any, labels: Any, loss_fn: Any) -> dict[str, float]:

    out = (
        {"loss": float(loss_fn(logits, labels.to(logits.device)).item())}
        if labels is not None
        else {}
    )
    y_pred, y_score = prep.task.predictions(logits)
    y_true = labels.numpy()
    for name, metric in prep.metrics.items():
        out[name] = float(metric(y_true, y_pred, y_score))
    return out


def majority_baseline(
    data: TaskData, train_rows: np.ndarray, test_rows: np.ndarray
) -> float | None:
    if data.classes is None:
        return None
    train_ids = data.subset(train_rows).label_ids()
    majority = np.bincount(train_ids).argmax()
    return float((data.subset(test_rows).label_ids() == majority).mean())


def prediction_frame(task: Any, data: TaskData, rows: np.ndarray, logits: Any, labels: Any) -> Any:
    """One row per example: its data row, true and predicted target, class probabilities."""
    import pandas as pd

    y_pred, y_score = task.predictions(logits)
    frame = pd.DataFrame({"row": np.asarray(rows)})
    y_true = labels.numpy() if labels is not None else None
    if data.classes is not None:
        names = np.asarray([str(c) for c in data.classes], dtype=object)
        if y_true is not None:
            frame["y_true"] = names[y_true]
        frame["y_pred"] = names[y_pred]
        for j, name in enumerate(names):
            frame[f"prob_{name}"] = y_score[:, j]
    elif np.ndim(y_pred) == 2:  # several targets: one true/predicted column pair each
        names = data.target if isinstance(data.target, list) else range(y_pred.shape[1])
        for j, name in enumerate(names):
            if y_true is not None:
                frame[f"y_true_{name}"] = y_true[:, j]
            frame[f"y_pred_{name}"] = y_pred[:, j]
    else:
        if y_true is not None:
            frame["y_true"] = list(y_true)
        frame["y_pred"] = list(y_pred)
    return frame


@dataclass
class Outcome:
    """A trained run: its folder and, while in memory, how to evaluate the best model on test."""

    folder: RunFolder
    context: RunContext
    train_metrics: dict[str, Any]
    best_value: float | None
    evaluate_test: Callable[[], tuple[dict[str, float], Any]] | None = None


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
    cfg, task = prep.config, prep.task
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
        if "leakage" in cfg.fail_on:
            raise DataError(f"{data.source}: fail_on 'leakage': {leak.message}")
    for i, (name, metric) in enumerate(prep.metrics.items()):
        try:  # a metric undefined on this data says why
            metric.check_data(data)
        except UserError as exc:
            raise ConfigError(f"metrics[{i}]", f"{name}: {exc}") from None
    task.fit(data, split.train, prep.model_builder)  # train-split state (scaler, features)
    rng = np.random.default_rng(cfg.split.seed)
    plan: BalancePlan = prep.balancer.plan(data, split.train, rng)
    train_rows = split.train if plan.indices is None else split.train[plan.indices]
    synthetic = plan.synthetic  # rows a balancer made (SMOTE): train only
    if synthetic is not None and len(synthetic):
        import pandas as pd

        data = data.subset(data.frame.index)
        data.frame = pd.concat([data.frame, synthetic])
        train_rows = np.concatenate([train_rows, synthetic.index.to_numpy()])
    sizes = {"train": len(train_rows), "val": len(split.val), "test": len(split.test)}
    log(f"split {split.sizes()} (train after balancing: {len(train_rows)}); balancer: {plan.note}")
    ctx = RunContext(
        config=cfg,
        run_dir=folder.path,
        final_dir=folder.final,
        task=cfg.task.name,
        problem=task.problem,
        classes=data.classes,
        split_sizes=sizes,
        findings=[f.as_dict() for f in prep.findings],
        trial=trial,
    )
    resolved = dump_config(cfg)
    resolved["data"]["path"] = str(Path(data.source).resolve())
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
    folder.write_json(
        "split.json",
        {
            **split.as_dict(),
            "balanced_train": [int(i) for i in train_rows],
            "class_counts": {
                "train": class_counts(data, split.train),
                "val": class_counts(data, split.val),
                "test": class_counts(data, split.test),
                "train_balanced": class_counts(data, train_rows),
            },
        },
    )
    folder.write_json(
        "labels.json",
        {
            "classes": data.classes,
            "label_column": data.target,
            "inputs": data.inputs,
            "modalities": data.modalities,
            "problem": task.problem,
        },
    )
    main = is_main_process()  # other processes of a multi-process run observe nothing
    for cb in prep.callbacks if main else []:
        prep.pm.pm.register(cb)
    hook = prep.pm.hook if main else _NoHooks()
    try:
        hook.on_run_start(run=ctx)  # a logger that cannot connect fails here: nothing is kept
        from tuneforge.trainer import Trainer

        trainer = Trainer(cfg.trainer, console=log)
        task.prepare(prep.tokenizer, prep.model_builder)
        seed = cfg.trainer.seed
        train_set = task.make_dataset(
            data, train_rows, prep.tokenizer, prep.preprocessors, prep.augmenters, seed
        )
        val_set = task.make_dataset(data, split.val, prep.tokenizer, prep.preprocessors, [], seed)
        collate = task.collate_fn(prep.tokenizer, trainer.on_cuda)
        weights = {r: w for r, w in prep.row_weights.items() if r in data.frame.index}
        for r, w in (plan.row_weights or {}).items():  # balancer loss weights
            weights[r] = weights.get(r, 1.0) * w
        if weights:
            row_w = np.array([weights.get(int(r), 1.0) for r in train_rows], dtype=np.float32)
            train_set = WeightedExamples(train_set, row_w)
            train_collate = WeightedExamples.collate(collate)
        else:
            train_collate = collate
        model = task.build_model(prep.model_builder, data, prep.tokenizer)
        loss_fn = task.loss_fn(plan.class_weights, focal_gamma=plan.focal_gamma)
        eval_loss = task.loss_fn(None)

        def ckpt_dir() -> Path:  # the folder is renamed when it is committed
            return folder.path / "checkpoint"

        ckpt = ckpt_dir()

        def evaluate(logits: Any, labels: Any) -> dict[str, float]:
            metrics = evaluate_metrics(prep, logits, labels, eval_loss)
            hook.on_evaluate(run=ctx, split="val", metrics=metrics)
            return metrics

        def save_best(unwrapped: Any) -> None:
            tmp = folder.path / ".checkpoint.tmp"
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            tmp.mkdir()
            task.save_artifacts(unwrapped, prep.tokenizer, prep.model_builder, tmp)
            if ckpt.exists():
                import shutil

                shutil.rmtree(ckpt)
            tmp.rename(ckpt)

        def on_epoch_end(epoch: int, row: dict[str, float]) -> None:
            now = time.time()
            for key, value in row.items():
                if key != "epoch":
                    split_name, _, name = key.partition(".")
                    folder.log_history(
                        {
                            "step": None,
                            "epoch": epoch,
                            "split": split_name,
                            "name": name,
                            "value": value,
                            "time": now,
                        }
                    )
            hook.on_epoch_end(run=ctx, epoch=epoch, metrics=row)
            if epoch_callback is not None:
                epoch_callback(epoch, row)

        def on_log(step: int, values: dict[str, float]) -> None:
            now = time.time()
            for key, value in values.items():
                split_name, _, name = key.rpartition(".")
                folder.log_history(
                    {
                        "step": step,
                        "epoch": None,
                        "split": split_name or "train",
                        "name": name,
                        "value": value,
                        "time": now,
                    }
                )
            hook.on_log(run=ctx, step=step, values=values)

        # Set-up is over (tokenizer, datasets, model, loss): a failure before this point, such as
        # a missing model.checkpoint folder, is a config error and leaves nothing behind.
        folder.training_started = True
        result = trainer.fit(
            model,
            train_set,
            val_set,
            train_collate,
            loss_fn,
            evaluate,
            prep.monitor,
            prep.mode,
            save_best,
            on_epoch_end=on_epoch_end,
            on_log=on_log,
            on_epoch_start=lambda m, epoch: task.on_epoch_start(m, prep.model_builder, epoch),
            sample_weights=None
            if plan.sample_weights is None
            else plan.sample_weights[plan.indices]
            if plan.indices is not None
            else plan.sample_weights,
            **_state_args(folder, trial, resume, ckpt_dir, ctx, prep),
        )
        if main and not ckpt.exists():
            raise UserError(f"no checkpoint was saved: val.{prep.monitor} was never finite")
        best_row = result.history[(result.best_epoch or 1) - 1]
        train_metrics = {
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

        def evaluate_test() -> tuple[dict[str, float], Any]:
            # On the main process alone (the others have finished): no collective calls.
            best_model = task.load_artifacts(ckpt_dir(), prep.tokenizer, prep.model_builder)
            best_model = trainer.prepare_model(best_model, local=True)
            test_set = task.make_dataset(
                data, split.test, prep.tokenizer, prep.preprocessors, [], seed
            )
            test_dl = trainer.loader(test_set, collate, local=True)
            logits, labels = trainer.predict(best_model, test_dl)
            metrics = evaluate_metrics(prep, logits, labels, eval_loss)
            base = majority_baseline(data, split.train, split.test)  # None without classes
            if base is not None:
                metrics["majority_baseline_accuracy"] = base
            metrics.update(task.baselines(data, split, prep.metrics))  # reference models
            hook.on_evaluate(run=ctx, split="test", metrics=metrics)
            return metrics, prediction_frame(task, data, split.test, logits, labels)

        return Outcome(folder, ctx, train_metrics, result.best_value, evaluate_test)
    except BaseException as exc:
        end_run(prep, ctx, {}, "pruned" if isinstance(exc, TrialPruned) else "failed")
        raise


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


def finish(
    outcome: Outcome, prep: Prepared, log: Log, started: float, extra: dict[str, Any] | None = None
) -> Path:
    """Evaluate the best checkpoint on test once, write metrics and commit the folder.

    ``run.json`` says ``completed`` only under the final name (written just after the rename),
    so a folder killed before that never claims it; the run's last hooks (report, loggers) see
    the committed folder, still under the run's lock.
    """
    import torch

    assert outcome.evaluate_test is not None
    folder = outcome.folder
    try:
        test, predictions = outcome.evaluate_test()
        metrics = {**outcome.train_metrics, "test": test, **(extra or {})}
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
        processes = process_count()
        per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", processes) or processes)
        info = {
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
            "plugins": sorted(
                i.name for i in prep.pm.infos.values() if not i.disabled and not i.error
            ),
        }
        final = folder.commit(info, keep_lock=True)
    except BaseException:
        end_run(prep, outcome.context, {}, "failed")
        raise
    outcome.context.run_dir = final
    try:
        end_run(prep, outcome.context, test, "completed")
    finally:
        folder.release()
    shown = "  ".join(f"{k} {v:.4f}" for k, v in test.items())
    log.result(f"test: {shown}")
    log.result(f"run folder: {final}")
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
        return run_study(prep, raw or dump_config(cfg), overrides, log, overwrite, started)
    overwrite = overwrite or cfg.output.overwrite
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


def _state_args(
    folder: RunFolder,
    trial: int | None,
    resume: Path | None,
    ckpt_dir: Callable[[], Path],
    ctx: RunContext,
    prep: Prepared,
) -> dict[str, Any]:
    """Training-state checkpoints for ``--resume``: a single one-process run keeps them in
    ``RUN/state``; its best checkpoint so far is linked into each (``best/``)."""
    import shutil

    if trial is not None or process_count() > 1:
        return {}
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

    return {"state_dir": folder.path / STATE_DIR, "resume": resume, "on_checkpoint": on_checkpoint}


def resume_run(
    run_dir: Path,
    log: Log,
    disable: list[str] = (),
    local: list[str] = (),
    strict: bool | None = None,
) -> Path:
    """Continue a killed or crashed run from its last training-state checkpoint.

    The run's own ``config.yaml`` is used, the data must split as ``split.json`` says, and the
    run ends as the uninterrupted run would have (same final metrics on CPU).
    """
    from tuneforge.checkpoint import read_checkpoint, step_dirs
    from tuneforge.config import read_yaml
    from tuneforge.run import find_resumable

    if process_count() > 1:
        raise UserError("--resume runs in one process (multi-process runs keep no training state)")
    source, final = find_resumable(run_dir)
    # One process at a time continues a run: a second --resume (or a new run of the same
    # output.dir) stops here with a one-line error naming the process that holds it.
    lock = RunLock(final)
    try:
        source, final = find_resumable(run_dir)  # again, now that nobody else can move it
        steps = step_dirs(source / STATE_DIR)
        if not steps:
            raise UserError(f"{source / 'state'}: no training-state checkpoint; nothing to resume")
        # Before anything moves: every file's size and SHA-256, the state's checksum, and that
        # each part decodes; a damaged, missing or extra file is refused here, naming it.
        state = read_checkpoint(steps[-1][1])
        config_file = source / "config.yaml"
        if config_file.is_file() and "***" in config_file.read_text(errors="replace"):
            raise UserError(
                f"{source / 'config.yaml'}: holds masked passwords (***), which a resumed run "
                "cannot use; start the run again from its own config"
            )
        try:
            cfg = build_config(read_yaml(source / "config.yaml"))
        except ConfigError as exc:
            raise UserError(f"{source / 'config.yaml'}: {exc}") from None
        if cfg.tuner is not None or (cfg.model is not None and cfg.model.candidates):
            raise UserError(f"{source}: a study (tuner or model.candidates) cannot be resumed")
        run_info = state.get("run", {})
        base_dir = Path(run_info.get("base_dir") or source)
        cfg.output.dir = final
        pm = make_plugin_manager(cfg, base_dir, disable, local, strict)
        prep = prepare(cfg, base_dir, pm)
        folder = RunFolder.adopt(source, final, run_info.get("history_bytes"), lock=lock)
    except BaseException:
        lock.release()
        raise
    log(f"resuming {final.name} from {source.name}/state/{steps[-1][1].name}")
    try:
        outcome = train(prep, folder, log, resume=folder.path / STATE_DIR / steps[-1][1].name)
        return finish(outcome, prep, log, float(run_info.get("started") or time.time()))
    except BaseException as exc:
        error = close_failed(folder, exc, log)
        if error is exc:
            raise
        raise error from exc


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


def _space_probes(dist: Any) -> list[Any]:
    kind = dist.kind
    # a Distribution's own field (uniform, loguniform, int), by name
    return list(dist.choice) if kind == "choice" else list(getattr(dist, kind))


def _study_summary(trials: list[Trial], sign: int) -> dict[str, Any]:
    """The study's best completed trial and its trial counts by state."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    done = [
        t for t in trials if t.state == "complete" and t.value is not None and np.isfinite(t.value)
    ]
    top = max(done, key=lambda t: (sign * t.value, -t.number)) if done else None
    best = (
        None
        if top is None
        else {"trial": top.number, "value": top.value, "params": top.params, "run_dir": top.run_dir}
    )
    return {"best": best, "counts": {"total": len(trials), **counts}}


def _describe_best(best: dict[str, Any], monitor: str) -> str:
    where = f" ({best['run_dir']})" if best.get("run_dir") else ""
    return f"trial {best['trial']}: {monitor} {best['value']:.4f} with {best['params']}{where}"


def _no_winner(
    study: RunFolder,
    trials: list[Trial],
    summary: dict[str, Any],
    tuner: str,
    monitor: str,
    log: Log,
) -> Path:
    """End a study run none of whose own trials completed.

    Failures only: an error. Pruned trials are the tuner at work, not failures: when the study
    (shared with other workers or earlier runs) has a completed trial, this run has done its
    share; its folder records its trials and the study's best, with no model of its own, and
    the exit status is 0. When no trial of the whole study completed, the pruner stopped
    everything: an error that says so.
    """
    pruned = sum(t.state == "pruned" for t in trials)
    failed = sum(t.state == "failed" for t in trials)
    if not pruned:
        raise UserError("every trial failed; see the messages above")
    mine = f"{pruned} pruned" + (f", {failed} failed" if failed else "")
    best = summary["best"]
    if best is None:
        raise UserError(
            f"no trial completed ({mine}): the pruner stopped every trial of the study; "
            "prune later (tuner.warmup_epochs, tuner.startup_trials) or set tuner.pruner: none"
        )
    study.write_json(
        "metrics.json",
        {
            "study": {
                "tuner": tuner,
                "trials": len(trials),
                "best_trial": None,
                "study_best": best,
                "study_trials": summary["counts"],
            }
        },
    )
    study.write_json(
        "run.json",
        {
            "status": "pruned",
            "tuneforge": tuneforge.__version__,
            "why": f"no trial of this run completed ({mine}); nothing was tested here",
            "finished": time.time(),
        },
    )
    final = study.commit()
    log.result(
        f"no trial of this run completed ({mine}); nothing was tested here. "
        f"Best trial of the study: {_describe_best(best, monitor)}"
    )
    log.result(f"study folder: {final}")
    return final


def run_study(
    prep: Prepared,
    raw: dict[str, Any],
    overrides: list[tuple[str, Any]],
    log: Log,
    overwrite: bool,
    started: float,
) -> Path:
    """A tuner study: each trial is a run folder under ``trials/``; the best is tested once."""
    cfg = prep.config
    assert cfg.tuner is not None
    tuner_ref = cfg.tuner
    tuner = instantiate(
        prep.pm.registries,
        "tuners",
        ComponentRef.model_validate({"name": tuner_ref.name, **tuner_ref.params}),
        "tuner",
    )
    if not tuner_ref.space:
        raise ConfigError("tuner.space", "empty: give at least one key to search, e.g. trainer.lr")
    try:
        tuner.validate_space(tuner_ref.space)
    except ValueError as exc:
        raise ConfigError("tuner.space", str(exc)) from None
    base_raw = {k: v for k, v in raw.items() if k != "tuner"}
    base_overrides = [(k, v) for k, v in overrides if not k.startswith("tuner")]
    for key, dist in tuner_ref.space.items():
        # Every searched key must exist and accept the range's values.
        for value in _space_probes(dist):
            try:
                prepare(
                    build_config(base_raw, base_overrides + [(key, value)]), prep.base_dir, prep.pm
                )
            except ConfigError as exc:
                raise ConfigError(
                    f"tuner.space.{key}", f"value {value!r} is not valid: {exc}"
                ) from None
    study = RunFolder(cfg.output.dir, overwrite=overwrite or cfg.output.overwrite)
    best: dict[str, Any] = {"outcome": None, "prep": None, "trial": None}
    sign = 1 if prep.mode == "max" else -1

    def objective(trial: Trial) -> float:
        t0 = time.time()
        trial_raw = copy.deepcopy(raw)
        trial_raw.pop("tuner", None)
        trial_cfg = build_config(trial_raw, base_overrides + list(trial.params.items()))
        trial_cfg.output.dir = study.path / "trials" / f"trial_{trial.number:03d}"
        log(f"trial {trial.number}: {trial.params}")
        trial_prep = prepare(trial_cfg, prep.base_dir, prep.pm)
        folder = RunFolder(trial_cfg.output.dir)
        study.training_started = True
        monitor = f"val.{trial_prep.monitor}"

        def after_epoch(epoch: int, row: dict[str, float]) -> None:
            value = float(row.get(monitor, float("nan")))
            trial.intermediate[epoch] = value
            if trial.report is not None and trial.report(epoch, value):
                raise TrialPruned(f"{monitor} {value:.4f} after epoch {epoch}")

        try:
            outcome = train(trial_prep, folder, log, trial=trial.number, epoch_callback=after_epoch)
        except TrialPruned as exc:  # the tuner stopped an unpromising trial: keep its folder
            finite = [v for v in trial.intermediate.values() if np.isfinite(v)]
            trial.value = (max if sign > 0 else min)(finite) if finite else None
            trial.state, trial.seconds = "pruned", time.time() - t0
            folder.commit(
                {
                    "status": "pruned",
                    "trial": trial.number,
                    "params": trial.params,
                    "why": str(exc),
                }
            )
            trial.run_dir = str(study.final / "trials" / f"trial_{trial.number:03d}")
            log(f"trial {trial.number} pruned: {exc}")
            return float("nan")
        except UserError as exc:  # this trial's settings fail (say, the loss diverges): go on
            trial.state, trial.seconds = "failed", time.time() - t0
            if folder.training_started:
                kept = folder.fail(exc)
                trial.run_dir = str(study.final / "trials" / kept.name)
            else:
                folder.abort()
            if isinstance(exc, PluginError):  # a plugin's bug, not this trial's settings: stop
                raise
            log(f"trial {trial.number} failed: {exc}")
            return float("nan")
        except BaseException as exc:  # the study stops: keep what this trial logged
            error = close_failed(folder, exc, log)
            if error is exc:
                raise
            raise error from exc
        try:
            folder.write_json("metrics.json", outcome.train_metrics)
            info = {"status": "trained", "trial": trial.number, "params": trial.params}
            outcome.context.run_dir = folder.commit(info, keep_lock=True)
        except BaseException as exc:
            end_run(trial_prep, outcome.context, {}, "failed")
            error = close_failed(folder, exc, log)
            if error is exc:
                raise
            raise error from exc
        try:
            end_run(trial_prep, outcome.context, outcome.train_metrics["val"], "trained")
        finally:
            folder.release()
        trial.value = outcome.best_value
        trial.state = "complete"
        trial.seconds = time.time() - t0
        trial.run_dir = str(study.final / "trials" / f"trial_{trial.number:03d}")
        current = best["trial"]
        if trial.value is not None and (
            current is None or sign * trial.value > sign * current.value
        ):
            best.update(outcome=outcome, prep=trial_prep, trial=trial)
        return trial.value if trial.value is not None else float("nan")

    try:
        trials = tuner.search(tuner_ref.space, objective, prep.mode)
        rows = [
            {
                "number": t.number,
                **{f"params.{k}": v for k, v in t.params.items()},
                f"val.{prep.monitor}": t.value,
                "epochs": len(t.intermediate),
                "state": t.state,
                "seconds": round(t.seconds, 2),
            }
            for t in trials
        ]
        import pandas as pd

        study.write_text("trials.csv", pd.DataFrame(rows).to_csv(index=False))
        if "model" in tuner_ref.space:  # model selection: a comparison table of the candidates
            table = pd.DataFrame(
                [
                    {
                        "model": model_label(t.params["model"]),
                        **{f"params.{k}": v for k, v in t.params.items() if k != "model"},
                        f"val.{prep.monitor}": t.value,
                        "state": t.state,
                        "epochs": len(t.intermediate),
                        "seconds": round(t.seconds, 2),
                    }
                    for t in trials
                ]
            )
            study.write_text("candidates.csv", table.to_csv(index=False))
            log("model selection:\n" + table.to_string(index=False))
        prep.pm.hook.on_study_end(
            study_dir=study.path,
            trials=trials,
            space=tuner_ref.space,
            monitor=f"val.{prep.monitor}",
            direction=prep.mode,
        )
        summary = _study_summary(tuner.study_trials() or trials, sign)
        if best["trial"] is None:
            return _no_winner(study, trials, summary, tuner_ref.name, f"val.{prep.monitor}", log)
        winner: Trial = best["trial"]
        log(
            f"best trial {winner.number}: val.{prep.monitor} {winner.value:.4f} with {winner.params}"
        )
        study_best = summary["best"]
        if study_best is not None and study_best["trial"] != winner.number:
            log(f"best trial of the study: {_describe_best(study_best, f'val.{prep.monitor}')}")
        # The winner's resolved config (absolute paths), ready to run on its own.
        trial_dir = study.path / "trials" / f"trial_{winner.number:03d}"
        best_yaml = yaml.safe_load((trial_dir / "config.yaml").read_text())
        best_yaml["output"]["dir"] = str(study.final.parent / f"{study.final.name}-best")
        best_yaml.pop("tuner", None)
        study.write_yaml("best_config.yaml", best_yaml)
        # The study folder doubles as the winner's run folder (predict works on it).
        import shutil

        for name in ("config.yaml", "labels.json", "split.json", "findings.json"):
            shutil.copy2(trial_dir / name, study.path / name)
        shutil.copytree(trial_dir / "checkpoint", study.path / "checkpoint")
        outcome: Outcome = best["outcome"]
        outcome.folder = study
        outcome.context.run_dir, outcome.context.final_dir = study.path, study.final
        extra = {
            "study": {
                "tuner": tuner_ref.name,
                "trials": len(trials),
                "best_trial": winner.number,
                "best_params": winner.params,
                # The whole study (every worker sharing its storage, earlier runs included).
                "study_best": summary["best"],
                "study_trials": summary["counts"],
            }
        }
        if "model" in winner.params:
            extra["study"]["selected_model"] = model_label(winner.params["model"])
        outcome.train_metrics = {**outcome.train_metrics, "trial": winner.number}
        return finish(outcome, best["prep"], log, started, extra)
    except BaseException as exc:
        error = close_failed(study, exc, log)
        if error is exc:
            raise
        raise error from exc


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
    import json
    import re
    import sys

    from tuneforge.config import read_yaml
    from tuneforge.data import check_output_file, write_table
    from tuneforge.errors import short  # run.json is user-visible state, maybe damaged

    if not run_dir.is_dir():
        siblings = sorted(p.name for p in run_dir.parent.glob(f".{run_dir.name}.partial-*"))
        hint = f" (only the unfinished {siblings[0]} beside it)" if siblings else ""
        raise UserError(f"run folder not found: {run_dir}{hint}")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a tuneforge run folder (no config.yaml)")
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
    ckpt = run_dir / "checkpoint"
    if not ckpt.is_dir():
        if status == "completed":
            raise UserError(f"{run_dir}: no checkpoint/ folder")
        raise UserError(
            f"{run_dir}: the run did not complete ({why}) and saved no best checkpoint "
            "(no checkpoint/): nothing to predict with"
        )
    if status == "trained":  # a tuner's trial: trained and saved, tested by its study
        pass
    elif status != "completed":
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ckpt.stat().st_mtime))
        print(
            f"tuneforge: warning: {run_dir}: the run did not complete ({why}); predicting with "
            f"its best checkpoint so far, {ckpt} (saved {saved})",
            file=sys.stderr,
            flush=True,
        )
    if output is None:
        output = run_dir / "predictions" / f"{input_path.stem}.csv"
    check_output_file(output, "--output", source=input_path)  # before the model is loaded
    try:
        cfg = build_config(read_yaml(run_dir / "config.yaml"))
    except ConfigError as exc:
        raise UserError(f"{run_dir / 'config.yaml'}: {exc}") from None
    pm = make_plugin_manager(cfg, run_dir, disable, local)
    regs = pm.registries
    task = build_component(regs, "tasks", cfg.task, "task", Task)
    task.name = cfg.task.name
    if cfg.model is None:
        raise UserError(f"{run_dir / 'config.yaml'}: no model section")
    tokenizer = (
        None
        if cfg.tokenizer is None
        else instantiate(regs, "tokenizers", cfg.tokenizer, "tokenizer")
    )
    builder = build_component(regs, "models", cfg.model, "model", ModelBuilder)
    preprocessors = [
        build_component(regs, "tokenizers", r, f"preprocessors[{i}]", Preprocessor)
        for i, r in enumerate(cfg.preprocessors)
    ]
    labels_path = run_dir / "labels.json"
    try:
        labels = json.loads(labels_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{run_dir}: no labels.json; not a complete run folder") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise UserError(f"{labels_path}: unreadable ({reason})") from None
    classes = labels.get("classes") if isinstance(labels, dict) else None
    if not isinstance(labels, dict) or not isinstance(classes, (list, type(None))):
        raise UserError(f"{labels_path}: not a labels file (a JSON object with a classes list)")
    frame = task.load_inputs(input_path, cfg.data)
    if len(frame) == 0:
        raise DataError(f"{input_path}: no data rows to predict on (only a header?)")
    from tuneforge.trainer import Trainer

    trainer_cfg = cfg.trainer.model_copy()
    trainer = Trainer(trainer_cfg, console=log)
    model = task.load_artifacts(ckpt, tokenizer, builder)
    model = trainer.prepare_model(model)
    dataset = task.predict_dataset(frame, cfg.data, tokenizer, preprocessors)
    logits, _ = trainer.predict(
        model, trainer.loader(dataset, task.collate_fn(tokenizer, trainer.on_cuda))
    )
    y_pred, y_score = task.predictions(logits)
    out = frame.copy()
    if classes:
        if y_score is None or np.ndim(y_score) != 2 or y_score.shape[1] != len(classes):
            raise UserError(
                f"{labels_path}: {len(classes)} classes, but the checkpoint {ckpt} predicts "
                f"{'no' if y_score is None else np.shape(y_score)[-1]} class scores: the run "
                "folder's files do not belong together"
            )
        out["prediction"] = [classes[i] for i in y_pred]
        for j, c in enumerate(classes):
            out[f"prob_{c}"] = y_score[:, j]
    elif np.ndim(y_pred) == 2:  # several targets: prediction_<column> each
        names = labels.get("label_column")
        names = names if isinstance(names, list) else []
        names = names if len(names) == y_pred.shape[1] else range(y_pred.shape[1])
        for j, name in enumerate(names):
            out[f"prediction_{name}"] = y_pred[:, j]
    else:
        out["prediction"] = y_pred
    write_table(out, output, "--output")
    log.result(f"wrote {len(out)} predictions to {output}")
    return output
