"""Run configuration: YAML -> pydantic models, with errors that name the key path."""

from __future__ import annotations

import builtins
import copy
import difflib
import errno
import inspect
import math
import os
import re
import select
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
import yaml.composer
import yaml.constructor
import yaml.nodes
import yaml.resolver
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tuneforge.errors import ConfigError, short

# -- limits ---------------------------------------------------------------------------------
# Far above any real config (a run config is a few KB, a few levels deep, with a handful of
# aliases), far below what exhausts memory or the stack. Each refusal names the limit.

#: The largest config file read, in bytes.
MAX_CONFIG_BYTES = 10 * 1024 * 1024
#: The deepest nesting of mappings and lists, counted with aliases expanded.
MAX_DEPTH = 100
#: The most values (scalars, lists, mappings) in a config, counted with aliases expanded.
MAX_VALUES = 1_000_000
#: The most alias uses (``*name``) in one YAML document.
MAX_ALIASES = 10_000
#: Integers in a config must be smaller than this in absolute value (64-bit).
MAX_INT = 2**63
#: Upper bounds of the trainer's counts: no real run comes near them.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 2**24  # 16,777,216 examples: full-batch training on a large table still fits
MAX_ACCUMULATION_STEPS = 65_536
MAX_STEPS = 10**9
MAX_WORKERS = 1024
MAX_SEED = 2**32 - 1  # numpy's RandomState and scikit-learn's random_state accept no more
MAX_FOLDS = 100  # split.folds
MAX_REPEATS = 100  # trainer.seeds, --seeds
#: split.values' default: each split's name is its value in split.column.
SPLIT_VALUES: dict[str, str | int] = {"train": "train", "val": "val", "test": "test"}

# -- helpers --------------------------------------------------------------------------------


def clip(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters (for key paths and messages)."""
    text = " ".join(str(text).split()) if ("\n" in text or "\r" in text) else str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_loc(loc: tuple[Any, ...] | list[Any], prefix: str = "") -> str:
    """``("augmenters", 1, "p")`` -> ``augmenters[1].p``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "function-wrap") or str(part).startswith(
            ("function-", "str", "list[", "dict[", "union[", "lax-or-strict")
        ):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _fields_at(model: Any, loc: list[Any]) -> list[str] | None:
    """Field names of the pydantic model reached by following ``loc`` from ``model``."""
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _model_in(field.annotation)
    return list(model.model_fields) if model is not None else None


def raise_validation_error(exc: ValidationError, prefix: str = "", model: Any = None) -> None:
    """Turn the first pydantic error into a one-line :class:`ConfigError`."""
    err = exc.errors()[0]
    loc = list(err.get("loc", ()))
    # Component refs are validated through a union of str/dict: drop the branch tags.
    loc = [p for p in loc if p not in ("str", "dict[str,any]", "ComponentRef", "list[...]")]
    path = clip(format_loc(loc, prefix))
    msg = clip(err.get("msg", "invalid value"), 300)
    kind = err.get("type")
    if kind == "extra_forbidden":
        msg = "unknown key"
        key = clip(str(loc[-1]) if loc else "", 100)
        allowed = _fields_at(model, loc[:-1]) if model is not None else None
        if allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            msg += (
                f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(allowed)}"
            )
    elif "input" in err and kind not in ("missing",):
        value = err["input"]
        if kind == "int_type" and isinstance(value, float):
            msg = "Input should be a whole number (an integer), not a float"
        msg += f" (got {short(value)})"
    raise ConfigError(path or "config", msg) from None


class Strict(BaseModel):
    """Base of the core sections: unknown keys are errors, numbers must be finite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ComponentRef(BaseModel):
    """A component chosen by name, with its parameters: ``{name: x, param: value}`` or ``x``."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=200, description="the registered component name")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        return value

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def as_yaml(self) -> dict[str, Any] | str:
        return {"name": self.name, **self.params} if self.params else self.name


# -- sections -------------------------------------------------------------------------------


