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

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover - numpy/pandas stay out of start-up (`tuneforge plugins`)
    from pathlib import Path

    import numpy as np
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

    #: The problem kinds (:attr:`Task.problem`: ``"classification"``, ``"multilabel"``,
    #: ``"regression"``...) a validator, balancer, augmenter or metric supports; empty: every
    #: problem.
    #: A config that selects it for a task of another problem is refused before anything runs,
    #: naming the components of its kind that fit.
    problems: ClassVar[tuple[str, ...]] = ()

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
    #: a validator that could not check a given validation or test split (too few rows...)
    NOT_CHECKED = "not-checked"
    # modality checks
    LONG_TEXT = "long-text"
    IMAGE_MODES = "image-modes"
    UNREADABLE_IMAGE = "unreadable-image"
    IMAGE_MODE = "image-mode"
    IMAGE_TOO_SMALL = "image-too-small"
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
    anything else worth reporting. ``split`` names the given split (``data.val_path``,
    ``data.test_path``, ``split.column``) the finding is about; empty when the data was one
    part.
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
    split: str = ""

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
        if self.split:
            out["split"] = self.split
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
    """Transforms one training example (a dict of role -> value) on the fly.

    Called on the training split only, each time the dataset reads an example (so every epoch
    sees new variants), in the order of the config's ``augmenters:`` list. The built-in tasks
    pass:

    - text tasks: ``{"text": str}``, plus ``"text_pair": str`` for a pair: the raw text after
      the ``preprocessors:``, before tokenization;
    - image tasks: ``{"image": numpy.ndarray}``: the decoded image as ``uint8``, height x
      width x 3 (RGB) or height x width (grayscale), before the model's transform;
    - tabular tasks: ``{"num": float32 array, "cat": int64 array, "label": ...}`` after the
      feature preprocessing (numeric features imputed and standardised with train-split
      statistics, categorical codes with 0 for missing or unseen); ``label`` is the class id
      (one-hot class probabilities when a mixing augmenter is configured) or the target
      value(s).

    ``rng`` is a :class:`random.Random` for every modality (not a NumPy generator): one per
    dataset, seeded from ``trainer.seed`` and reseeded from the worker's seed in each
    DataLoader worker process. Draw every random choice from it, never from the global
    :mod:`random`, :mod:`numpy.random` or torch, so that a seed gives the same augmentations;
    seed a library's own generator from it (``np.random.default_rng(rng.getrandbits(32))``).

    ``example`` and its values are read-only: they may be shared with the dataset (an image
    array PIL owns, a mixing partner's row) and with ``tuneforge validate --show-augmented``,
    which shows them beside the result. Never change them in place: return a new dict with
    new values (``{**example, "text": new}``), or ``example`` itself when nothing changes.
    """

    #: Modalities (input roles' kinds) the augmenter works on, e.g. {"text"}; empty: any.
    #: A config that names it for a task without such inputs is refused.
    modalities: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, example: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """The augmented example: a new dict (``example`` is left unchanged), or ``example``
        itself when this call changes nothing.

        :param example: role -> value, as the task passes it (see the class docstring).
        :param rng: the dataset's seeded :class:`random.Random`; draw every random choice
            from it.
        """
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

    #: Whether a larger value is better (picks the best epoch when it is ``trainer.monitor``).
    greater_is_better: ClassVar[bool] = True

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        """The metric of one split; declare :attr:`Component.problems` for the problems whose
        outputs it understands.

        :param y_true: the dataset's ``labels`` for the split: class ids (classification), a
            rows x labels 0/1 matrix (multilabel), target values (regression).
        :param y_pred: predictions as :meth:`Task.predictions` returns them (same shape).
        :param y_score: class or label probabilities (rows x outputs), or None (regression).
        """
        raise NotImplementedError

    def resampled(
        self,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        y_score: np.ndarray | None,
        rows: np.ndarray,
    ) -> np.ndarray | None:
        """The metric on a block of bootstrap resamples of a split at once, for the test
        metrics' intervals (:mod:`tuneforge.bootstrap`); optional, for speed.

        :param y_true: the whole split's labels, as :meth:`__call__` takes them.
        :param y_pred: the whole split's predictions.
        :param y_score: the whole split's scores, or None.
        :param rows: resamples x rows indices into the split (drawn with replacement): row
            ``b`` is resample ``b``.
        :returns: one value per resample (NaN where undefined), equal to :meth:`__call__` on
            ``(y_true[rows[b]], y_pred[rows[b]], y_score[rows[b]])``; None (the default): the
            bootstrap calls :meth:`__call__` on each resample instead.
        """
        return None

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


