"""Check: tuneforge's trainer against Hugging Face Trainer and a tight loop, in ONE process, one GPU.

For each case, on the same model shape, rows, batch size and precision (bf16 on CUDA):
tuneforge's ``Trainer.fit`` end to end (its loader: sampler, length grouping, workers, pinned
memory, padding collator; its compile switch) and the two baselines of
``../shared/bench/hf_anchor.py`` (HF Trainer default and "grouped + torch_compile", tight loop
eager and compiled), imported and called here so all of them run in the same process and on
the same GPU. Prints one JSON line per measurement, then samples/s and the ratios, and model
FLOPs utilisation (MFU) for BERT-base.

Cases: minilm (MiniLM-L6 shape, SST-2-like lengths, bs 64), bert-fixed (BERT-base, seq 128,
bs 32), bert-var (BERT-base, variable lengths, bs 32), effnet (EfficientNet-Lite0, 224 px,
bs 128, channels_last, uint8 images normalised on the GPU).

    python bench/trainer_speed.py                          # all cases (an H100: see docs/performance.md)
    python bench/trainer_speed.py --cases minilm bert-var  # some cases
    python bench/trainer_speed.py --mfu-sweep 32 64 128 256  # BERT-base MFU as the batch grows
    python bench/trainer_speed.py --smoke                  # CPU: tiny shapes, few steps, end to end

``bench/gpu_check.py`` runs it on the GPU machine with the other GPU checks and reads its JSON
lines (every measurement as it is made, so a run cut short still reports what it measured).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ANCHOR_DIR = ROOT.parent / "shared" / "bench"
TEXT_CASES = {  # name -> (model shape, batch, max length, variable lengths)
    "minilm": ("minilm", 64, 128, True),
    "bert-fixed": ("bert-base", 32, 128, False),
    "bert-var": ("bert-base", 32, 128, True),
}
#: Dense bf16 peak of the GPUs we run on (TFLOP/s, without sparsity).
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L4": 121.0}


def say(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


def reset_accelerate() -> None:
    """HF Trainer and tuneforge each build an Accelerator: start each from a clean state."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


class Rows(list):
    """Pre-tokenized rows (as TextDataset holds them) with their lengths for grouping."""

    @property
    def lengths(self) -> list[int]:
        return [len(r["input_ids"]) for r in self]


def tuneforge_fit(model: Any, train: Any, collate: Any, args: Any, **trainer: Any) -> float:
    """Steady-state samples/s of ``Trainer.fit`` (after ``args.warm`` steps, to the last log)."""
    import torch

    from tuneforge.config import TrainerConfig
    from tuneforge.console import Console
    from tuneforge.trainer import FitHooks, Trainer

    reset_accelerate()
    marks: dict[int, float] = {}
    every = args.log_every
    cfg = TrainerConfig(
        epochs=1,
        lr=2e-5,
        early_stopping_patience=None,
        log_every_n_steps=every,
        seed=0,
        **trainer,
    )
    fitter = Trainer(cfg, console=Console("quiet"))

    def on_log(step: int, values: dict[str, float]) -> None:  # after a host sync (.item())
        marks[step] = time.perf_counter()

    val = [train[i] for i in range(min(len(train), cfg.batch_size))]
    fitter.fit(
        model,
        train,
        val,
        collate,
        torch.nn.CrossEntropyLoss(),
        FitHooks(
            evaluate=lambda logits, labels: {"loss": 0.0}, save_best=lambda m: None, on_log=on_log
        ),
        monitor="loss",
        mode="min",
    )
    first = min(s for s in marks if s >= args.warm)
    last = max(marks)
    return (last - first) * cfg.batch_size / (marks[last] - marks[first])