class DataConfig(Strict):
    path: Path = Field(description="data file, relative to the config file")
    val_path: Path | None = Field(
        None,
        description="a given validation file, read like data.path (relative to the config "
        "file); null: carved from the training data",
    )
    test_path: Path | None = Field(
        None,
        description="a given test file (e.g. an official test set), read like data.path and "
        "scored as given; null: carved from the training data",
    )
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = "auto"
    columns: dict[str, str] = Field(
        default_factory=dict, description="input role -> column name, e.g. {text: sentence}"
    )
    label: str | None = Field(default=None, description="classification label column")
    classes: list[Any] | None = Field(
        default=None, description="declared classes (label-id order); default: those in the data"
    )
    target: str | list[str] | None = Field(default=None, description="regression target column(s)")
    read_options: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for the pandas reader"
    )

    @field_validator("path", "val_path", "test_path", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("an empty path; name a file (or null for none)")
        return value


class SplitConfig(Strict):
    train: float = Field(0.70, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    stratify: bool = True
    seed: int = Field(42, ge=0, le=MAX_SEED, strict=True)
    group_duplicates: bool = Field(
        True, description="keep exact duplicates (same content key) inside one split"
    )
    folds: int | None = Field(
        None,
        ge=2,
        le=MAX_FOLDS,
        strict=True,
        description="cross-validation: K fold runs, each testing on one fold (stratified, "
        "grouped by duplicates, seeded); val is carved from the other folds with the "
        "val / (train + val) share; null: one train/val/test split",
    )
    column: str | None = Field(
        None,
        min_length=1,
        description="a column of data.path holding each row's split (given splits); never a "
        "model input",
    )
    values: dict[str, str | int] = Field(
        default_factory=lambda: dict(SPLIT_VALUES),
        description="split -> its value in split.column (default train: train, val: val, "
        "test: test; splits left out keep their own name)",
    )

    @field_validator("values")
    @classmethod
    def _split_values(cls, value: dict[str, str | int]) -> dict[str, str | int]:
        unknown = [k for k in value if k not in SPLIT_VALUES]
        if unknown:
            raise ValueError(
                f"unknown split {short(unknown[0])}; the splits are {', '.join(SPLIT_VALUES)}"
            )
        full = {**SPLIT_VALUES, **value}
        seen: dict[str, str] = {}
        for name, v in full.items():
            if str(v) in seen:
                raise ValueError(f"{seen[str(v)]} and {name} both map to {short(v)}")
            seen[str(v)] = name
        return full

    @model_validator(mode="after")
    def _values_need_column(self) -> SplitConfig:
        if self.column is None and self.values != SPLIT_VALUES:
            raise ValueError("split.values needs split.column (the column holding the values)")
        return self

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class TrainerConfig(Strict):
    epochs: int = Field(3, ge=1, le=MAX_EPOCHS, strict=True)
    batch_size: int = Field(16, ge=1, le=MAX_BATCH_SIZE, strict=True)
    eval_batch_size: int | None = Field(None, ge=1, le=MAX_BATCH_SIZE, strict=True)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    l1: float = Field(
        0.0,
        ge=0,
        description="L1 penalty: adds l1 * sum(|w|) over the weight-decayed parameters to the "
        "training loss (the logged train loss stays the data loss)",
    )
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    gradient_accumulation_steps: int = Field(1, ge=1, le=MAX_ACCUMULATION_STEPS, strict=True)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA when supported, fp32 on CPU"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    monitor: str = Field(
        "loss", description="validation metric for best checkpoint and early stopping"
    )
    monitor_mode: Literal["auto", "min", "max"] = "auto"
    early_stopping_patience: int | None = Field(
        3, ge=1, le=MAX_EPOCHS, strict=True, description="epochs without improvement; null disables"
    )
    early_stopping_min_delta: float = Field(0.0, ge=0)
    num_workers: int | Literal["auto"] = Field(
        "auto",
        description="data loader worker processes; auto: min(4, CPUs per process) on CUDA, 0 on CPU",
    )
    prefetch_factor: int | None = Field(
        None,
        ge=1,
        le=1024,
        strict=True,
        description="batches each worker loads ahead (torch default 2); needs workers",
    )
    group_by_length: bool = Field(
        False, description="text: batch examples of similar length (less padding), still shuffled"
    )
    compile: bool = Field(
        False, description="torch.compile the model (inductor); pays off on GPU for long runs"
    )
    layer_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="layer-wise learning-rate decay: a parameter at depth d (0 embeddings, "
        "1..L blocks, L+1 head) trains at lr * layer_decay ** (L + 1 - d); null: off",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in the backward pass: less memory for about a "
        "third more compute (HF and timm models)",
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep an exponential moving average of the weights (e.g. 0.999), updated "
        "after each optimizer step; validation, the best checkpoint and the final model use it; "
        "null: off",
    )
    log_every_n_steps: int = Field(10, ge=1, le=MAX_STEPS, strict=True)
    seed: int = Field(42, ge=0, le=MAX_SEED, strict=True)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED, strict=True)]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_REPEATS,
        description="repeated seeds: one run per trainer seed on the same split, reported as "
        "mean, std and 95% interval (a tuner: each trial's objective is the mean); replaces "
        "seed; null: one run with seed",
    )
    deterministic: bool = Field(
        False,
        description="reproducible runs: deterministic torch algorithms and cuDNN, fixed cuBLAS "
        "workspace (slower on GPU)",
    )
    checkpoint_every_n_steps: int | None = Field(
        None,
        ge=0,
        le=MAX_STEPS,
        strict=True,
        description="also save the training state every N optimizer steps (for --resume); "
        "null/0: at the end of each epoch only",
    )
    keep_checkpoints: int = Field(
        2, ge=1, le=1000, strict=True, description="training-state checkpoints kept"
    )
    nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="a step with a NaN/inf loss or gradients is never applied; stop: end the "
        "run with a diagnosis, skip: skip the step and go on",
    )
    nonfinite_max_consecutive: int = Field(
        10,
        ge=1,
        le=MAX_STEPS,
        strict=True,
        description="skip: stop after more than this many non-finite steps in a row",
    )
    auto_batch_size: bool | None = Field(
        None,
        description="on out-of-memory, halve the micro-batch and accumulate to keep the "
        "effective batch; null: on CUDA only",
    )

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct, got {short(value, 80)}")
        return value

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value != "auto" and not (type(value) is int and 0 <= value <= MAX_WORKERS):
            raise ValueError(f"must be a whole number from 0 to {MAX_WORKERS}, or auto")
        return value


