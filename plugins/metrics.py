"""Built-in classification metrics, computed by scikit-learn, and multi-label ranking metrics.

Label metrics (``accuracy``, ``balanced_accuracy``, ``precision|recall|f1_macro|weighted``,
``mcc``) score the predicted classes; score metrics (``roc_auc``, ``average_precision``,
``log_loss``, ``brier``, ``ece``) score the class probabilities (``y_score``, rows x classes):

- ``roc_auc``: two classes, the ROC-AUC of the positive (second) class's probability;
  more, the one-vs-rest ROC-AUC of each class, macro-averaged. A class the split lacks (no
  row, or every row) has no ROC-AUC and is left out of the mean; NaN when no class is left
  (e.g. a binary split with one class).
- ``average_precision``: the area under the precision-recall curve
  (``sklearn.metrics.average_precision_score``) of the positive class (two classes), or of
  each class one-vs-rest, macro-averaged; a class with no row in the split is left out (NaN
  when none is left).
- ``log_loss``: the mean negative log-likelihood of the true class (``labels=`` every class,
  so a split missing a class is scored correctly).
- ``brier``: two classes, the mean squared error of the positive class's probability against
  0/1 (range [0, 1]); more, the mean over rows of the sum over classes of the squared
  difference to the one-hot truth (range [0, 2]; ``sklearn.metrics.brier_score_loss`` with
  ``labels=``).
- ``ece``: the expected calibration error of the top-class confidence, 15 equal-width bins
  (:func:`tuneforge.plugins.calibration.expected_calibration_error`).

Multi-label runs get ``micro_roc_auc``, ``macro_roc_auc``, ``micro_average_precision`` and
``macro_average_precision`` (the ``micro_``/``macro_`` naming of the multi-label F1): micro
pools every (row, label) score, macro averages the labels that have the metric defined.

Every metric implements :meth:`~tuneforge.components.Metric.resampled` (the test metrics'
bootstrap intervals): the label metrics from per-resample class counts, the score metrics
from per-resample row weights (weighted rank statistics for the areas), both vectorised over
a block of resamples. numpy and scikit-learn are imported inside the methods.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, ClassVar

from tuneforge import hookimpl
from tuneforge.components import Metric
from tuneforge.errors import UserError
from tuneforge.hookspecs import Register

if TYPE_CHECKING:  # pragma: no cover - numpy stays out of start-up (`tuneforge plugins`)
    import numpy as np

#: The last block's per-resample counts and weights, shared by the metrics of one block.
_CACHE: dict[str, tuple[Any, ...]] = {}


def _cached(key: str, arrays: tuple[Any, ...], extra: Any, make: Any) -> Any:
    """``make()``, reused while ``arrays`` (by identity; held weakly) and ``extra`` are those
    of the last call for ``key``."""
    held = _CACHE.get(key)
    if (
        held is not None
        and held[1] == extra
        and len(held[0]) == len(arrays)
        and all(ref() is a for ref, a in zip(held[0], arrays, strict=True))
    ):
        return held[2]
    value = make()
    _CACHE[key] = (tuple(weakref.ref(a) for a in arrays), extra, value)
    return value


def class_counts(
    y_true: np.ndarray, y_pred: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per resample (a row of ``rows``) and class: true rows, predicted rows, and rows both
    true and predicted (each resamples x ``k``)."""
    import numpy as np

    def make() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = rows.shape[0]
        t = np.asarray(y_true, dtype=np.int64)[rows]
        p = np.asarray(y_pred, dtype=np.int64)[rows]
        off = (np.arange(b, dtype=np.int64) * k)[:, None]
        size = b * k
        true = np.bincount((t + off).ravel(), minlength=size).reshape(b, k)
        pred = np.bincount((p + off).ravel(), minlength=size).reshape(b, k)
        hit = np.bincount((t + off)[t == p], minlength=size).reshape(b, k)
        return true.astype(np.float64), pred.astype(np.float64), hit.astype(np.float64)

    return _cached("counts", (y_true, y_pred, rows), k, make)


