"""Label noise by confident learning (Northcutt, Jiang & Chuang, JAIR 2021).

The ``label-noise`` validator finds rows whose given label is probably wrong. It needs
out-of-fold predicted class probabilities: a model fitted here with scikit-learn
cross-validation (by default, when the run's model has a pretrained encoder, logistic regression
on its frozen features, :meth:`Task.frozen_features`, averaged with TF-IDF for text; otherwise
text: TF-IDF + logistic regression) or a ``.npy`` file the user supplies.
From them, confident learning estimates the joint distribution of given and true labels and
prunes, for each pair (given ``i``, true ``j``), the ``n_ij`` rows labelled ``i`` whose
probability of ``j`` most exceeds that of ``i``. Flagged rows are ranked by self-confidence
(the probability of the given label), lowest first.

Two backends compute the same thing: ``cleanlab`` (when installed) and tuneforge's own
implementation in :func:`find_label_issues`, which follows cleanlab's defaults step by step
(thresholds, calibration, rounding, tie order) so that both flag the same rows on the same
probabilities. Heavy libraries (scikit-learn, cleanlab) are imported inside functions.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from tuneforge import hookimpl
from tuneforge.components import Finding, FindingKind, Validator, ValidatorConfig
from tuneforge.errors import DataError
from tuneforge.hookspecs import Register

if TYPE_CHECKING:  # pragma: no cover - numpy and pandas are imported where used (start-up)
    import numpy as np

    from tuneforge.data import TaskData

Method = Literal[
    "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"
]
METHODS: tuple[str, ...] = Method.__args__  # type: ignore[attr-defined]

#: Fuzzy comparison of probabilities (the tolerance cleanlab uses as well).
_EPS = 1e-6
#: Thresholds are never below this, so that ``p >= t - _EPS`` stays meaningful.
_MIN_THRESHOLD = 2 * _EPS
#: Threshold of a class nobody is labelled with: no probability reaches it.
_ABSENT_THRESHOLD = 2.0


class LabelNoiseError(DataError, ValueError):
    """Label-noise detection cannot run on this data (one clear line, exit status 2)."""


# -- confident learning -------------------------------------------------------------------


def _check_inputs(labels: Any, pred_probs: Any) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    labels = np.asarray(labels)
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"pred_probs must be 2-D (rows, classes), not shape {probs.shape}")
    if labels.ndim != 1 or len(labels) != len(probs):
        raise ValueError(
            f"labels ({labels.shape}) and pred_probs ({probs.shape}) must have one row each"
        )
    if len(labels) and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class ids, not {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1} (one column per class)")
    return labels.astype(np.int64), probs


def self_confidence(labels: Any, pred_probs: Any) -> np.ndarray:
    """The predicted probability of each row's given label."""
    import numpy as np

    labels, probs = _check_inputs(labels, pred_probs)
    return probs[np.arange(len(labels)), labels]


def confident_thresholds(labels: Any, pred_probs: Any) -> np.ndarray:
    """Per class ``k``: the mean probability of ``k`` over the rows labelled ``k``.

    A class nobody is labelled with gets a threshold no probability reaches.
    """
    import numpy as np

    labels, probs = _check_inputs(labels, pred_probs)
    out = np.full(probs.shape[1], _ABSENT_THRESHOLD)
    for k in range(probs.shape[1]):
        members = labels == k
        if members.any():
            out[k] = np.mean(probs[:, k][members])
    return np.clip(out, _MIN_THRESHOLD, None)


def _round_keeping_sum(values: np.ndarray) -> np.ndarray:
    """Round to integers whose sum is the rounded sum: the largest remainders go up."""
    import numpy as np

    ints = values.round()
    target = np.sum(values).round()
    total = np.sum(ints).round()
    while abs(total - target) > _EPS:
        diff = np.round(target - total)
        step = -1 if diff < 0 else 1
        n = min(int(abs(diff)), len(values))
        for i in np.argsort(values - ints)[::-step][:n]:
            ints[i] += step
        total = np.sum(ints).round()
    return ints.astype(int)