# -- explanations ---------------------------------------------------------------------------


@dataclass
class ExplainOptions:
    """What :meth:`Task.explain` is asked for (``tuneforge explain``, and the run end's
    ``explanations/test.html``).

    :param rows: rows explained one by one (text and image tasks: the first ``rows`` of the
        frame); a task that explains the rows as a whole (tabular permutation importance)
        uses every row it is given.
    :param steps: Integrated Gradients steps (text tasks).
    :param internal_batch_size: examples per forward pass inside an attribution method.
    :param seed: seeds every random choice (permutation importance's shuffles).
    :param target: the output (class, label or target index) to explain; None (the default):
        each row's predicted class, or its top predicted label, or the first target.
    :param labels: the run's ``labels.json`` record (:meth:`Task.labels_record` plus
        ``label_column``, ``inputs``, ``problem``): the outputs' names, the label column.
    :param source: the input's name (a file path), for messages.
    """

    rows: int = 4
    steps: int = 32
    internal_batch_size: int = 16
    seed: int = 0
    target: int | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    source: str = ""


@dataclass
class Explanation:
    """What :meth:`Task.explain` returns: the page's content and the numbers behind it.

    :param method: the attribution method, e.g. ``"integrated-gradients"``, ``"grad-cam"``,
        ``"permutation-importance"``.
    :param html: a self-contained HTML fragment (inline styles, images as data URIs, every
        value from the data escaped), put inside the page core writes.
    :param records: one dict per explained row (or per feature, for a whole-set method):
        the numbers shown (attributions, deltas, scores); values may be NumPy arrays.
    :param summary: a few figures about the whole explanation (rows, the largest
        convergence delta...), shown at the top of the page.
    """

    method: str
    html: str
    records: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


# -- tasks, models, tokenizers ------------------------------------------------------------


