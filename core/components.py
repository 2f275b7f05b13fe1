"""Base classes for the components plugins register.

Subclassing is optional (duck typing works) but gives the documented signatures. Each
component is built as ``Component(config)`` where ``config`` is an instance of its nested
pydantic ``Config``. Nothing here imports torch: components import heavy libraries inside
their methods.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from tuneforge.data import TaskData

Policy = Literal["warn", "drop", "fail"]
Severity = Literal["info", "warning", "error"]


class StrictConfig(BaseModel):
    """Base for component configs: unknown keys are errors, numbers must be finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Component:
    """A configurable component: ``Component(config)``."""

    class Config(StrictConfig):
        pass

    def __init__(self, config: BaseModel | None = None) -> None:
        self.config = config if config is not None else self.Config()


# -- validators ---------------------------------------------------------------------------


@dataclass
class Finding:
    """One data-quality observation.

    ``rows`` are row labels of the loaded data's index: the 0-based data row in the source
    file (without its header), which stays the same after other rows are dropped. ``drop``
    lists the rows the ``drop`` policy removes (defaults to ``rows``). ``relabel`` maps rows to
    a new target value (e.g. tiny classes merged into one); it is applied unless the policy
    is ``fail``.
    """

    kind: str
    severity: Severity
    message: str
    rows: list[int] = field(default_factory=list)
    drop: list[int] | None = None
    relabel: dict[int, Any] | None = None
    action: str = "none"
    validator: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "validator": self.validator,
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "count": len(self.rows),
            "rows": self.rows,
            "action": self.action,
            "details": self.details,
        }


class ValidatorConfig(StrictConfig):
    policy: Policy = "warn"


class Validator(Component):
    """Checks the loaded data and reports :class:`Finding` objects."""

    Config: ClassVar[type[BaseModel]] = ValidatorConfig

    def check(self, data: TaskData) -> list[Finding]:
        raise NotImplementedError


# -- balancers ----------------------------------------------------------------------------


@dataclass
class BalancePlan:
    """How to balance the training split.

    :param indices: training rows to use (resampled; repeats allowed), or None for all.
    :param class_weights: per-class loss weights, or None.
    :param sample_weights: per-row sampling weights for a weighted sampler, or None.
    :param focal_gamma: use the focal loss with this focusing parameter instead of cross-entropy.
    :param row_weights: per-row loss weights (row label -> weight), or None.
    :param synthetic: rows the balancer made (e.g. SMOTE), a frame like the data's whose index
        labels are new; they join the training split only.
    """

    indices: np.ndarray | None = None
    class_weights: np.ndarray | None = None
    sample_weights: np.ndarray | None = None
    focal_gamma: float | None = None
    row_weights: dict[int, float] | None = None
    synthetic: Any = None
    note: str = ""


class Balancer(Component):
    """Balances the training split (never val or test)."""

    def plan(self, data: TaskData, train_rows: np.ndarray, rng: np.random.Generator) -> BalancePlan:
        raise NotImplementedError


# -- augmenters and preprocessors ---------------------------------------------------------


class Augmenter(Component):
    """Transforms one training example (a dict of role -> value) on the fly."""

    #: Modalities (input roles' kinds) the augmenter works on, e.g. {"text"}.
    modalities: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, example: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        raise NotImplementedError


class Preprocessor(Component):
    """Transforms raw inputs before tokenization, identically for every split and at predict time."""

    modalities: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, value: Any) -> Any:
        raise NotImplementedError


# -- metrics ------------------------------------------------------------------------------


class Metric(Component):
    """A scalar computed from true targets, predictions and scores of one split."""

    #: "classification", "regression" or "any".
    problem: ClassVar[str] = "any"
    greater_is_better: ClassVar[bool] = True

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        raise NotImplementedError


# -- tuners -------------------------------------------------------------------------------


class TrialPruned(Exception):
    """Raised inside a trial's training when its tuner decides to stop it early (pruning)."""


