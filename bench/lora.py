"""LoRA (``model.peft``) against full fine-tuning at equal steps (issue 17): the packaged
MiniLM-L6 on an SST-2 train slice (scored on the official dev set) and a TREC train slice
(scored on the official 500 test questions), on CPU.

For every dataset, seed and method one ``tuneforge run`` in its own process (measured from a
small launcher, so its peak RSS is its own): test accuracy, wall time, peak RSS, trainable
parameters (``run.json``) and the checkpoint's size on disk. Both methods see the same rows,
epochs, batch size, schedule and warm-up; only the learning rate differs (``--lr-full``,
``--lr-lora``: LoRA's low-rank update wants a ~10x larger rate). LoRA: r 8, alpha 16, dropout
0.1, target_modules auto (query, key, value), the head trained fully, the adapter merged at save
(``--save-adapter`` measures the adapter-only checkpoint instead). The table gives the means
over seeds and the ratios LoRA / full.

    python bench/lora.py                # SST-2 + TREC, 3 seeds: <= 15 min on 2 idle CPU cores
    python bench/lora.py --quick        # smoke: SST-2, 1 seed, a small slice (~2 minutes)
    python bench/lora.py --out lora.md --out lora.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_data import DATA, ENV, TUNEFORGE, Text, text_frames  # noqa: E402

#: A fresh small parent forks the run and reads its own peak RSS (``wait4``): a child forked
#: by this process would count this process's memory before its ``exec``.
LAUNCHER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[1] + '.log', 'w'))\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(f'{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}')\n"
)

LORA = {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "auto"}


@dataclass(frozen=True)
class Budget:
    datasets: tuple[str, ...]
    text: Text  # train slice, test rows, epochs, batch size, max length, seeds


BUDGETS = {
    "quick": Budget(("sst2",), Text(train=320, test=200, epochs=2, lr=0, seeds=(0,))),
    "default": Budget(("sst2", "trec"), Text(train=600, test=None, epochs=3, lr=0)),
}


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def one_run(work: Path, name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """``tuneforge run`` of ``cfg`` in its own process: its figures."""
    run = work / name
    cfg = {**cfg, "output": {"dir": str(run), "overwrite": True}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    report = work / f"{name}.peak"
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(report), str(TUNEFORGE), "run", str(path), "-q"],
        env=ENV,
        check=False,
    )
    seconds = time.perf_counter() - t0
    code, peak_kib = report.read_text().split()
    if int(code) != 0:
        log = Path(str(report) + ".log").read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"{name}: tuneforge run failed (exit {code}): {log[0][:300]}")
    metrics = json.loads((run / "metrics.json").read_text())
    info = json.loads((run / "run.json").read_text())
    return {
        "accuracy": metrics["test"]["accuracy"],
        "seconds": seconds,
        "peak_rss_mb": int(peak_kib) / 1024,
        "trainable": info["trainable_parameters"],
        "parameters": info["parameters"],
        "checkpoint_mb": folder_mb(run / "checkpoint"),
    }


def config(b: Text, frames: dict[str, Path], lr: float, peft: dict[str, Any] | None) -> dict:
    model: dict[str, Any] = {"name": "hf-sequence-classification", "checkpoint": "minilm-l6"}
    if peft is not None:
        model["peft"] = peft
    return {
        # Neither the embedding baseline nor the label-noise validator's frozen embeddings:
        # the same for both methods, they would only blur the training figures.
        "task": {"name": "text-classification", "embedding_baseline": False},
        "validators": [],
        "data": {
            "path": str(frames["train"]),
            "val_path": str(frames["val"]),
            "test_path": str(frames["test"]),
            "columns": {"text": "text"},
            "label": "label",
        },
        "tokenizer": {"name": "hf-tokenizer", "max_length": b.max_length},
        "model": model,
        "trainer": {
            "epochs": b.epochs,
            "batch_size": b.batch_size,
            "lr": lr,
            "schedule": "linear",
            "warmup_ratio": b.warmup_ratio,
            "monitor": "loss",
            "device": "cpu",
            "log_every_n_steps": 50,
        },
    }


def mean(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def table(results: dict[str, dict[str, list[dict[str, Any]]]], args: argparse.Namespace) -> str:
    lines = [
        f"LoRA (r 8, alpha 16, lr {args.lr_lora:g}) vs full fine-tuning (lr {args.lr_full:g}), "
        "MiniLM-L6, CPU, equal steps; means over seeds",
        "",
        "| dataset | method | accuracy | +- sd | wall s | peak RSS MB | trainable | share "
        "| checkpoint MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for ds, by in results.items():
        for method, rows in by.items():
            accs = [r["accuracy"] for r in rows]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            share = 100 * rows[0]["trainable"] / rows[0]["parameters"]
            lines.append(
                f"| {ds} | {method} | {100 * mean(rows, 'accuracy'):.2f} | {100 * sd:.2f} "
                f"| {mean(rows, 'seconds'):.1f} | {mean(rows, 'peak_rss_mb'):.0f} "
                f"| {rows[0]['trainable']:,} | {share:.2f}% | {mean(rows, 'checkpoint_mb'):.1f} |"
            )
        full, lora = by["full"], by["lora"]
        ratios.append(
            f"| {ds} | {100 * (mean(lora, 'accuracy') - mean(full, 'accuracy')):+.2f} "
            f"| {mean(lora, 'seconds') / mean(full, 'seconds'):.2f} "
            f"| {mean(lora, 'peak_rss_mb') / mean(full, 'peak_rss_mb'):.2f} "
            f"| {lora[0]['trainable'] / full[0]['trainable']:.4f} "
            f"| {mean(lora, 'checkpoint_mb') / mean(full, 'checkpoint_mb'):.2f} |"
        )
    lines += [
        "",
        "| dataset | accuracy LoRA - full (points) | wall time ratio | peak RSS ratio "
        "| trainable ratio | checkpoint size ratio |",
        "|---|---|---|---|---|---|",
        *ratios,
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="SST-2, 1 seed, a small slice")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--train", type=int, help="train slice rows (default by budget)")
    p.add_argument("--epochs", type=int, help="epochs (default by budget)")
    p.add_argument("--lr-full", type=float, default=1e-4, help="full fine-tuning lr")
    p.add_argument("--lr-lora", type=float, default=1e-3, help="LoRA lr")
    p.add_argument("--save-adapter", action="store_true", help="adapter-only LoRA checkpoints")
    p.add_argument("--out", action="append", default=[], help="FILE.md or FILE.json")
    p.add_argument("--keep", type=Path, help="keep the run folders here")
    args = p.parse_args()
    budget = BUDGETS["quick" if args.quick else "default"]
    b = budget.text
    if args.train:
        b = replace(b, train=args.train)
    if args.epochs:
        b = replace(b, epochs=args.epochs)
    if not (args.data / "sst2").is_dir():
        print(f"no data at {args.data} (SST-2 and TREC)", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="tf-lora-"))
    work.mkdir(parents=True, exist_ok=True)
    lora = {**LORA, "save_adapter": args.save_adapter}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    t0 = time.time()
    try:
        for ds in budget.datasets:
            frames, _, _ = text_frames(ds, args.data, b)
            files = {}
            for part, frame in frames.items():
                files[part] = work / f"{ds}-{part}.csv"
                frame.to_csv(files[part], index=False)
            sizes = {k: len(v) for k, v in frames.items()}
            print(f"{ds}: {sizes}, {b.epochs} epochs, batch {b.batch_size}", flush=True)
            results[ds] = {"full": [], "lora": []}
            for seed in b.seeds:
                for method, lr, peft in (
                    ("full", args.lr_full, None),
                    ("lora", args.lr_lora, lora),
                ):
                    cfg = config(b, files, lr, peft)
                    cfg["trainer"]["seed"] = seed
                    row = one_run(work, f"{ds}-{method}-{seed}", cfg)
                    results[ds][method].append(row)
                    print(
                        f"  {method} seed {seed}: acc {row['accuracy']:.4f}  "
                        f"{row['seconds']:.1f}s  peak {row['peak_rss_mb']:.0f} MB  "
                        f"trainable {row['trainable']:,}  ckpt {row['checkpoint_mb']:.1f} MB",
                        flush=True,
                    )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    md = table(results, args)
    md += (
        f"\n\nbudget: train slice {b.train} (15% of it validation), test "
        f"{'all official rows' if b.test is None else f'{b.test} rows'}, {b.epochs} epochs, "
        f"batch {b.batch_size}, max_length {b.max_length}, seeds {list(b.seeds)}; "
        f"{os.cpu_count()} CPUs; total {time.time() - t0:.0f} s"
    )
    print("\n" + md)
    for out in args.out:
        path = Path(out)
        if path.suffix == ".json":
            path.write_text(json.dumps({"results": results, "table": md}, indent=2))
        else:
            path.write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