class Task(Component, abc.ABC):
    """A modality and a problem kind: data loading, preprocessing, datasets, model, loss,
    outputs, artifacts.

    Core knows no modality and no problem kind: it calls these methods. For ``tuneforge run``,
    in this order: :meth:`defaults` (component choices the config left out), :meth:`bind`
    (the run's components), :meth:`load`; after the validators :meth:`after_validation`;
    :meth:`stratify_labels` and :meth:`content_keys` (the split), :meth:`label_counts` and
    :meth:`labels_record` (the run folder's ``split.json`` and ``labels.json``), :meth:`fit`
    (train-split state), :meth:`prepare`, :meth:`make_dataset` (train, val),
    :meth:`collate_fn`, :meth:`build_model`, :meth:`loss_fn`, :meth:`on_epoch_start` (before
    each training epoch), :meth:`predictions` (each evaluation), :meth:`save_artifacts` (each
    best epoch); after training :meth:`load_artifacts`, :meth:`after_training`,
    :meth:`make_dataset` (test), :meth:`baselines`, :meth:`test_details` and
    :meth:`prediction_frame`. ``tuneforge predict`` calls :meth:`bind`, :meth:`load_inputs`, :meth:`load_artifacts`,
    :meth:`predict_dataset`, :meth:`collate_fn`, :meth:`predictions` and
    :meth:`prediction_columns` (with ``--engine onnx`` the exported model takes the torch
    model's place); ``tuneforge export`` calls :meth:`load_artifacts`, :meth:`make_dataset`
    (test), :meth:`collate_fn`, :meth:`export_axes`, :meth:`export_preprocessing` and
    :meth:`predictions`.

    The problem kind's part (label encoding, loss, predictions, baselines, prediction columns,
    stratification key, class counts) comes from a shared base the built-in tasks compose:
    :class:`tuneforge.plugins.problems.SingleLabelClassification`,
    :class:`tuneforge.plugins.multilabel.MultiLabelClassification` or
    :class:`tuneforge.plugins.regression.RegressionTaskMixin`; a modality's part (reading
    files, preprocessing, datasets) from the task itself. A task takes parameters through its
    nested ``Config`` (``task: {name: ..., param: ...}``). See docs/plugins.md, "Writing a task".
    """

    #: The problem kind: ``"classification"`` (one class per row), ``"multilabel"`` (a set of
    #: labels per row) or ``"regression"``; validators, balancers and metrics declare the
    #: problems they support (:attr:`Component.problems`).
    problem: ClassVar[str] = "classification"
    #: Input roles and their modality, e.g. {"text": "text", "text_pair": "text"}.
    roles: ClassVar[dict[str, str]] = {}
    #: The name the task is registered under; core sets it on the instance.
    name: str = ""
    #: The run's ``tokenizer:`` component: this task's preprocessing component (a text
    #: tokenizer, an image transform), or None for tasks that need none. Set by :meth:`bind`.
    tokenizer: Any = None
    #: The run's ``model:`` component (:class:`ModelBuilder`). Set by :meth:`bind`.
    model_builder: ModelBuilder | None = None
    #: The run's ``preprocessors:``, applied to raw inputs in order. Set by :meth:`bind`.
    preprocessors: list[Preprocessor] = []

    def bind(
        self,
        tokenizer: Any,
        model_builder: ModelBuilder,
        preprocessors: list[Preprocessor],
    ) -> None:
        """Give the task the run's components; core calls it once, before any other method
        but :meth:`defaults`. The task owns its preprocessing from here on: no other method
        receives them. Overriding methods must call ``super().bind(...)``."""
        self.tokenizer = tokenizer
        self.model_builder = model_builder
        self.preprocessors = list(preprocessors)

    # -- data -------------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self, data_config: Any, base_dir: Path) -> TaskData:
        """Read the training data: ``data_config`` is the config's ``data:`` section
        (:class:`tuneforge.config.DataConfig`), relative paths are against ``base_dir``.

        Raise :class:`tuneforge.errors.ConfigError` / :class:`~tuneforge.errors.DataError`
        naming the key or the file and row for bad input.
        """

    def load_labelled(
        self, data_config: Any, base_dir: Path, path: Path, labels_record: dict[str, Any]
    ) -> TaskData:
        """Read a labelled file other than ``data.path`` exactly like the training data, with
        its labels in the training data's terms: a given validation or test file
        (``data.val_path``, ``data.test_path``) or ``tuneforge evaluate --input``.

        ``labels_record`` is what :meth:`labels_record` returned for the training data (a run
        folder's ``labels.json``): a classification task reads the file's labels as the same
        class ids, so a file holding only some of the classes is read correctly, and a label
        the training data lacks is a :class:`~tuneforge.errors.DataError` naming the file and
        row. By default :meth:`load` with ``data_config.path`` set to ``path``.
        """
        from pathlib import Path  # only a type name at module level

        return self.load(data_config.model_copy(update={"path": Path(path)}), base_dir)

    def reserve_columns(self, columns: list[str]) -> None:
        """Columns of the data files that core reads itself (``split.column``): they must never
        become a model input. Core calls it before :meth:`load`, and refuses a run whose loaded
        inputs (``TaskData.inputs``) still name one of them. A task whose inputs are only the
        columns the config names needs nothing (the default); a task that takes every column
        by default (tabular) leaves these out."""

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

    def after_validation(self, data: TaskData, data_config: Any) -> TaskData:
        """The data to split and train on, given what the validators left: e.g. check that
        at least two classes remain and drop the classes no row has any more. Raise
        :class:`~tuneforge.errors.DataError` when too little is left. By default ``data``."""
        return data

    def stratify_labels(self, data: TaskData) -> np.ndarray | None:
        """What the stratified split keeps in proportion, one row per example: a 1-D array
        of strata (class ids, target bins), or a 2-D 0/1 matrix (rows x labels) for an
        iterative multi-label stratification. None (the default): no stratification."""
        return None

    def label_counts(self, data: TaskData, rows: np.ndarray) -> dict[str, int]:
        """Examples per class (or per label) among ``rows``, for ``split.json`` and the
        report. By default none (regression)."""
        return {}

    def labels_record(self, data: TaskData) -> dict[str, Any]:
        """What ``labels.json`` must hold for :meth:`prediction_columns` at predict time
        (e.g. ``{"classes": [...]}``); core adds ``label_column``, ``inputs``, ``modalities``
        and ``problem``. By default nothing more."""
        return {}

    def fit(self, data: TaskData, train_rows: np.ndarray) -> None:
        """Learn train-split state (a target scaler, feature preprocessing) from ``train_rows``
        only, before any dataset is made. By default there is none."""

    # -- training ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Set up the preprocessing for training (e.g. load the tokenizer that matches
        :meth:`ModelBuilder.checkpoint_path`) before datasets are made; not called by
        ``predict``, where :meth:`load_artifacts` restores it. By default nothing."""

    @abc.abstractmethod
    def make_dataset(
        self, data: TaskData, rows: np.ndarray, augmenters: list[Augmenter], seed: int
    ) -> Any:
        """A map-style torch dataset of ``rows`` (row labels of ``data``) whose items are dicts
        of tensors including ``labels``; ``augmenters`` is empty except for the train split,
        ``seed`` seeds their randomness."""

    def preview_augmented(
        self,
        data: TaskData,
        rows: np.ndarray,
        augmenters: list[Augmenter],
        seed: int,
        folder: Path,
    ) -> list[str]:
        """What ``augmenters`` make of the training examples ``rows``, for
        ``tuneforge validate --show-augmented N``: the lines to print, one or a few per
        example, each naming its row and showing the input before and after augmentation.

        Called after :meth:`fit` and :meth:`prepare`, as training calls them. Augment through
        the code training uses (the dataset :meth:`make_dataset` makes, with ``seed``), so a
        seed shows the same variants every time. A task that shows images writes them into
        ``folder`` and names them in its lines by their path relative to ``folder``; it writes
        nothing anywhere else. By default a single line saying that the task cannot preview.

        :param rows: row labels of ``data``, drawn from the train split (before balancing).
        :param seed: ``trainer.seed``, the seed training gives :meth:`make_dataset`.
        :param folder: an empty folder the preview owns; core prints where it ends up.
        """
        return [f"task {self.name!r} cannot preview augmented examples"]

    @abc.abstractmethod
    def predict_dataset(self, frame: pd.DataFrame, data_config: Any) -> Any:
        """A dataset of the unlabelled rows :meth:`load_inputs` read."""

    @abc.abstractmethod
    def collate_fn(self, on_cuda: bool) -> Any:
        """The DataLoader ``collate_fn`` for this task's datasets: a list of items -> a batch
        (dict of tensors); the model is called as ``model(**batch without labels)``.
        ``on_cuda``: the batch goes to a GPU (pad to multiples of 8, say)."""

    @abc.abstractmethod
    def build_model(self, data: TaskData) -> Any:
        """A new ``torch.nn.Module`` for ``data`` (its classes, labels or targets), built by
        ``self.model_builder.build(spec)`` with a :class:`ModelSpec` of what this task's
        preprocessing hands the model."""

    @abc.abstractmethod
    def loss_fn(self, class_weights: np.ndarray | None, focal_gamma: float | None = None) -> Any:
        """The loss ``loss(logits, labels) -> tensor``; ``class_weights`` (per class, or per
        label for multi-label) and ``focal_gamma`` come from the balancer (``None`` for the
        evaluation loss). A loss with a ``reduction`` attribute is switched to per-row losses
        for row weights."""

    def on_epoch_start(self, model: Any, epoch: int) -> None:
        """Called before each training epoch (1-based) with the unwrapped model. The default
        asks the builder: :meth:`ModelBuilder.on_epoch_start`."""
        if self.model_builder is not None:
            self.model_builder.on_epoch_start(model, epoch)

    @abc.abstractmethod
    def predictions(self, logits: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Model outputs of a split (a CPU tensor) -> ``(y_pred, y_score)``: predicted class ids
        and class probabilities (rows x classes); a 0/1 label matrix and label probabilities
        (multilabel); or predicted values and None (regression)."""

    def after_training(
        self, predict_val: Callable[[], tuple[Any, Any]], folder: Path
    ) -> dict[str, Any]:
        """Called once after training, with the best model loaded and before the test split is
        predicted: e.g. tune decision thresholds on the validation split. Returns what to record
        in ``metrics.json`` under ``tuning``; by default nothing is tuned and ``predict_val`` is
        not called.

        :param predict_val: ``() -> (logits, labels)`` of the validation split (CPU tensors),
            computed when called.
        :param folder: the best checkpoint's folder; files added there (a ``thresholds.json``)
            are read back by :meth:`load_artifacts`, at predict time too.
        """
        return {}

    def baselines(
        self, data: TaskData, split: Split, metrics: dict[str, Metric]
    ) -> dict[str, float]:
        """Reference models' test scores on the same split, added to the test metrics. A key
        holds ``baseline`` and ends in ``_<metric name>`` (``majority_baseline_accuracy``,
        ``baseline_ridge_rmse``): a reference model that beats the trained model on the run's
        headline metric is named in ``metrics.json`` ``recommendations`` and the report.
        By default none."""
        return {}

    def frozen_features(self, data: TaskData, rows: np.ndarray) -> np.ndarray | None:
        """Frozen pretrained features of ``rows`` (row labels of ``data``): a float32 array,
        one row per entry of ``rows`` (in that order) x feature dimensions, from the pretrained
        encoder the run's model starts from (:attr:`model_builder`), with no training. None (the
        default) when the model has no such encoder.

        The built-in text tasks give the mean-pooled, L2-normalised embeddings of the model's
        sentence encoder (:meth:`ModelBuilder.sentence_encoder`); the image tasks the pooled
        backbone features of the model's pretrained weights on the evaluation transform.
        Used by the ``label-noise`` validator (on every row, before the split) and the
        embedding baseline (:meth:`baselines`); an implementation caches them per task
        instance so that the second call costs nothing.
        """
        return None

    def test_details(
        self, data: TaskData, rows: np.ndarray, logits: Any, labels: Any
    ) -> dict[str, Any]:
        """Results on the test split that are more than one number each (e.g. a per-label
        table), from the best model's ``logits`` and the dataset's ``labels`` (CPU tensors)
        for ``rows``; recorded in ``metrics.json`` under ``test_details``. By default none."""
        return {}

    @abc.abstractmethod
    def prediction_frame(
        self, data: TaskData, rows: np.ndarray, logits: Any, labels: Any
    ) -> pd.DataFrame:
        """``predictions_test.csv``: one row per example of ``rows`` (a first column ``row``,
        the data row), then true and predicted targets and scores, from the model's ``logits``
        and the dataset's ``labels`` (CPU tensors)."""

    def ensemble_outputs(self, outputs: list[Any], folders: list[Path]) -> Any:
        """One output tensor for an ensemble (a cross-validation or repeated-seed run's
        members): ``outputs[i]`` are the logits (CPU tensors, same rows) of the checkpoint in
        ``folders[i]``, each computed just after :meth:`load_artifacts` of that folder; the
        last folder is the one loaded now. Returns logits that :meth:`predictions` and the
        other output methods read with the current (last-loaded) state. By default the mean
        of the members' logits; a task whose outputs depend on a checkpoint's own state (a
        target scaler) averages them in state-independent units."""
        import torch

        return torch.stack([o.float() for o in outputs]).mean(dim=0)

    @abc.abstractmethod
    def prediction_columns(
        self, logits: Any, labels_record: dict[str, Any], source: Path
    ) -> pd.DataFrame:
        """The columns ``tuneforge predict`` appends to the input rows (``prediction``,
        per-class probabilities...), from the model's ``logits`` and the run's ``labels.json``
        (``labels_record``). Raise :class:`tuneforge.errors.UserError` naming ``source`` when
        the checkpoint's outputs do not fit the record."""

    # -- artifacts --------------------------------------------------------------------------
    @abc.abstractmethod
    def save_artifacts(self, model: Any, folder: Path) -> None:
        """Write the best checkpoint into the empty ``folder`` in the libraries' own formats
        (the model through ``self.model_builder``, the tokenizer, task state such as a
        scaler)."""

    @abc.abstractmethod
    def load_artifacts(self, folder: Path) -> Any:
        """The model saved by :meth:`save_artifacts` in ``folder`` (restoring the tokenizer
        and task state too). Raise :class:`tuneforge.errors.UserError` naming ``folder`` when
        it is not such a checkpoint."""

    # -- export -----------------------------------------------------------------------------
    def export_axes(self, batch: dict[str, Any]) -> dict[str, dict[int, str]]:
        """The dimensions of each model input that vary between batches, for an exported
        model (``tuneforge export``): input name -> ``{dimension: axis name}``; inputs that
        share an axis name have the same size along it. By default the first dimension of
        every input, ``"batch"``; the text tasks add the second, ``"sequence"``.

        :param batch: a batch of the task's ``collate_fn``, without ``labels`` and
            ``sample_weight``: the model's inputs, by name, as the exported model takes them.
        """
        return {name: {0: "batch"} for name in batch}

    def export_preprocessing(self, folder: Path, out: Path) -> dict[str, Any]:
        """Copy into the export folder ``out`` what predicting with the exported model needs
        beside it, from the best checkpoint ``folder``: the tokenizer files, the transform's
        or the feature preprocessing's parameters, ``calibration.json``, ``thresholds.json``.
        Returns the preprocessing settings the copied files do not hold (e.g. the tokenizer's
        ``max_length``), recorded in the export's ``export.json`` under ``preprocessing``.

        By default every file of ``folder`` but the model weights (``*.safetensors``,
        ``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.onnx``), keeping sub-folders, and no
        settings.
        """
        import shutil
        from pathlib import Path  # only a type name at module level

        weights = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx"}
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and path.suffix not in weights:
                target = Path(out) / path.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        return {}

    # -- explanations -------------------------------------------------------------------------
    def explain(
        self, model: Any, frame: pd.DataFrame, data_config: Any, options: ExplainOptions
    ) -> Explanation:
        """Explain the predictions of ``model`` (the best checkpoint, from
        :meth:`load_artifacts`, in eval mode) on ``frame``: an :class:`Explanation` whose
        HTML fragment ``tuneforge explain`` and the run end (``explanations/test.html``) put
        in a page. Called after :meth:`load_artifacts`.

        The built-in tasks: text, token attributions by Integrated Gradients on the input
        embeddings (:meth:`ModelBuilder.explain_layer`); image, Grad-CAM on the last
        convolutional stage; tabular, permutation importance of each feature (it needs the
        label column in ``frame``).

        :param frame: rows as :meth:`load_inputs` reads them (the label column may be
            there); the run end passes the test split's rows of the training data.
        :param data_config: the run's ``data:`` section.
        :param options: :class:`ExplainOptions`.

        Raise :class:`tuneforge.errors.UserError` naming the file or column for input that
        cannot be explained. By default a UserError: the task has no explanations.
        """
        from tuneforge.errors import UserError

        raise UserError(f"task {self.name or type(self).__name__} has no explanations")


