"""Bootstrap confidence intervals of the test metrics (``metrics.json`` ``test_intervals``).

A percentile bootstrap over the rows of the split: ``resamples`` resamples of the split's
``n`` rows, drawn with replacement from a generator seeded by the run's ``trainer.seed``;
every metric is computed on each resample (the same resamples for every metric, so the
intervals are comparable), and the interval is the ``(1 - confidence) / 2`` and
``(1 + confidence) / 2`` percentiles of its finite values (``numpy.percentile``, linear
interpolation). It says how much the test split itself can tell: the model is fixed, only
the rows vary.

Speed: a metric that implements :meth:`tuneforge.components.Metric.resampled` computes a
whole block of resamples at once from their row indices (the built-in classification
metrics do: confusion counts and weighted rank statistics, vectorised over resamples);
any other metric is called once per resample, within a time budget
(:data:`LOOP_BUDGET_S`, shared by those metrics): when the first resamples show that the
budget would not suffice, the metric gets fewer resamples (at least :data:`MIN_RESAMPLES`),
and the record says how many it got. The resamples are drawn block by block
(:data:`BLOCK_CELLS` row indices at most per block), so memory stays bounded whatever ``n``.

Nothing here knows a metric or a modality; numpy is imported at module level (this module
is imported only when a run evaluates its test split).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The default number of resamples (``evaluation.bootstrap``).
DEFAULT_RESAMPLES = 1000
#: Row indices per block of resamples (resamples x rows), bounding memory.
BLOCK_CELLS = 2_000_000
#: Seconds the per-resample metrics may take together, before their resamples are reduced.
LOOP_BUDGET_S = 20.0
#: The fewest resamples a metric is given when its budget forces fewer.
MIN_RESAMPLES = 200
#: Resamples timed before a per-resample metric's share of the budget is projected.
PROBE = 10
#: Fewer finite resampled values than this: no interval.
MIN_FINITE = 20
METHOD = "percentile bootstrap over test rows"


@dataclass
class Intervals:
    """The bootstrap intervals of one split's metrics.

    :param intervals: metric -> ``[low, high]``, or None where the metric had too few finite
        values over the resamples (undefined on most of them, e.g. ROC-AUC with one class).
    :param resamples: the resamples asked for.
    :param reduced: metric -> resamples it got, for the metrics given fewer (time budget).
    :param notes: one line per metric whose interval is missing or rests on part of the
        resamples (undefined on some).
    """

    intervals: dict[str, list[float] | None]
    resamples: int
    confidence: float
    seed: int
    rows: int
    seconds: float
    reduced: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """``metrics.json``'s ``test_interval_method``: how the intervals were made."""
        out: dict[str, Any] = {
            "method": METHOD,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "rows": self.rows,
            "seed": self.seed,
        }
        if self.reduced:
            out["reduced"] = dict(self.reduced)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _one(metric: Any, y_true: Any, y_pred: Any, y_score: Any, rows: np.ndarray) -> float:
    try:
        value = float(
            metric(y_true[rows], y_pred[rows], None if y_score is None else y_score[rows])
        )
    except (ValueError, ZeroDivisionError, FloatingPointError):  # undefined on this resample
        return math.nan
    return value


