"""Benchmark: trials and compute each tuner needs to reach random search's best (issue 7).

On a real dataset (../shared/data/wine_quality, red: 1,599 wines, quality 3-8 predicted by
regression from 11 measurements), the same search space and trial budget are given to

- ``random``: tuneforge's random search (the reference),
- ``optuna`` TPE without pruning,
- ``optuna`` TPE with the median pruner (intermediate validation MAE after every epoch),
- ``optuna`` TPE with the hyperband pruner,

each with several seeds. For every study it reads ``trials.csv`` and prints: the best
validation MAE, the first trial whose best-so-far reaches the best MAE that *random search of
the same seed* found in its whole budget, and the compute spent until then (trials, epochs
trained, seconds), plus the totals. Every trial trains the `mlp` for up to ``--epochs`` epochs
with early stopping off, so epochs are the unit of compute and pruning is the only saving.

    python bench/tuners.py [--trials 30] [--epochs 20] [--seeds 0 1 2]
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wine_quality" / "winequality-red.csv"

SPACE = {
    "trainer.lr": {"loguniform": [1e-4, 3e-2]},
    "trainer.weight_decay": {"loguniform": [1e-5, 1e-1]},
    "trainer.batch_size": {"choice": [16, 32, 64, 128]},
    "model.hidden": {"choice": [16, 32, 64, 128, 256]},
    "model.layers": {"int": [1, 4]},
    "model.dropout": {"uniform": [0.0, 0.5]},
}


def strategies(trials: int, seed: int) -> dict[str, dict]:
    optuna = {"name": "optuna", "trials": trials, "seed": seed, "sampler": "tpe"}
    return {
        "random": {"name": "random", "trials": trials, "seed": seed},
        "tpe": {**optuna, "pruner": "none"},
        "tpe+median": {**optuna, "pruner": "median", "startup_trials": 5, "warmup_epochs": 3},
        "tpe+hyperband": {**optuna, "pruner": "hyperband"},
    }


def study(root: Path, name: str, tuner: dict, epochs: int) -> tuple[pd.DataFrame, float]:
    cfg = {
        "task": "tabular-regression",
        "data": {"path": str(DATA), "target": "quality", "read_options": {"sep": ";"}},
        "split": {"seed": 0},
        "model": {"name": "mlp", "loss": "l1"},
        "metrics": ["mae", "rmse"],
        "trainer": {
            "epochs": epochs,
            "monitor": "mae",
            "early_stopping_patience": None,
            "log_every_n_steps": 1000,
        },
        "tuner": {**tuner, "space": SPACE},
        "output": {"dir": str(root / name), "overwrite": True},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    started = time.time()
    subprocess.run(
        [str(Path(sys.executable).parent / "tuneforge"), "run", str(path), "-q"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.time() - started
    return pd.read_csv(root / name / "trials.csv"), seconds


def to_reach(trials: pd.DataFrame, target: float) -> dict:
    """Compute spent until the best-so-far validation MAE first reaches ``target``."""
    done = trials[trials["state"].isin(["complete", "pruned"])]
    value = trials["val.mae"].where(trials["state"] == "complete")
    best_so_far = value.cummin()
    hit = best_so_far[best_so_far <= target + 1e-12]
    total = {"epochs": int(done["epochs"].sum()), "seconds": float(trials["seconds"].sum())}
    if hit.empty:
        return {
            "reached": False,
            "trials": None,
            "epochs": None,
            "seconds": None,
            **{f"total_{k}": v for k, v in total.items()},
        }
    upto = trials.loc[: hit.index[0]]
    return {
        "reached": True,
        "trials": int(hit.index[0]) + 1,
        "epochs": int(upto["epochs"].sum()),
        "seconds": float(upto["seconds"].sum()),
        **{f"total_{k}": v for k, v in total.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("/tmp/tuneforge-tuner-bench"))
    args = ap.parse_args()
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is absent")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        results = {}
        for name, tuner in strategies(args.trials, seed).items():
            trials, wall = study(args.out, f"{name}-s{seed}", tuner, args.epochs)
            results[name] = (trials, wall)
            print(f"seed {seed} {name}: {len(trials)} trials in {wall:.0f} s", flush=True)
        target = float(results["random"][0]["val.mae"].min())
        for name, (trials, wall) in results.items():
            states = trials["state"].value_counts().to_dict()
            rows.append(
                {
                    "seed": seed,
                    "tuner": name,
                    "best_val_mae": round(float(trials["val.mae"].min()), 4),
                    "random_best": round(target, 4),
                    **to_reach(trials, target),
                    "pruned": int(states.get("pruned", 0)),
                    "wall_s": round(wall, 1),
                }
            )
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False))
    summary = table.groupby("tuner", sort=False).agg(
        best_val_mae=("best_val_mae", "mean"),
        reached=("reached", "sum"),
        trials_to_reach=("trials", "median"),
        epochs_to_reach=("epochs", "median"),
        total_epochs=("total_epochs", "mean"),
        pruned=("pruned", "mean"),
        wall_s=("wall_s", "mean"),
    )
    ref = summary.loc["random", "total_epochs"]
    summary["epochs_vs_random"] = (summary["total_epochs"] / ref).round(3)
    print(
        f"\nmeans over seeds {args.seeds} ({args.trials} trials x {args.epochs} epochs each; "
        "reached = seeds whose study matched random's best; *_to_reach = medians over those)"
    )
    print(summary.round(4).to_string())
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
