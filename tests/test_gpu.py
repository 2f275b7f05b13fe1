"""The CUDA paths, end to end on a GPU: bf16 autocast, fused AdamW and its on-device non-finite
check, pinned memory and non-blocking copies, ``compile``, a real CUDA out-of-memory backed off
by ``auto_batch_size``, ``--resume`` after SIGKILL, ``deterministic``, timm's channels_last.

Every test is marked ``gpu``: tests/conftest.py skips them without CUDA and CI deselects them
(``-m "not gpu"``). They take seconds each on a GPU; ``bench/gpu_check.py`` runs them on the GPU
machine (the OOM test alone, since it fills the GPU's memory).

``TUNEFORGE_GPU_TESTS_ON_CPU=1`` is a dry run of the same tests on CPU (no ``gpu`` marker, the
trainer on ``device: cpu``), so that their logic is checked before GPU time is spent; what only
CUDA can show (bf16, the sync count, the out-of-memory) is skipped or asserted for CPU there.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import TUNEFORGE, ok, run_cli
from tinymodels import CLASS_WORDS, FILLER, make_texts, write_csv

ON_CPU = os.environ.get("TUNEFORGE_GPU_TESTS_ON_CPU") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"
pytestmark = [] if ON_CPU else [pytest.mark.gpu]
GiB = 1 << 30


def cuda_only(what: str) -> None:
    if ON_CPU:
        pytest.skip(f"{what}: CUDA only (dry run on CPU)")


def read(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())


def history(run: Path) -> list[dict]:
    """history.jsonl without the wall-clock figures."""
    rows = map(json.loads, (run / "history.jsonl").read_text().splitlines())
    return [
        {k: r[k] for k in ("step", "epoch", "split", "name", "value")}
        for r in rows
        if r["name"] != "samples_per_s"
    ]


def assert_on_device(run: Path) -> None:
    assert read(run, "run.json")["device"] == DEVICE


# -- the three modalities end to end through the CLI ------------------------------------------


def test_text_run_on_cuda_trains_and_predicts(project) -> None:
    """precision: auto (bf16 on a GPU that has it), fused AdamW, pinned memory, 4 loader workers."""
    cfg = project.config(trainer={"device": DEVICE, "precision": "auto", "num_workers": "auto"})
    out = ok(run_cli("run", str(cfg)))
    run = project.root / "runs" / "run"
    assert "Traceback" not in out
    assert_on_device(run)
    test = read(run, "metrics.json")["test"]
    assert test["accuracy"] >= test["majority_baseline_accuracy"] + 0.3, test
    rows = make_texts(40, seed=99)
    new = project.root / "new.csv"
    pd.DataFrame({"text": [t for t, _ in rows]}).to_csv(new, index=False)
    ok(run_cli("predict", str(run), "-i", str(new), "-o", str(project.root / "pred.csv")))
    pred = pd.read_csv(project.root / "pred.csv")
    assert (pred["prediction"] == [lab for _, lab in rows]).mean() >= 0.8


COLOURS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}


def make_images(root: Path, per_class: int = 16, size: int = 24) -> Path:
    """``root/<colour>/<i>.png``: noisy images of one colour per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(colour, 35, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_image_run_on_cuda_is_channels_last_and_saves_a_timm_checkpoint(tmp_path: Path) -> None:
    """timm on CUDA runs channels_last in bf16; the checkpoint must still be a plain timm one."""
    import timm
    import torch

    make_images(tmp_path / "images")
    cfg = write_config(
        tmp_path / "config.yaml",
        {
            "task": "image-classification",
            "data": {"path": "images"},
            "model": {"name": "timm", "architecture": "test_efficientnet"},
            "tokenizer": {"name": "timm-transforms", "input_size": 32},
            "augmenters": [{"name": "timm-augment", "scale": [0.8, 1.0], "color_jitter": None}],
            "trainer": {
                "epochs": 4,
                "batch_size": 8,
                "lr": 0.01,
                "monitor": "accuracy",
                "early_stopping_patience": None,
                "device": DEVICE,
                "num_workers": 2,
            },
            "output": {"dir": str(tmp_path / "runs" / "run")},
        },
    )
    ok(run_cli("run", str(cfg)))
    run = tmp_path / "runs" / "run"
    assert_on_device(run)
    assert read(run, "metrics.json")["test"]["accuracy"] >= 0.8
    model = timm.create_model(
        "test_efficientnet",
        num_classes=3,
        checkpoint_path=str(run / "checkpoint" / "model.safetensors"),
    ).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()
    ok(run_cli("predict", str(run), "-i", str(tmp_path / "images" / "red")))
    preds = pd.read_csv(run / "predictions" / "red.csv")
    assert (preds["prediction"] == "red").mean() >= 0.8


def test_tabular_run_on_cuda(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 400
    a, b = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "blue"], size=n)
    label = np.where(a + 0.5 * b + (colour == "red") > 0.5, "yes", "no")
    pd.DataFrame({"a": a, "b": b, "colour": colour, "label": label}).to_csv(
        tmp_path / "data.csv", index=False
    )
    cfg = write_config(
        tmp_path / "config.yaml",
        {
            "task": "tabular-classification",
            "data": {"path": "data.csv", "label": "label"},
            "model": {"name": "mlp", "hidden": 32, "layers": 1, "dropout": 0.0},
            "trainer": {
                "epochs": 20,
                "batch_size": 32,
                "lr": 0.01,
                "monitor": "accuracy",
                "early_stopping_patience": None,
                "device": DEVICE,
            },
            "output": {"dir": str(tmp_path / "runs" / "run")},
        },
    )
    ok(run_cli("run", str(cfg)))
    run = tmp_path / "runs" / "run"
    assert_on_device(run)
    test = read(run, "metrics.json")["test"]
    assert test["accuracy"] >= 0.85 and test["accuracy"] > test["majority_baseline_accuracy"], test