def text_case(anchor: Any, name: str, args: Any) -> dict[str, float]:
    import torch
    from transformers import DataCollatorWithPadding

    shape, bs, seqlen, variable = TEXT_CASES[name]
    cuda = torch.cuda.is_available()
    if args.smoke:
        bs = max(4, bs // 8)
    case = {"case": name, "model": shape, "bs": bs, "seqlen": seqlen, "variable": variable}
    out: dict[str, float] = {}

    def measure(label: str, fn: Any) -> None:
        try:
            out[label] = round(fn(), 1)
            say(**case, run=label, samples_per_s=out[label])
        except Exception as exc:  # one failing run must not hide the others
            say(**case, run=label, error=repr(exc)[:300])
        if cuda:
            torch.cuda.empty_cache()

    rows = Rows(anchor.rows(bs * args.steps, seqlen, variable))
    # tuneforge's text collate: dynamic padding, to a multiple of 8 on CUDA (tensor cores)
    collate = DataCollatorWithPadding(
        anchor.pad_tokenizer(), pad_to_multiple_of=8 if cuda else None
    )
    for compiled in (False, True) if args.compile else (False,):
        label = "tuneforge_compiled" if compiled else "tuneforge_eager"
        measure(
            label,
            lambda c=compiled: tuneforge_fit(
                anchor.bert(shape),
                rows,
                collate,
                args,
                batch_size=bs,
                group_by_length=variable,
                compile=c,
            ),
        )
    reset_accelerate()
    measure("hf_trainer", lambda: anchor.hf_trainer(shape, bs, seqlen, variable))
    if args.compile:
        reset_accelerate()
        measure(
            "hf_trainer_grouped_compiled",
            lambda: anchor.hf_trainer(
                shape, bs, seqlen, variable, group_by_length=variable, torch_compile=True
            ),
        )
    elif variable:
        reset_accelerate()
        measure(
            "hf_trainer_grouped",
            lambda: anchor.hf_trainer(shape, bs, seqlen, variable, group_by_length=True),
        )
    measure("tight_eager", lambda: anchor.tight(shape, bs, seqlen, variable, False))
    if args.compile:
        measure("tight_compiled", lambda: anchor.tight(shape, bs, seqlen, variable, True))
    if shape == "bert-base":
        tokens = statistics.fmean(rows.lengths)  # useful (non-pad) tokens per sample
        model = anchor.bert(shape)
        for label, sps in out.items():
            if label.startswith("tuneforge"):
                say(**case, run=label, **mfu(model, sps, tokens, args))
    return out


def mfu(model: Any, samples_per_s: float, tokens: float, args: Any) -> dict[str, Any]:
    """Model FLOPs utilisation: (6 N + 12 L d T) FLOPs per trained token (PaLM, appendix B)."""
    import torch

    cfg = model.config
    embed = sum(
        p.numel() for n, p in model.named_parameters() if "embeddings" in n
    )  # lookups, not matmuls
    n = sum(p.numel() for p in model.parameters()) - embed
    per_token = 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * tokens
    achieved = samples_per_s * tokens * per_token
    peak = args.peak_tflops
    if peak is None and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return {
        "tokens_per_sample": round(tokens, 1),
        "model_tflops": round(achieved / 1e12, 2),
        "mfu": round(achieved / (peak * 1e12), 4) if peak else None,
        "peak_tflops": peak,
    }


def effnet_case(anchor: Any, args: Any) -> dict[str, float]:
    import torch

    cuda = torch.cuda.is_available()
    bs, res = (8, 64) if args.smoke else (128, 224)
    case = {"case": "effnet", "model": "efficientnet_lite0", "bs": bs, "res": res}
    out: dict[str, float] = {}

    class Images:
        """uint8 images in memory (a decoded-image cache), as a loader would hand them over."""

        def __init__(self, n: int) -> None:
            g = torch.Generator().manual_seed(0)
            self.pool = torch.randint(
                0, 256, (min(n, 1024), 3, res, res), dtype=torch.uint8, generator=g
            )
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"pixel_values": self.pool[i % len(self.pool)], "labels": i % 10}

    class OnDevice(torch.nn.Module):
        """Normalise on the GPU, channels_last (what an image pipeline should do)."""

        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net.to(memory_format=torch.channels_last)
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

        def forward(self, pixel_values: Any) -> Any:
            x = pixel_values.to(memory_format=torch.channels_last).float()
            return self.net((x - self.mean) / self.std)

    def model() -> Any:
        import timm

        return OnDevice(timm.create_model("efficientnet_lite0", num_classes=10))

    def measure(label: str, fn: Any, **extra: Any) -> None:
        try:
            out[label] = round(fn(), 1)
            say(**case, **extra, run=label, samples_per_s=out[label])
        except Exception as exc:
            say(**case, **extra, run=label, error=repr(exc)[:300])
        if cuda:
            torch.cuda.empty_cache()

    data = Images(bs * args.steps)
    for compiled in (False, True) if args.compile else (False,):
        label = "tuneforge_compiled" if compiled else "tuneforge_eager"
        measure(
            label,
            lambda c=compiled: tuneforge_fit(
                model(), data, None, args, batch_size=bs, compile=c, max_grad_norm=None
            ),
        )
    for compiled in (False, True) if args.compile else (False,):
        label = "timm_tight_compiled" if compiled else "timm_tight_eager"
        measure(label, lambda c=compiled: anchor.timm_tight("efficientnet_lite0", bs, res, True, c))
    return out


