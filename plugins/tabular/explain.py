"""Permutation importance for the tabular tasks: ``sklearn.inspection.permutation_importance``
over the run's own predict function (the fitted feature preprocessing, then the model), scored
by accuracy (classification) or R² (regression) against the label column of the rows, 5
seeded repeats, with a bar chart (inline SVG) of each feature's mean ± std score drop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tuneforge.components import ExplainOptions, Explanation
from tuneforge.errors import DataError, UserError
from tuneforge.explain import esc, model_outputs

#: Shuffles of each feature (``permutation_importance``'s ``n_repeats``).
REPEATS = 5


class RunEstimator:
    """A minimal scikit-learn estimator around a run's predict function: ``predict(X)`` puts
    the feature columns ``X`` into the rows the task reads and returns its predictions (class
    ids, or target values)."""

    def __init__(self, task: Any, model: Any, frame: pd.DataFrame, data_config: Any) -> None:
        self.task, self.model, self.frame, self.data_config = task, model, frame, data_config

    def fit(self, X: Any, y: Any = None) -> RunEstimator:  # noqa: N803 (scikit-learn's names)
        return self  # trained already

    def predict(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        rows = self.frame.copy()
        for col in X.columns:
            rows[col] = X[col].to_numpy()
        dataset = self.task.predict_dataset(rows, self.data_config)
        y_pred, _ = self.task.predictions(
            model_outputs(self.model, dataset, self.task.collate_fn(False), 512)
        )
        return np.asarray(y_pred)


def true_values(task: Any, frame: pd.DataFrame, labels: dict[str, Any], source: str) -> np.ndarray:
    """The label column(s) of ``frame`` in the model's terms: class ids (classification) or
    float target values (regression); a :class:`DataError` naming the file and column when
    they are missing, and the row for an unknown class or a non-numeric target."""
    column = labels.get("label_column")
    columns = column if isinstance(column, list) else [column]
    if task.problem not in ("classification", "regression"):
        raise UserError(
            f"permutation importance supports classification and regression tasks, not "
            f"{task.problem} ({task.name})"
        )
    missing = [c for c in columns if c is None or str(c) not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: no label column {missing[0]!r}: permutation importance scores the "
            "model against the true labels, so the rows must carry them"
        )
    if task.problem == "classification":
        classes = [str(c) for c in labels.get("classes") or []]
        index = {c: i for i, c in enumerate(classes)}
        values = frame[str(column)].astype(str).tolist()
        bad = [i for i, v in enumerate(values) if v not in index]
        if bad:
            raise DataError(
                f"{source}: row {int(frame.index[bad[0]])}: label {values[bad[0]]!r} is not one "
                f"of the run's classes ({', '.join(classes[:10])})"
            )
        return np.asarray([index[v] for v in values], dtype=np.int64)
    out = frame[[str(c) for c in columns]].apply(pd.to_numeric, errors="coerce")
    bad = out.index[out.isna().any(axis=1) | ~np.isfinite(out.to_numpy(float)).all(axis=1)]
    if len(bad):
        raise DataError(f"{source}: row {int(bad[0])}: the target is missing or not a number")
    values = out.to_numpy(np.float64)
    return values[:, 0] if values.shape[1] == 1 else values


def bar_chart(names: list[str], means: np.ndarray, stds: np.ndarray) -> str:
    """An inline SVG bar chart: one bar per feature (mean score drop) with a ± std whisker."""
    row, left, width = 22, 170, 420
    lo = min(0.0, float(np.min(means - stds)))
    hi = max(float(np.max(means + stds)), 1e-12)
    scale = width / (hi - lo)
    zero = left + (0 - lo) * scale
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" '
        f'height="{row * len(names) + 30}" font-family="sans-serif" font-size="12">',
        f'<line x1="{zero:.1f}" y1="0" x2="{zero:.1f}" y2="{row * len(names)}" stroke="#889"/>',
    ]
    for i, (name, m, s) in enumerate(zip(names, means, stds, strict=True)):
        y = i * row
        x0, x1 = sorted((zero, left + (m - lo) * scale))
        w0, w1 = left + (m - s - lo) * scale, left + (m + s - lo) * scale
        parts += [
            f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{esc(name[:24])}</text>',
            f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 0.5):.1f}" height="14" '
            f'fill="{"#3b7dd8" if m >= 0 else "#d84b3b"}"/>',
            f'<line x1="{w0:.1f}" y1="{y + 11}" x2="{w1:.1f}" y2="{y + 11}" stroke="#223"/>',
            f'<text x="{max(x1, w1) + 6:.1f}" y="{y + 15}">{m:.4f} ± {s:.4f}</text>',
        ]
    parts.append(
        f'<text x="{left}" y="{row * len(names) + 20}" fill="#667">drop in score when the '
        "feature's values are shuffled</text></svg>"
    )
    return "".join(parts)


def explain_table(
    task: Any, model: Any, frame: pd.DataFrame, data_config: Any, options: ExplainOptions
) -> Explanation:
    """Permutation importance of every feature on all rows of ``frame`` (see the module
    docstring)."""
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import accuracy_score, r2_score

    assert task.features is not None, "load_artifacts() first"
    source = options.source or "input"
    y = true_values(task, frame, options.labels, source)
    if len(frame) < 2:
        raise DataError(f"{source}: permutation importance needs at least 2 labelled rows")
    features = list(task.features.numeric) + list(task.features.categorical)
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: no feature column {missing[0]!r}")
    classification = task.problem == "classification"
    metric, name = (accuracy_score, "accuracy") if classification else (r2_score, "R²")

    def score(estimator: Any, X: Any, y_true: Any) -> float:  # noqa: N803
        return float(metric(y_true, estimator.predict(X)))

    frame = frame.copy()
    frame.attrs["source"] = source
    estimator = RunEstimator(task, model, frame, data_config)
    X = frame[features]  # noqa: N806
    result = permutation_importance(
        estimator, X, y, scoring=score, n_repeats=REPEATS, random_state=options.seed
    )
    base = score(estimator, X, y)
    order = np.argsort(-result.importances_mean, kind="stable")
    records = [
        {
            "feature": features[j],
            "mean": float(result.importances_mean[j]),
            "std": float(result.importances_std[j]),
            "importances": result.importances[j],
        }
        for j in order
    ]
    names = [r["feature"] for r in records]
    means = np.asarray([r["mean"] for r in records])
    stds = np.asarray([r["std"] for r in records])
    rows_html = "".join(
        f"<tr><td>{esc(r['feature'])}</td><td>{r['mean']:.4f}</td><td>{r['std']:.4f}</td></tr>"
        for r in records
    )
    html = (
        f"<p class=muted>Each feature's values shuffled among the {len(frame)} rows "
        f"({REPEATS} seeded repeats); importance = the {esc(name)} of the model on the rows as "
        f"they are ({base:.4f}) minus its {esc(name)} with the feature shuffled.</p>"
        + bar_chart(names, means, stds)
        + "<table><tr><th>feature</th><th>mean drop</th><th>std</th></tr>"
        + rows_html
        + "</table>"
    )
    return Explanation(
        method="permutation-importance",
        html=html,
        records=records,
        summary={"rows": len(frame), "score": name, "score on the rows": base},
    )
