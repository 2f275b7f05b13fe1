"""Check: the refinement loop on real overfitting cases (issue 7).

``--case trec`` (default): a big model on a small slice. The pretrained MiniLM-L6 (22M
parameters) fine-tuned for many epochs at a constant learning rate, without early stopping, on a
stratified slice of ../shared/data/trec (question type, 6 classes); scored also on the official
TREC test set (500 questions).

``--case housing``: a network trained from scratch. A wide, deep `mlp` without dropout, weight
decay or normalisation, many epochs at a constant learning rate on a small slice of
../shared/data/california_housing; scored also on 5,000 other districts.

Round 1 overfits; `tuneforge refine --apply --rounds 1` diagnoses it and trains round 2 with the
advisors' patch. Both rounds are scored on their own validation/test split and on the held-out
set, which neither saw. Each seed draws its own slice, split and initialisation; the means are
over the seeds.

    python bench/refine_overfit.py [--case trec] [--rows 1000] [--epochs 15] [--seeds 0 1 2]
    python bench/refine_overfit.py --case housing            # 1,000 rows, 80 epochs
    python bench/refine_overfit.py --rows 500 --remedies     # each remedy alone, no refine
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.model_selection import train_test_split

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TUNEFORGE = Path(sys.executable).parent / "tuneforge"


def predict(run: Path, inputs: Path, out: Path) -> pd.DataFrame:
    subprocess.run(
        [str(TUNEFORGE), "predict", str(run), "--input", str(inputs), "--output", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return pd.read_csv(out)


def trec(args: argparse.Namespace, out: Path, seed: int) -> tuple[dict, Callable, str]:
    """Round 1's config, the held-out scorer and its column name."""
    train = pd.read_csv(DATA / "trec" / "train.csv")
    small, _ = train_test_split(
        train, train_size=args.rows, stratify=train["coarse_label"], random_state=seed
    )
    small = small.rename(columns={"coarse_label": "label"})[["text", "label"]]
    small.to_csv(out / "small.csv", index=False)
    test = pd.read_csv(DATA / "trec" / "test.csv").rename(columns={"coarse_label": "label"})
    test[["text", "label"]].to_csv(out / "holdout.csv", index=False)
    cfg = {
        "task": "text-classification",
        "data": {"path": str(out / "small.csv")},
        "tokenizer": {"name": "hf-tokenizer", "max_length": 48},
        "model": {"name": "hf-sequence-classification", "checkpoint": "minilm-l6"},
        "metrics": ["accuracy", "balanced_accuracy", "f1_macro"],
        "trainer": {
            "batch_size": 16,
            "lr": args.lr or 2e-4,
            "monitor": "accuracy",
            "log_every_n_steps": 5,
        },
    }

    def accuracy(run: Path) -> float:
        pred = predict(run, out / "holdout.csv", out / f"{run.name}.csv")
        return round(float((pred["prediction"] == pred["label"]).mean()), 4)

    return cfg, accuracy, "trec_test_500.accuracy"


def housing(args: argparse.Namespace, out: Path, seed: int) -> tuple[dict, Callable, str]:
    target = "median_house_value"
    frame = pd.read_csv(DATA / "california_housing" / "housing.csv")
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    frame.iloc[: args.rows].to_csv(out / "small.csv", index=False)
    frame.iloc[args.rows : args.rows + 5000].to_csv(out / "holdout.csv", index=False)
    cfg = {
        "task": "tabular-regression",
        "data": {"path": str(out / "small.csv"), "target": target},
        "validators": ["missing-features", "constant-columns", "target-values"],
        "model": {"name": "mlp", "hidden": 512, "layers": 4, "dropout": 0.0, "norm": "none"},
        "metrics": ["rmse", "mae", "r2"],
        "trainer": {
            "batch_size": 32,
            "lr": args.lr or 2e-3,
            "monitor": "rmse",
            "log_every_n_steps": 50,
        },
    }

    def rmse(run: Path) -> float:
        pred = predict(run, out / "holdout.csv", out / f"{run.name}.csv")
        column = next(c for c in pred.columns if c.startswith("prediction"))
        truth = pd.read_csv(out / "holdout.csv")[target].to_numpy()
        return round(float(np.sqrt(np.mean((pred[column].to_numpy() - truth) ** 2))))

    return cfg, rmse, "holdout_5000.rmse"


CASES = {"trec": (trec, 1000, 15), "housing": (housing, 1000, 80)}