class OutputConfig(Strict):
    dir: Path = Field(Path("runs/run"), description="run folder, relative to the working directory")
    overwrite: bool = False


class EvaluationConfig(Strict):
    """How the test metrics are reported (``evaluation:``)."""

    bootstrap: int = Field(
        1000,
        ge=0,
        le=100_000,
        strict=True,
        description="bootstrap resamples of the test rows for each test metric's interval "
        "(metrics.json test_intervals); 0: no intervals",
    )
    confidence: float = Field(
        0.95, gt=0, lt=1, description="coverage of the bootstrap intervals (0.95: 95%)"
    )
    explain_rows: int = Field(
        4,
        ge=0,
        le=1000,
        strict=True,
        description="test rows explained at the end of a run (explanations/test.html, shown in "
        "the report; tabular: permutation importance on the whole test split); 0: none",
    )


class PluginsConfig(Strict):
    disable: list[str] = Field(default_factory=list, description="plugin names not to load")
    local: list[str] = Field(
        default_factory=list,
        description="hook implementation files (.py, relative to the config) or modules",
    )


class Distribution(Strict):
    """One search-space entry: exactly one of choice, uniform, loguniform, int."""

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int: tuple[builtins.int, builtins.int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        set_ = [
            k for k in ("choice", "uniform", "loguniform", "int") if getattr(self, k) is not None
        ]
        if len(set_) != 1:
            raise ValueError("give exactly one of choice, uniform, loguniform, int")
        kind = set_[0]
        if kind == "choice" and len(self.choice) < 2:
            raise ValueError(
                "choice needs at least two values (a single value is not a search: set the key "
                "in the config instead)"
            )
        if kind in ("uniform", "loguniform", "int"):
            lo, hi = getattr(self, kind)
            if not lo < hi:
                raise ValueError(f"{kind} needs low < high, got [{lo}, {hi}]")
            if kind == "loguniform" and lo <= 0:
                raise ValueError("loguniform needs low > 0")
        return self

    @property
    def kind(self) -> str:
        return next(
            k for k in ("choice", "uniform", "loguniform", "int") if getattr(self, k) is not None
        )


class TunerRef(ComponentRef):
    """``tuner: {name: random, trials: 8, space: {trainer.lr: {loguniform: [1e-5, 1e-3]}}}``."""

    space: dict[str, Distribution] = Field(default_factory=dict)

    def as_yaml(self) -> dict[str, Any] | str:
        out: dict[str, Any] = {"name": self.name, **self.params}
        out["space"] = {k: v.model_dump(exclude_none=True) for k, v in self.space.items()}
        return out


class ModelRef(ComponentRef):
    """``model: {name: x, param: value}``, or ``model: {candidates: [a, {name: b, ...}]}``.

    With ``candidates`` every candidate is trained on the same split and the best on the
    validation metric wins (a grid study over ``model``); only the winner is tested.
    """

    name: str | None = Field(
        None, min_length=1, max_length=200, description="the registered model name"
    )
    candidates: list[ComponentRef] | None = Field(
        None, description="model selection: train each, keep the best on validation"
    )

    @model_validator(mode="after")
    def _name_or_candidates(self) -> ModelRef:
        if self.candidates is None:
            if self.name is None:
                raise ValueError("give name (a model) or candidates (model selection)")
            return self
        if self.name is not None or self.params:
            raise ValueError(
                "with candidates, put name and parameters inside each candidate, not beside them"
            )
        if len(self.candidates) < 2:
            raise ValueError("candidates needs at least two models to select from")
        return self

    def as_yaml(self) -> dict[str, Any] | str:
        if self.candidates is not None:
            return {"candidates": [c.as_yaml() for c in self.candidates]}
        return super().as_yaml()


class RunConfig(Strict):
    """A whole run. Component sections left out take the task's defaults."""

    task: ComponentRef = Field(
        description="the task: its name (text-classification) or {name: ..., param: ...}"
    )
    data: DataConfig
    validators: list[ComponentRef] | None = None
    split: SplitConfig = Field(default_factory=SplitConfig)
    balancer: ComponentRef = Field(default_factory=lambda: ComponentRef(name="none"))
    augmenters: list[ComponentRef] = Field(default_factory=list)
    preprocessors: list[ComponentRef] = Field(default_factory=list)
    tokenizer: ComponentRef | None = None
    model: ModelRef | None = None
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    tuner: TunerRef | None = None
    metrics: list[ComponentRef] | None = None
    fail_on: list[str] = Field(
        default_factory=list,
        description="finding kinds that stop the run (e.g. conflicting-labels, label-issue, leakage)",
    )
    callbacks: list[ComponentRef] = Field(default_factory=list)
    output: OutputConfig = Field(default_factory=OutputConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @field_validator(
        "validators", "augmenters", "preprocessors", "metrics", "callbacks", mode="before"
    )
    @classmethod
    def _list(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, dict)) else value


# -- bounded YAML -----------------------------------------------------------------------------


class YAMLLimitError(Exception):
    """A YAML document breaks one of the limits above, or cannot be read; ``line`` is 1-based."""

    def __init__(self, problem: str, line: int | None = None, column: int | None = None) -> None:
        self.problem = problem
        self.line = line
        where = f"line {line}, column {column}" if column else f"line {line}"
        super().__init__(f"{where}: {problem}" if line else problem)


def _line(mark: Any) -> int | None:
    return mark.line + 1 if mark is not None else None


class _BoundedComposer(yaml.composer.Composer):
    """PyYAML's composer, with every limit checked while the node graph is built.

    Aliases share nodes, so a few lines can stand for billions of values once expanded (a
    "billion laughs" alias bomb): each node's expanded size and height are computed as it is
    composed, and composing stops at the first node past :data:`MAX_VALUES` or
    :data:`MAX_DEPTH`, long before anything expands them. Nesting is checked on the way down,
    so the composer's own recursion stays bounded. Mapping keys given twice are refused.
    """

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._aliases = 0
        self._open: set[str] = set()  # anchors of the nodes being composed
        self._measure: dict[yaml.nodes.Node, tuple[int, int]] = {}  # node -> (size, height)
        self._keys = yaml.constructor.SafeConstructor()

    def compose_node(self, parent: Any, index: Any) -> yaml.nodes.Node:
        event = self.peek_event()
        if isinstance(event, yaml.events.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YAMLLimitError(
                    f"more than {MAX_ALIASES:,} alias uses (*name): not a config",
                    _line(event.start_mark),
                )
            if event.anchor in self._open:
                raise YAMLLimitError(
                    f"alias *{clip(event.anchor, 40)} refers to a value that contains it "
                    "(a recursive structure)",
                    _line(event.start_mark),
                )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YAMLLimitError(
                f"nested more than {MAX_DEPTH} levels deep", _line(event.start_mark)
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        node = super().compose_node(parent, index)
        if anchor is not None:
            self._open.discard(anchor)
        self._depth -= 1
        if isinstance(node, yaml.nodes.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.nodes.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        size, height = 1, 1
        for child in children:
            child_size, child_height = self._measure[child]
            size += child_size
            height = max(height, child_height + 1)
        self._measure[node] = (size, height)
        if size > MAX_VALUES:
            raise YAMLLimitError(
                f"more than {MAX_VALUES:,} values once aliases are expanded: not a config",
                _line(node.start_mark),
            )
        if height > MAX_DEPTH:
            raise YAMLLimitError(
                f"nested more than {MAX_DEPTH} levels deep once aliases are expanded",
                _line(node.start_mark),
            )
        return node

    def compose_mapping_node(self, anchor: Any) -> yaml.nodes.MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[Any, int | None] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.nodes.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            try:
                value = self._keys.construct_object(key, deep=True)
                hash(value)
            except Exception:  # the constructor reports a bad key with its own message
                continue
            where = _line(key.start_mark)
            if value in seen:
                first = seen[value]
                raise YAMLLimitError(
                    f"key {short(value, 60)} is given twice (first on line {first}); keep one",
                    where,
                )
            seen[value] = where
        return node


class _BoundedConstructor(yaml.constructor.SafeConstructor):
    """``yaml.safe_load``'s constructor; a value it cannot build names its line."""

    def construct_object(self, node: yaml.nodes.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:  # e.g. an int of 5,000 digits, 2024-13-45
            scalar = isinstance(node, yaml.nodes.ScalarNode)
            if scalar and node.tag == "tag:yaml.org,2002:int":
                reason = f"an integer of {len(node.value):,} characters is too large"
            else:
                reason = clip(str(exc), 120)
            value = short(node.value, 60) if scalar else "a value"
            raise YAMLLimitError(f"cannot read {value}: {reason}", _line(node.start_mark)) from None


if yaml.__with_libyaml__:  # libyaml scans and parses; the composing above stays in Python
    from yaml.cyaml import CParser as _Parser

    class _BoundedLoader(_BoundedComposer, _Parser, _BoundedConstructor, yaml.resolver.Resolver):
        def __init__(self, stream: str) -> None:
            _Parser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            _BoundedConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

else:  # pragma: no cover - PyYAML without libyaml

    class _BoundedLoader(  # type: ignore[no-redef]
        yaml.reader.Reader,
        yaml.scanner.Scanner,
        yaml.parser.Parser,
        _BoundedComposer,
        _BoundedConstructor,
        yaml.resolver.Resolver,
    ):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            _BoundedComposer.__init__(self)
            _BoundedConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)


_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` within the limits above.

    Raises :class:`YAMLLimitError` (a limit, a key given twice, a character YAML refuses, a
    value that cannot be built) or ``yaml.YAMLError`` (a syntax error), never anything that
    grows with the input: its message is one bounded line.
    """
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise YAMLLimitError(
            f"character U+{ord(bad.group()):04X} is not allowed in YAML", line, column
        )
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:  # a safety net: the limits above keep the recursion shallow
        raise YAMLLimitError(f"nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> tuple[str, int | None]:
    """A YAML syntax error as (one bounded line, 1-based line or None)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
    context = getattr(exc, "context", None)
    text = clip(str(problem), 160)
    if context:
        text += f" ({clip(str(context), 80)})"
    return text, _line(mark)


def _read_bounded(path: Path) -> bytes:
    """The bytes of ``path``, at most :data:`MAX_CONFIG_BYTES` + 1 of them.

    Opened without blocking, so a FIFO nobody writes to reads as empty instead of hanging;
    a pipe with a writer (``<(generate-config)``) is read until its writer closes it.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            try:
                chunk = os.read(fd, min(1 << 20, MAX_CONFIG_BYTES + 1 - size))
            except BlockingIOError:  # a pipe whose writer has not written yet
                select.select([fd], [], [])
                continue
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# -- loading --------------------------------------------------------------------------------

_KEY_RE = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_key(key: str) -> list[str | int]:
    """``augmenters[1].p`` -> ``["augmenters", 1, "p"]`` (``augmenters.1.p`` works too)."""
    parts: list[str | int] = []
    pos = 0
    for m in _KEY_RE.finditer(key):
        if m.start() not in (pos, pos + 1):
            break
        name, idx = m.groups()
        if idx is not None:
            parts.append(int(idx))
        elif name.isdigit():
            parts.append(int(name))
        else:
            parts.append(name)
        pos = m.end()
    if not parts or pos != len(key):
        raise ConfigError(
            clip(key, 100), "not a valid key path (use dots and [index], e.g. trainer.lr)"
        )
    if len(parts) > MAX_DEPTH:
        raise ConfigError(clip(key, 100), f"a key path of more than {MAX_DEPTH} parts")
    return parts


def _check_core_key(parts: list[str | int], key: str) -> None:
    """Refuse a --set key that no core section has (component parameters are checked later)."""
    model: Any = RunConfig
    for i, part in enumerate(parts):
        if model is None or isinstance(part, int):
            return
        fields = model.model_fields
        if part not in fields:
            if model is ComponentRef or (
                isinstance(model, type) and issubclass(model, ComponentRef)
            ):
                return  # component parameter: its own Config validates it
            close = difflib.get_close_matches(str(part), list(fields), n=1)
            hint = (
                f" (did you mean {'.'.join(map(str, parts[:i] + [close[0]]))!r}?)" if close else ""
            )
            raise ConfigError(f"--set {clip(key, 100)}", f"no such key{clip(hint, 150)}")
        ann = fields[part].annotation
        model = _model_in(ann)


def _model_in(ann: Any) -> Any:
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def set_by_path(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (``augmenters[1].p``) in ``tree`` to ``value``, as ``--set`` does."""
    parts = parse_key(key)
    _check_core_key(parts, key)
    key = clip(key, 100)
    node: Any = tree
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ConfigError(f"--set {key}", f"index [{part}] does not exist")
            if isinstance(node[part], str):  # short form -> expand to set a parameter
                node[part] = {"name": node[part]}
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}", f"{short(part, 60)} is not a mapping")
        child = node.get(part)
        if child is None:
            child = [] if isinstance(nxt, int) else {}
            node[part] = child
        elif isinstance(child, str) and not isinstance(nxt, int):
            child = {"name": child}
            node[part] = child
        node = child
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError(f"--set {key}", f"index [{last}] does not exist")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {key}", "parent is not a mapping")


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """``["trainer.lr=1e-4", ...]`` -> ``[("trainer.lr", 0.0001), ...]``: values read as YAML.

    A value that is not valid YAML is kept as the string given; one past the loader's limits
    (an alias bomb, deep nesting, a key given twice) is refused.
    """
    out = []
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {clip(pair, 100)}", "expected key=value")
        key, _, raw = pair.partition("=")
        key = key.strip()
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except YAMLLimitError as exc:
            raise ConfigError(f"--set {clip(key, 100)}", f"the value: {exc.problem}") from None
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a run config: at most 10 MB of UTF-8, one YAML mapping, each key given once.

    Every problem is a one-line :class:`ConfigError` naming the file (and the line where
    there is one): a missing or unreadable file, a byte that is not UTF-8, invalid YAML, a key
    given twice, more aliases, values or nesting than the limits above.
    """
    try:
        data = _read_bounded(path)
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError("", f"{path}: is a folder, not a config file") from None
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise ConfigError("", f"{path}: cannot read the config: {reason}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            "",
            f"{path}: larger than {MAX_CONFIG_BYTES // 2**20} MB: not a run config (a config is "
            "a few KB; data belongs in data.path)",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise ConfigError(
            "",
            f"{path}: line {line}, column {column}: byte 0x{data[exc.start]:02x} is not valid "
            f"UTF-8{' (the file looks like UTF-16)' if utf16 else ''}; save the config as UTF-8",
        ) from None
    try:
        raw = load_yaml(text)
    except YAMLLimitError as exc:
        raise ConfigError("", f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        problem, line = _yaml_problem(exc)
        where = f" line {line}:" if line else ""
        raise ConfigError("", f"{path}:{where} invalid YAML: {problem}") from None
    if raw is None:
        hint = " (a FIFO or pipe that nothing wrote to?)" if not path.is_file() else ""
        raise ConfigError("", f"{path}: the config is empty{hint}")
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path}: the config must be a mapping of sections")
    return raw


def check_tree(tree: Any) -> None:
    """Refuse what no config section can hold, naming the key path.

    Walks ``tree`` (the raw config after ``--set``) without recursion: nesting deeper than
    :data:`MAX_DEPTH`, more than :data:`MAX_VALUES` values, a number that is not finite (inf,
    nan) or an integer of 64 bits or more.
    """
    stack: list[tuple[tuple[Any, ...], Any]] = [((), tree)]
    seen = 0
    while stack:
        loc, node = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError("config", f"more than {MAX_VALUES:,} values: not a run config")
        if len(loc) > MAX_DEPTH:
            raise ConfigError(
                clip(format_loc(loc[:3])) + "...", f"nested more than {MAX_DEPTH} levels deep"
            )
        if isinstance(node, dict):
            stack.extend(((*loc, k), v) for k, v in reversed(list(node.items())))
        elif isinstance(node, (list, tuple)):
            stack.extend(((*loc, i), v) for i, v in reversed(list(enumerate(node))))
        elif isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(
                clip(format_loc(loc)) or "config", f"numbers must be finite (got {node})"
            )
        elif isinstance(node, int) and not isinstance(node, bool) and abs(node) >= MAX_INT:
            raise ConfigError(
                clip(format_loc(loc)) or "config",
                f"integer too large (got {short(node, 30)}; at most 2**63 - 1)",
            )


def build_config(raw: dict[str, Any], overrides: list[tuple[str, Any]] = ()) -> RunConfig:
    """Apply ``--set`` overrides to a copy of ``raw`` and validate it."""
    check_tree(raw)
    tree = copy.deepcopy(raw)
    for key, value in overrides:
        set_by_path(tree, key, value)
    check_tree(tree)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise_validation_error(exc, model=RunConfig)
        raise  # unreachable


def load_config(path: Path, overrides: list[tuple[str, Any]] = ()) -> tuple[RunConfig, Path]:
    """Read ``path``, apply ``--set`` overrides and validate; returns the config and its folder."""
    cfg = build_config(read_yaml(path), overrides)
    return cfg, path.resolve().parent


def dump_config(cfg: RunConfig) -> dict[str, Any]:
    """A plain, YAML-ready dict of the resolved config."""
    data = cfg.model_dump(mode="json", exclude={"tuner"})
    for key in ("validators", "augmenters", "preprocessors", "metrics", "callbacks"):
        refs = getattr(cfg, key)
        data[key] = None if refs is None else [r.as_yaml() for r in refs]
    for key in ("task", "balancer", "tokenizer", "model"):
        ref = getattr(cfg, key)  # a RunConfig field
        data[key] = None if ref is None else ref.as_yaml()
    data["tuner"] = cfg.tuner.as_yaml() if cfg.tuner is not None else None
    return data


def instantiate(registries: Any, kind: str, ref: ComponentRef, path: str) -> Any:
    """Look ``ref.name`` up in the ``kind`` registry, validate its parameters, build it.

    Errors name the config key path: ``model.name: unknown model ...`` or
    ``augmenters[1].p: Input should be ...``.
    """
    from tuneforge.registry import RegistryError

    try:
        entry = registries[kind].get(ref.name)
        cfg_model = entry.config_model()
    except RegistryError as exc:
        raise ConfigError(f"{path}.name", clip(str(exc), 600)) from None
    check_tree(ref.params)
    try:
        params = cfg_model.model_validate(ref.params)
    except ValidationError as exc:
        raise_validation_error(exc, prefix=path, model=cfg_model)
    _no_float_counts(ref.params, params, path)
    target = entry.load()
    if inspect.isabstract(target):  # a class that leaves required methods out
        missing = sorted(target.__abstractmethods__)
        from tuneforge.errors import PluginError

        raise PluginError(
            f"{path}.name: {ref.name!r} from plugin {entry.plugin!r} does not implement "
            f"{', '.join(missing)}, required by its base class (see docs/plugins.md)"
        )
    try:
        return target(params)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(path, f"{ref.name}: {clip(str(exc), 300)}") from exc


def _no_float_counts(given: dict[str, Any], params: BaseModel, path: str) -> None:
    """Refuse a float where a component's parameter is an integer (``trials: 1.0e+26``).

    Pydantic accepts a float without a fractional part for an ``int`` field; a config that
    writes one means something else (or is hostile), whatever the component declared.
    """
    validated = dict(params)
    for key, raw in given.items():
        value = validated.get(key)
        if isinstance(raw, float) and isinstance(value, int) and not isinstance(value, bool):
            raise ConfigError(
                clip(f"{path}.{key}"),
                f"Input should be a whole number (an integer), not a float (got {short(raw)})",
            )
