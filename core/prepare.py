"""The first stage of a run: a config resolved into components, its data loaded, validated
and split (what ``tuneforge validate`` needs). Nothing is written here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.components import (
    Augmenter,
    Balancer,
    Finding,
    FindingKind,
    Metric,
    ModelBuilder,
    Preprocessor,
    Task,
    Validator,
)
from tuneforge.config import (
    ComponentRef,
    ModelRef,
    RunConfig,
    instantiate,
)
from tuneforge.console import Console
from tuneforge.data import TaskData
from tuneforge.errors import ConfigError, DataError, PluginError, UserError
from tuneforge.manager import PluginManager
from tuneforge.registry import section_kind
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


def make_component(regs: Any, ref: ComponentRef, path: str) -> Any:
    """:func:`~tuneforge.config.instantiate` the component ``ref`` of the config key ``path``
    (``validators[2]``), looked up in the kind :data:`tuneforge.registry.SECTION_KINDS` maps
    the key's section to."""
    return instantiate(regs, section_kind(path), ref, path)


def build_component(regs: Any, ref: ComponentRef, path: str, base: type) -> Any:
    """:func:`make_component`, for a component that must subclass ``base`` (its kind's
    contract in :mod:`tuneforge.components`): core calls only what ``base`` declares."""
    comp = make_component(regs, ref, path)
    if not isinstance(comp, base):
        kind = section_kind(path)
        entry = regs[kind].get(ref.name)
        raise PluginError(
            f"{path}.name: {ref.name!r} from plugin {entry.plugin!r} is a "
            f"{type(comp).__qualname__}, not a tuneforge.components.{base.__name__}: a "
            f"{kind[:-1]} must subclass it"
        )
    return comp


def check_problems(
    regs: Any,
    task: Task,
    cfg: RunConfig,
    validators: list[tuple[ComponentRef, Validator]],
    balancer: Balancer,
    augmenters: list[tuple[ComponentRef, Augmenter]],
    metrics: dict[str, Metric],
) -> None:
    """Refuse a validator, balancer, augmenter or metric that does not support the task's problem kind
    (:attr:`~tuneforge.components.Component.problems`), naming those of its kind that do."""
    chosen = [(f"validators[{i}]", r.name, v) for i, (r, v) in enumerate(validators)]
    chosen.append(("balancer", cfg.balancer.name, balancer))
    chosen += [(f"augmenters[{i}]", r.name, a) for i, (r, a) in enumerate(augmenters)]
    chosen += [(f"metrics[{i}]", n, m) for i, (n, m) in enumerate(metrics.items())]
    for key, name, comp in chosen:
        if not comp.problems or task.problem in comp.problems:
            continue
        kind = section_kind(key)
        fits = [e.name for e in regs[kind] if task.problem in (e.problems() or (task.problem,))]
        # augmenters are also chosen by modality: a list of every one would mislead
        hint = f"; for {task.problem} use: {', '.join(sorted(fits))}" if fits else ""
        hint = "" if kind == "augmenters" else hint
        raise ConfigError(
            f"{key}.name",
            f"{name!r} supports {' and '.join(comp.problems)} problems; task {task.name!r} "
            f"is {task.problem}{hint}",
        )


def prepare(cfg: RunConfig, base_dir: Path, pm: PluginManager) -> Prepared:
    """Resolve every component and load the data. Raises before anything is written."""
    regs = pm.registries
    task = build_component(regs, cfg.task, "task", Task)
    task.name = cfg.task.name
    cfg = _with_defaults(cfg, task.defaults())
    validators = [
        (ref, build_component(regs, ref, f"validators[{i}]", Validator))
        for i, ref in enumerate(cfg.validators or [])
    ]
    balancer = build_component(regs, cfg.balancer, "balancer", Balancer)
    augmenters = [
        build_component(regs, r, f"augmenters[{i}]", Augmenter)
        for i, r in enumerate(cfg.augmenters)
    ]
    preprocessors = [
        build_component(regs, r, f"preprocessors[{i}]", Preprocessor)
        for i, r in enumerate(cfg.preprocessors)
    ]
    if cfg.model is None:
        raise ConfigError("model", f"required: task {cfg.task.name!r} has no default model")
    if cfg.model.candidates:
        # Model selection: every candidate must resolve; the first stands in for validation.
        for i, cand in enumerate(cfg.model.candidates):
            build_component(regs, cand, f"model.candidates[{i}]", ModelBuilder)
        cfg = cfg.model_copy(deep=True)
        cfg.model = ModelRef.model_validate(cfg.model.candidates[0].model_dump())
    # Tasks whose inputs need no tokenizer (tabular) have none by default.
    tokenizer = None if cfg.tokenizer is None else make_component(regs, cfg.tokenizer, "tokenizer")
    model_builder = build_component(regs, cfg.model, "model", ModelBuilder)
    metrics = {
        ref.name: build_component(regs, ref, f"metrics[{i}]", Metric)
        for i, ref in enumerate(cfg.metrics or [])
    }
    check_problems(
        regs,
        task,
        cfg,
        validators,
        balancer,
        list(zip(cfg.augmenters, augmenters, strict=True)),
        metrics,
    )
    task.bind(tokenizer, model_builder, preprocessors)
    callbacks = [make_component(regs, r, f"callbacks[{i}]") for i, r in enumerate(cfg.callbacks)]
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
    for role in cfg.data.columns if task.roles else ():  # a task declaring its input roles
        if role not in task.roles:
            raise ConfigError(
                f"data.columns.{role}", f"unknown role; {task.name} uses: {', '.join(task.roles)}"
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
    return prep.task.after_validation(data, prep.config.data)


def leakage_check(prep: Prepared, data: TaskData, split: Split) -> Finding:
    """Compare the final splits: the same content (task's duplicate key) in two splits leaks."""
    keys = prep.task.content_keys(data)
    if keys is None:
        return Finding(FindingKind.LEAKAGE, "info", "not checked: the task defines no content key")
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
        return Finding(
            FindingKind.LEAKAGE, "info", "no example appears in two splits", validator="split"
        )
    counts = ", ".join(f"{a}/{b}: {len(c)}" for (a, b), c in shared.items() if c)
    return Finding(
        FindingKind.LEAKAGE,
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
