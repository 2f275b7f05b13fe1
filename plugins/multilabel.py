"""Multi-label classification: a set of labels per row, on every modality.

The problem kind the ``text-multilabel``, ``image-multilabel`` and ``tabular-multilabel``
tasks compose with their modality (:class:`MultiLabelClassification`), built only on the
public contract of :mod:`tuneforge.components`, plus what it needs from the other component
kinds:

- labels as **one column** whose cells join label names with ``task.separator`` (default
  ``|``: ``billing|refund``), or as **several 0/1 columns** named by ``task.label_columns``
  (``[toxic, obscene, insult]``: 1/true = the row has that label);
- in :class:`~tuneforge.data.TaskData` the target column holds each row's label set as a
  tuple of label names in output order (hashable: the ``duplicates`` and
  ``conflicting-labels`` validators group rows by it), ``data.classes`` the label names in
  output order, and an empty cell is NaN (the ``missing`` validator reports it). An empty
  set ``()`` is a valid example, negative for every label: a row of 0s, or a cell equal to
  ``task.empty_set`` when that is set;
- the loss is binary cross-entropy on the logits (one sigmoid per label) with optional
  per-label positive weights, which the ``label-weights`` balancer computes on the train
  split;
- a label is predicted when its probability reaches its decision threshold: 0.5 by default,
  ``task.threshold: 0.3`` for all labels, or ``task.threshold: tune`` to choose each label's
  threshold on the validation split (its best F1) after training; the thresholds are saved in
  the checkpoint as ``thresholds.json`` and used for the test metrics and ``tuneforge
  predict``;
- metrics ``micro_f1``, ``macro_f1``, ``subset_accuracy``, ``hamming_loss`` (and
  :func:`per_label_table`, the report's per-label precision, recall, F1 and support);
- the baseline that always predicts the training split's most frequent label set
  (``majority_baseline_<metric>``);
- a multi-label stratified split (the 0/1 label matrix is the split's 2-D strata: iterative
  stratification).

Nothing here imports numpy, pandas, scikit-learn or torch at module level: listing plugins
stays fast. See docs/multilabel.md.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from tuneforge import hookimpl
from tuneforge.components import BalancePlan, Balancer, Metric, StrictConfig, Task
from tuneforge.errors import ConfigError, DataError, UserError, short
from tuneforge.hookspecs import Register
from tuneforge.plugins.thresholds import ThresholdRule, as_json, check_fixed

if TYPE_CHECKING:  # pragma: no cover - numpy/pandas are imported where used (fast start-up)
    from collections.abc import Callable

    import numpy as np
    import pandas as pd

    from tuneforge.data import TaskData
    from tuneforge.split import Split

PROBLEM = "multilabel"
DEFAULT_SEPARATOR = "|"
#: The target column's name when the labels come from ``task.label_columns``.
LABEL_SET_COLUMN = "labels"
#: The decision thresholds in a checkpoint folder (written by :meth:`save_artifacts` and,
#: tuned, by :meth:`after_training`).
THRESHOLDS_FILE = "thresholds.json"
#: Tuned thresholds stay in this range: a threshold of 0.001 or 0.999 fitted on a small
#: validation split would not carry over to new data.
TUNE_RANGE = (0.05, 0.95)
#: Separators a cell may use instead of the configured one (for the error's hint).
_OTHER_SEPARATORS = ("|", ";", ",", "/", "+", " ")


# -- label sets ------------------------------------------------------------------------------


def _rows_text(rows: list[int], n: int = 5) -> str:
    head = ", ".join(map(str, rows[:n]))
    return f"{head}, ... ({len(rows)} in all)" if len(rows) > n else head


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN
    except (TypeError, ValueError):
        return False


def split_cell(value: Any, separator: str, empty_set: str | None = None) -> tuple[str, ...] | None:
    """The label names in one cell (``"b | a|b"`` -> ``("b", "a")``, in the cell's order,
    each once), ``()`` for ``empty_set``, or None for a missing cell (empty, blank, NaN, or
    only separators)."""
    if _is_missing(value):
        return None
    text = str(value).strip()
    if empty_set is not None and text == empty_set:
        return ()
    names = [part.strip() for part in text.split(separator)]
    names = [n for n in names if n]
    return tuple(dict.fromkeys(names)) if names else None


def canonical(label_set: Any, order: dict[str, int]) -> Any:
    """``label_set`` as a tuple in output order (unknown names last, by name); NaN stays."""
    if not isinstance(label_set, tuple):
        return label_set
    return tuple(sorted(set(label_set), key=lambda n: (order.get(n, len(order)), n)))


def read_label_column(
    frame: pd.DataFrame,
    column: str,
    separator: str,
    declared: list[Any] | None,
    path: Path | str,
    empty_set: str | None = None,
) -> tuple[pd.Series, list[str]]:
    """Parse the label sets of ``frame[column]`` (cells of names joined by ``separator``).

    Returns the sets (tuples in output order, NaN for a missing cell) and the label names in
    output order: ``declared`` (``data.classes``) when given, every name then checked
    against it, else the names in the data, sorted. Raises a one-line :class:`DataError`
    naming the file, the row and the key for an undeclared label, for fewer than two labels,
    and when no cell holds ``separator`` (every row would have one label: a wrong
    separator, or a single-label data set).
    """
    import pandas as pd

    raw = frame[column]
    sets = pd.Series(
        [split_cell(v, separator, empty_set) for v in raw], index=frame.index, dtype=object
    )
    present = sets.dropna()
    if empty_set is not None:  # the empty set's token must not also be a label
        clash = [r for r, s in present.items() if empty_set in s]
        if clash:
            raise DataError(
                f"{path}: row {int(clash[0])}: {short(str(raw[clash[0]]))} uses "
                f"{short(empty_set)} (task.empty_set, the empty label set) as a label "
                f"({len(clash)} rows in all); choose an empty_set that no cell uses as a label"
            )
    cells = [str(v) for v in raw[sets.notna()]]
    one_each = all(len(s) == 1 for s in present)  # rows with no label make it multi-label
    if cells and one_each and not any(separator in c for c in cells):
        others = [s for s in _OTHER_SEPARATORS if s != separator and any(s in c for c in cells)]
        hint = (
            f"the cells look separated by {others[0]!r}: set task.separator: {others[0]!r}"
            if others
            else "for one label per row use the modality's single-label task "
            "(text-, image- or tabular-classification)"
        )
        raise DataError(
            f"{path}: no cell of the label column {column!r} holds the separator "
            f"{separator!r} (task.separator), so every row has one label; {hint}"
        )
    seen = list(dict.fromkeys(n for s in present for n in s))
    if declared:
        names = [str(c) for c in declared]
        if len(set(names)) != len(names):
            raise ConfigError("data.classes", f"a label is named twice: {short(names)}")
        known = set(names)
        bad = [r for r, s in present.items() if any(n not in known for n in s)]
        if bad:
            row = bad[0]
            label = next(n for n in present[row] if n not in known)
            raise DataError(
                f"{path}: row {int(row)}: label {short(label)} (in column {column!r}) is not in "
                f"data.classes {short(names)} ({len(bad)} rows in all)"
            )
    else:
        names = sorted(seen)
    if len(names) < 2:
        only = f" (only {short(names[0])})" if names else ""
        raise DataError(
            f"{path}: label column {column!r} names {len(names)} label{only}; multi-label "
            "classification needs at least two"
        )
    order = {n: i for i, n in enumerate(names)}
    return sets.map(lambda s: canonical(s, order)), names


def read_label_columns(frame: pd.DataFrame, columns: list[str], path: Path | str) -> pd.Series:
    """The label sets of 0/1 columns: a row has label ``c`` when ``frame[c]`` is 1 (or
    true). A row with an empty cell in any of them is missing (NaN); a row of 0s is the
    empty set. Any other value is a one-line :class:`DataError` naming the row and column."""
    import numpy as np
    import pandas as pd

    flags = {}
    for col in columns:
        raw = frame[col]
        if raw.dtype == bool:
            flags[col] = raw.astype(float)
            continue
        values = pd.to_numeric(raw, errors="coerce")
        blank = raw.isna() | (raw.astype(str).str.strip() == "")
        bad = raw.index[(values.isna() & ~blank) | (values.notna() & ~values.isin([0, 1]))]
        if len(bad):
            row = bad[0]
            value = raw.loc[row]
            value = value.item() if isinstance(value, np.generic) else value
            raise DataError(
                f"{path}: row {int(row)}: label column {col!r} (from task.label_columns) holds "
                f"{short(value)}; a label column holds 0 or 1 (or true/false), an empty "
                f"cell for a missing value ({len(bad)} such rows)"
            )
        flags[col] = values.where(~blank)
    table = pd.DataFrame(flags, index=frame.index)
    missing = table.isna().any(axis=1)
    return pd.Series(
        [
            np.nan if miss else tuple(c for c in columns if row[c] == 1)
            for miss, (_, row) in zip(missing, table.iterrows(), strict=True)
        ],
        index=frame.index,
        dtype=object,
    )


def label_matrix(data: TaskData, rows: Any = None) -> np.ndarray:
    """The 0/1 label matrix (rows x labels, int8, labels in ``data.classes`` order) of
    ``rows`` (all rows by default). A row without labels (a missing cell) or with a label
    not in ``data.classes`` is a one-line :class:`DataError` naming it."""
    import numpy as np

    if data.target is None or data.classes is None or data.problem != PROBLEM:
        raise UserError(f"{data.source}: not multi-label data (no label sets)")
    frame = data.frame if rows is None else data.frame.loc[rows]
    order = {str(c): j for j, c in enumerate(data.classes)}
    out = np.zeros((len(frame), len(order)), dtype=np.int8)
    for i, (row, labels) in enumerate(frame[data.target].items()):
        if not isinstance(labels, tuple):
            raise DataError(
                f"{data.source}: row {int(row)} has no labels (an empty cell in column "
                f"{data.target!r}); the missing validator (policy drop) removes such rows"
            )
        for name in labels:
            j = order.get(str(name))
            if j is None:
                raise DataError(
                    f"{data.source}: row {int(row)}: label {short(name)} is not one of the "
                    f"labels {short(list(order))}"
                )
            out[i, j] = 1
    return out


def join_labels(matrix: np.ndarray, names: list[str], separator: str) -> list[str]:
    """Each row's set as one string (``"a|c"``; ``""`` for the empty set)."""
    return [separator.join(n for n, on in zip(names, row, strict=True) if on) for row in matrix]