def row_weights(rows: np.ndarray, n: int) -> np.ndarray:
    """How often each of the ``n`` rows is drawn in each resample (resamples x ``n``)."""
    import numpy as np

    def make() -> np.ndarray:
        b = rows.shape[0]
        off = (np.arange(b, dtype=np.int64) * n)[:, None]
        counts = np.bincount((rows + off).ravel(), minlength=b * n)
        return counts.reshape(b, n).astype(np.float64)

    return _cached("weights", (rows,), n, make)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    import numpy as np

    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _mean_where(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import numpy as np

    count = mask.sum(axis=1)
    total = np.where(mask, values, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def from_counts(
    stat: str, average: str, true: np.ndarray, pred: np.ndarray, hit: np.ndarray
) -> np.ndarray:
    """A label metric per resample from :func:`class_counts`, as scikit-learn defines it
    (macro: over the classes in the truth or the predictions; zero division: 0)."""
    import numpy as np

    n = true.sum(axis=1)
    if stat == "accuracy":
        return hit.sum(axis=1) / n
    if stat == "balanced_accuracy":
        return _mean_where(_ratio(hit, true), true > 0)
    if stat == "mcc":
        c = hit.sum(axis=1)
        cov_tp = c * n - (true * pred).sum(axis=1)
        cov_pp = n * n - (pred * pred).sum(axis=1)
        cov_tt = n * n - (true * true).sum(axis=1)
        den = np.sqrt(cov_tt * cov_pp)
        return _ratio(cov_tp, den)
    if stat == "precision":
        per = _ratio(hit, pred)
    elif stat == "recall":
        per = _ratio(hit, true)
    else:  # f1
        per = _ratio(2 * hit, true + pred)
    if average == "weighted":
        return (per * true).sum(axis=1) / n
    return _mean_where(per, (true + pred) > 0)


def _classes(y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> int:
    import numpy as np

    if y_score is not None and np.ndim(y_score) == 2:
        return int(y_score.shape[1])
    return int(max(np.max(y_true, initial=0), np.max(y_pred, initial=0))) + 1


class _SklearnMetric(Metric):
    problems: ClassVar[tuple[str, ...]] = ("classification",)
    func: ClassVar[str] = ""
    kwargs: ClassVar[dict[str, Any]] = {}
    #: The statistic :func:`from_counts` computes for the resamples.
    stat: ClassVar[str] = ""

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        import sklearn.metrics as skm

        kwargs = dict(self.kwargs)
        if "average" in kwargs:
            kwargs["zero_division"] = 0
        return float(getattr(skm, self.func)(y_true, y_pred, **kwargs))

    def resampled(
        self,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        y_score: np.ndarray | None,
        rows: np.ndarray,
    ) -> np.ndarray | None:
        """From per-resample class counts (:func:`class_counts`)."""
        k = _classes(y_true, y_pred, y_score)
        counts = class_counts(y_true, y_pred, rows, k)
        return from_counts(self.stat, str(self.kwargs.get("average", "")), *counts)


def _metric(name: str, func: str, doc: str, stat: str, **kwargs: Any) -> type[Metric]:
    attrs = {"func": func, "kwargs": kwargs, "stat": stat, "__doc__": doc}
    return type(name, (_SklearnMetric,), attrs)


# -- scores --------------------------------------------------------------------------------


def _scores(name: str, y_score: np.ndarray | None, rows_sum_to_one: bool = True) -> np.ndarray:
    """``y_score`` as float64, each row renormalised to sum to 1 (class probabilities of
    float32 softmax outputs sum to 1 only within float32 rounding) unless multi-label."""
    import numpy as np

    if y_score is None or np.ndim(y_score) != 2:
        raise UserError(f"{name} needs class probabilities (rows x classes); the task gives none")
    score = np.asarray(y_score, dtype=np.float64)
    if rows_sum_to_one:
        total = score.sum(axis=1, keepdims=True)
        score = np.divide(score, total, out=score.copy(), where=total > 0)
    return score


def _area(weights: np.ndarray, score: np.ndarray, positive: np.ndarray, kind: str) -> np.ndarray:
    """ROC-AUC (``kind="roc"``) or average precision (``"ap"``) of one score column per
    resample, the rows weighted by ``weights`` (resamples x rows); NaN where undefined.

    Tied scores are one threshold, as in scikit-learn: the ROC-AUC counts a tied
    (positive, negative) pair as half, and the precision at a positive's score counts every
    row scored at least as high. Computed from cumulative weights of the negatives (and
    positives) sorted by score, gathered at each positive's place: a few passes over the
    weights, no per-resample sort.
    """
    import numpy as np

    b = len(weights)
    pos_rows, neg_rows = np.flatnonzero(positive), np.flatnonzero(~positive)
    pos_score = score[pos_rows]

    def cumulative(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = rows[np.argsort(score[rows], kind="stable")]
        cum = np.zeros((b, len(order) + 1))
        np.cumsum(weights[:, order], axis=1, out=cum[:, 1:])
        return score[order], cum

    wp = weights[:, pos_rows]
    total_p = wp.sum(axis=1)
    neg_sorted, neg_cum = cumulative(neg_rows)
    if kind == "roc":
        below = neg_cum[:, np.searchsorted(neg_sorted, pos_score, "left")]
        upto = neg_cum[:, np.searchsorted(neg_sorted, pos_score, "right")]
        num = 0.5 * (wp * (below + upto)).sum(axis=1)
        den = total_p * neg_cum[:, -1]
        return np.where(den > 0, _ratio(num, den), np.nan)
    pos_sorted, pos_cum = cumulative(pos_rows)
    tp = total_p[:, None] - pos_cum[:, np.searchsorted(pos_sorted, pos_score, "left")]
    fp = neg_cum[:, -1:] - neg_cum[:, np.searchsorted(neg_sorted, pos_score, "left")]
    precision = _ratio(tp, tp + fp)
    return np.where(total_p > 0, _ratio((wp * precision).sum(axis=1), total_p), np.nan)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """The mean over columns of the finite values (NaN where none)."""
    import numpy as np

    return _mean_where(np.nan_to_num(values), np.isfinite(values))


def _one_vs_rest(y_score: np.ndarray) -> list[int]:
    """The score columns scored: the positive class of two, else every class."""
    return [1] if y_score.shape[1] == 2 else list(range(y_score.shape[1]))


class _ScoreMetric(Metric):
    problems: ClassVar[tuple[str, ...]] = ("classification",)
    metric_name: ClassVar[str] = ""


class _AreaMetric(_ScoreMetric):
    kind: ClassVar[str] = "roc"

    def _one(self, positive: np.ndarray, score: np.ndarray) -> float:
        from sklearn.metrics import average_precision_score, roc_auc_score

        if not positive.any() or (self.kind == "roc" and positive.all()):
            return float("nan")
        if self.kind == "roc":
            return float(roc_auc_score(positive, score))
        return float(average_precision_score(positive, score))

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        import numpy as np

        score = _scores(self.metric_name, y_score)
        truth = np.asarray(y_true)
        values = [self._one(truth == c, score[:, c]) for c in _one_vs_rest(score)]
        finite = [v for v in values if np.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    def resampled(
        self,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        y_score: np.ndarray | None,
        rows: np.ndarray,
    ) -> np.ndarray | None:
        """Weighted rank statistics over the resamples' row counts."""
        import numpy as np

        score = _scores(self.metric_name, y_score)
        weights = row_weights(rows, len(score))
        truth = np.asarray(y_true)
        cols = _one_vs_rest(score)
        areas = np.stack([_area(weights, score[:, c], truth == c, self.kind) for c in cols], 1)
        return _nanmean(areas)


class RocAuc(_AreaMetric):
    """ROC-AUC: binary, of the positive class; multiclass, one-vs-rest macro-averaged."""

    metric_name = "roc_auc"
    kind = "roc"


class AveragePrecision(_AreaMetric):
    """Average precision (PR-AUC): binary, of the positive class; multiclass, one-vs-rest
    macro-averaged."""

    metric_name = "average_precision"
    kind = "ap"


class _RowMetric(_ScoreMetric):
    """A mean over rows of a per-row loss (:meth:`per_row`)."""

    greater_is_better: ClassVar[bool] = False

    def per_row(self, y_true: np.ndarray, score: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def resampled(
        self,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        y_score: np.ndarray | None,
        rows: np.ndarray,
    ) -> np.ndarray | None:
        """The resamples' weighted means of the per-row values."""
        score = _scores(self.metric_name, y_score)
        values = self.per_row(y_true, score)
        return row_weights(rows, len(score)) @ values / rows.shape[1]


class LogLoss(_RowMetric):
    """Log loss: mean negative log-likelihood of the true class (every class as a label)."""

    metric_name = "log_loss"

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        from sklearn.metrics import log_loss

        score = _scores(self.metric_name, y_score)
        return float(log_loss(y_true, score, labels=list(range(score.shape[1]))))

    def per_row(self, y_true: np.ndarray, score: np.ndarray) -> np.ndarray:
        import numpy as np

        eps = np.finfo(np.float64).eps
        picked = score[np.arange(len(score)), np.asarray(y_true, dtype=np.int64)]
        return -np.log(np.clip(picked, eps, 1 - eps))


class Brier(_RowMetric):
    """Brier score: binary, mean squared error of the positive class's probability; multiclass,
    mean over rows of the summed squared differences to the one-hot truth."""

    metric_name = "brier"

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        from sklearn.metrics import brier_score_loss

        score = _scores(self.metric_name, y_score)
        if score.shape[1] == 2:
            return float(brier_score_loss(y_true, score[:, 1], labels=[0, 1]))
        return float(brier_score_loss(y_true, score, labels=list(range(score.shape[1]))))

    def per_row(self, y_true: np.ndarray, score: np.ndarray) -> np.ndarray:
        import numpy as np

        truth = np.asarray(y_true, dtype=np.int64)
        if score.shape[1] == 2:
            return (score[:, 1] - (truth == 1)) ** 2
        onehot = np.eye(score.shape[1])[truth]
        return ((score - onehot) ** 2).sum(axis=1)


class ECE(_ScoreMetric):
    """Expected calibration error of the top-class confidence (15 equal-width bins)."""

    metric_name = "ece"
    greater_is_better: ClassVar[bool] = False

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        from tuneforge.plugins.calibration import expected_calibration_error

        score = _scores(self.metric_name, y_score)
        return float(expected_calibration_error(score, y_true, "softmax"))

    def resampled(
        self,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        y_score: np.ndarray | None,
        rows: np.ndarray,
    ) -> np.ndarray | None:
        """Per bin: the resamples' weighted sums of (right - confidence)."""
        import numpy as np

        from tuneforge.plugins.calibration import ECE_BINS

        score = _scores(self.metric_name, y_score)
        conf = score.max(axis=1)
        hit = (score.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
        which = np.minimum((conf * ECE_BINS).astype(np.int64), ECE_BINS - 1)
        gap = np.zeros((len(score), ECE_BINS))
        gap[np.arange(len(score)), which] = hit - conf
        return np.abs(row_weights(rows, len(score)) @ gap).sum(axis=1) / rows.shape[1]


# -- multi-label ---------------------------------------------------------------------------


class _MultiLabelArea(Metric):
    """A ranking metric of label probabilities against a rows x labels 0/1 matrix."""

    problems: ClassVar[tuple[str, ...]] = ("multilabel",)
    kind: ClassVar[str] = "roc"
    pooled: ClassVar[bool] = False
    metric_name: ClassVar[str] = ""

    def _inputs(self, y_true: np.ndarray, y_score: np.ndarray | None) -> tuple[Any, Any]:
        import numpy as np

        score = _scores(self.metric_name, y_score, rows_sum_to_one=False)
        truth = np.asarray(y_true) > 0.5
        if truth.shape != score.shape:
            raise UserError(
                f"{self.metric_name} needs rows x labels truth and scores of one shape, got "
                f"{truth.shape} and {score.shape}"
            )
        return truth, score

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        import numpy as np
        from sklearn.metrics import average_precision_score, roc_auc_score

        truth, score = self._inputs(y_true, y_score)
        func = roc_auc_score if self.kind == "roc" else average_precision_score
        columns = (
            [(truth.ravel(), score.ravel())]
            if self.pooled
            else list(zip(truth.T, score.T, strict=True))
        )
        values = []
        for t, s in columns:
            if t.any() and (self.kind != "roc" or not t.all()):
                values.append(float(func(t, s)))
        return float(np.mean(values)) if values else float("nan")

    def resampled(
        self,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        y_score: np.ndarray | None,
        rows: np.ndarray,
    ) -> np.ndarray | None:
        """Weighted rank statistics per label (macro) or over the pooled pairs (micro)."""
        import numpy as np

        truth, score = self._inputs(y_true, y_score)
        weights = row_weights(rows, len(score))
        labels = score.shape[1]
        if not self.pooled:
            cols = [_area(weights, score[:, j], truth[:, j], self.kind) for j in range(labels)]
            return _nanmean(np.stack(cols, axis=1))
        out = []
        step = max(1, 2_000_000 // max(1, weights.shape[1] * labels))
        for start in range(0, len(weights), step):  # bounded memory: rows x labels pairs
            pooled = np.repeat(weights[start : start + step], labels, axis=1)
            out.append(_area(pooled, score.ravel(), truth.ravel(), self.kind))
        return np.concatenate(out)


class MicroRocAuc(_MultiLabelArea):
    """Multi-label ROC-AUC over every (row, label) score pooled."""

    metric_name, kind, pooled = "micro_roc_auc", "roc", True


class MacroRocAuc(_MultiLabelArea):
    """Multi-label ROC-AUC per label, averaged over the labels it is defined for."""

    metric_name, kind, pooled = "macro_roc_auc", "roc", False


class MicroAveragePrecision(_MultiLabelArea):
    """Multi-label average precision over every (row, label) score pooled."""

    metric_name, kind, pooled = "micro_average_precision", "ap", True


class MacroAveragePrecision(_MultiLabelArea):
    """Multi-label average precision per label, averaged over the labels with a positive."""

    metric_name, kind, pooled = "macro_average_precision", "ap", False


METRICS: dict[str, type[Metric]] = {
    "accuracy": _metric(
        "Accuracy", "accuracy_score", "Fraction of correct predictions", "accuracy"
    ),
    "balanced_accuracy": _metric(
        "BalancedAccuracy",
        "balanced_accuracy_score",
        "Mean per-class recall (robust to imbalance)",
        "balanced_accuracy",
    ),
}
for _avg in ("macro", "weighted"):
    for _name, _func in (
        ("precision", "precision_score"),
        ("recall", "recall_score"),
        ("f1", "f1_score"),
    ):
        METRICS[f"{_name}_{_avg}"] = _metric(
            f"{_name.title()}{_avg.title()}",
            _func,
            f"{_name.title()}, {_avg}-averaged over classes",
            _name,
            average=_avg,
        )
METRICS["mcc"] = _metric(
    "MCC", "matthews_corrcoef", "Matthews correlation coefficient (multiclass: Gorodkin's)", "mcc"
)
METRICS.update(
    {
        "roc_auc": RocAuc,
        "average_precision": AveragePrecision,
        "log_loss": LogLoss,
        "brier": Brier,
        "ece": ECE,
        "micro_roc_auc": MicroRocAuc,
        "macro_roc_auc": MacroRocAuc,
        "micro_average_precision": MicroAveragePrecision,
        "macro_average_precision": MacroAveragePrecision,
    }
)
#: The classification metrics the built-in single-label tasks compute by default.
DEFAULT_METRICS = [
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "f1_weighted",
    "mcc",
    "roc_auc",
    "log_loss",
    "ece",
]


@hookimpl
def register_metrics(register: Register) -> None:
    for name, cls in METRICS.items():
        register(name, cls)