@dataclass
class ModelSpec:
    """What a :class:`ModelBuilder` builds a model for; the task makes it in
    :meth:`Task.build_model`.

    :param problem: the task's problem kind (``"classification"``, ``"multilabel"``,
        ``"regression"``).
    :param n_outputs: logits per row: classes, labels or regression targets.
    :param output_names: the class names, label names or target columns, in output order.
    :param inputs: what the task's preprocessing hands the model. The built-in tasks give:
        text tasks ``{"tokenizer": <transformers tokenizer>, "vocab_size": int,
        "pad_token_id": int, "max_length": int}`` (``max_length``: the tokens the tokenizer
        keeps per example); image tasks ``{"channels": int, "base_dir": Path,
        "data_config": dict}`` (the transform's timm data config: input size, mean, std); tabular
        tasks ``{"n_numeric": int, "cardinalities": list[int]}`` (one per categorical column).
    """

    problem: str
    n_outputs: int
    output_names: list[str]
    inputs: dict[str, Any] = field(default_factory=dict)


class ModelBuilder(Component, abc.ABC):
    """Builds, saves and loads a model in its library's own format; the run's :class:`Task`
    calls it (core does not).

    The model is a ``torch.nn.Module`` called as ``model(**batch)`` with the batch the task's
    collate function makes, without ``labels`` and ``sample_weight``. Its forward returns a
    tensor of logits (rows x ``spec.n_outputs``), or an object with a ``.logits`` tensor
    (transformers ``ModelOutput``). See docs/plugins.md, "Writing a model".
    """

    @abc.abstractmethod
    def build(self, spec: ModelSpec) -> Any:
        """A new model for ``spec`` (:class:`ModelSpec`): pretrained weights where the builder
        has them, a new output layer of ``spec.n_outputs``. Raise
        :class:`tuneforge.errors.ConfigError` naming the key for a bad config."""

    @abc.abstractmethod
    def save(self, model: Any, folder: Path) -> None:
        """Write ``model`` (built by this builder, maybe trained) into ``folder``; keep what
        :meth:`load` needs (e.g. the spec's output names) in the files."""

    @abc.abstractmethod
    def load(self, folder: Path) -> Any:
        """The model :meth:`save` wrote into ``folder``; works on a fresh builder (``tuneforge
        predict``). Raise :class:`tuneforge.errors.UserError` naming ``folder`` when it holds
        no such model."""

    def checkpoint_path(self) -> str | None:
        """The local folder or file of the pretrained weights the model starts from, or None
        (random initialisation, the default). Tasks use it to load the matching tokenizer."""
        return None

    def sentence_encoder(self) -> str | None:
        """The local folder of a pretrained sentence encoder the model starts from: a
        sentence-transformers style checkpoint whose embeddings are the attention-masked mean
        of its last hidden states (``modules.json`` / ``sentence_bert_config.json``, loadable
        with transformers ``AutoModel``), or None (the default) when the model starts from no
        such encoder. Text tasks embed with it for :meth:`Task.frozen_features`."""
        return None

    def explain_layer(self, model: Any) -> Any:
        """The ``torch.nn.Module`` of ``model`` (built by :meth:`build` or :meth:`load`) that
        explanations attribute to, or None (the default) when the model has none the task
        can use: text tasks take the input-embedding layer (Integrated Gradients), image
        tasks the last convolutional stage, whose output is a batch x channels x height x
        width feature map (Grad-CAM). A task whose model gives None explains nothing and
        says so."""
        return None

    def on_epoch_start(self, model: Any, epoch: int) -> None:
        """Called before each training epoch (1-based) with the unwrapped model, e.g. to
        freeze or unfreeze layers. By default nothing."""

    def parameter_depths(self, model: Any) -> dict[str, int] | None:
        """The depth of each parameter of ``model`` (built by :meth:`build`), for layer-wise
        learning-rate decay (``trainer.layer_decay``), or None (the default) when the model
        has no layer structure; ``trainer.layer_decay`` is then a ConfigError naming the key
        and the model.

        Keys are the names of ``model.named_parameters()``; values are 0 for the embeddings
        (a CNN's stem), ``1..L`` for the blocks bottom-up and ``L + 1`` for everything above
        the last block (pooler, final norm, head). The trainer gives a parameter at depth
        ``d`` the learning rate ``lr * layer_decay ** (D - d)``, ``D`` the largest depth.
        """
        return None

    def enable_gradient_checkpointing(self, model: Any) -> None:
        """Turn on gradient checkpointing (activations recomputed in the backward pass: less
        memory, about a third more compute) in ``model``, built by :meth:`build`, before
        training starts (``trainer.gradient_checkpointing``). By default a ConfigError naming
        ``trainer.gradient_checkpointing`` and the model: raise the same for an architecture
        without it."""
        from tuneforge.errors import ConfigError

        raise ConfigError(
            "trainer.gradient_checkpointing",
            f"model {type(self).__name__} does not support gradient checkpointing",
        )

    def fit_before_training(
        self, model: Any, examples: dict[str, list[Any]], labels: np.ndarray, seed: int
    ) -> None:
        """Train ``model`` (just built by :meth:`build`) on the training split before the
        training loop starts, e.g. setfit's contrastive phase and head initialisation. By
        default nothing.

        The task calls it from :meth:`Task.build_model` (the built-in text tasks do), with the
        rows :meth:`Task.fit` got: the training split before balancing and augmentation, never
        validation or test rows.

        :param model: the model :meth:`build` returned; change it in place.
        :param examples: input role -> one raw value per training row, after the run's
            preprocessors (text tasks: ``{"text": [str, ...]}``, plus ``"text_pair"`` for
            pairs).
        :param labels: the dataset's ``labels`` for those rows (class ids, a rows x labels 0/1
            matrix, or target values).
        :param seed: ``trainer.seed``; draw every random choice from it.

        Raise :class:`tuneforge.errors.ConfigError` naming the key for data the model cannot
        use (e.g. text pairs).
        """


class Command(Component):
    """A CLI sub-command: ``tuneforge NAME ...``."""

    #: One line for ``tuneforge --help``.
    help: ClassVar[str] = ""

    def add_arguments(self, parser: Any) -> None:
        """Add the command's arguments to its ``argparse`` sub-parser. By default none."""

    def run(self, args: Any) -> int:
        """Run the command with the parsed ``args``; return the exit status."""
        raise NotImplementedError
