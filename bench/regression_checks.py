"""Regression on real data, beside the published figures and our scikit-learn baselines.

Runs ``tuneforge run`` (the CLI, as a user would) on ``../shared/data``:

- wine quality (red): test MAE of the mlp vs the published SVM (MAD 0.46, Cortez et al.
  2009) and our Ridge / gradient-boosting baselines on the same split;
- California housing: test RMSE vs the published cross-validated linear (69,052) and random
  forest (50,182) figures (Geron, *Hands-on ML*), with the validators' findings (missing
  ``total_bedrooms``, the 500,001 cap);
- STS-B: the bundled MiniLM-L6 fine-tuned on a SHORTENED run (``--stsb-train`` pairs,
  ``--stsb-epochs``) on CPU, Pearson/Spearman x 100 on dev vs DistilBERT 86.9.

    python bench/regression_checks.py                 # all three (STS-B: 1,500 pairs, 2 epochs)
    python bench/regression_checks.py --only wine california
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TUNEFORGE = Path(sys.executable).parent / "tuneforge"


def run(root: Path, name: str, cfg: dict[str, Any]) -> tuple[dict[str, Any], float, str]:
    path = root / f"{name}.yaml"
    cfg["output"] = {"dir": str(root / name)}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(TUNEFORGE), "run", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    metrics = json.loads((root / name / "metrics.json").read_text())
    return metrics, seconds, proc.stdout


def findings(root: Path, name: str) -> list[str]:
    raw = json.loads((root / name / "findings.json").read_text())
    return [
        f"{f['validator']}: {f['message'][:110]} -> {f['action']}"
        for f in raw["findings"]
        if f["severity"] != "info"
    ]


def wine(root: Path, epochs: int) -> None:
    cfg = {
        "task": "tabular-regression",
        "data": {
            "path": str(DATA / "wine_quality" / "winequality-red.csv"),
            "target": "quality",
            "read_options": {"sep": ";"},
        },
        "model": {"name": "mlp", "hidden": 128, "layers": 2, "dropout": 0.2, "loss": "l1"},
        "trainer": {
            "epochs": epochs,
            "batch_size": 64,
            "lr": 0.002,
            "weight_decay": 0.01,
            "monitor": "mae",
            "early_stopping_patience": 15,
        },
    }
    m, s, _ = run(root, "wine", cfg)
    t = m["test"]
    print(f"\nwine quality (red, 1,599 rows; 70/15/15 split) [{s:.0f} s]")
    print(f"  mlp (L1 loss)        MAE {t['mae']:.3f}  RMSE {t['rmse']:.3f}  R2 {t['r2']:.3f}")
    print(
        f"  Ridge baseline       MAE {t['baseline_ridge_mae']:.3f}  RMSE "
        f"{t['baseline_ridge_rmse']:.3f}  R2 {t['baseline_ridge_r2']:.3f}"
    )
    print(
        f"  gradient boosting    MAE {t['baseline_gradient_boosting_mae']:.3f}  RMSE "
        f"{t['baseline_gradient_boosting_rmse']:.3f}  R2 {t['baseline_gradient_boosting_r2']:.3f}"
    )
    print("  published SVM        MAD 0.46 (Cortez et al. 2009)")
    print(f"  ratio mlp MAE / Ridge MAE: {t['mae'] / t['baseline_ridge_mae']:.3f}")
    for line in findings(root, "wine"):
        print(f"  finding: {line}")


def california(root: Path, epochs: int) -> None:
    cfg = {
        "task": "tabular-regression",
        "data": {
            "path": str(DATA / "california_housing" / "housing.csv"),
            "target": "median_house_value",
        },
        "model": {"name": "mlp", "hidden": 256, "layers": 3, "dropout": 0.1},
        "trainer": {
            "epochs": epochs,
            "batch_size": 256,
            "lr": 0.002,
            "weight_decay": 0.01,
            "monitor": "rmse",
            "early_stopping_patience": 10,
        },
    }
    m, s, _ = run(root, "california", cfg)
    t = m["test"]
    print(f"\nCalifornia housing (20,640 rows; 70/15/15 split) [{s:.0f} s]")
    print(f"  mlp                  RMSE {t['rmse']:,.0f}  MAE {t['mae']:,.0f}  R2 {t['r2']:.3f}")
    print(f"  Ridge baseline       RMSE {t['baseline_ridge_rmse']:,.0f}")
    print(f"  gradient boosting    RMSE {t['baseline_gradient_boosting_rmse']:,.0f}")
    print("  published (CV)       linear 69,052  random forest 50,182")
    print(f"  ratio mlp / Ridge RMSE: {t['rmse'] / t['baseline_ridge_rmse']:.3f}")
    for line in findings(root, "california"):
        print(f"  finding: {line}")


def stsb(root: Path, n_train: int, epochs: int, lr: float, batch_size: int) -> None:
    import pandas as pd

    src = DATA / "stsb"
    train = pd.read_csv(src / "train.tsv", sep="\t", quoting=3)
    dev = pd.read_csv(src / "dev.tsv", sep="\t", quoting=3)
    train = train.sample(n=min(n_train, len(train)), random_state=0)
    # train pairs + the whole dev set in one file; the split is given by a fixed scheme:
    # the pipeline splits 70/15/15, so instead train on `train` and score dev separately.
    cols = ["sentence1", "sentence2", "score"]
    train[cols].to_csv(root / "stsb_train.csv", index=False)
    dev[cols].to_csv(root / "stsb_dev.csv", index=False)
    cfg = {
        "task": "text-regression",
        "data": {
            "path": str(root / "stsb_train.csv"),
            "columns": {"text": "sentence1", "text_pair": "sentence2"},
            "target": "score",
        },
        "tokenizer": {"name": "hf-tokenizer", "max_length": 128},
        "model": {"name": "hf-sequence-classification", "checkpoint": "minilm-l6"},
        "split": {"train": 0.9, "val": 0.05, "test": 0.05},
        "trainer": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "warmup_ratio": 0.1,
            "early_stopping_patience": None,
        },
    }
    m, s, _ = run(root, "stsb", cfg)
    out = root / "stsb_dev_pred.csv"
    proc = subprocess.run(
        [
            str(TUNEFORGE),
            "predict",
            str(root / "stsb"),
            "-i",
            str(root / "stsb_dev.csv"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    import scipy.stats

    pred = pd.read_csv(out)
    pearson = scipy.stats.pearsonr(pred["score"], pred["prediction"])[0] * 100
    spearman = scipy.stats.spearmanr(pred["score"], pred["prediction"])[0] * 100
    print(
        f"\nSTS-B, MiniLM-L6 (bundled), SHORTENED CPU run: {len(train)} train pairs, "
        f"{epochs} epoch(s), lr {lr:g}, batch {batch_size} [{s:.0f} s training]"
    )
    print(f"  dev (1,500 pairs)    Pearson {pearson:.1f}  Spearman {spearman:.1f}")
    print(
        f"  TF-IDF+Ridge (test of the {len(train)}-pair split): Pearson "
        f"{m['test'].get('baseline_tfidf_ridge_pearson', float('nan')) * 100:.1f}"
    )
    print("  published dev Pearson: DistilBERT 86.9, BERT-base 89.0 (full train, 3+ epochs)")
    print(f"  ratio ours / DistilBERT: {pearson / 86.9:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=["wine", "california", "stsb"])
    ap.add_argument("--epochs", type=int, default=60, help="tabular epochs (early stopping on)")
    ap.add_argument("--stsb-train", type=int, default=1500)
    ap.add_argument("--stsb-epochs", type=int, default=2)
    ap.add_argument("--stsb-lr", type=float, default=1e-4)
    ap.add_argument("--stsb-batch-size", type=int, default=16)
    ap.add_argument("--keep", type=Path, help="keep the run folders here")
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is absent")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if "wine" in args.only:
            wine(root, args.epochs)
        if "california" in args.only:
            california(root, args.epochs)
        if "stsb" in args.only:
            stsb(root, args.stsb_train, args.stsb_epochs, args.stsb_lr, args.stsb_batch_size)


if __name__ == "__main__":
    main()