def summary(name: str, out: dict[str, float]) -> None:
    """The case's ratios, as a line of text and a JSON line (``summary: true``)."""
    ours = max((v for k, v in out.items() if k.startswith("tuneforge")), default=None)
    if ours is None:
        return
    parts = [f"{name}: tuneforge {ours:,.0f} samples/s"]
    figures: dict[str, Any] = {"case": name, "summary": True, "tuneforge": ours}
    hf = max((v for k, v in out.items() if k.startswith("hf_trainer")), default=None)
    if hf:
        parts.append(f"{ours / hf:.2f}x the best HF Trainer ({hf:,.0f}; target >= 1.2)")
        figures.update(best_hf_trainer=hf, ratio_to_best_hf_trainer=round(ours / hf, 3))
    tight = max((v for k, v in out.items() if "tight" in k), default=None)
    if tight:
        target = "; target >= 0.9" if name == "effnet" else ""
        parts.append(f"{ours / tight:.2f}x the best tight loop ({tight:,.0f}{target})")
        figures.update(best_tight=tight, ratio_to_best_tight=round(ours / tight, 3))
    print("  ".join(parts), flush=True)
    say(**figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=[*TEXT_CASES, "effnet"])
    parser.add_argument("--steps", type=int, default=150, help="steps per timed run")
    parser.add_argument("--warm", type=int, default=30, help="steps not timed (compilation)")
    parser.add_argument("--smoke", action="store_true", help="CPU check: tiny shapes, few steps")
    parser.add_argument("--no-compile", dest="compile", action="store_false", default=None)
    parser.add_argument("--compile", dest="compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="for MFU (default: by GPU)")
    parser.add_argument("--mfu-sweep", type=int, nargs="*", default=[], metavar="BS")
    parser.add_argument("--anchor", type=Path, default=ANCHOR_DIR / "hf_anchor.py")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warm = min(args.steps, 12), min(args.warm, 4)
    if args.compile is None:
        args.compile = not args.smoke  # compiling on CPU takes minutes
    args.log_every = 2 if args.smoke else 10
    unknown = set(args.cases) - {*TEXT_CASES, "effnet"}
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; choose from {[*TEXT_CASES, 'effnet']}")
    if not args.anchor.is_file():
        parser.error(f"{args.anchor} not found (the shared baselines); pass --anchor")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(args.anchor.parent))
    import importlib

    import torch
    import transformers

    anchor = importlib.import_module(args.anchor.stem)
    anchor.STEPS, anchor.WARM = args.steps, args.warm
    transformers.logging.set_verbosity_error()
    if args.smoke:
        from transformers import BertConfig, BertForSequenceClassification

        def tiny_bert(shape: str) -> Any:
            width = 64 if shape == "minilm" else 96
            cfg = BertConfig(
                hidden_size=width,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=2 * width,
                num_labels=2,
            )
            return BertForSequenceClassification(cfg)

        anchor.bert = tiny_bert
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    say(
        torch=torch.__version__,
        transformers=transformers.__version__,
        device=device,
        steps=args.steps,
        warm=args.warm,
        compile=args.compile,
        smoke=args.smoke,
    )
    results = {}
    for name in args.cases:
        results[name] = (
            effnet_case(anchor, args) if name == "effnet" else text_case(anchor, name, args)
        )
    for bs in args.mfu_sweep:  # the largest BERT-base batch that fits
        try:
            rows = Rows(anchor.rows(bs * args.steps, 128, False))
            from transformers import DataCollatorWithPadding

            collate = DataCollatorWithPadding(anchor.pad_tokenizer(), pad_to_multiple_of=8)
            sps = tuneforge_fit(
                anchor.bert("bert-base"), rows, collate, args, batch_size=bs, compile=args.compile
            )
            say(
                case="mfu-sweep",
                bs=bs,
                samples_per_s=round(sps, 1),
                **mfu(anchor.bert("bert-base"), sps, 128.0, args),
            )
        except torch.cuda.OutOfMemoryError:
            say(case="mfu-sweep", bs=bs, error="out of memory: the previous batch is the largest")
            break
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    print(f"\nsamples/s on {device} ({args.steps} steps, first {args.warm} not timed)", flush=True)
    for name, out in results.items():
        summary(name, out)


if __name__ == "__main__":
    main()