# ``--remedies``: each remedy alone on round 1's config (dotted keys, as in a refine patch).
REMEDIES: dict[str, Callable[[dict], dict]] = {
    "dropout+weight-decay": lambda cfg: {"model.dropout": 0.2, "trainer.weight_decay": 0.05},
    "linear-schedule": lambda cfg: {"trainer.schedule": "linear"},
    "lr-quarter+linear-schedule": lambda cfg: {
        "trainer.lr": cfg["trainer"]["lr"] / 4,
        "trainer.schedule": "linear",
    },
    "overfitting-patch": lambda cfg: {  # what the advisor proposes for pretrained text
        "model.dropout": 0.2,
        "trainer.weight_decay": 0.05,
        "trainer.lr": cfg["trainer"]["lr"] / 4,
        "trainer.schedule": "linear",
        "trainer.early_stopping_patience": max(3, cfg["trainer"]["epochs"] // 3),
    },
    # issue 17: the layer remedies, for the pretrained transformer (text) case; {} skips
    "layer-decay": lambda cfg: (
        {"trainer.layer_decay": 0.8} if cfg["task"].startswith("text") else {}
    ),
    "reinit-top-layer": lambda cfg: (
        {"model.reinit_layers": 1} if cfg["task"].startswith("text") else {}
    ),
    "lora": lambda cfg: (
        {"model.peft": {"method": "lora", "r": 8}} if cfg["task"].startswith("text") else {}
    ),
    "augmentation": lambda cfg: {
        "augmenters": [
            {"name": "token-noise", "p": 0.3}
            if cfg["task"].startswith("text")
            else {"name": "gaussian-noise"}
        ]
    },
}


def round_one(args: argparse.Namespace, out: Path, seed: int) -> tuple[dict, Callable, str]:
    """The overfitting round 1 config of ``args.case`` (and its held-out scorer)."""
    out.mkdir(parents=True, exist_ok=True)
    cfg, held_out, column = CASES[args.case][0](args, out, seed)
    cfg["split"] = {"seed": seed}
    cfg["trainer"].update(
        epochs=args.epochs,
        weight_decay=0.0,
        schedule="constant",
        early_stopping_patience=None,
        seed=seed,
    )
    return cfg, held_out, column


def train(cfg: dict, out: Path, name: str) -> Path:
    """``tuneforge run`` ``cfg`` into ``out/runs/name``."""
    cfg = {**cfg, "output": {"dir": str(out / "runs" / name), "overwrite": True}}
    (out / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run([str(TUNEFORGE), "run", str(out / f"{name}.yaml"), "-q"], check=True)
    return out / "runs" / name


def score(seed: int, name: str, run: Path, monitor: str, held_out: Callable, column: str) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "seed": seed,
        "round": name,
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        f"val.{monitor}": round(metrics["val"][monitor], 4),
        "val.loss": round(metrics["val"]["loss"], 4),
        f"test.{monitor}": round(metrics["test"][monitor], 4),
        column: held_out(run),
    }


def one_seed(args: argparse.Namespace, out: Path, seed: int) -> list[dict]:
    """Round 1, then `refine --apply`; both rounds' validation, test and held-out scores."""
    cfg, held_out, column = round_one(args, out, seed)
    r1 = train(cfg, out, args.case)
    for old in (out / "runs").glob(f"{args.case}-r*"):
        subprocess.run(["rm", "-rf", str(old)], check=True)
    refine = subprocess.run(
        [str(TUNEFORGE), "refine", str(r1), "--apply", "--rounds", "1", "-q"],
        check=True,
        capture_output=True,
        text=True,
    )
    print(refine.stdout, flush=True)
    monitor = cfg["trainer"]["monitor"]
    r2 = out / "runs" / f"{args.case}-r2"
    return [
        score(seed, name, run, monitor, held_out, column)
        for name, run in (("round 1", r1), ("round 2", r2))
    ]


def remedies(args: argparse.Namespace, out: Path, seed: int) -> list[dict]:
    """Round 1, then each of ``REMEDIES`` alone on its config (no refine)."""
    cfg, held_out, column = round_one(args, out, seed)
    monitor = cfg["trainer"]["monitor"]
    rows = [score(seed, "round 1", train(cfg, out, "round1"), monitor, held_out, column)]
    for name, remedy in REMEDIES.items():
        patched = json.loads(json.dumps(cfg))
        changes = remedy(cfg)
        if not changes:  # not for this case
            continue
        for key, value in changes.items():
            *parents, last = key.split(".")
            node = patched
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        rows.append(score(seed, name, train(patched, out, name), monitor, held_out, column))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="trec")
    parser.add_argument("--rows", type=int, help="slice size (1,000 rows for both cases)")
    parser.add_argument("--epochs", type=int, help="round 1 epochs (trec 15, housing 80)")
    parser.add_argument("--lr", type=float, help="constant lr (trec 2e-4, housing 2e-3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tuneforge-refine-bench"))
    parser.add_argument(
        "--remedies", action="store_true", help="each remedy alone instead of refine's patch"
    )
    args = parser.parse_args()
    _, rows, epochs = CASES[args.case]
    args.rows = args.rows or rows
    args.epochs = args.epochs or epochs
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is absent")
    t0 = time.time()
    table = []
    for seed in args.seeds:
        each = remedies if args.remedies else one_seed
        table += each(args, args.out.resolve() / args.case / f"seed{seed}", seed)
    frame = pd.DataFrame(table)
    pd.set_option("display.width", 200)
    print(frame.to_string(index=False))
    print(f"\nmeans over seeds {args.seeds}:")
    print(frame.drop(columns="seed").groupby("round").mean().round(4).to_string())
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
