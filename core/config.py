"""Run configuration: YAML -> pydantic models, with errors that name the key path."""

from __future__ import annotations

import builtins
import copy
import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneforge.errors import ConfigError

# -- helpers --------------------------------------------------------------------------------


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
    path = format_loc(loc, prefix)
    msg = err.get("msg", "invalid value")
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
        parent, _, key = path.rpartition(".")
        allowed = _fields_at(model, loc[:-1]) if model is not None else None
        if allowed:
            close = difflib.get_close_matches(key.split("[")[0], allowed, n=1)
            msg += (
                f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(allowed)}"
            )
    elif "input" in err and err.get("type") not in ("missing",):
        msg += f" (got {err['input']!r})"
    raise ConfigError(path or "config", msg) from None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ComponentRef(BaseModel):
    """A component chosen by name, with its parameters: ``{name: x, param: value}`` or ``x``."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, description="the registered component name")

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


class SplitConfig(Strict):
    train: float = Field(0.70, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    stratify: bool = True
    seed: int = 42
    group_duplicates: bool = Field(
        True, description="keep exact duplicates (same content key) inside one split"
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class TrainerConfig(Strict):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
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
    gradient_accumulation_steps: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA when supported, fp32 on CPU"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    monitor: str = Field(
        "loss", description="validation metric for best checkpoint and early stopping"
    )
    monitor_mode: Literal["auto", "min", "max"] = "auto"
    early_stopping_patience: int | None = Field(
        3, ge=1, description="epochs without improvement; null disables"
    )
    early_stopping_min_delta: float = Field(0.0, ge=0)
    num_workers: int | Literal["auto"] = Field(
        "auto",
        description="data loader worker processes; auto: min(4, CPUs per process) on CUDA, 0 on CPU",
    )
    prefetch_factor: int | None = Field(
        None, ge=1, description="batches each worker loads ahead (torch default 2); needs workers"
    )
    group_by_length: bool = Field(
        False, description="text: batch examples of similar length (less padding), still shuffled"
    )
    compile: bool = Field(
        False, description="torch.compile the model (inductor); pays off on GPU for long runs"
    )
    log_every_n_steps: int = Field(10, ge=1)
    seed: int = 42
    deterministic: bool = Field(
        False,
        description="reproducible runs: deterministic torch algorithms and cuDNN, fixed cuBLAS "
        "workspace (slower on GPU)",
    )
    checkpoint_every_n_steps: int | None = Field(
        None,
        ge=0,
        description="also save the training state every N optimizer steps (for --resume); "
        "null/0: at the end of each epoch only",
    )
    keep_checkpoints: int = Field(2, ge=1, description="training-state checkpoints kept")
    nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="a step with a NaN/inf loss or gradients is never applied; stop: end the "
        "run with a diagnosis, skip: skip the step and go on",
    )
    nonfinite_max_consecutive: int = Field(
        10, ge=1, description="skip: stop after more than this many non-finite steps in a row"
    )
    auto_batch_size: bool | None = Field(
        None,
        description="on out-of-memory, halve the micro-batch and accumulate to keep the "
        "effective batch; null: on CUDA only",
    )

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be 0 or more, or auto")
        return value


class OutputConfig(Strict):
    dir: Path = Field(Path("runs/run"), description="run folder, relative to the working directory")
    overwrite: bool = False


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

    name: str | None = Field(None, min_length=1, description="the registered model name")
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

    task: str = Field(description="task name, e.g. text-classification")
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

    @field_validator(
        "validators", "augmenters", "preprocessors", "metrics", "callbacks", mode="before"
    )
    @classmethod
    def _list(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, dict)) else value


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
        raise ConfigError(key, "not a valid key path (use dots and [index], e.g. trainer.lr)")
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
            raise ConfigError(f"--set {key}", f"no such key{hint}")
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
    parts = parse_key(key)
    _check_core_key(parts, key)
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
            raise ConfigError(f"--set {key}", f"{part!r} is not a mapping")
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
    out = []
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair}", "expected key=value")
        key, _, raw = pair.partition("=")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError("", f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            "", f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    if raw is None:
        raise ConfigError("", f"{path}: the config is empty")
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path}: the config must be a mapping of sections")
    return raw


def build_config(raw: dict[str, Any], overrides: list[tuple[str, Any]] = ()) -> RunConfig:
    tree = copy.deepcopy(raw)
    for key, value in overrides:
        set_by_path(tree, key, value)
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
    for key in ("balancer", "tokenizer", "model"):
        ref = getattr(cfg, key)
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
        raise ConfigError(f"{path}.name", str(exc)) from None
    try:
        params = cfg_model.model_validate(ref.params)
    except ValidationError as exc:
        raise_validation_error(exc, prefix=path, model=cfg_model)
    target = entry.load()
    try:
        return target(params)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(path, f"{ref.name}: {exc}") from exc
