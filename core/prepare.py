"""The first stage of a run: a config resolved into components, its data loaded, validated
and split (what ``tuneforge validate`` needs). Nothing is written here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from tuneforge.data import TaskData, concat_task_data
from tuneforge.errors import ConfigError, DataError, PluginError, UserError, short
from tuneforge.manager import PluginManager
from tuneforge.registry import section_kind
from tuneforge.split import Split, given_split, make_folds, make_split

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

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
    #: A cross-validation member (``split.folds``): ``(j, K)``, train on fold ``j`` (0-based)
    #: of ``K`` (:func:`tuneforge.split.make_folds`); None for an ordinary split.
    fold: tuple[int, int] | None = None
    #: A given split (``data.val_path``, ``data.test_path``, ``split.column``): each row's
    #: split name (``"train"``/``"val"``/``"test"``, indexed like ``data.frame``); None when the
    #: split is made from one file.
    given: pd.Series | None = None
    #: Where each given split came from (for ``split.json``'s ``given``): a file, or
    #: ``column <name>=<value>``.
    given_from: dict[str, str] = field(default_factory=dict)
    #: The file each given split's rows were read from (for messages).
    given_files: dict[str, str] = field(default_factory=dict)


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
    if cfg.split.folds is not None and len(cfg.trainer.seeds or ()) > 1:
        raise ConfigError(
            "trainer.seeds",
            f"not with split.folds: each of the {cfg.split.folds} folds is one run; repeat "
            "either folds or seeds",
        )
    if cfg.split.folds is not None and cfg.tuner is not None:
        raise ConfigError(
            "split.folds",
            "not with a tuner (or model.candidates): tune on one split with trainer.seeds, "
            "then cross-validate the best config (best_config.yaml)",
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
    task.reserve_columns([cfg.split.column] if cfg.split.column else [])
    data = task.load(cfg.data, base_dir)
    given = None
    if cfg.data.val_path or cfg.data.test_path or cfg.split.column:
        data, given = load_given(cfg, base_dir, task, data)
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
        given=None if given is None else given[0],
        given_from={} if given is None else given[1],
        given_files={} if given is None else given[2],
    )


def _split_names(cfg: RunConfig, data: TaskData, task: Task) -> pd.Series:
    """Each row's split from ``split.column`` (through ``split.values``): a value naming no
    split, or a split also given as a file, is an error naming the row."""
    col = cfg.split.column
    assert col is not None
    if col not in data.frame.columns:
        avail = ", ".join(map(str, data.frame.columns))
        raise DataError(
            f"{data.source}: column {short(col)} (from split.column) not found; columns are: "
            f"{short(avail, 300)}"
        )
    targets = [] if data.target is None else [data.target]
    if isinstance(data.target, list):
        targets = list(data.target)
    if col in set(data.inputs.values()) | set(targets):
        raise ConfigError(
            "split.column",
            f"{short(col)} is an input or the target of task {task.name!r}; name the column "
            "that holds each row's split",
        )
    lookup = {str(v): name for name, v in cfg.split.values.items()}
    raw = data.frame[col]
    names = raw.astype(str).map(lookup).where(raw.notna())
    missing = raw.index[raw.isna()]
    unknown = missing if len(missing) else names.index[names.isna()]
    if len(unknown):
        row = unknown[0]
        what = "no value" if len(missing) else short(raw.loc[row])
        accepted = ", ".join(f"{short(v)} ({n})" for n, v in cfg.split.values.items())
        raise DataError(
            f"{data.source}: row {int(row)}: split column {short(col)} holds {what}, which names "
            f"no split; accepted: {accepted} (split.values) ({len(unknown)} such rows)"
        )
    for name in ("val", "test"):
        path = cfg.data.val_path if name == "val" else cfg.data.test_path
        twice = names.index[names == name]
        if path is not None and len(twice):
            raise DataError(
                f"{data.source}: row {int(twice[0])}: split column {short(col)} puts it in "
                f"{name}, but data.{name}_path gives the {name} split; give each split once "
                f"({len(twice)} such rows)"
            )
    return names


def load_given(
    cfg: RunConfig, base_dir: Path, task: Task, data: TaskData
) -> tuple[TaskData, tuple[pd.Series, dict[str, str], dict[str, str]]]:
    """The training data ``data`` (read from ``data.path``) merged with the given validation
    and test files (:meth:`~tuneforge.components.Task.load_labelled`, in the training data's
    terms; :func:`tuneforge.data.concat_task_data`), with each row's given split, where each
    split came from, and the file each was read from."""
    names = None
    sources: dict[str, str] = {}
    files: dict[str, str] = {}
    if cfg.split.column:
        names = _split_names(cfg, data, task)
        for name, value in cfg.split.values.items():
            if (names == name).any():
                sources[name] = f"column {cfg.split.column}={value}"
                files[name] = data.source
        if not (names == "train").any():
            raise DataError(
                f"{data.source}: no row's split column {short(cfg.split.column)} says "
                f"{short(cfg.split.values['train'])} (train, split.values): nothing to train on"
            )
    else:
        sources["train"] = files["train"] = data.source
    record = task.labels_record(data)
    parts = {"data.path": data}
    for name, path in (("val", cfg.data.val_path), ("test", cfg.data.test_path)):
        if path is not None:
            try:
                part = task.load_labelled(cfg.data, base_dir, path, record)
            except DataError as exc:  # which key the file came from
                raise DataError(f"data.{name}_path: {exc}") from None
            parts[name] = part
            sources[name] = files[name] = part.source
    merged, origin = concat_task_data(parts)
    if names is not None:
        origin.loc[names.index] = names
    else:
        origin = origin.replace({"data.path": "train"})
    return merged, (origin, sources, files)


#: Finding kinds whose rows cannot be scored at all (no label, no readable input): a drop
#: policy drops them from a given test split too, which keeps every other row as given.
UNSCORABLE = frozenset(
    {
        FindingKind.MISSING_VALUE,
        FindingKind.UNREADABLE_IMAGE,
        FindingKind.NON_NUMERIC_TARGET,
        FindingKind.MISSING_TARGET,
        FindingKind.INFINITE_TARGET,
    }
)
#: What happens to a drop, relabel or down-weight finding on a given test split.
KEPT_AS_GIVEN = "kept: a given test split is scored as given"


def given_parts(prep: Prepared, data: TaskData) -> list[tuple[str, TaskData]]:
    """``data`` in its given splits (``[(name, part)]``, each part's ``source`` the file its
    rows came from), or ``[("", data)]`` when the split is not given."""
    if prep.given is None:
        return [("", data)]
    names = prep.given.loc[data.frame.index].to_numpy()
    out = []
    for name in ("train", "val", "test"):
        rows = data.frame.index[names == name]
        if len(rows):
            part = data.subset(rows)
            part.source = prep.given_files.get(name, data.source)
            out.append((name, part))
    return out


def _apply_policy(
    prep: Prepared, data: TaskData, f: Finding, policy: str, as_given: bool
) -> TaskData:
    """``f``'s relabel, down-weight or drop applied to ``data`` as ``policy`` says (its
    ``action`` set); ``as_given``: a given test split's finding, reported only."""
    drop = f.drop if f.drop is not None else f.rows
    weights = f.weights or f.details.get("weights")
    if as_given and (
        f.relabel or (policy == "drop" and drop) or (policy == "down-weight" and weights)
    ):
        f.action = KEPT_AS_GIVEN
    elif f.relabel:
        frame = data.frame.copy()
        for row, value in f.relabel.items():
            frame.loc[row, data.target] = value
        data = data.subset(frame.index)
        data.frame = frame
        f.action = f"relabelled {len(f.relabel)} rows"
    elif policy == "down-weight" and weights:
        # ``details["weights"]``: where plugins written before ``Finding.weights`` put them
        for row, w in {int(r): float(w) for r, w in weights.items()}.items():
            prep.row_weights[row] = min(prep.row_weights.get(row, 1.0), w)
        f.action = f"down-weighted {len(weights)} rows in the loss"
    elif policy == "drop" and drop:
        data = data.subset(data.frame.index.difference(drop))
        f.action = f"dropped {len(drop)} rows"
    else:
        f.action = "reported" if policy != "drop" else "nothing to drop"
    return data