# -- the trainer's CUDA mechanics, in process ---------------------------------------------------


def _rows(n: int, seed: int, bad_rows: tuple[int, ...] = ()):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    for r in bad_rows:
        x[r, 2] = float("inf")  # a corrupt value: the loss of its batch is NaN
    return [{"x": x[i], "labels": y[i]} for i in range(n)]


def _collate(rows: list[dict]) -> dict:
    import torch

    return {k: torch.stack([r[k] for r in rows]) for k in ("x", "labels")}


def _probe_model():
    """A small classifier that records, inside its forward, what the trainer set up around it."""
    import torch

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3)
            )
            self.seen: set[tuple] = set()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.body(x)
            kind = x.device.type
            autocast = torch.is_autocast_enabled(kind)
            dtype = torch.get_autocast_dtype(kind) if autocast else None
            self.seen.add((kind, autocast, dtype, out.dtype))
            return out

    return Probe()


def _fit(train: list[dict], **trainer: object):
    import torch

    from tuneforge.config import TrainerConfig
    from tuneforge.console import Console
    from tuneforge.trainer import FitHooks, Trainer

    cfg = TrainerConfig(
        **{
            "epochs": 2,
            "batch_size": 16,
            "lr": 1e-2,
            "device": DEVICE,
            "precision": "auto",
            "num_workers": 0,
            "early_stopping_patience": None,
            **trainer,
        }
    )
    tr = Trainer(cfg, Console("quiet"))
    model = _probe_model()

    def evaluate(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return {"loss": float(torch.nn.functional.cross_entropy(logits, labels))}

    result = tr.fit(
        model,
        train,
        _rows(64, seed=99),
        _collate,
        torch.nn.CrossEntropyLoss(),
        FitHooks(evaluate=evaluate, save_best=lambda m: None),
        monitor="loss",
        mode="min",
    )
    return tr, model, result


def test_the_trainer_on_cuda_autocasts_to_bf16_and_steps_with_the_fused_adamw_kernel() -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tr, model, result = _fit(_rows(96, seed=0), epochs=1)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_fused_adamw_" in ops, sorted(o for o in ops if "adam" in o.lower())
    bf16 = DEVICE == "cuda" and torch.cuda.is_bf16_supported()
    assert tr.accelerator.mixed_precision == ("bf16" if bf16 else "no")
    expected = (DEVICE, True, torch.bfloat16, torch.bfloat16) if bf16 else (DEVICE, False, None)
    assert {s[: len(expected)] for s in model.seen} == {expected}, model.seen
    loader = tr.loader(_rows(32, seed=1), _collate, local=True)
    assert loader.pin_memory is (DEVICE == "cuda")
    assert math.isfinite(result.history[-1]["train.loss"])


def test_a_non_finite_step_is_caught_on_the_device_without_a_host_sync_per_step() -> None:
    """The fused kernel skips a flagged step itself (``found_inf``): the host reads the flags
    once per log interval, so the number of synchronising CUDA calls does not grow with the
    number of steps (a per-step ``bool()``, ``.item()`` or blocking copy would add one each)."""
    import torch

    def run(batches: int) -> tuple[object, object, int]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if DEVICE == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                _, model, result = _fit(
                    _rows(16 * batches, seed=0, bad_rows=(5,)),
                    nonfinite="skip",
                    log_every_n_steps=10_000,  # no log inside the epoch: its sync is the epoch's
                )
            finally:
                if DEVICE == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
        syncs = sum("synchronizing CUDA operation" in str(w.message) for w in caught)
        return model, result, syncs

    few_model, few, few_syncs = run(4)
    many_model, many, many_syncs = run(16)
    for model, result in ((few_model, few), (many_model, many)):
        assert result.skipped_steps == 2  # the corrupt row's batch, once per epoch
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert all(math.isfinite(r["train.loss"]) for r in result.history)
    if DEVICE == "cuda":
        assert few_syncs > 0  # the epoch ends read the device: the count works
        assert many_syncs == few_syncs, (few_syncs, many_syncs)


# -- compile ------------------------------------------------------------------------------------


def test_compiled_run_trains_and_saves_a_plain_checkpoint(project) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    cfg = project.config(trainer={"device": DEVICE, "compile": True, "epochs": 6})
    ok(run_cli("run", str(cfg)))
    run = project.root / "runs" / "run"
    assert_on_device(run)
    test = read(run, "metrics.json")["test"]
    assert test["accuracy"] >= test["majority_baseline_accuracy"] + 0.3, test
    ckpt = run / "checkpoint"
    with safe_open(str(ckpt / "model.safetensors"), "pt") as fh:
        names = list(fh.keys())
    assert names and not [k for k in names if "_orig_mod" in k]  # the unwrapped module was saved
    _, info = AutoModelForSequenceClassification.from_pretrained(ckpt, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


# -- a real CUDA out-of-memory ------------------------------------------------------------------

SEQ = 512


def wide_bert(folder: Path, tokenizer_from: Path) -> Path:
    """A random BERT with 512 positions and no dropout (so a split batch trains the same)."""
    import shutil

    import torch
    import transformers

    folder.mkdir(parents=True)
    for f in tokenizer_from.iterdir():
        if "token" in f.name or f.name in ("vocab.txt", "special_tokens_map.json"):
            shutil.copy(f, folder / f.name)
    vocab = transformers.AutoTokenizer.from_pretrained(folder).vocab_size
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        intermediate_size=2048,
        max_position_embeddings=SEQ,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    transformers.BertModel(config).save_pretrained(str(folder))
    return folder


def training_bytes_per_example(ckpt: Path, batch: int = 4) -> float:
    """Peak CUDA memory of one bf16 training step on full-length rows, per row (measured)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(ckpt, num_labels=3).cuda()
    ids = torch.randint(5, model.config.vocab_size, (batch, SEQ), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=torch.zeros(batch, dtype=torch.long, device="cuda")).loss
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del model, ids, loss
    torch.cuda.empty_cache()
    return peak / batch


def long_texts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Texts of SEQ tokens with [CLS] and [SEP] (a word is one token in the tiny vocabulary)."""
    rng = np.random.default_rng(seed)
    labels = list(CLASS_WORDS)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = rng.choice(CLASS_WORDS[label] * 3 + FILLER, size=SEQ - 2).tolist()
        rows.append((" ".join(words), label))
    return rows


def test_a_real_cuda_out_of_memory_is_backed_off_to_the_same_effective_batch(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """This process takes all of the GPU's memory but a few GiB; the run's batch needs about
    three times that, so its first step really runs out of device memory (cudaMalloc fails).
    ``auto_batch_size`` (on by default on CUDA) halves the micro-batch until it fits and
    accumulates: as many optimizer steps per epoch as the batch size says, and a finished run."""
    cuda_only("filling the GPU's memory")
    import torch

    ckpt = wide_bert(tmp_path / "wide-bert", tiny_models["bert"])
    per_example = training_bytes_per_example(ckpt)
    headroom = 4 * GiB  # left free for the run's process: CUDA context, weights, a small batch
    batch = 8
    while batch * per_example < 3 * headroom:
        batch *= 2
    n_rows = math.ceil(2.5 * batch / 0.7)  # two to three optimizer steps per epoch
    write_csv(tmp_path / "data.csv", long_texts(n_rows))
    cfg = write_config(
        tmp_path / "config.yaml",
        {
            "task": "text-classification",
            "data": {"path": "data.csv"},
            "validators": ["schema", "missing"],
            "tokenizer": {"name": "hf-tokenizer", "max_length": SEQ},
            "model": {"name": "hf-sequence-classification", "checkpoint": str(ckpt)},
            "trainer": {
                "epochs": 2,
                "batch_size": batch,
                "eval_batch_size": 16,
                "lr": 1e-4,
                "device": "cuda",
                "early_stopping_patience": None,
            },
            "output": {"dir": str(tmp_path / "runs" / "run")},
        },
    )
    free, _ = torch.cuda.mem_get_info()
    filler = torch.empty(free - headroom, dtype=torch.uint8, device="cuda")
    try:
        proc = run_cli("run", str(cfg))
    finally:
        del filler
        torch.cuda.empty_cache()
    out = ok(proc)
    first = f"CUDA out of memory at batch {batch}: retrying with {batch // 2} x 2 accumulation"
    assert first in out, (per_example, batch, out[-3000:])
    run = tmp_path / "runs" / "run"
    n_train = len(read(run, "split.json")["balanced_train"])
    steps = [r["value"] for r in history(run) if r["name"] == "steps" and r["split"] == "train"]
    assert steps == [math.ceil(n_train / batch)] * 2, (steps, n_train, batch)
    assert all(math.isfinite(v) for v in read(run, "metrics.json")["test"].values())


# -- resume after SIGKILL, deterministic -------------------------------------------------------


def kill_after_checkpoint(cmd: list[str], runs: Path, name: str, min_step: int) -> Path:
    """Start ``cmd``; SIGKILL it once a checkpoint of step >= ``min_step`` exists."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            steps = [
                int(p.name.split("-")[1]) for p in runs.glob(f".{name}.partial-*/state/step-*")
            ]
            if steps and max(steps) >= min_step:
                proc.send_signal(signal.SIGKILL)
                break
            assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()}"
            time.sleep(0.05)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    [partial] = runs.glob(f".{name}.partial-*")
    return partial


def assert_close_runs(a: Path, b: Path) -> None:
    """Same history and metrics up to CUDA's run-to-run noise: losses within 1e-3 (relative and
    absolute); a rate such as accuracy within about two examples of its split."""
    split = read(a, "split.json")
    n = {
        "train": len(split["balanced_train"]),
        "val": len(split["val"]),
        "test": len(split["test"]),
    }
    ha, hb = history(a), history(b)
    assert [(r["step"], r["epoch"], r["split"], r["name"]) for r in ha] == [
        (r["step"], r["epoch"], r["split"], r["name"]) for r in hb
    ]
    for ra, rb in zip(ha, hb, strict=True):
        if "loss" in ra["name"] or ra["name"] == "lr":
            assert rb["value"] == pytest.approx(ra["value"], rel=1e-3, abs=1e-3), (ra, rb)
        else:
            assert abs(rb["value"] - ra["value"]) <= 2.5 / n[ra["split"]], (ra, rb)
    ma, mb = read(a, "metrics.json"), read(b, "metrics.json")
    assert ma["best_epoch"] == mb["best_epoch"] and ma["epochs_run"] == mb["epochs_run"]


def test_resume_after_sigkill_on_cuda_ends_like_the_uninterrupted_run(project) -> None:
    cfg = project.config(
        augmenters=[{"name": "token-noise", "p": 0.3}],  # the data's own RNG must be restored
        trainer={
            "epochs": 3,
            "monitor": "loss",
            "checkpoint_every_n_steps": 3,
            "log_every_n_steps": 2,
            "device": DEVICE,
            "num_workers": "auto",  # 4 loader workers on CUDA
        },
    )
    runs = project.root / "runs"
    ok(run_cli("run", str(cfg), "--set", f"output.dir={runs / 'ref'}"))
    cmd = [str(TUNEFORGE), "run", str(cfg), "--set", f"output.dir={runs / 'killed'}"]
    kill_after_checkpoint(cmd, runs, "killed", min_step=14)  # in epoch 2 of 3
    out = ok(run_cli("run", "--resume", str(runs / "killed")))
    assert "resuming" in out
    assert read(runs / "killed", "run.json")["status"] == "completed"
    assert_on_device(runs / "killed")
    assert_close_runs(runs / "ref", runs / "killed")


def test_deterministic_runs_on_cuda_give_identical_metrics(project) -> None:
    cfg = project.config(
        augmenters=[{"name": "token-noise", "p": 0.3}],
        trainer={"epochs": 3, "deterministic": True, "device": DEVICE, "num_workers": "auto"},
    )
    runs = []
    for name in ("a", "b"):
        ok(run_cli("run", str(cfg), "--set", f"output.dir={project.root / name}"))
        runs.append(project.root / name)
    assert_on_device(runs[0])
    a, b = (read(r, "metrics.json") for r in runs)
    assert a["test"] == b["test"] and a["val"] == b["val"]
    assert history(runs[0]) == history(runs[1])
