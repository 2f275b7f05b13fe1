"""Benchmark: label-noise detection (confident learning) on real data.

1. SMS Spam and TREC (6 coarse classes): flip 5% and 10% of the labels at known rows (seeded,
   each to a different random class), compute 5-fold out-of-fold probabilities with TF-IDF +
   logistic regression, and flag rows with both backends (cleanlab and tuneforge's own).
   Prints precision and recall of the flagged rows against the flipped rows, the flagged count
   and seconds. ``0%`` rows show what is flagged before any noise is injected: the original
   labels have errors of their own, so precision against the injected rows is a lower bound.
   The baseline is ``argmax != given`` (flag every row the model disagrees with).
   Then the same flips through the ``label-noise`` validator with frozen pretrained features
   (issue 17.4): the packaged MiniLM sentence encoder's mean-pooled embeddings (``minilm-l6``,
   the default model) + logistic regression, alone and averaged with TF-IDF (``features:
   auto``, the validator's default when the model has a sentence encoder: 10 folds where the
   classes allow, rule ``both``), against TF-IDF (``features: tfidf``, the default before:
   5 folds, ``prune_by_noise_rate``); TF-IDF with rule ``both`` and embeddings alone show
   where the gain comes from. F1 of the flagged rows against the flipped rows, and the gain
   over TF-IDF. ``--datasets trec`` runs TREC only.
2. MNIST and CIFAR-10 test sets with the published out-of-fold probabilities in
   ``pred_probs/``: how many rows each backend flags and whether they agree.

Run: ``python bench/label_noise.py [--data ../shared/data] [--seed 0] [--folds 5]
[--datasets sms_spam,trec] [--no-embeddings] [--no-pred-probs]``.
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
    EMBEDDING_METHOD,
    LabelNoise,
    cleanlab_available,
    cleanlab_label_issues,
    embedding_folds,
    feature_oof_probabilities,
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


def f1_score(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def encoder_task() -> object:
    """A text-classification task bound to the default model (the packaged MiniLM), as a run
    with ``model: hf-sequence-classification`` binds it: its frozen_features are the
    validator's embeddings."""
    from tuneforge.plugins.text.hf import HFSequenceClassification, HFTokenizer
    from tuneforge.plugins.text.task import TextClassificationTask

    task = TextClassificationTask()
    task.name = "text-classification"
    task.bind(HFTokenizer(), HFSequenceClassification(), [])
    return task


def embedding_benchmarks(data: Path, seed: int, folds: int, names: list[str]) -> None:
    """TF-IDF against frozen MiniLM embeddings, through the validator, at 5% and 10% flips."""
    backend = "cleanlab" if "cleanlab" in BACKENDS else "tuneforge"
    header = (
        f"{'dataset':<9} {'noise':>5} {'flipped':>7} {'probabilities (rule)':<44} {'flagged':>7} "
        f"{'precision':>9} {'recall':>6} {'F1':>6} {'F1 gain':>7} {'seconds':>7}"
    )
    print(f"frozen features: validator backend {backend}")
    print(header)
    print("-" * len(header))
    loaders = {"sms_spam": load_sms, "trec": load_trec}
    for name in names:
        texts, raw = loaders[name](data)
        classes = sorted(set(raw))
        clean = np.array([classes.index(x) for x in raw])
        task = encoder_task()
        t0 = time.perf_counter()
        task.frozen_features(task_data(texts, clean, classes, name), np.arange(len(texts)))
        embed_s = time.perf_counter() - t0
        print(f"{name}: {len(texts)} texts embedded by minilm-l6 in {embed_s:.1f} s (cached)")
        for rate in (0.05, 0.10):
            noisy, flipped = flip_labels(clean, len(classes), rate, seed)
            td = task_data(texts, noisy, classes, name)
            rows: list[tuple[str, np.ndarray, float]] = []
            for label, cfg in (
                ("TF-IDF, 5-fold (prune_by_noise_rate)", {"features": "tfidf", "folds": folds}),
                ("MiniLM + TF-IDF: features auto (both)", {}),
            ):
                validator = LabelNoise(LabelNoise.Config(backend=backend, seed=seed, **cfg))
                t0 = time.perf_counter()
                found = validator.check(td, task)
                rows.append((label, np.asarray(found[0].rows, dtype=int), time.perf_counter() - t0))
            k = embedding_folds(noisy, folds)
            t0 = time.perf_counter()
            tfidf = oof_probabilities(td, folds=folds, seed=seed)
            both = find_label_issues(noisy, tfidf, "both")
            rows.append(("TF-IDF, 5-fold (both)", both, time.perf_counter() - t0))
            t0 = time.perf_counter()
            feats = task.frozen_features(td, np.arange(len(texts)))
            probs, _ = feature_oof_probabilities(td, feats, k, seed)
            rows.append(
                (
                    f"MiniLM alone, {k}-fold ({EMBEDDING_METHOD})",
                    find_label_issues(noisy, probs, EMBEDDING_METHOD),
                    time.perf_counter() - t0,
                )
            )
            base_f1 = None
            for label, flagged, secs in rows:
                p, r = precision_recall(flagged, flipped)
                f1 = f1_score(p, r)
                base_f1 = f1 if base_f1 is None else base_f1
                print(
                    f"{name:<9} {rate:>5.0%} {len(flipped):>7} {label:<44} {len(flagged):>7} "
                    f"{p:9.3f} {r:6.3f} {f1:6.3f} {f1 - base_f1:+7.3f} {secs:>7.1f}"
                )
        print()


def text_benchmarks(data: Path, seed: int, folds: int, names: list[str]) -> None:
    header = (
        f"{'dataset':<9} {'noise':>5} {'flipped':>7} {'method':<22} {'flagged':>7} "
        f"{'precision':>9} {'recall':>6} {'oof s':>6} {'detect s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, loader in (("sms_spam", load_sms), ("trec", load_trec)):
        if name not in names:
            continue
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
    parser.add_argument("--datasets", default="sms_spam,trec", help="comma-separated")
    parser.add_argument("--no-embeddings", action="store_true", help="skip the MiniLM part")
    parser.add_argument("--no-tfidf", action="store_true", help="skip the TF-IDF backends part")
    parser.add_argument("--no-pred-probs", action="store_true", help="skip MNIST/CIFAR-10")
    args = parser.parse_args()
    names = [n for n in args.datasets.split(",") if n]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import sklearn

    cl = version("cleanlab") if "cleanlab" in BACKENDS else "not installed"
    print(
        f"label-noise benchmark: python {platform.python_version()}, cleanlab "
        f"{cl}, scikit-learn {sklearn.__version__}, {platform.machine()}, {os.cpu_count()} CPUs "
        f"(load {os.getloadavg()[0]:.1f}), seed {args.seed}, {args.folds}-fold TF-IDF + logistic regression, prune_by_noise_rate\n"
    )
    if not args.no_tfidf:
        text_benchmarks(args.data, args.seed, args.folds, names)
    if not args.no_embeddings:
        embedding_benchmarks(args.data, args.seed, args.folds, names)
    if len(BACKENDS) == 2 and not args.no_pred_probs:
        pred_probs_benchmarks(args.data)


if __name__ == "__main__":
    main()