def run_validators(prep: Prepared) -> TaskData:
    """Apply each validator's policy in order; returns the data that survives.

    With a given split each validator checks each given split on its own (its findings name
    the split); on a given test split drop, relabel and down-weight findings are reported,
    not applied (:data:`KEPT_AS_GIVEN`), except for rows that cannot be scored
    (:data:`UNSCORABLE`). A validator that cannot check a given val or test split (too few
    rows for its settings) reports it (``not-checked``) instead of stopping the run."""
    data = prep.data
    findings: list[Finding] = []
    for i, (ref, validator) in enumerate(prep.validators):
        policy = validator.policy
        for name, part in given_parts(prep, data):
            try:
                found = validator.check(part, prep.task)
            except UserError as exc:
                if name in ("val", "test"):  # set up for the training data: say so, go on
                    findings.append(
                        Finding(
                            FindingKind.NOT_CHECKED,
                            "info",
                            f"{name} split: not checked: {exc}",
                            action="reported",
                            validator=ref.name,
                            split=name,
                        )
                    )
                    continue
                where = f"{name} split ({part.source}): " if name else ""
                raise DataError(f"validators[{i}] ({ref.name}): {where}{exc}") from None
            for f in found:
                f.validator = ref.name
                f.kind = str(f.kind)  # a FindingKind member as its plain value, in messages too
                if name:
                    f.split = name
                    f.message = f"{name} split: {f.message}"
                if policy == "fail" and f.severity != "info" and (f.rows or f.severity == "error"):
                    raise DataError(
                        f"{part.source}: validators[{i}] ({ref.name}, policy fail): {f.message}"
                    )
                if f.kind in prep.config.fail_on and f.severity != "info":
                    raise DataError(f"{part.source}: fail_on {f.kind!r} ({ref.name}): {f.message}")
                as_given = name == "test" and f.kind not in UNSCORABLE
                data = _apply_policy(prep, data, f, policy, as_given)
                findings.append(f)
    prep.findings = findings
    if len(data) == 0:
        raise DataError(
            f"{data.source}: no rows left after validation (the validators dropped all "
            f"{len(prep.data)} rows); see their policies"
        )
    if prep.given is not None:
        left = set(prep.given.loc[data.frame.index])
        for name in prep.given_from:
            if name not in left:
                raise DataError(
                    f"{prep.given_files[name]}: the given {name} split has no rows left after "
                    "validation (the validators dropped them all); see their policies"
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
    # A split carved from the given train rows belongs to them: duplicates inside them were
    # kept together, those across given parts cannot be.
    part = {n: n if n in prep.given_from else "train" for n in by_split}
    if any(c and part[a] != part[b] for (a, b), c in shared.items()):
        return Finding(
            FindingKind.LEAKAGE,
            "warning",
            f"examples shared between splits ({counts}): rows {rows[:10]}; the split was "
            "given, so they are reported, not removed",
            rows,
            validator="split",
            action="reported, not removed: a given split is kept as given (its duplicates "
            "cannot be grouped into one split)",
        )
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
    if prep.fold is not None:
        return fold_split(prep, data, strata, groups)
    if prep.given is not None:
        return split_given(prep, data, strata, groups)
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


def split_given(
    prep: Prepared, data: TaskData, strata: np.ndarray | None, groups: np.ndarray | None
) -> Split:
    """The given split (:func:`tuneforge.split.given_split`) of the rows left after
    validation: a missing val or test split carved from the given train rows."""
    s = prep.config.split
    names = prep.given.loc[data.frame.index]
    split = given_split(
        data.frame.index,
        names.to_numpy(),
        prep.given_from,
        s.train,
        s.val,
        s.test,
        s.seed,
        strata=strata,
        groups=groups,
    )
    for name in ("val", "test"):
        rows = prep.given.index[prep.given == name]
        if name in prep.given_from and prep.given_files[name] != prep.given_files.get("train"):
            split.notes.append(
                f"{name} rows are numbered after the training rows: row r is row "
                f"r - {int(rows.min())} of {prep.given_files[name]}"
            )
    empty = [name for name, r in (("val", split.val), ("test", split.test)) if len(r) == 0]
    if empty:
        n_train = int((names == "train").sum())
        raise DataError(
            f"{data.source}: the {' and '.join(empty)} split carved from the given train rows "
            f"{'are' if len(empty) > 1 else 'is'} empty: {n_train} train rows are too few; add "
            f"data or give the {' and '.join(empty)} split (data.{empty[0]}_path)"
        )
    return split


def fold_holdout(prep: Prepared, data: TaskData) -> np.ndarray | None:
    """The rows no fold may hold: a given test split (``Prepared.given``) among ``data``'s
    rows, or None. A given validation split is not held out: its rows join the folds."""
    if prep.given is None or not (prep.given == "test").any():
        return None
    test = prep.given.index[prep.given == "test"]
    return data.frame.index[data.frame.index.isin(test)].to_numpy()


def fold_split(
    prep: Prepared, data: TaskData, strata: np.ndarray | None, groups: np.ndarray | None
) -> Split:
    """Cross-validation member ``prep.fold``'s split: its fold's rows are the test split."""
    assert prep.fold is not None
    j, k = prep.fold
    s = prep.config.split
    try:
        folds = make_folds(
            data.frame.index,
            k,
            s.seed,
            s.val / (s.train + s.val),
            strata=strata,
            groups=groups,
            holdout=fold_holdout(prep, data),
        )
    except ValueError as exc:
        raise DataError(f"{data.source}: split.folds: {exc}") from None
    return folds[j]
