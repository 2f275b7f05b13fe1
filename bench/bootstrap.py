"""Bootstrap intervals of the test metrics: the vectorised resamples against calling each
metric once per resample (the baseline), measured in the same run.

    python bench/bootstrap.py [--rows 10000] [--classes 10] [--resamples 1000]

Prints, per metric, the seconds of the vectorised path for all resamples and of the
per-resample loop (timed on --loop resamples and scaled), their ratio, and the total of
``bootstrap_intervals`` over the eight default classification metrics.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tuneforge.bootstrap import bootstrap_intervals
from tuneforge.plugins.metrics import METRICS

NAMES = [
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "f1_weighted",
    "mcc",
    "roc_auc",
    "average_precision",
    "log_loss",
    "brier",
    "ece",
]
DEFAULTS = ["accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "mcc", "roc_auc"]
DEFAULTS += ["log_loss", "ece"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--loop", type=int, default=50, help="resamples timed for the baseline")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, k = args.rows, args.classes
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits)
    p = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    pred = p.argmax(axis=1)
    print(f"{n} rows, {k} classes, {args.resamples} resamples")
    print(f"{'metric':<20} {'vectorised s':>12} {'loop s':>10} {'speed-up':>9}")
    for name in NAMES:
        metric = METRICS[name]()
        rows = rng.integers(0, n, size=(args.loop, n))
        metric(y[rows[0]], pred[rows[0]], p[rows[0]])  # warm up (imports)
        t0 = time.perf_counter()
        for r in rows:
            metric(y[r], pred[r], p[r])
        loop = (time.perf_counter() - t0) / args.loop * args.resamples
        t0 = time.perf_counter()
        bootstrap_intervals({name: metric}, y, pred, p, args.resamples, seed=0)
        vec = time.perf_counter() - t0
        print(f"{name:<20} {vec:>12.3f} {loop:>10.2f} {loop / vec:>8.1f}x")
    chosen = {name: METRICS[name]() for name in DEFAULTS}
    found = bootstrap_intervals(chosen, y, pred, p, args.resamples, seed=0)
    assert found is not None
    print(f"default metrics ({len(DEFAULTS)}) together: {found.seconds:.2f} s")


if __name__ == "__main__":
    main()
