"""Base classes for the components plugins register: the plugin contracts.

Every method core calls on a component is declared here, typed and documented; core never
probes a component for an attribute. A component registered for a kind subclasses that kind's
base (a task :class:`Task`, a model :class:`ModelBuilder`, a validator :class:`Validator`...);
abstract methods are what every such component must do, the others are optional
capabilities with a working default. Each component is built as ``Component(config)`` where
``config`` is an instance of its nested pydantic ``Config``. Nothing here imports torch:
components import heavy libraries inside their methods.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import pandas as pd

    from tuneforge.data import TaskData
    from tuneforge.split import Split

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


class FindingKind(StrEnum):
    """The kinds of :class:`Finding` the built-in validators (and the split's leakage check)
    report: one shared name per kind, so that ``fail_on``, advisors and reports match what the
    validators emit. Members are strings (``FindingKind.LABEL_ISSUE == "label-issue"``) and are
    written to ``findings.json`` as their value. A plugin may use kind strings of its own.
    """

    # generic checks (plugins/validators.py)
    NON_TEXT_VALUE = "non-text-value"
    MIXED_LABEL_TYPES = "mixed-label-types"
    MISSING_VALUE = "missing-value"
    EMPTY_TEXT = "empty-text"
    DUPLICATE = "duplicate"
    CONFLICTING_LABELS = "conflicting-labels"
    SMALL_CLASS = "small-class"
    IMBALANCE = "imbalance"
    UNUSED_CLASS = "unused-class"
    #: likely mislabelled rows (the ``label-noise`` validator)
    LABEL_ISSUE = "label-issue"
    #: the same example in two splits (the split's own check)
    LEAKAGE = "leakage"
    # modality checks
    LONG_TEXT = "long-text"
    IMAGE_MODES = "image-modes"
    MISSING_FEATURE = "missing-feature"
    # regression targets
    NON_NUMERIC_TARGET = "non-numeric-target"
    MISSING_TARGET = "missing-target"
    INFINITE_TARGET = "infinite-target"
    OVERFLOWING_TARGET = "overflowing-target"
    TARGET_OUTLIER = "target-outlier"
    CAPPED_TARGET = "capped-target"
    CONSTANT_COLUMN = "constant-column"


@dataclass
class Finding:
    """One data-quality observation.

    ``kind`` names what was found: a :class:`FindingKind` for the built-in kinds, or a
    plugin's own string. ``rows`` are row labels of the loaded data's index: the 0-based data
    row in the source file (without its header), which stays the same after other rows are
    dropped. ``drop`` lists the rows the ``drop`` policy removes (defaults to ``rows``).
    ``relabel`` maps rows to a new target value (e.g. tiny classes merged into one); it is
    applied unless the policy is ``fail``. ``weights`` maps rows to a loss weight in [0, 1]
    (the label-noise validator's self-confidence); under the ``down-weight`` policy the
    training loss of each of those rows is multiplied by its weight. ``details`` holds
    anything else worth reporting.
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
    weights: dict[int, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "validator": self.validator,
            "kind": str(self.kind),
            "severity": self.severity,
            "message": self.message,
            "count": len(self.rows),
            "rows": self.rows,
            "action": self.action,
            "details": self.details,
        }
        if self.weights:
            out["weights"] = {int(r): float(w) for r, w in self.weights.items()}
        return out


class ValidatorConfig(StrictConfig):
    policy: Policy = "warn"


class Validator(Component):
    """Checks the loaded data and reports :class:`Finding` objects.

    Core calls :meth:`check` once per run, before the split, on the data the previous
    validators left, and applies the validator's :attr:`policy` to each finding.
    """

    Config: ClassVar[type[BaseModel]] = ValidatorConfig

    @property
    def policy(self) -> str:
        """What core does with a finding: ``warn``, ``drop``, ``fail`` (or ``down-weight``).

        The ``policy`` key of the validator's config (:class:`ValidatorConfig`); ``warn`` for a
        validator whose config declares none.
        """
        return str(dict(self.config).get("policy", "warn"))

    def check(self, data: TaskData, task: Task) -> list[Finding]:
        """The findings on ``data`` (an empty list when there is nothing to report).

        :param data: the loaded data (``data.frame``, ``data.inputs``, ``data.target``...).
        :param task: the run's task, for task-specific keys (e.g. :meth:`Task.content_keys`).

        Raise :class:`tuneforge.errors.UserError` for data the validator cannot check; the
        message is reported as ``validators[i] (name): ...``.
        """
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
        """How to balance ``train_rows`` (row labels of ``data``): a :class:`BalancePlan`.

        :param rng: the run's seeded generator; draw every random choice from it.
        """
        raise NotImplementedError


# -- augmenters and preprocessors ---------------------------------------------------------


class Augmenter(Component):
    """Transforms one training example (a dict of role -> value) on the fly."""

    #: Modalities (input roles' kinds) the augmenter works on, e.g. {"text"}; empty: any.
    #: A config that names it for a task without such inputs is refused.
    modalities: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, example: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """The augmented copy of ``example`` (role -> value); draw randomness from ``rng``."""
        raise NotImplementedError


class Preprocessor(Component):
    """Transforms raw inputs before tokenization, identically for every split and at predict time."""

    #: Modalities the preprocessor works on, e.g. {"text"}; empty: any.
    modalities: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, value: Any) -> Any:
        """The transformed input value."""
        raise NotImplementedError


# -- metrics ------------------------------------------------------------------------------


class Metric(Component):
    """A scalar computed from true targets, predictions and scores of one split."""

    #: "classification", "regression" or "any".
    problem: ClassVar[str] = "any"
    greater_is_better: ClassVar[bool] = True

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        """The metric of one split.

        :param y_true: true targets (class ids, or target values for regression).
        :param y_pred: predictions as :meth:`Task.predictions` returns them.
        :param y_score: class probabilities (rows x classes), or None (regression).
        """
        raise NotImplementedError

    def check_data(self, data: TaskData) -> None:
        """Raise :class:`tuneforge.errors.UserError` when the metric is undefined on ``data``.

        Called once before training (e.g. MAPE on targets that include 0); the message is
        reported as ``metrics[i]: name: ...``. By default every data set is accepted.
        """


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
        """Run the study: every :class:`Trial` proposed, each passed to ``objective``."""
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
        """The problems found in ``run`` (a :class:`tuneforge.advice.RunRecord`), maybe none."""
        raise NotImplementedError


# -- tasks, models, tokenizers ------------------------------------------------------------


class Task(Component, abc.ABC):
    """A modality and a problem kind: data loading, datasets, model, loss, outputs, artifacts.

    Core calls these methods, in this order, for ``tuneforge run``: :meth:`defaults` (component
    choices the config left out), :meth:`load`, then after validation :meth:`stratify_labels` and
    :meth:`content_keys` (the split), :meth:`fit` (train-split state), :meth:`prepare`,
    :meth:`make_dataset` (train, val), :meth:`collate_fn`, :meth:`build_model`, :meth:`loss_fn`,
    :meth:`on_epoch_start` (before each training epoch), :meth:`save_artifacts` (each best
    epoch), and for the test split :meth:`load_artifacts`, :meth:`make_dataset`,
    :meth:`predictions` and :meth:`baselines`. ``tuneforge predict`` calls :meth:`load_inputs`,
    :meth:`load_artifacts`, :meth:`predict_dataset`, :meth:`collate_fn` and :meth:`predictions`.

    ``tokenizer`` is the run's ``tokenizer:`` component (a text tokenizer, an image transform),
    or None for tasks that need none (tables). ``model_builder`` is the run's ``model:``
    component (:class:`ModelBuilder`). See :class:`tuneforge.plugins.text.task.TextClassificationTask`
    for a complete example.
    """

    #: ``"classification"`` or ``"regression"``: which metrics, validators and balancers apply.
    problem: ClassVar[str] = "classification"
    #: Input roles and their modality, e.g. {"text": "text", "text_pair": "text"}.
    roles: ClassVar[dict[str, str]] = {}
    #: The name the task is registered under; core sets it on the instance.
    name: str = ""

    # -- data -------------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self, data_config: Any, base_dir: Path) -> TaskData:
        """Read the training data: ``data_config`` is the config's ``data:`` section
        (:class:`tuneforge.config.DataConfig`), relative paths are against ``base_dir``.

        Raise :class:`tuneforge.errors.ConfigError` / :class:`~tuneforge.errors.DataError`
        naming the key or the file and row for bad input.
        """

    @abc.abstractmethod
    def load_inputs(self, path: Path, data_config: Any) -> pd.DataFrame:
        """Read a file to predict on (``tuneforge predict --input``): the training run's input
        columns; the label is optional."""

    def defaults(self) -> dict[str, Any]:
        """Default component choices for sections the config leaves out.

        Keys ``validators`` and ``metrics`` (lists), ``tokenizer`` and ``model`` (a name or
        ``{name: ..., param: ...}``). By default none: the config must name them.
        """
        return {}

    def content_keys(self, data: TaskData) -> pd.Series | None:
        """One key per row (indexed like ``data.frame``): rows with equal keys are the same
        example. Used to keep duplicates in one split (``split.group_duplicates``) and to check
        the final splits for leakage. None (the default): the task defines no content key, and
        leakage is reported as not checked."""
        return None

    def stratify_labels(self, data: TaskData) -> np.ndarray | None:
        """One stratum per row for the stratified split (e.g. target bins for regression).

        None (the default): the class ids when the data has classes, else no stratification.
        """
        return None

    def fit(self, data: TaskData, train_rows: np.ndarray, model_builder: ModelBuilder) -> None:
        """Learn train-split state (a target scaler, feature preprocessing) from ``train_rows``
        only, before any dataset is made. By default there is none."""

    def baselines(
        self, data: TaskData, split: Split, metrics: dict[str, Metric]
    ) -> dict[str, float]:
        """Reference models' test scores on the same split (e.g. ``mean_baseline_rmse``),
        added to the test metrics. By default none (core adds the majority-class baseline for
        classification itself)."""
        return {}

    # -- training ---------------------------------------------------------------------------
    def prepare(self, tokenizer: Any, model_builder: ModelBuilder) -> None:
        """Set up ``tokenizer`` for ``model_builder`` (e.g. load the checkpoint's tokenizer)
        before datasets are made. By default nothing."""

    @abc.abstractmethod
    def make_dataset(
        self,
        data: TaskData,
        rows: np.ndarray,
        tokenizer: Any,
        preprocessors: list[Preprocessor],
        augmenters: list[Augmenter],
        seed: int,
    ) -> Any:
        """A map-style torch dataset of ``rows`` (row labels of ``data``) whose items are dicts
        of tensors including ``labels``; ``augmenters`` is empty except for the train split."""

    @abc.abstractmethod
    def predict_dataset(
        self,
        frame: pd.DataFrame,
        data_config: Any,
        tokenizer: Any,
        preprocessors: list[Preprocessor],
    ) -> Any:
        """A dataset of the unlabelled rows :meth:`load_inputs` read."""

    @abc.abstractmethod
    def collate_fn(self, tokenizer: Any, on_cuda: bool) -> Any:
        """The DataLoader ``collate_fn`` for this task's datasets: a list of items -> a batch
        (dict of tensors); the model is called as ``model(**batch without labels)``."""

    @abc.abstractmethod
    def build_model(self, model_builder: ModelBuilder, data: TaskData, tokenizer: Any) -> Any:
        """A new ``torch.nn.Module`` for ``data`` (its classes or targets), built by
        ``model_builder``; see :class:`ModelBuilder` for what its forward returns."""

    @abc.abstractmethod
    def loss_fn(self, class_weights: np.ndarray | None, focal_gamma: float | None = None) -> Any:
        """The loss ``loss(logits, labels) -> tensor``; ``class_weights`` and ``focal_gamma``
        come from the balancer (``None`` for the evaluation loss). A loss with a ``reduction``
        attribute is switched to per-row losses for row weights."""

    def on_epoch_start(self, model: Any, model_builder: ModelBuilder, epoch: int) -> None:
        """Called before each training epoch (1-based) with the unwrapped model. The default
        asks the builder: :meth:`ModelBuilder.on_epoch_start`."""
        model_builder.on_epoch_start(model, epoch)

    @abc.abstractmethod
    def predictions(self, logits: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Model outputs of a split (a CPU tensor) -> ``(y_pred, y_score)``: predicted class ids
        and class probabilities (rows x classes), or predicted values and None (regression)."""

    # -- artifacts --------------------------------------------------------------------------
    @abc.abstractmethod
    def save_artifacts(
        self, model: Any, tokenizer: Any, model_builder: ModelBuilder, folder: Path
    ) -> None:
        """Write the best checkpoint into the empty ``folder`` in the libraries' own formats
        (the model through ``model_builder``, the tokenizer, task state such as a scaler)."""

    @abc.abstractmethod
    def load_artifacts(self, folder: Path, tokenizer: Any, model_builder: ModelBuilder) -> Any:
        """The model saved by :meth:`save_artifacts` in ``folder`` (restoring ``tokenizer`` and
        task state too). Raise :class:`tuneforge.errors.UserError` naming ``folder`` when it
        is not such a checkpoint."""


class ModelBuilder(Component):
    """Builds, saves and loads a model in its library's own format.

    Core never calls ``build``/``save``/``load`` itself: the run's :class:`Task` does, in
    :meth:`Task.build_model`, :meth:`Task.save_artifacts` and :meth:`Task.load_artifacts`,
    with what its modality knows (the built-in builders: ``hf-sequence-classification``
    ``build(num_labels, id2label, tokenizer, problem)``, ``save(model, folder)``,
    ``load(folder) -> model``; ``timm`` ``build(num_classes, base_dir)``,
    ``save(model, folder, label_names, data_config)``, ``load(folder) -> (model,
    data_config)``; ``mlp`` ``build_tabular(n_numeric, cardinalities, n_outputs)``). A builder
    for an existing task implements that task's calls; a new task defines its own.

    The model is a ``torch.nn.Module`` called as ``model(**batch)`` with the batch the task's
    collate function makes, without ``labels``. Its forward returns a tensor of logits (rows x
    outputs; regression: rows x targets), or an object with a ``.logits`` tensor (transformers
    ``ModelOutput``).
    """

    def checkpoint_path(self) -> str | None:
        """The local folder or file of the pretrained weights the model starts from, or None
        (random initialisation, the default). Tasks use it to load the matching tokenizer."""
        return None

    def on_epoch_start(self, model: Any, epoch: int) -> None:
        """Called before each training epoch (1-based) with the unwrapped model, e.g. to
        freeze or unfreeze layers. By default nothing."""


class Command(Component):
    """A CLI sub-command: ``tuneforge NAME ...``."""

    #: One line for ``tuneforge --help``.
    help: ClassVar[str] = ""

    def add_arguments(self, parser: Any) -> None:
        """Add the command's arguments to its ``argparse`` sub-parser. By default none."""

    def run(self, args: Any) -> int:
        """Run the command with the parsed ``args``; return the exit status."""
        raise NotImplementedError