def bootstrap_intervals(
    metrics: dict[str, Any],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    y_score: np.ndarray | None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
    budget_s: float = LOOP_BUDGET_S,
) -> Intervals | None:
    """Percentile bootstrap intervals of ``metrics`` (name -> Metric) on one split.

    :param y_true: the split's labels (first axis: rows), as the metrics take them.
    :param y_pred: the predictions (same rows).
    :param y_score: class or label probabilities (same rows), or None.
    :param resamples: how many resamples; 0 (or fewer than 2 rows): None.
    :param seed: seeds the generator that draws the resamples (reproducible intervals).
    :param confidence: the interval's coverage (0.95: the 2.5 and 97.5 percentiles).
    :param budget_s: seconds the metrics without :meth:`~tuneforge.components.Metric.resampled`
        may take together; beyond it they get fewer resamples.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    y_score = None if y_score is None else np.asarray(y_score)
    n = len(y_true)
    if resamples <= 0 or n < 2 or not metrics:
        return None
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, BLOCK_CELLS // n))
    values: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    looped: list[str] | None = None  # the metrics without resampled(), once known
    wanted: dict[str, int] = {name: resamples for name in metrics}
    done = 0
    while done < resamples:
        size = min(block, resamples - done)
        rows = rng.integers(0, n, size=(size, n))
        for name, metric in metrics.items():
            if looped is None or name not in looped:
                out = metric.resampled(y_true, y_pred, y_score, rows)
                if out is not None:
                    values[name].append(np.asarray(out, dtype=np.float64).reshape(size))
        if looped is None:
            looped = [name for name in metrics if not values[name]]
        for name in looped:
            have = sum(len(v) for v in values[name])
            got: list[float] = []
            t0 = time.perf_counter()
            while len(got) < min(size, wanted[name] - have):
                got.append(_one(metrics[name], y_true, y_pred, y_score, rows[len(got)]))
                if have == 0 and len(got) == 1:  # the first call may import and warm up
                    t0 = time.perf_counter()
                if have == 0 and len(got) == PROBE + 1:  # project the cost from the next ones
                    per = (time.perf_counter() - t0) / PROBE
                    share = budget_s / len(looped)
                    if per * resamples > share:
                        wanted[name] = max(MIN_RESAMPLES, int(share / per))
            values[name].append(np.asarray(got, dtype=np.float64))
        done += size
    low_q, high_q = 50 * (1 - confidence), 50 * (1 + confidence)
    intervals: dict[str, list[float] | None] = {}
    reduced: dict[str, int] = {}
    notes: list[str] = []
    for name in metrics:
        all_values = np.concatenate(values[name]) if values[name] else np.empty(0)
        if len(all_values) < resamples:
            reduced[name] = len(all_values)
        finite = all_values[np.isfinite(all_values)]
        if len(finite) < MIN_FINITE:
            intervals[name] = None
            notes.append(
                f"{name}: undefined on {len(all_values) - len(finite)} of "
                f"{len(all_values)} resamples: no interval"
            )
            continue
        if len(finite) < len(all_values):
            notes.append(
                f"{name}: undefined on {len(all_values) - len(finite)} of "
                f"{len(all_values)} resamples (left out)"
            )
        lo, hi = np.percentile(finite, [low_q, high_q])
        intervals[name] = [float(lo), float(hi)]
    return Intervals(
        intervals=intervals,
        resamples=resamples,
        confidence=confidence,
        seed=seed,
        rows=n,
        seconds=time.perf_counter() - started,
        reduced=reduced,
        notes=notes,
    )


def interval_text(interval: Any, digits: int = 4) -> str:
    """`` [0.8940, 0.9290]`` for a ``[low, high]`` pair (leading space), "" for anything else."""
    if not isinstance(interval, (list, tuple)) or len(interval) != 2:
        return ""
    lo, hi = interval
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lo, hi))
    return f" [{lo:.{digits}f}, {hi:.{digits}f}]" if ok else ""


def split_intervals(
    task: Any,
    metrics: dict[str, Any],
    logits: Any,
    labels: Any,
    evaluation: Any,
    seed: int,
) -> dict[str, Any]:
    """``{"test_intervals": {metric: [low, high] | None}, "test_interval_method": {...}}``
    for a split's model outputs (CPU tensors), by the run's ``evaluation`` config
    (``bootstrap`` resamples, ``confidence``), seeded by ``seed``; empty when there are no
    labels, no metrics or ``evaluation.bootstrap`` is 0."""
    if labels is None or not metrics or evaluation.bootstrap <= 0:
        return {}
    y_pred, y_score = task.predictions(logits)
    found = bootstrap_intervals(
        metrics,
        labels.numpy(),
        y_pred,
        y_score,
        resamples=evaluation.bootstrap,
        seed=seed,
        confidence=evaluation.confidence,
    )
    if found is None:
        return {}
    return {"test_intervals": found.intervals, "test_interval_method": found.record()}
