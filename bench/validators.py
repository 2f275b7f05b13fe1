"""Benchmark: the validator pass (and the split) on SST-2 train, 67,349 rows.

Prints seconds per validator and for the whole pass. Run from the repository root:

    python bench/validators.py [--data ../shared/data/sst2/train.tsv]

Figures go in docs/performance.md with the machine they came from.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from tuneforge.config import build_config
from tuneforge.pipeline import leakage_check, make_plugin_manager, prepare, split_data

VALIDATORS = ["schema", "missing", "empty-text", "duplicates", "conflicting-labels", "class-size"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.tsv"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--label-noise", action="store_true", help="also time label-noise (5-fold)")
    args = parser.parse_args()
    validators = VALIDATORS + (["label-noise"] if args.label_noise else [])
    raw = {
        "task": "text-classification",
        "data": {
            "path": str(args.data.resolve()),
            "columns": {"text": "sentence"},
            "label": "label",
        },
        "validators": validators,
        "model": {"name": "hf-sequence-classification", "checkpoint": "minilm-l6"},
    }
    cfg = build_config(raw)
    pm = make_plugin_manager(cfg, Path.cwd())
    t0 = time.perf_counter()
    prep = prepare(cfg, Path.cwd(), pm)
    load_s = time.perf_counter() - t0
    data = prep.data
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"data: {args.data} ({len(data):,} rows), load {load_s:.2f} s")
    total = 0.0
    for ref, validator in prep.validators:
        t = time.perf_counter()
        findings = validator.check(data, prep.task)
        dt = time.perf_counter() - t
        total += dt
        flagged = sum(len(f.rows) for f in findings)
        print(
            f"  {ref.name:<20} {dt:7.3f} s  {len(findings):3d} findings  {flagged:7,d} rows flagged"
        )
    t = time.perf_counter()
    split = split_data(prep, data)
    leak = leakage_check(prep, data, split)
    split_s = time.perf_counter() - t
    print(
        f"  {'split + leakage':<20} {split_s:7.3f} s  sizes {split.sizes()}  leakage: {leak.message}"
    )
    print(f"validators total {total:.2f} s; with load and split {total + load_s + split_s:.2f} s")


if __name__ == "__main__":
    main()
