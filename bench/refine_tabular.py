"""Check: the refinement loop on a network trained from scratch that overfits (issue 7).

A wide, deep `mlp` without dropout or weight decay, trained for many epochs at a constant
learning rate on a small slice of ../shared/data/california_housing (median house value from 9
columns). Round 1 overfits; `tuneforge refine --apply` diagnoses it and trains round 2 with the
advisors' patch. Each seed draws its own slice, split and initialisation; both rounds are scored
on their own validation and test splits and on 5,000 held-out districts neither saw.

    python bench/refine_tabular.py [--rows 1000] [--epochs 80] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "california_housing" / "housing.csv"
)
TARGET = "median_house_value"


def holdout_rmse(tuneforge: Path, run: Path, holdout: Path, out: Path) -> float:
    subprocess.run(
        [str(tuneforge), "predict", str(run), "--input", str(holdout), "--output", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    pred = pd.read_csv(out)
    truth = pd.read_csv(holdout)[TARGET].to_numpy()
    column = next(c for c in pred.columns if c.startswith("prediction"))
    return float(np.sqrt(np.mean((pred[column].to_numpy() - truth) ** 2)))


def one_seed(args: argparse.Namespace, tuneforge: Path, out: Path, seed: int) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(DATA).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    frame.iloc[: args.rows].to_csv(out / "small.csv", index=False)
    frame.iloc[args.rows : args.rows + 5000].to_csv(out / "holdout.csv", index=False)
    cfg = {
        "task": "tabular-regression",
        "data": {"path": str(out / "small.csv"), "target": TARGET},
        "split": {"seed": seed},
        "validators": ["missing-features", "constant-columns", "target-values"],
        "model": {"name": "mlp", "hidden": 512, "layers": 4, "dropout": 0.0, "norm": "none"},
        "metrics": ["rmse", "mae", "r2"],
        "trainer": {
            "epochs": args.epochs,
            "batch_size": 32,
            "lr": 2e-3,
            "weight_decay": 0.0,
            "schedule": "constant",
            "monitor": "rmse",
            "early_stopping_patience": None,
            "log_every_n_steps": 50,
            "seed": seed,
        },
        "output": {"dir": str(out / "runs" / "housing"), "overwrite": True},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run([str(tuneforge), "run", str(out / "config.yaml"), "-q"], check=True)
    r1 = out / "runs" / "housing"
    for old in (out / "runs").glob("housing-r*"):
        subprocess.run(["rm", "-rf", str(old)], check=True)
    refine = subprocess.run(
        [str(tuneforge), "refine", str(r1), "--apply", "--rounds", "1", "-q"],
        check=True,
        capture_output=True,
        text=True,
    )
    print(refine.stdout, flush=True)
    rows = []
    for name, run in (("round 1", r1), ("round 2", out / "runs" / "housing-r2")):
        metrics = json.loads((run / "metrics.json").read_text())
        rows.append(
            {
                "seed": seed,
                "round": name,
                "best_epoch": metrics["best_epoch"],
                "epochs_run": metrics["epochs_run"],
                "val.rmse": round(metrics["val"]["rmse"]),
                "test.rmse": round(metrics["test"]["rmse"]),
                "holdout_5000.rmse": round(
                    holdout_rmse(tuneforge, run, out / "holdout.csv", out / f"{run.name}.csv")
                ),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tuneforge-refine-tabular"))
    args = parser.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is absent")
    tuneforge = Path(sys.executable).parent / "tuneforge"
    t0 = time.time()
    rows = []
    for seed in args.seeds:
        rows += one_seed(args, tuneforge, args.out.resolve() / f"seed{seed}", seed)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False))
    print(f"\nmeans over seeds {args.seeds}:")
    print(table.drop(columns="seed").groupby("round").mean().round(1).to_string())
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
