"""``tuneforge predict`` with the ONNX engine against the PyTorch engine (issue 18).

Fine-tunes the packaged MiniLM-L6 on a seeded SST-2 train slice (one ``tuneforge run``), exports
it (``tuneforge export RUN --format onnx --quantize int8``, which runs its own parity check),
then times ``tuneforge predict`` on the same 5,000 SST-2 sentences (train rows the run did not
see) with ``--engine torch`` (the baseline, measured in the same call), ``--engine onnx`` and
``--engine onnx-int8``, each in a fresh process, best of ``--repeats``. Prints the wall time of
each engine, the ratio to torch, and the share of predicted labels equal to torch's.

    python bench/onnx_predict.py                  # 2,000 training rows, 5,000 predicted
    python bench/onnx_predict.py --quick          # 400 training rows, 1,000 predicted

The whole command (start-up, reading, tokenising, the model, writing the CSV) is timed, as a
user sees it; the model's share of it is what the engine changes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
TUNEFORGE = Path(sys.executable).parent / "tuneforge"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def tuneforge(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(TUNEFORGE), *args], check=True, env=ENV, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--predict-rows", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=2, help="timed predicts per engine (best)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="keep the run here")
    args = parser.parse_args()
    if args.quick:
        args.train_rows, args.predict_rows, args.repeats = 400, 1000, 1
    frame = pd.read_csv(DATA / "train.tsv", sep="\t").sample(frac=1.0, random_state=7)
    train = frame.iloc[: args.train_rows]
    new = frame.iloc[args.train_rows : args.train_rows + args.predict_rows][["sentence"]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        train.to_csv(folder / "train.csv", index=False)
        new.to_csv(folder / "new.csv", index=False)
        run_dir = folder / "run"
        cfg = {
            "task": "text-classification",
            "data": {
                "path": str(folder / "train.csv"),
                "columns": {"text": "sentence"},
                "label": "label",
            },
            "tokenizer": {"name": "hf-tokenizer", "max_length": 64},
            "model": {"name": "hf-sequence-classification", "checkpoint": "minilm-l6"},
            "trainer": {"epochs": 1, "batch_size": 32, "lr": 5e-5, "seed": 7},
            "output": {"dir": str(run_dir)},
        }
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        train_s = tuneforge("run", str(folder / "config.yaml"), "-q")
        export_s = tuneforge("export", str(run_dir), "--format", "onnx", "--quantize", "int8")
        print(f"run: {train_s:.1f} s ({args.train_rows} rows, 1 epoch); export: {export_s:.1f} s")
        times: dict[str, float] = {}
        labels: dict[str, pd.Series] = {}
        for engine in ("torch", "onnx", "onnx-int8"):
            out = folder / f"pred_{engine}.csv"
            best = min(
                tuneforge(
                    "predict",
                    str(run_dir),
                    "-i",
                    str(folder / "new.csv"),
                    "-o",
                    str(out),
                    "--engine",
                    engine,
                )
                for _ in range(args.repeats)
            )
            times[engine] = best
            labels[engine] = pd.read_csv(out)["prediction"]
        print(f"\npredict on {len(new)} SST-2 sentences, best of {args.repeats}, 2 CPU threads:")
        print(f"{'engine':<10} {'seconds':>8} {'speed-up':>9} {'same label':>11}")
        for engine, seconds in times.items():
            same = (labels[engine] == labels["torch"]).mean() * 100
            print(f"{engine:<10} {seconds:8.1f} {times['torch'] / seconds:8.2f}x {same:10.2f}%")


if __name__ == "__main__":
    main()