def _round_rows(matrix: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.array([_round_keeping_sum(row) for row in matrix], dtype=int).reshape(matrix.shape)


def confident_joint(
    labels: Any,
    pred_probs: Any,
    *,
    calibrate: bool = True,
    return_off_diagonal_rows: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The confident joint ``C[i, j]``: rows labelled ``i`` that are confidently class ``j``.

    A row is confidently class ``j`` when ``p_j >= t_j`` (the class threshold); among several
    such classes the most probable one counts; rows confident in no class are left out. Each
    diagonal entry is at least 1. Calibrated, each row sums to the count of its given label.
    With ``return_off_diagonal_rows`` the rows counted off the diagonal come back as well.
    """
    import numpy as np

    labels, probs = _check_inputs(labels, pred_probs)
    k = probs.shape[1]
    above = probs >= confident_thresholds(labels, probs) - _EPS
    n_above = above.sum(axis=1)
    guess = np.where(n_above > 1, probs.argmax(axis=1), above.argmax(axis=1))
    confident = n_above > 0
    given, true = labels[confident], guess[confident]
    # Counted as (true, given) and transposed: a column-major matrix, see the note below.
    joint = np.bincount(true * k + given, minlength=k * k).reshape(k, k).T
    np.fill_diagonal(joint, joint.diagonal().clip(min=1))
    if calibrate:
        counts = np.bincount(labels, minlength=k)
        rows = np.clip(joint.sum(axis=1), 1e-100, None)
        # Memory order matters: it fixes the order in which np.sum adds, hence the last bit
        # of the total and how exact .5 ties round. Column-major, as in cleanlab.
        scaled = (joint.T / rows * counts).T
        scaled = scaled / np.clip(np.sum(scaled), 1e-100, None) * counts.sum()
        joint = _round_rows(scaled)
    if return_off_diagonal_rows:
        return joint, np.flatnonzero(confident)[true != given]
    return joint


def _prune_counts(joint: np.ndarray) -> np.ndarray:
    """How many rows to prune per (given, true) pair; every class keeps at least one row.

    A class whose diagonal is 0 gets 1, taken evenly from its non-zero off-diagonal counts.
    """
    import numpy as np

    diag = joint.diagonal()
    new_diag = np.maximum(diag, 1)
    raised = new_diag - diag
    n_noise = np.maximum(np.count_nonzero(joint, axis=1) - 1.0, 1.0)
    counts = joint - (raised / n_noise)[:, None]
    counts[counts < 0] = 0
    np.fill_diagonal(counts, new_diag)
    return counts.astype(int)


def find_label_issues(
    labels: Any, pred_probs: Any, method: str = "prune_by_noise_rate"
) -> np.ndarray:
    """Rows whose given label is likely wrong, ranked by self-confidence (lowest first).

    tuneforge's own confident learning; on the same probabilities it flags the same rows as
    ``cleanlab.filter.find_label_issues(labels, pred_probs, filter_by=method,
    return_indices_ranked_by="self_confidence")``.

    :param labels: given class ids, shape ``(rows,)``, in ``0..classes-1``.
    :param pred_probs: out-of-fold class probabilities, shape ``(rows, classes)``.
    :param method: ``prune_by_noise_rate`` (default): for each off-diagonal (given ``i``,
        true ``j``) of the calibrated confident joint, flag the ``n_ij`` rows labelled ``i``
        with the largest margin ``p_j - p_i``; ``prune_by_class``: per class, flag the rows
        labelled ``i`` with the lowest ``p_i``, as many as the joint says are wrong; ``both``:
        rows both flag; ``confident_learning``: the rows counted off the diagonal;
        ``predicted_neq_given``: the argmax differs from the given label.
    :returns: row positions (int64), lowest self-confidence first. Rows whose given label is
        the most probable class (within 1e-6) are never flagged.
    """
    import numpy as np

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    labels, probs = _check_inputs(labels, pred_probs)
    n, k = probs.shape
    flagged = np.zeros(n, dtype=bool)
    joint, off_diagonal = confident_joint(labels, probs, return_off_diagonal_rows=True)
    if method == "confident_learning":
        flagged[off_diagonal] = True
    elif method == "predicted_neq_given":
        flagged = probs.argmax(axis=1) != labels
    else:
        prune = _prune_counts(joint)
        by_rate = np.zeros(n, dtype=bool)
        by_class = np.zeros(n, dtype=bool)
        for i in range(k):
            members = np.flatnonzero(labels == i)
            if len(members) <= 1:  # a class's only row is never pruned
                continue
            sub = probs[labels == i]
            for j in range(k):
                if j != i and prune[i, j] > 0:
                    order = np.argsort(-(sub[:, j] - sub[:, i]))
                    by_rate[members[order[: prune[i, j]]]] = True
            wrong = len(members) - prune[i, i]
            if wrong >= 1:
                by_class[members[np.argsort(sub[:, i])[:wrong]]] = True
        flagged = {"prune_by_noise_rate": by_rate, "prune_by_class": by_class}.get(
            method, by_rate & by_class
        )
    # The given label is (within tolerance) the most probable class: not an issue.
    nudged = probs.copy()
    nudged[np.arange(n), labels] += _EPS
    flagged = flagged & (nudged.argmax(axis=1) != labels)
    rows = np.flatnonzero(flagged)
    scores = probs[np.arange(n), labels]
    return rows[np.argsort(scores[flagged])].astype(np.int64)


def cleanlab_available() -> bool:
    return importlib.util.find_spec("cleanlab") is not None


def cleanlab_label_issues(
    labels: Any, pred_probs: Any, method: str = "prune_by_noise_rate"
) -> np.ndarray:
    """The same ranking computed by cleanlab (``cleanlab.filter.find_label_issues``)."""
    import numpy as np
    from cleanlab.filter import find_label_issues as cleanlab_find

    labels, probs = _check_inputs(labels, pred_probs)
    with warnings.catch_warnings():  # "may not flag all label issues in class k"
        warnings.simplefilter("ignore")
        rows = cleanlab_find(
            labels,
            probs,
            filter_by=method,
            return_indices_ranked_by="self_confidence",
            n_jobs=1,  # results do not depend on it; no process pool inside a run
        )
    return np.asarray(rows, dtype=np.int64)


def backend_label_issues(
    labels: Any, pred_probs: Any, method: str = "prune_by_noise_rate", backend: str = "auto"
) -> tuple[np.ndarray, str]:
    """Ranked issue rows and the backend that computed them (``cleanlab X.Y`` or ``tuneforge``)."""
    if backend == "cleanlab" or (backend == "auto" and cleanlab_available()):
        from importlib.metadata import version

        return cleanlab_label_issues(labels, pred_probs, method), f"cleanlab {version('cleanlab')}"
    if backend not in ("auto", "tuneforge"):
        raise ValueError(f"unknown backend {backend!r}; choose auto, cleanlab or tuneforge")
    return find_label_issues(labels, pred_probs, method), "tuneforge"


# -- out-of-fold probabilities -------------------------------------------------------------


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def check_folds(labels: np.ndarray, classes: list[Any], folds: int, where: str = "") -> None:
    """Raise :class:`LabelNoiseError` when stratified ``folds``-fold CV cannot run."""
    import numpy as np

    prefix = f"{where}: " if where else ""
    counts = np.bincount(labels, minlength=len(classes))
    present = np.flatnonzero(counts)
    smallest = int(present[np.argmin(counts[present])]) if len(present) else 0
    fewest = int(counts[smallest]) if len(present) else 0
    advice = f"set folds: {fewest} or fewer" if fewest >= 2 else "every class needs at least 2 rows"
    if len(labels) < folds:
        raise LabelNoiseError(
            f"{prefix}label-noise: cannot run {folds}-fold cross-validation on "
            f"{len(labels)} rows ({advice})"
        )
    if fewest < folds:
        row_s = "row" if fewest == 1 else "rows"
        extra = f"{advice}, or drop the class" if fewest >= 2 else f"drop the class: {advice}"
        raise LabelNoiseError(
            f"{prefix}label-noise: cannot run {folds}-fold cross-validation: class "
            f"{_plain(classes[smallest])!r} has only {fewest} {row_s} ({extra})"
        )


def _texts(data: TaskData) -> list[str]:
    roles = [r for r in data.inputs if data.modalities.get(r) == "text"]
    cols = [data.inputs[r] for r in roles]
    frame = data.frame[cols].fillna("").astype(str)
    if len(cols) == 1:
        return frame[cols[0]].tolist()
    return frame.agg(" \n ".join, axis=1).tolist()


def oof_probabilities(
    data: TaskData, task: Any = None, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Out-of-fold class probabilities from a fast model, shape ``(rows, len(classes))``.

    Text inputs: scikit-learn ``TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)`` +
    ``LogisticRegression(max_iter=1000)``, predicted with ``cross_val_predict`` over
    ``StratifiedKFold(folds, shuffle=True, random_state=seed)``; a text pair is joined into
    one document. Columns follow ``data.classes``; a class without rows gets zeros.
    Other inputs: the task's ``label_noise_inputs(data) -> (X, estimator, description)``
    gives the features (rows aligned with ``data.frame``) and an unfitted scikit-learn
    classifier, cross-validated the same way; without it, pass your own ``pred_probs``.

    :raises LabelNoiseError: the data is not classification, has unlabelled rows, has non-text
        inputs and a task without ``label_noise_inputs``, or has fewer rows (in all, or in a class) than ``folds``.
    """
    return oof_probabilities_with_source(data, task, folds, seed)[0]


def oof_probabilities_with_source(
    data: TaskData, task: Any = None, folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, str]:
    """:func:`oof_probabilities` and a description of the model that made them."""
    import numpy as np

    where = data.source
    prefix = f"{where}: " if where else ""
    if data.classes is None or data.target is None:
        raise LabelNoiseError(f"{prefix}label-noise: needs a classification task with labels")
    kinds = sorted({data.modalities.get(r, "unknown") for r in data.inputs})
    if kinds == ["text"]:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline

        def inputs() -> tuple[Any, Any, str]:
            model = Pipeline(
                [
                    ("tfidf", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
                    ("clf", LogisticRegression(max_iter=1000)),
                ]
            )
            return _texts(data), model, "TF-IDF + logistic regression"

    elif hasattr(task, "label_noise_inputs"):

        def inputs() -> tuple[Any, Any, str]:
            return task.label_noise_inputs(data)

    else:
        raise LabelNoiseError(
            f"{prefix}label-noise: out-of-fold probabilities are built for text inputs only "
            f"so far (these inputs are {', '.join(kinds)}); give the validator pred_probs: a "
            ".npy file of out-of-fold class probabilities, one row per data row"
        )
    if data.frame[data.target].isna().any():
        raise LabelNoiseError(f"{prefix}label-noise: some rows have no label; drop them first")
    labels = data.label_ids()
    check_folds(labels, data.classes, folds, where)

    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    x, model, description = inputs()  # after the checks: image features take a while
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # Text: one BLAS/OpenMP thread: the sparse fits gain nothing from more, and on a busy
    # machine spinning BLAS threads made lbfgs over 10x slower (TREC: 17 s instead of 1.2 s a
    # fit). The task's models (gradient boosting on OpenMP) keep their threads.
    try:
        with threadpool_limits(limits=1 if kinds == ["text"] else None):
            probs = cross_val_predict(model, x, labels, cv=cv, method="predict_proba")
    except ValueError as exc:  # e.g. "empty vocabulary": no text with a word of 2+ characters
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LabelNoiseError(f"{prefix}label-noise: cannot fit {description}: {first}") from exc
    out = np.zeros((len(labels), len(data.classes)))
    out[:, np.unique(labels)] = probs
    return out, f"{folds}-fold {description}"


# -- out-of-fold probabilities from frozen pretrained features -----------------------------

#: ``features`` choices: ``auto`` (embeddings when the run's model has a pretrained encoder,
#: with TF-IDF for text), ``tfidf`` (the fast model: TF-IDF for text, the task's own
#: features for other inputs), ``embeddings`` (frozen features alone), ``embeddings+tfidf``.
Features = Literal["auto", "tfidf", "embeddings", "embeddings+tfidf"]
#: Inverse regularisation of the logistic regression on (L2-normalised) frozen features.
EMBEDDING_C = 1.0
#: Cross-validation folds with frozen features unless ``folds`` is set: as many as the
#: smallest class allows, up to this (cheap fits; more training rows per fold).
EMBEDDING_FOLDS = 10
#: The confident-learning rule with frozen features unless ``method`` is set: ``both`` flags
#: a row only when prune-by-noise-rate and prune-by-class both do (fewer false alarms).
EMBEDDING_METHOD = "both"


def embedding_folds(labels: np.ndarray, folds: int) -> int:
    """``EMBEDDING_FOLDS``, fewer when a class has fewer rows, never fewer than ``folds``."""
    import numpy as np

    counts = np.bincount(labels)
    fewest = int(counts[counts > 0].min()) if len(labels) else 0
    return max(folds, min(EMBEDDING_FOLDS, fewest))


def feature_oof_probabilities(
    data: TaskData,
    features: np.ndarray,
    folds: int = EMBEDDING_FOLDS,
    seed: int = 0,
    with_tfidf: bool = False,
) -> tuple[np.ndarray, str]:
    """Out-of-fold class probabilities from frozen pretrained ``features`` (one row per row
    of ``data.frame``): rows L2-normalised, ``LogisticRegression(C=EMBEDDING_C)``, predicted
    with ``cross_val_predict`` over ``StratifiedKFold(folds, shuffle=True,
    random_state=seed)``. With ``with_tfidf`` (text inputs) the TF-IDF model's out-of-fold
    probabilities on the same folds are averaged in: the embeddings carry the meaning, the
    n-grams the wording (TREC's question words), and each corrects the other's mistakes.
    Returns the probabilities (columns follow ``data.classes``) and a description.

    :raises LabelNoiseError: as :func:`oof_probabilities`.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    where = data.source
    prefix = f"{where}: " if where else ""
    if data.classes is None or data.target is None:
        raise LabelNoiseError(f"{prefix}label-noise: needs a classification task with labels")
    if data.frame[data.target].isna().any():
        raise LabelNoiseError(f"{prefix}label-noise: some rows have no label; drop them first")
    labels = data.label_ids()
    check_folds(labels, data.classes, folds, where)
    x = np.asarray(features, dtype=np.float64)
    if x.shape[0] != len(labels):
        raise ValueError(f"features have {x.shape[0]} rows for {len(labels)} data rows")
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    model = LogisticRegression(C=EMBEDDING_C, max_iter=2000)
    description = f"frozen {x.shape[1]}-d embeddings + logistic regression"
    with threadpool_limits(limits=1):  # see oof_probabilities_with_source
        probs = cross_val_predict(model, x, labels, cv=cv, method="predict_proba")
        if with_tfidf:
            from sklearn.feature_extraction.text import TfidfVectorizer
            from sklearn.pipeline import Pipeline

            tfidf = Pipeline(
                [
                    ("tfidf", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
                    ("clf", LogisticRegression(max_iter=1000)),
                ]
            )
            try:
                lexical = cross_val_predict(
                    tfidf, _texts(data), labels, cv=cv, method="predict_proba"
                )
            except ValueError as exc:  # "empty vocabulary": the embeddings alone
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                description += f" (TF-IDF left out: {first})"
            else:
                probs = (probs + lexical) / 2
                description += ", averaged with TF-IDF + logistic regression"
    out = np.zeros((len(labels), len(data.classes)))
    out[:, np.unique(labels)] = probs
    return out, f"{folds}-fold {description}"


# -- the validator -------------------------------------------------------------------------


def load_pred_probs(path: Path, data: TaskData) -> np.ndarray:
    """User-supplied probabilities for ``data``'s rows, checked; errors name the file.

    The file holds one row per data row of the source file, in file order (the frame's index
    labels pick the rows still present), and one column per class in ``data.classes`` order.
    """
    import numpy as np

    name = "label-noise pred_probs"
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: {name} file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: {name}: cannot read as a .npy array: {first}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        raise DataError(f"{path}: {name} is an archive; save one array with numpy.save")
    k = len(data.classes or [])
    classes = ", ".join(repr(_plain(c)) for c in data.classes or [])
    if arr.ndim != 2 or arr.shape[1] != k:
        raise DataError(
            f"{path}: {name} has shape {arr.shape}; expected (rows, {k}): one column per "
            f"class, in the order {classes}"
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"{path}: {name} holds {arr.dtype} values; expected probabilities")
    index = data.frame.index.to_numpy()
    untouched = np.array_equal(index, np.arange(len(index)))
    if (untouched and len(arr) != len(index)) or (len(index) and len(arr) <= index.max()):
        rows = len(index) if untouched else f"at least {int(index.max()) + 1}"
        raise DataError(
            f"{path}: {name} has shape {arr.shape}; expected ({rows}, {k}): one row per data "
            f"row of {data.source or 'the data'}, in file order"
        )
    probs = arr[index].astype(np.float64)
    bad = ~np.isfinite(probs).all(axis=1) | (probs < -_EPS).any(axis=1)
    sums = probs.sum(axis=1)
    bad |= np.abs(sums - 1) > 1e-3
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: {name} row {int(index[pos])} is not a probability distribution "
            f"(sums to {sums[pos]:.4g}); each row must hold non-negative values summing to 1"
        )
    return np.clip(probs, 0.0, None)


class LabelNoise(Validator):
    """Likely mislabelled rows, by confident learning on out-of-fold probabilities.

    Probabilities come from ``pred_probs`` (a ``.npy`` file, shape ``(rows, classes)`` in the
    data file's row order and ``labels.json`` class order; a relative path is resolved
    against the working directory) or from a model fitted with stratified cross-validation:
    with ``features: auto`` (the default), logistic regression on the frozen features of the
    run's pretrained encoder (:meth:`Task.frozen_features`: sentence embeddings, averaged with
    TF-IDF for text; timm pooled features for images), 10 folds where the classes allow and
    the rule ``both`` unless ``folds`` / ``method`` are set; without such an encoder (or with
    ``features: tfidf``) TF-IDF + logistic regression for text (tasks with
    ``label_noise_inputs``, e.g. tabular: their own fast model), ``folds``-fold. The backend is cleanlab when it is
    installed (``auto``) or tuneforge's own implementation; both flag the same rows.

    Policies: ``warn`` reports; ``drop`` removes the flagged rows; ``fail`` stops the run;
    ``down-weight`` reports and puts ``{row: weight}`` (weight = self-confidence, the
    probability of the given label) in the finding's ``weights``; the pipeline
    multiplies the training loss of those rows by their weight.
    """

    problems: ClassVar[tuple[str, ...]] = ("classification",)

    class Config(ValidatorConfig):
        policy: Literal["warn", "drop", "fail", "down-weight"] = "warn"  # type: ignore[assignment]
        method: Method = Field(
            "prune_by_noise_rate", description="confident-learning rule that flags rows"
        )
        folds: int = Field(5, ge=2, description="cross-validation folds for the probabilities")
        seed: int = Field(0, description="seed of the cross-validation shuffle")
        backend: Literal["auto", "cleanlab", "tuneforge"] = Field(
            "auto", description="auto: cleanlab when installed, else tuneforge's own"
        )
        pred_probs: str | None = Field(
            None,
            description=".npy out-of-fold probabilities (rows in file order, columns in class "
            "order); fitted here when not given",
        )
        max_report: int = Field(20, ge=0, description="rows described in the finding's details")
        features: Features = Field(
            "auto",
            description="what the out-of-fold model reads: auto (the frozen pretrained "
            "encoder's features when the run's model has one, with TF-IDF for text; else "
            "tfidf), tfidf (TF-IDF for text, the task's own features otherwise), embeddings, "
            "embeddings+tfidf",
        )

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        if self.config.backend == "cleanlab" and not cleanlab_available():
            raise ValueError(
                "backend 'cleanlab' needs the cleanlab package (pip install 'tuneforge[cleanlab]'"
                "), or use backend: tuneforge"
            )
        if self.config.pred_probs is not None:
            path = Path(self.config.pred_probs).expanduser()
            if not path.is_file():
                raise ValueError(f"pred_probs file not found: {path.resolve()}")

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        cfg = self.config
        started = time.perf_counter()
        prefix = f"{data.source}: " if data.source else ""
        if data.classes is None or data.target is None:
            raise LabelNoiseError(f"{prefix}label-noise: needs a classification task with labels")
        labelled = data.subset(data.frame.index[data.frame[data.target].notna()])
        present = labelled.frame[labelled.target].nunique()
        if present < 2:
            return [
                Finding(
                    FindingKind.LABEL_ISSUE,
                    "info",
                    f"skipped: {present} class among the labelled rows; needs at least two",
                )
            ]
        labels = labelled.label_ids()
        method = cfg.method
        if cfg.pred_probs is not None:
            path = Path(cfg.pred_probs).expanduser().resolve()
            probs = load_pred_probs(path, labelled)
            source = f"probabilities from {path}"
        else:
            found = self._feature_probabilities(labelled, task)
            if found is not None:
                probs, source = found
                if "method" not in cfg.model_fields_set:
                    method = EMBEDDING_METHOD
            else:
                probs, source = oof_probabilities_with_source(labelled, task, cfg.folds, cfg.seed)
        ranked, backend = backend_label_issues(labels, probs, method, cfg.backend)
        index = labelled.frame.index.to_numpy()
        rows = [int(index[r]) for r in ranked]
        how = f"confident learning, {backend} backend, {source}"
        details: dict[str, Any] = {
            "backend": backend,
            "method": method,
            "probabilities": source,
            "rows_checked": len(labels),
            "flagged": len(rows),
            "seconds": round(time.perf_counter() - started, 3),
        }
        if not rows:
            return [
                Finding(
                    FindingKind.LABEL_ISSUE,
                    "info",
                    f"no likely mislabelled rows among {len(labels)} ({how})",
                    details=details,
                )
            ]
        classes = labelled.classes or []
        conf = probs[ranked, labels[ranked]]
        likely = probs[ranked].argmax(axis=1)
        issues = [
            {
                "row": rows[n],
                "given": _plain(classes[labels[r]]),
                "likely": _plain(classes[likely[n]]),
                "p_likely": round(float(probs[r, likely[n]]), 4),
                "self_confidence": round(float(conf[n]), 4),
            }
            for n, r in enumerate(ranked[: max(cfg.max_report, 5)])
        ]
        details["issues"] = issues[: cfg.max_report]
        weights = None
        if cfg.policy == "down-weight":
            weights = {row: float(c) for row, c in zip(rows, conf, strict=True)}
        shown = ", ".join(
            f"{i['row']} (given {i['given']!r}, likely {i['likely']!r}, p={i['p_likely']:.2f})"
            for i in issues[:5]
        )
        more = f", ... ({len(rows)} in all)" if len(rows) > 5 else ""
        s = "row" if len(rows) == 1 else "rows"
        return [
            Finding(
                FindingKind.LABEL_ISSUE,
                "warning",
                f"{len(rows)} likely mislabelled {s} ({how}): rows {shown}{more}",
                rows,
                details=details,
                weights=weights,
            )
        ]

    def _feature_probabilities(self, data: TaskData, task: Any) -> tuple[np.ndarray, str] | None:
        """Out-of-fold probabilities from the task's frozen pretrained features
        (:meth:`Task.frozen_features`) as ``features`` asks, or None for the TF-IDF path."""
        from tuneforge.components import Task

        cfg = self.config
        if cfg.features == "tfidf":
            return None
        text = sorted({data.modalities.get(r, "unknown") for r in data.inputs}) == ["text"]
        if cfg.features == "embeddings+tfidf" and not text:
            raise LabelNoiseError(
                f"{data.source + ': ' if data.source else ''}label-noise: features: "
                "embeddings+tfidf needs text inputs; use embeddings"
            )
        labels = data.label_ids() if data.classes is not None else None
        folds = cfg.folds
        if labels is not None and "folds" not in cfg.model_fields_set:
            folds = embedding_folds(labels, cfg.folds)
        if labels is not None:  # before the features: they take a while
            check_folds(labels, data.classes or [], folds, data.source)
        rows = data.frame.index.to_numpy()
        feats = task.frozen_features(data, rows) if isinstance(task, Task) else None
        if feats is None:
            if cfg.features == "auto":
                return None
            builder = task.model_builder if isinstance(task, Task) else None
            named = f" ({type(builder).__name__})" if builder is not None else ""
            raise LabelNoiseError(
                f"{data.source + ': ' if data.source else ''}label-noise: features: "
                f"{cfg.features} needs a model that starts from a pretrained encoder; the run's "
                f"model{named} has none (a sentence-transformers checkpoint for text, timm "
                "weights for images); use features: tfidf"
            )
        with_tfidf = text and cfg.features in ("auto", "embeddings+tfidf")
        return feature_oof_probabilities(data, feats, folds, cfg.seed, with_tfidf)


@hookimpl
def register_validators(register: Register) -> None:
    register(
        "label-noise",
        LabelNoise,
        "Likely mislabelled rows by confident learning (cleanlab or built-in)",
    )
