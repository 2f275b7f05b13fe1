"""Benchmark: label-noise detection (confident learning) on real data.

1. SMS Spam and TREC (6 coarse classes): flip 5% and 10% of the labels at known rows (seeded,
   each to a different random class), compute 5-fold out-of-fold probabilities with TF-IDF +
   logistic regression, and flag rows with both backends (cleanlab and tuneforge's own).
   Prints precision and recall of the flagged rows against the flipped rows, the flagged count
   and seconds. ``0%`` rows show what is flagged before any noise is injected: the original
   labels have errors of their own, so precision against the injected rows is a lower bound.
   The baseline is ``argmax != given`` (flag every row the model disagrees with).
2. MNIST and CIFAR-10 test sets with the published out-of-fold probabilities in
   ``pred_probs/``: how many rows each backend flags and whether they agree.

Run: ``python bench/label_noise.py [--data ../shared/data] [--seed 0] [--folds 5]``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from tuneforge.data import TaskData
from tuneforge.plugins.label_noise import (
    cleanlab_available,
    cleanlab_label_issues,
    find_label_issues,
    oof_probabilities,
)

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = {"cleanlab": cleanlab_label_issues, "tuneforge": find_label_issues}
if not cleanlab_available():  # our own backend still runs; agreement is then not measured
    del BACKENDS["cleanlab"]


def load_sms(data: Path) -> tuple[list[str], list[str]]:
    labels, texts = [], []
    with (data / "sms_spam" / "SMSSpamCollection").open(encoding="utf-8") as fh:
        for line in fh:
            label, _, text = line.rstrip("\n").partition("\t")
            labels.append(label)
            texts.append(text)
    return texts, labels


def load_trec(data: Path) -> tuple[list[str], list[str]]:
    frame = pd.read_csv(data / "trec" / "train.csv")
    return frame["text"].tolist(), frame["coarse_label"].tolist()


def flip_labels(
    labels: np.ndarray, n_classes: int, rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``round(rate * rows)`` labels, each to a different random class."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(labels), size=round(rate * len(labels)), replace=False))
    noisy = labels.copy()
    noisy[rows] = (labels[rows] + rng.integers(1, n_classes, size=len(rows))) % n_classes
    return noisy, rows


def task_data(texts: list[str], labels: np.ndarray, classes: list[str], name: str) -> TaskData:
    frame = pd.DataFrame({"text": texts, "label": [classes[i] for i in labels]})
    return TaskData(frame, {"text": "text"}, "label", classes, name, modalities={"text": "text"})


def precision_recall(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    hit = len(np.intersect1d(flagged, truth))
    precision = hit / len(flagged) if len(flagged) else float("nan")
    recall = hit / len(truth) if len(truth) else float("nan")
    return precision, recall


def text_benchmarks(data: Path, seed: int, folds: int) -> None:
    header = (
        f"{'dataset':<9} {'noise':>5} {'flipped':>7} {'method':<22} {'flagged':>7} "
        f"{'precision':>9} {'recall':>6} {'oof s':>6} {'detect s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, loader in (("sms_spam", load_sms), ("trec", load_trec)):
        texts, raw = loader(data)
        classes = sorted(set(raw))
        clean = np.array([classes.index(x) for x in raw])
        for rate in (0.0, 0.05, 0.10):
            noisy, flipped = flip_labels(clean, len(classes), rate, seed)
            t0 = time.perf_counter()
            probs = oof_probabilities(
                task_data(texts, noisy, classes, name), folds=folds, seed=seed
            )
            oof_s = time.perf_counter() - t0
            found = {}
            for backend, fn in BACKENDS.items():
                t0 = time.perf_counter()
                found[backend] = fn(noisy, probs)
                found[backend + "_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            base = np.flatnonzero(probs.argmax(axis=1) != noisy)
            base_s = time.perf_counter() - t0
            rows = [(b, found[b], found[b + "_s"]) for b in BACKENDS]
            rows.append(("baseline argmax!=given", base, base_s))
            for method, flagged, secs in rows:
                p, r = precision_recall(flagged, flipped)
                shown_p = f"{p:9.3f}" if len(flipped) else f"{'-':>9}"
                shown_r = f"{r:6.3f}" if len(flipped) else f"{'-':>6}"
                print(
                    f"{name:<9} {rate:>5.0%} {len(flipped):>7} {method:<22} {len(flagged):>7} "
                    f"{shown_p} {shown_r} {oof_s:>6.2f} {secs:>8.4f}"
                )
            if len(BACKENDS) == 2:
                same = np.array_equal(found["cleanlab"], found["tuneforge"])
                print(f"{'':<9} {'':>5} {'':>7} backends identical (rows and order): {same}")
        print()


def pred_probs_benchmarks(data: Path) -> None:
    sets = {
        "mnist": (data / "mnist_test" / "labels.csv", "index", 15),
        "cifar10": (data / "cifar10" / "test_labels.csv", "test_index", 54),
    }
    header = (
        f"{'dataset':<8} {'rows':>6} {'published':>9} {'cleanlab':>8} {'tuneforge':>9} "
        f"{'jaccard':>7} {'identical':>9} {'cleanlab s':>10} {'tuneforge s':>11} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, (labels_csv, key, published) in sets.items():
        with labels_csv.open(newline="") as fh:
            table = sorted(csv.DictReader(fh), key=lambda r: int(r[key]))
        assert [int(r[key]) for r in table] == list(range(len(table))), labels_csv
        labels = np.array([int(r["label"]) for r in table])
        probs = np.load(data / "pred_probs" / f"{name}_test_cv_pred_probs.npy")
        out, secs = {}, {}
        for backend, fn in BACKENDS.items():
            fn(labels, probs)  # warm-up (imports)
            t0 = time.perf_counter()
            for _ in range(5):
                out[backend] = fn(labels, probs)
            secs[backend] = (time.perf_counter() - t0) / 5
        a, b = set(out["cleanlab"].tolist()), set(out["tuneforge"].tolist())
        jaccard = len(a & b) / len(a | b) if a | b else 1.0
        same = np.array_equal(out["cleanlab"], out["tuneforge"])
        print(
            f"{name:<8} {len(labels):>6} {published:>9} {len(a):>8} {len(b):>9} {jaccard:>7.3f} "
            f"{str(same):>9} {secs['cleanlab']:>10.4f} {secs['tuneforge']:>11.4f} "
            f"{secs['cleanlab'] / secs['tuneforge']:>5.1f}x"
        )
    print(
        "published = human-confirmed test-label errors (Northcutt, Athalye & Mueller 2021); "
        "ratio = cleanlab seconds / tuneforge seconds"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    import sklearn

    cl = version("cleanlab") if "cleanlab" in BACKENDS else "not installed"
    print(
        f"label-noise benchmark: python {platform.python_version()}, cleanlab "
        f"{cl}, scikit-learn {sklearn.__version__}, {platform.machine()}, {os.cpu_count()} CPUs "
        f"(load {os.getloadavg()[0]:.1f}), seed {args.seed}, {args.folds}-fold TF-IDF + logistic regression, prune_by_noise_rate\n"
    )
    text_benchmarks(args.data, args.seed, args.folds)
    if len(BACKENDS) == 2:
        pred_probs_benchmarks(args.data)


if __name__ == "__main__":
    main()