@dataclass
class Trial:
    """One parameter set of a study.

    ``report(epoch, value) -> bool`` is set by tuners that prune (optuna): the objective calls it
    with the monitored validation value after every epoch, and stops the trial (state
    ``pruned``) when it returns True. ``intermediate`` keeps the reported values.
    """

    number: int
    params: dict[str, Any]
    value: float | None = None
    state: str = "pending"  # pending, complete, failed, pruned
    seconds: float = 0.0
    run_dir: str | None = None
    report: Callable[[int, float], bool] | None = None
    intermediate: dict[int, float] = field(default_factory=dict)


class Tuner(Component):
    """Proposes parameter sets over a search space.

    ``search`` creates a :class:`Trial` per parameter set it proposes and calls
    ``objective(trial) -> float``; the objective trains a run and fills ``trial.value``,
    ``state``, ``seconds`` and ``run_dir``. ``space`` maps dotted config keys to
    :class:`tuneforge.config.Distribution`. ``direction`` is ``"max"`` or ``"min"``.
    """

    def validate_space(self, space: dict[str, Any]) -> None:
        """Raise ``ValueError`` (one line) for a search-space entry this tuner cannot use.

        Called before anything runs; the message is reported as ``tuner.space: ...``.
        By default every entry is accepted.
        """

    def search(self, space: dict[str, Any], objective: Any, direction: str) -> list[Trial]:
        raise NotImplementedError

    def study_trials(self) -> list[Trial]:
        """Every trial of the study the last :meth:`search` added to, by any process.

        A tuner whose study lives in shared storage (several workers, earlier runs on the same
        study) returns all of its trials here, with ``run_dir`` where known, so that each
        worker's output reports the study's best. The default, an empty list, means the study
        is exactly the trials ``search`` returned.
        """
        return []


# -- advisors -----------------------------------------------------------------------------


@dataclass
class Diagnosis:
    """One problem an advisor found in a finished run, with the evidence and a config patch.

    :param kind: e.g. ``"overfitting"``, ``"underfitting"``, ``"divergence"``.
    :param evidence: the numbers that show it, in one or two sentences.
    :param patch: dotted config key -> new value (``{"trainer.weight_decay": 0.1}``); applied
        with the same rules as ``--set``. Empty when the advisor has no change to propose.
    :param reasons: config key -> why that change helps.
    """

    kind: str
    evidence: str
    patch: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    severity: Severity = "warning"
    advisor: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "advisor": self.advisor,
            "kind": self.kind,
            "severity": self.severity,
            "evidence": self.evidence,
            "patch": self.patch,
            "reasons": self.reasons,
        }


class Advisor(Component):
    """Reads a finished run (:class:`tuneforge.advice.RunRecord`) and diagnoses it.

    Advisors must judge on training and validation evidence only: the test split is for the
    final comparison, never for choosing the next round's config.
    """

    def diagnose(self, run: Any) -> list[Diagnosis]:
        raise NotImplementedError


# -- tasks, models, tokenizers ------------------------------------------------------------


class Task(Component):
    """A modality: data loading, datasets, defaults and output decoding.

    See :class:`tuneforge.plugins.text.task.TextClassificationTask` for a complete example.
    """

    problem: ClassVar[str] = "classification"
    #: Input roles and their modality, e.g. {"text": "text"}.
    roles: ClassVar[dict[str, str]] = {}

    def load(self, data_config: Any, base_dir: Any) -> TaskData:
        raise NotImplementedError

    def load_inputs(self, path: Any, data_config: Any) -> pd.DataFrame:
        raise NotImplementedError

    def defaults(self) -> dict[str, Any]:
        """Default component choices (``tokenizer``, ``model``, ``metrics``, ``validators``...)."""
        return {}


class ModelBuilder(Component):
    """Builds, saves and loads a model in its library's own format."""


class Command(Component):
    """A CLI sub-command: ``help``, ``add_arguments(parser)`` and ``run(args) -> int``."""

    help: ClassVar[str] = ""

    def add_arguments(self, parser: Any) -> None:
        pass

    def run(self, args: Any) -> int:
        raise NotImplementedError