# -- thresholds ------------------------------------------------------------------------------


def _f1_at(scores: np.ndarray, truth: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """F1 of predicting ``scores >= t`` for each ``t`` in ``thresholds`` (sorted counts)."""
    import numpy as np

    order = np.argsort(scores, kind="stable")
    s, t = scores[order], truth[order].astype(np.int64)
    positives_from = np.concatenate([np.cumsum(t[::-1])[::-1], [0]])  # positives in s[i:]
    start = np.searchsorted(s, thresholds, side="left")  # first row predicted positive
    predicted = len(s) - start
    tp = positives_from[start]
    fp = predicted - tp
    fn = int(t.sum()) - tp
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def tune_thresholds(
    y_true: np.ndarray, y_score: np.ndarray, default: float = 0.5
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Per label, the decision threshold that maximises that label's F1 on ``(y_true,
    y_score)`` (rows x labels: 0/1 truth and probabilities).

    Candidates are the midpoints between consecutive distinct scores (and ``default``),
    kept within :data:`TUNE_RANGE`; among equally good ones the closest to ``default`` wins.
    A label without positives in ``y_true`` keeps ``default`` (its F1 cannot be improved).
    Returns the thresholds and, per label, ``{"f1_default", "f1_tuned", "positives"}``.
    """
    import numpy as np

    y_true = np.asarray(y_true).astype(np.int64)
    y_score = np.asarray(y_score, dtype=np.float64)
    low, high = TUNE_RANGE
    thresholds = np.full(y_true.shape[1], float(default))
    info: list[dict[str, Any]] = []
    for j in range(y_true.shape[1]):
        truth, scores = y_true[:, j], y_score[:, j]
        f1_default = float(_f1_at(scores, truth, np.array([default]))[0])
        positives = int(truth.sum())
        if positives == 0:
            info.append({"positives": 0, "f1_default": f1_default, "f1_tuned": f1_default})
            continue
        distinct = np.unique(scores)
        cands = np.concatenate([(distinct[:-1] + distinct[1:]) / 2, [default]])
        cands = np.unique(np.clip(cands, low, high))
        f1 = _f1_at(scores, truth, cands)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        pick = best[np.argmin(np.abs(cands[best] - default))]
        thresholds[j] = float(cands[pick])
        info.append({"positives": positives, "f1_default": f1_default, "f1_tuned": float(f1[pick])})
    return thresholds, info


def write_thresholds(folder: Path, names: list[str], thresholds: np.ndarray, how: str) -> None:
    """``thresholds.json`` in a checkpoint folder: ``{"thresholds": {label: t}, "how": ...}``."""
    from tuneforge.run import atomic_write_text

    record = {
        "thresholds": {n: float(t) for n, t in zip(names, thresholds, strict=True)},
        "how": how,
    }
    atomic_write_text(folder / THRESHOLDS_FILE, json.dumps(record, indent=2) + "\n")


def read_thresholds(folder: Path) -> tuple[list[str], np.ndarray]:
    """The label names and thresholds of a checkpoint's ``thresholds.json``; a missing or
    damaged file is a one-line :class:`UserError` naming it."""
    import numpy as np

    path = folder / THRESHOLDS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"{path}: not found; a multi-label checkpoint keeps its decision thresholds there"
        ) from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise UserError(f"{path}: unreadable ({reason})") from None
    table = record.get("thresholds") if isinstance(record, dict) else None
    if not isinstance(table, dict) or not table:
        raise UserError(f"{path}: not a thresholds file (an object with a thresholds map)")
    values = []
    for name, value in table.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not 0.0 < float(value) < 1.0:
            raise UserError(
                f"{path}: threshold of label {short(name)} is {short(value)}, not a number "
                "between 0 and 1"
            )
        values.append(float(value))
    return [str(n) for n in table], np.asarray(values, dtype=np.float64)


# -- metrics ---------------------------------------------------------------------------------


def _indicators(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 2 or y_pred.shape != y_true.shape:
        raise UserError(
            f"a multi-label metric needs rows x labels 0/1 matrices, got shapes "
            f"{y_true.shape} and {y_pred.shape}"
        )
    return (y_true > 0.5).astype(np.int8), (y_pred > 0.5).astype(np.int8)


class _MultiLabelMetric(Metric):
    """A metric of 0/1 label matrices (rows x labels) by scikit-learn."""

    problems: ClassVar[tuple[str, ...]] = (PROBLEM,)

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        truth, pred = _indicators(y_true, y_pred)
        return float(self.compute(truth, pred))

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        raise NotImplementedError


class MicroF1(_MultiLabelMetric):
    """F1 over every (row, label) decision pooled: frequent labels weigh more."""

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        from sklearn.metrics import f1_score

        return f1_score(y_true, y_pred, average="micro", zero_division=0)


class MacroF1(_MultiLabelMetric):
    """The mean of the per-label F1 scores: every label weighs the same."""

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        from sklearn.metrics import f1_score

        return f1_score(y_true, y_pred, average="macro", zero_division=0)


class SubsetAccuracy(_MultiLabelMetric):
    """The fraction of rows whose predicted label set is exactly right."""

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float((y_true == y_pred).all(axis=1).mean())


class HammingLoss(_MultiLabelMetric):
    """The fraction of wrong (row, label) decisions (lower is better)."""

    greater_is_better: ClassVar[bool] = False

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float((y_true != y_pred).mean())


METRICS: dict[str, type[Metric]] = {
    "micro_f1": MicroF1,
    "macro_f1": MacroF1,
    "subset_accuracy": SubsetAccuracy,
    "hamming_loss": HammingLoss,
}
DESCRIPTIONS = {
    "micro_f1": "Multi-label F1 over every (row, label) decision pooled",
    "macro_f1": "Multi-label F1 per label, averaged (every label weighs the same)",
    "subset_accuracy": "Multi-label: fraction of rows whose label set is exactly right",
    "hamming_loss": "Multi-label: fraction of wrong (row, label) decisions (lower is better)",
}
DEFAULT_METRICS = ["micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"]


def per_label_table(
    y_true: np.ndarray, y_pred: np.ndarray, names: list[str]
) -> list[dict[str, Any]]:
    """Per label: ``precision``, ``recall``, ``f1``, ``support`` (rows that have it) and
    ``predicted`` (rows predicted to have it), from 0/1 matrices (rows x labels)."""
    import numpy as np

    truth, pred = _indicators(y_true, y_pred)
    tp = (truth & pred).sum(axis=0).astype(np.int64)
    support = truth.sum(axis=0).astype(np.int64)
    predicted = pred.sum(axis=0).astype(np.int64)
    out = []
    for j, name in enumerate(names):
        p = tp[j] / predicted[j] if predicted[j] else 0.0
        r = tp[j] / support[j] if support[j] else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out.append(
            {
                "label": str(name),
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(support[j]),
                "predicted": int(predicted[j]),
            }
        )
    return out


# -- loss and balancer -----------------------------------------------------------------------


def multilabel_loss(pos_weight: np.ndarray | None = None) -> Any:
    """Binary cross-entropy on logits (rows x labels) against 0/1 targets, averaged over the
    labels of a row, then over rows; ``pos_weight`` (one per label) multiplies the loss of
    each label's positives. Its ``reduction`` is ``"mean"``, or ``"none"`` for per-row losses
    (row weights)."""
    import torch
    import torch.nn.functional as F

    weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32)

    class MultiLabelBCE(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.reduction = "mean"
            self.register_buffer("pos_weight", weight if weight is not None else torch.ones(0))

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            per_label = F.binary_cross_entropy_with_logits(
                logits.float(),
                target.float(),
                pos_weight=self.pos_weight if self.pos_weight.numel() else None,
                reduction="none",
            )
            per_row = per_label.mean(dim=-1)
            return per_row if self.reduction == "none" else per_row.mean()

    return MultiLabelBCE()


class LabelWeights(Balancer):
    """Per-label positive weights for the binary cross-entropy: each label's negatives /
    positives on the training split (``power`` 0.5: their square root), clipped to
    ``[1 / max_weight, max_weight]``; a label without training positives keeps 1."""

    problems: ClassVar[tuple[str, ...]] = (PROBLEM,)

    class Config(StrictConfig):
        power: float = Field(1.0, ge=0, le=1, description="1 = neg/pos, 0.5 = its square root")
        max_weight: float = Field(
            10.0, ge=1, le=1000, description="weights are clipped to [1/max_weight, max_weight]"
        )

    def plan(self, data: TaskData, train_rows: np.ndarray, rng: np.random.Generator) -> BalancePlan:
        import numpy as np

        y = label_matrix(data, train_rows)
        pos = y.sum(axis=0).astype(np.float64)
        neg = len(y) - pos
        ratio = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0) ** self.config.power
        cap = self.config.max_weight
        weights = np.where(pos > 0, np.clip(ratio, 1.0 / cap, cap), 1.0)
        shown = ", ".join(f"{c} {w:.2f}" for c, w in zip(data.classes or [], weights, strict=True))
        return BalancePlan(class_weights=weights, note=f"positive weights per label: {shown}")


# -- the problem kind ------------------------------------------------------------------------


class MultiLabelConfig(StrictConfig):
    """The parameters of a multi-label task: ``task: {name: text-multilabel, ...}``."""

    separator: str = Field(
        DEFAULT_SEPARATOR,
        min_length=1,
        description="joins the label names in a cell of data.label (a|b)",
    )
    label_columns: list[str] | None = Field(
        None,
        min_length=2,
        description="0/1 columns, one per label, instead of one data.label column",
    )
    empty_set: str | None = Field(
        None,
        min_length=1,
        description="a data.label cell equal to this is a row without labels (else empty = missing)",
    )
    threshold: float | Literal["tune"] | ThresholdRule = Field(
        0.5,
        description="decision threshold of every label, tune (each label's best F1 on val) or "
        "{metric: f1|precision_at|recall_at, target: 0.9} tuned per label on val",
    )
    calibration: Literal["auto", "temperature", "none"] = Field(
        "auto",
        description="one temperature for every label's sigmoid, fitted on val after training: "
        "auto (kept when it lowers the val NLL by 1%+), temperature (always kept) or none",
    )

    _in_unit_interval = field_validator("threshold")(check_fixed)

    @field_validator("separator")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip() and value != " ":
            raise ValueError("a separator is a visible string (or one space)")
        return value

    @field_validator("label_columns")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"a column is named twice: {short(value)}")
        return value


class MultiLabelClassification(Task):
    """The problem part of a multi-label task: each row has a set of ``data.classes``.

    Mix it in front of a modality base (``class TextMultiLabelTask(MultiLabelClassification,
    TextTask)``): the modality reads its inputs and calls :meth:`read_labels` for the label
    column(s); datasets carry ``labels`` = :meth:`encode_labels` (a float 0/1 row per
    example), the model has one output per label (:meth:`output_names`). Everything else a
    multi-label run needs comes from here: what is left after validation, the 2-D strata of
    the split, per-label counts, the loss, sigmoid predictions with per-label thresholds
    (tuned in :meth:`after_training`), the most-frequent-label-set baseline, and the
    prediction columns.
    """

    problem: ClassVar[str] = PROBLEM
    Config: ClassVar[type[StrictConfig]] = MultiLabelConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        #: The decision threshold of each label (output order), once known.
        self.thresholds: np.ndarray | None = None
        #: The label names of the outputs, as built (:meth:`output_names`) or loaded.
        self.saved_names: list[str] = []
        #: Whether the config fixed the label names (data.classes, task.label_columns).
        self.declared_labels = False
        #: The temperature every logit is divided by (``calibration.json``; 1: uncalibrated).
        self.temperature = 1.0

    # -- loading ----------------------------------------------------------------------------
    def label_source_columns(self, data_config: Any) -> list[str]:
        """The columns that hold labels (never features): ``task.label_columns``, or the
        ``data.label`` column (default ``labels``)."""
        return list(self.config.label_columns or [data_config.label or LABEL_SET_COLUMN])

    def read_labels(
        self, frame: pd.DataFrame, data_config: Any, path: Path | str
    ) -> tuple[pd.DataFrame, str, list[str]]:
        """Parse the label sets of the loaded ``frame`` into its target column.

        Returns the frame (with a ``labels`` column added when the labels come from
        ``task.label_columns``), the target column and the label names in output order.
        Raises a one-line :class:`ConfigError` / :class:`DataError` naming the key, the file
        and the row for bad input.
        """
        from tuneforge.data import require_columns

        cfg = self.config
        name = self.name or "a multi-label task"
        if data_config.target is not None:
            raise ConfigError(
                "data.target",
                f"{name} takes its labels from data.label (one column, names joined by "
                "task.separator) or task.label_columns (0/1 columns)",
            )
        if not cfg.label_columns:
            column = data_config.label or LABEL_SET_COLUMN
            require_columns(frame, {"data.label": column}, Path(path))
            sets, names = read_label_column(
                frame, column, cfg.separator, data_config.classes, path, cfg.empty_set
            )
            frame[column] = sets
            self.declared_labels = bool(data_config.classes)
            return frame, column, names
        if data_config.label is not None:
            raise ConfigError(
                "data.label",
                "the labels come from task.label_columns; give either one data.label column "
                "or the 0/1 task.label_columns, not both",
            )
        if data_config.classes:
            raise ConfigError(
                "data.classes", "the labels are the task.label_columns; remove data.classes"
            )
        columns = [str(c) for c in cfg.label_columns]
        if cfg.empty_set is not None:
            raise ConfigError(
                "task.empty_set",
                "is for data.label cells; with task.label_columns a row of 0s has no labels",
            )
        joined = [c for c in columns if cfg.separator in c]
        if joined:  # predictions join label names with it: they must not contain it
            raise ConfigError(
                "task.separator",
                f"{cfg.separator!r} is in the label column name {short(joined[0])}; predictions "
                "join label names with the separator: choose one no label name contains",
            )
        require_columns(
            frame, {f"task.label_columns[{i}]": c for i, c in enumerate(columns)}, Path(path)
        )
        column = LABEL_SET_COLUMN
        n = 1
        while column in frame.columns:  # a free name for the label sets
            n += 1
            column = f"{LABEL_SET_COLUMN}_{n}"
        frame[column] = read_label_columns(frame, columns, path)
        self.declared_labels = True
        return frame, column, columns

    # -- after validation, split, run folder --------------------------------------------------
    def after_validation(self, data: TaskData, data_config: Any) -> TaskData:
        """Every row left must have a label set (the ``missing`` validator drops those
        without); labels no row has any more are dropped from the outputs unless the config
        fixed them; at least two labels must have examples."""
        sets = data.frame[data.target]
        missing = [int(r) for r in sets.index[~sets.map(lambda v: isinstance(v, tuple))]]
        if missing:
            raise DataError(
                f"{data.source}: {len(missing)} rows have no labels (an empty cell in column "
                f"{data.target!r}): rows {_rows_text(missing)}; keep the missing validator "
                "(policy drop) to remove them"
            )
        counts = Counter(n for s in sets for n in s)
        names = [str(c) for c in data.classes or []]
        if not self.declared_labels:  # validators removed or merged some away
            names = [n for n in names if counts[n]] + sorted(n for n in counts if n not in names)
        else:
            extra = sorted(n for n in counts if n not in names)
            if extra:
                raise DataError(
                    f"{data.source}: label {short(extra[0])} (after validation) is not one of "
                    f"the declared labels {short(names)}"
                )
        with_rows = [n for n in names if counts[n]]
        if len(with_rows) < 2:
            raise DataError(
                f"{data.source}: only {len(with_rows)} label with examples left after "
                "validation; multi-label classification needs at least two"
            )
        order = {n: i for i, n in enumerate(names)}
        data = data.subset(data.frame.index)
        data.frame = data.frame.copy()
        data.frame[data.target] = sets.map(lambda s: canonical(s, order))
        data.classes = names
        return data

    def stratify_labels(self, data: TaskData) -> np.ndarray:
        """The 0/1 label matrix: the split stratifies it iteratively (every label's share
        kept in each split as far as the data allows)."""
        return label_matrix(data)

    def label_counts(self, data: TaskData, rows: np.ndarray) -> dict[str, int]:
        """Rows that have each label."""
        counts = label_matrix(data, rows).sum(axis=0)
        return {str(c): int(n) for c, n in zip(data.classes or [], counts, strict=True)}

    def labels_record(self, data: TaskData) -> dict[str, Any]:
        """The label names (``classes``, in output order), how a cell joins them
        (``separator``), the ``label_columns`` they came from (or None), the configured
        ``threshold`` and where the thresholds in use are (``thresholds``)."""
        return {
            "classes": [str(c) for c in data.classes or []],
            "separator": self.config.separator,
            "label_columns": list(self.config.label_columns or []) or None,
            "threshold": as_json(self.config.threshold),
            "thresholds": f"checkpoint/{THRESHOLDS_FILE}",
        }

    # -- datasets, model, loss ----------------------------------------------------------------
    def encode_labels(self, data: TaskData, rows: np.ndarray) -> np.ndarray:
        """The dataset's ``labels`` for ``rows``: a float32 0/1 row per example."""
        import numpy as np

        return label_matrix(data, rows).astype(np.float32)

    def output_names(self, data: TaskData) -> list[str]:
        """One output (a sigmoid) per label, in ``data.classes`` order."""
        names = [str(c) for c in data.classes or []]
        if self.thresholds is None or len(self.thresholds) != len(names):
            self.thresholds = self.default_thresholds(len(names))
        self.saved_names = names
        self.temperature = 1.0  # a new model: uncalibrated until after_training
        return names

    def default_thresholds(self, n_labels: int) -> np.ndarray:
        """``task.threshold`` for every label (0.5 until tuned with ``threshold: tune``)."""
        import numpy as np

        fixed = self.config.threshold
        value = float(fixed) if isinstance(fixed, (int, float)) else 0.5
        return np.full(n_labels, value)

    def loss_fn(self, class_weights: np.ndarray | None, focal_gamma: float | None = None) -> Any:
        """Binary cross-entropy per label; ``class_weights`` are per-label positive weights
        (the ``label-weights`` balancer)."""
        if focal_gamma is not None:
            raise ConfigError(
                "balancer", "the focal loss is single-label; a multi-label task uses label-weights"
            )
        return multilabel_loss(class_weights)

    def predictions(self, logits: Any) -> tuple[np.ndarray, np.ndarray]:
        """Logits -> (0/1 label matrix, label probabilities): a label is predicted when its
        sigmoid reaches its threshold."""
        import numpy as np
        import torch

        probs = torch.sigmoid(logits.float() / self.temperature).numpy()
        thresholds = self.thresholds
        if thresholds is None:  # before output_names()/load_artifacts(): the configured ones
            thresholds = self.default_thresholds(probs.shape[-1])
        if len(thresholds) != probs.shape[-1]:
            raise UserError(
                f"{THRESHOLDS_FILE}: {len(thresholds)} thresholds for a model with "
                f"{probs.shape[-1]} label outputs: the checkpoint's files do not belong together"
            )
        return (probs >= thresholds).astype(np.int64), probs

    # -- after training, test, predict --------------------------------------------------------
    def after_training(
        self, predict_val: Callable[[], tuple[Any, Any]], folder: Path
    ) -> dict[str, Any]:
        """First one temperature for every label (``task.calibration``, ``calibration.json``),
        then with a tuned ``task.threshold`` (``tune``: each label's best F1; or a precision or
        recall target) each label's threshold on the calibrated validation probabilities,
        saved into the checkpoint (``thresholds.json``) and recorded under ``tuning`` in
        ``metrics.json`` with each label's validation F1 at 0.5 and tuned
        (:func:`tuneforge.plugins.calibration.multilabel_after_training`)."""
        from tuneforge.plugins.calibration import multilabel_after_training

        return multilabel_after_training(self, predict_val, folder)

    def ensemble_outputs(self, outputs: list[Any], folders: list[Path]) -> Any:
        """The mean of the members' calibrated logits (each over its own temperature)."""
        from tuneforge.plugins.calibration import ensemble_calibrated

        return ensemble_calibrated(outputs, folders, self.temperature)

    def baselines(
        self, data: TaskData, split: Split, metrics: dict[str, Metric]
    ) -> dict[str, float]:
        """``majority_baseline_<metric>``: the test scores of always predicting the training
        split's most frequent label set (subset accuracy and micro F1 at least)."""
        import numpy as np

        train = label_matrix(data, split.train)
        test = label_matrix(data, split.test)
        mode = Counter(map(tuple, train.tolist())).most_common(1)[0][0]
        pred = np.tile(np.asarray(mode, dtype=np.int8), (len(test), 1))
        score = np.tile(train.mean(axis=0), (len(test), 1))
        chosen: dict[str, Metric] = {"subset_accuracy": SubsetAccuracy(), "micro_f1": MicroF1()}
        chosen.update(metrics)
        return {
            f"majority_baseline_{name}": float(metric(test, pred, score))
            for name, metric in chosen.items()
        }

    def test_details(
        self, data: TaskData, rows: np.ndarray, logits: Any, labels: Any
    ) -> dict[str, Any]:
        """``per_label``: each label's test precision, recall, F1, support and predicted
        count (:func:`per_label_table`), at the thresholds in use."""
        y_pred, _ = self.predictions(logits)
        names = [str(c) for c in data.classes or []]
        details: dict[str, Any] = {"per_label": per_label_table(labels.numpy(), y_pred, names)}
        if self.config.calibration != "none":  # per-label-probability ECE and NLL, T = 1 vs T
            from tuneforge.plugins.calibration import figures

            truth = labels.numpy() > 0.5
            details["calibration"] = {
                "temperature": self.temperature,
                **figures(logits, truth, self.temperature, "sigmoid"),
            }
        return details

    def prediction_frame(
        self, data: TaskData, rows: np.ndarray, logits: Any, labels: Any
    ) -> pd.DataFrame:
        """``row``, ``y_true`` and ``y_pred`` (label sets joined by ``task.separator``; empty
        for no label) and ``prob_<label>`` per label."""
        import numpy as np
        import pandas as pd

        names = [str(c) for c in data.classes or []]
        y_pred, y_score = self.predictions(logits)
        sep = self.config.separator
        frame = pd.DataFrame({"row": np.asarray(rows)})
        if labels is not None:
            frame["y_true"] = join_labels(labels.numpy() > 0.5, names, sep)
        frame["y_pred"] = join_labels(y_pred, names, sep)
        for j, name in enumerate(names):
            frame[f"prob_{name}"] = y_score[:, j]
        return frame

    def prediction_columns(
        self, logits: Any, labels_record: dict[str, Any], source: Path
    ) -> pd.DataFrame:
        """``prediction`` (the predicted labels joined by the run's separator; empty for
        none) and ``prob_<label>`` per label."""
        import numpy as np
        import pandas as pd

        names = labels_record.get("classes")
        sep = labels_record.get("separator", DEFAULT_SEPARATOR)
        if not isinstance(names, list) or not names or not isinstance(sep, str) or not sep:
            raise UserError(f"{source}: not a multi-label labels file (classes and separator)")
        names = [str(n) for n in names]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise UserError(f"{source}: label {short(twice)} is named twice in classes")
        if self.saved_names and list(self.saved_names) != names:
            raise UserError(
                f"{source}: labels {short(names)}, but the checkpoint's {THRESHOLDS_FILE} has "
                f"thresholds for {short(list(self.saved_names))}: the run folder's files do not "
                "belong together"
            )
        if np.ndim(logits) != 2 or logits.shape[1] != len(names):
            raise UserError(
                f"{source}: {len(names)} labels, but the checkpoint predicts "
                f"{np.shape(logits)[-1]} label scores: the run folder's files do not belong "
                "together"
            )
        y_pred, y_score = self.predictions(logits)
        out = pd.DataFrame({"prediction": join_labels(y_pred, names, sep)})
        for j, name in enumerate(names):
            out[f"prob_{name}"] = y_score[:, j]
        return out

    # -- artifacts ----------------------------------------------------------------------------
    def save_artifacts(self, model: Any, folder: Path) -> None:
        """The modality's checkpoint files plus ``thresholds.json`` (the thresholds in use)."""
        super().save_artifacts(model, folder)  # type: ignore[safe-super]
        assert self.thresholds is not None, "output_names() first"
        fixed = isinstance(self.config.threshold, (int, float))
        how = "task.threshold" if fixed else "tune: 0.5 until tuned"
        write_thresholds(folder, self.saved_names, self.thresholds, how)

    def load_artifacts(self, folder: Path) -> Any:
        """The modality's model, the thresholds of ``thresholds.json`` and the temperature of
        ``calibration.json`` (1 without one)."""
        from tuneforge.plugins.calibration import read_temperature

        model = super().load_artifacts(folder)  # type: ignore[safe-super]
        self.saved_names, self.thresholds = read_thresholds(folder)
        self.temperature = read_temperature(folder)
        return model


@hookimpl
def register_metrics(register: Register) -> None:
    for name, cls in METRICS.items():
        register(name, cls, DESCRIPTIONS[name])


@hookimpl
def register_balancers(register: Register) -> None:
    register(
        "label-weights",
        LabelWeights,
        "Per-label positive weights (negatives/positives) for the multi-label BCE loss",
    )
