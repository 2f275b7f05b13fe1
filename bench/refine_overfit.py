"""Check: the refinement loop on a real overfitting case (issue 7).

A big model on a small slice: the pretrained MiniLM-L6 (22M parameters) fine-tuned for many
epochs at a constant learning rate, without early stopping, on a stratified slice of
../shared/data/trec (question type, 6 classes). Round 1 overfits; `tuneforge refine --apply`
diagnoses it and trains round 2 with the advisors' patch. Both rounds are scored on their own
validation/test split and on the official TREC test set (500 questions), which neither saw.
Each seed draws its own slice, split and initialisation; the means are over the seeds.

    python bench/refine_overfit.py [--rows 500] [--epochs 15] [--lr 2e-4] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from sklearn.model_selection import train_test_split


def official_accuracy(tuneforge: Path, run: Path, test_csv: Path, out: Path) -> float:
    subprocess.run(
        [str(tuneforge), "predict", str(run), "--input", str(test_csv), "--output", str(out)],
        check=True,
    )
    pred = pd.read_csv(out)
    return float((pred["prediction"] == pred["label"]).mean())


def one_seed(args: argparse.Namespace, tuneforge: Path, out: Path, seed: int) -> list[dict]:
    """Round 1 and `refine --apply` on a slice drawn with ``seed`` (also the split and
    training seed); both rounds scored on their own splits and the official test set."""
    out.mkdir(parents=True, exist_ok=True)
    train = pd.read_csv(args.data / "train.csv")
    small, _ = train_test_split(
        train, train_size=args.rows, stratify=train["coarse_label"], random_state=seed
    )
    small = small.rename(columns={"coarse_label": "label"})[["text", "label"]]
    small.to_csv(out / "trec_small.csv", index=False)
    test = pd.read_csv(args.data / "test.csv").rename(columns={"coarse_label": "label"})
    test[["text", "label"]].to_csv(out / "trec_test.csv", index=False)
    cfg = {
        "task": "text-classification",
        "data": {"path": str(out / "trec_small.csv")},
        "split": {"seed": seed},
        "tokenizer": {"name": "hf-tokenizer", "max_length": 48},
        "model": {"name": "hf-sequence-classification", "checkpoint": "minilm-l6"},
        "metrics": ["accuracy", "balanced_accuracy", "f1_macro"],
        "trainer": {
            "epochs": args.epochs,
            "batch_size": 16,
            "lr": args.lr,
            "weight_decay": 0.0,
            "schedule": "constant",
            "monitor": "accuracy",
            "early_stopping_patience": None,
            "log_every_n_steps": 5,
            "seed": seed,
        },
        "output": {"dir": str(out / "runs" / "trec"), "overwrite": True},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run([str(tuneforge), "run", str(out / "config.yaml"), "-q"], check=True)
    r1 = out / "runs" / "trec"
    for old in (out / "runs").glob("trec-r*"):
        subprocess.run(["rm", "-rf", str(old)], check=True)
    refine = subprocess.run(
        [str(tuneforge), "refine", str(r1), "--apply", "--rounds", "1", "-q"],
        check=True,
        capture_output=True,
        text=True,
    )
    print(refine.stdout, flush=True)
    rows = []
    for name, run in (("round 1", r1), ("round 2", out / "runs" / "trec-r2")):
        metrics = json.loads((run / "metrics.json").read_text())
        rows.append(
            {
                "seed": seed,
                "round": name,
                "best_epoch": metrics["best_epoch"],
                "epochs_run": metrics["epochs_run"],
                "val.accuracy": round(metrics["val"]["accuracy"], 4),
                "val.loss": round(metrics["val"]["loss"], 4),
                "test.accuracy": round(metrics["test"]["accuracy"], 4),
                "trec_test_500.accuracy": round(
                    official_accuracy(
                        tuneforge, run, out / "trec_test.csv", out / f"{run.name}.csv"
                    ),
                    4,
                ),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--data", type=Path, default=root.parent / "shared/data/trec")
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tuneforge-refine-bench"))
    args = parser.parse_args()
    tuneforge = Path(sys.executable).parent / "tuneforge"
    t0 = time.time()
    rows = []
    for seed in args.seeds:
        rows += one_seed(args, tuneforge, args.out.resolve() / f"seed{seed}", seed)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False))
    print(f"\nmeans over seeds {args.seeds}:")
    print(table.drop(columns="seed").groupby("round").mean().round(4).to_string())
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
