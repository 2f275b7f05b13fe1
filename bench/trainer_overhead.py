"""Check: tuneforge's per-step overhead against a tight hand-written loop, on CPU (target <= 5%).

Same tiny BERT (random init, 2 layers, hidden 32), same pre-tokenized rows of SST-2-like lengths,
same DataLoader (batch, dynamic-padding collator), AdamW, linear schedule, gradient clipping and
number of steps. Timed: one whole training epoch (the trainer's ``train.samples_per_s``, which
excludes validation; the loop's epoch wall time). The two alternate, after a warm-up of each;
the medians of ``--repeats`` runs are compared.

    python bench/trainer_overhead.py [--steps 200] [--batch 16] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def make_rows(n: int, vocab: int, seed: int = 0) -> list[dict[str, Any]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    lens = torch.clamp(
        torch._standard_gamma(torch.full((n,), 2.0), generator=g).mul(4).long() + 4, max=60
    )
    return [
        {
            "input_ids": [2] + torch.randint(5, vocab, (int(n_) - 2,), generator=g).tolist() + [3],
            "labels": i % 3,
        }
        for i, n_ in enumerate(lens)
    ]


def tiny_model(folder: Path) -> Any:
    import transformers

    return transformers.AutoModelForSequenceClassification.from_pretrained(
        str(folder), num_labels=3
    )


FIRST = 10  # steps 1-10 warm up; the window is steps 11..N


def tuneforge_epoch(
    folder: Path, rows: list, val: list, collate: Any, args: Any
) -> tuple[float, float]:
    """(wall, CPU) seconds per step of ``Trainer.fit``, steps 11..N of its epoch."""
    import torch

    from tuneforge.config import TrainerConfig
    from tuneforge.trainer import FitHooks, Trainer

    cfg = TrainerConfig(
        epochs=1,
        batch_size=args.batch,
        lr=1e-3,
        device="cpu",
        precision="fp32",
        early_stopping_patience=None,
        seed=0,
        log_every_n_steps=FIRST,
    )
    marks: dict[int, tuple[float, float]] = {}

    def on_log(step: int, values: dict[str, float]) -> None:
        marks[step] = (time.perf_counter(), time.thread_time())

    trainer = Trainer(cfg)
    trainer.console.mode = "quiet"
    result = trainer.fit(
        tiny_model(folder),
        rows,
        val,
        collate,
        torch.nn.CrossEntropyLoss(),
        FitHooks(
            evaluate=lambda logits, labels: {"loss": 0.0},
            save_best=lambda model: None,
            on_log=on_log,
        ),
        monitor="loss",
        mode="min",
    )
    assert result.history[0]["train.steps"] == args.steps
    return window(marks[FIRST], marks[args.steps], args.steps - FIRST)


def window(a: tuple[float, float], b: tuple[float, float], steps: int) -> tuple[float, float]:
    return (b[0] - a[0]) / steps, (b[1] - a[1]) / steps


def tight_epoch(folder: Path, rows: list, collate: Any, args: Any) -> tuple[float, float]:
    """(wall, CPU) seconds per step of the same steps in a plain PyTorch loop."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from tuneforge.sampling import ShuffleSampler

    torch.manual_seed(0)
    model = tiny_model(folder)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    # the order Trainer.fit uses in its first epoch, so both pad exactly the same batches
    order = ShuffleSampler(len(rows), seed=0)
    order.set_epoch(1)
    loader = DataLoader(rows, batch_size=args.batch, sampler=list(order), collate_fn=collate)
    total = len(loader)
    assert total == args.steps
    sched = get_scheduler("linear", opt, num_warmup_steps=total // 10, num_training_steps=total)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    marks = {}
    for step, batch in enumerate(loader, 1):
        labels = batch.pop("labels")
        loss = loss_fn(model(**batch).logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step in (FIRST, args.steps):
            marks[step] = (time.perf_counter(), time.thread_time())
    return window(marks[FIRST], marks[args.steps], args.steps - FIRST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    import torch
    import transformers

    from tinymodels import tiny_checkpoint

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_checkpoint(Path(tmp) / "bert", "bert")
        tok = transformers.AutoTokenizer.from_pretrained(str(folder))
        collate = transformers.DataCollatorWithPadding(tok)
        rows = make_rows(args.steps * args.batch, len(tok))
        val = make_rows(args.batch, len(tok), seed=1)
        ours: list[tuple[float, float]] = []
        tight: list[tuple[float, float]] = []
        tuneforge_epoch(folder, rows, val, collate, args)  # warm-up (imports, allocator)
        tight_epoch(folder, rows, collate, args)
        for i in range(args.repeats):
            ours.append(tuneforge_epoch(folder, rows, val, collate, args))
            tight.append(tight_epoch(folder, rows, collate, args))
            print(
                f"repeat {i + 1}: tuneforge {ours[-1][0] * 1e3:.2f} ms/step wall, "
                f"{ours[-1][1] * 1e3:.2f} CPU; tight loop {tight[-1][0] * 1e3:.2f} wall, "
                f"{tight[-1][1] * 1e3:.2f} CPU",
                flush=True,
            )
    print(
        f"\n{args.steps - FIRST} steps (of {args.steps}) of batch {args.batch}, "
        f"{torch.get_num_threads()} torch thread(s), median of {args.repeats} pairs run back to back"
    )
    overhead = float("nan")
    for k, what in ((0, "wall"), (1, "CPU")):
        a = statistics.median(x[k] for x in ours)
        b = statistics.median(x[k] for x in tight)
        ratios = sorted(100 * (x[k] / y[k] - 1) for x, y in zip(ours, tight, strict=True))
        overhead = statistics.median(ratios)
        print(
            f"{what:>4}: tuneforge Trainer.fit {a * 1e3:.3f} ms/step, tight loop {b * 1e3:.3f} "
            f"ms/step; overhead {overhead:+.1f}% (median of pairs; per pair "
            f"{', '.join(f'{r:+.1f}' for r in ratios)})"
        )
    print(f"overhead (CPU time, median of pairs): {overhead:+.1f}% (target <= 5%)")
    if not math.isfinite(overhead):
        sys.exit(1)


if __name__ == "__main__":
    main()
