"""Kill a run with SIGKILL, resume it with ``--resume``, and get the uninterrupted run's numbers."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tuneforge.checkpoint import STATE_FILE, _checksum, _manifest

from conftest import TUNEFORGE, ok, one_line_error, run_cli

DEAD_PID = 4_999_999  # above Linux's pid_max: no process has it


def comparable(run: Path) -> tuple[dict, list]:
    """metrics.json and history.jsonl without the wall-clock figures."""
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("train_seconds")
    history = [
        (r["step"], r["epoch"], r["split"], r["name"], r["value"])
        for r in map(json.loads, (run / "history.jsonl").read_text().splitlines())
        if r["name"] != "samples_per_s"
    ]
    return metrics, history


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


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_results(project) -> None:
    cfg = project.config(
        augmenters=[{"name": "token-noise", "p": 0.3}],  # the data's own RNG must be restored
        trainer={
            "epochs": 3,
            "monitor": "loss",  # improves every epoch: the tested model is trained after the kill
            "checkpoint_every_n_steps": 3,
            "log_every_n_steps": 2,
            "num_workers": 0,
            "keep_checkpoints": 2,
        },
    )
    runs = project.root / "runs"
    ok(run_cli("run", str(cfg), "--set", f"output.dir={runs / 'ref'}"))

    cmd = [str(TUNEFORGE), "run", str(cfg), "--set", f"output.dir={runs / 'killed'}"]
    partial = kill_after_checkpoint(cmd, runs, "killed", min_step=14)  # in epoch 2 of 3
    kept = sorted(p.name for p in (partial / "state").glob("step-*"))
    # keep_checkpoints: 2; the oldest is pruned only once the new one is durable, so a kill
    # between the two leaves one more
    assert 1 <= len(kept) <= 3, kept
    assert not (runs / "killed").exists()

    out = ok(run_cli("run", "--resume", str(runs / "killed")))
    assert "resuming" in out
    assert comparable(runs / "killed") == comparable(runs / "ref")
    assert json.loads((runs / "ref" / "metrics.json").read_text())["best_epoch"] == 3
    assert sorted(p.name for p in runs.iterdir()) == ["killed", "ref"]  # no partial left
    assert not (runs / "killed" / "state").exists()  # a completed run keeps no training state
    assert json.loads((runs / "killed" / "run.json").read_text())["status"] == "completed"

    # A completed run has nothing to resume.
    assert "completed run" in one_line_error(run_cli("run", "--resume", str(runs / "ref")))


def test_resume_refuses_what_it_cannot_resume(project, tmp_path: Path) -> None:
    cfg = project.config(trainer={"epochs": 2, "checkpoint_every_n_steps": 2, "num_workers": 0})
    runs = project.root / "runs"
    partial = kill_after_checkpoint([str(TUNEFORGE), "run", str(cfg)], runs, "run", min_step=2)
    [latest, *_] = sorted((partial / "state").glob("step-*"), reverse=True)

    # Nothing at all, and a folder that was never checkpointed.
    line = one_line_error(run_cli("run", "--resume", str(tmp_path / "nowhere")))
    assert "no run to resume" in line
    empty = runs / f".fresh.partial-{DEAD_PID}"
    empty.mkdir()
    assert "no training-state checkpoint" in one_line_error(run_cli("run", "--resume", str(empty)))
    # CONFIG and --resume together.
    assert "--resume" in one_line_error(run_cli("run", str(cfg), "--resume", str(partial)))

    # A truncated weights file is named (the manifest in trainer_state.json has its size).
    broken = runs / f".broken.partial-{DEAD_PID}"
    shutil.copytree(partial, broken)
    weights = broken / "state" / latest.name / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = one_line_error(run_cli("run", "--resume", str(broken)))
    assert str(weights) in line and "truncated" in line

    # A checkpoint whose unpickling would run code is refused, and the code never runs.
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = runs / f".evil.partial-{DEAD_PID}"
    shutil.copytree(partial, evil)
    ckpt = evil / "state" / latest.name
    (ckpt / "optimizer.bin").write_bytes(pickle.dumps(Evil()))
    line = one_line_error(run_cli("run", "--resume", str(evil)))
    assert f"{ckpt / 'optimizer.bin'}: truncated or changed" in line, line  # the manifest
    # ... and with the manifest forged to match (sizes, SHA-256s, checksum), its loader
    # refuses it: torch.save's archive holding the pickle, as a real optimizer.bin is.
    torch.save({"state": Evil()}, ckpt / "optimizer.bin")
    state = json.loads((ckpt / STATE_FILE).read_text())
    state["files"] = _manifest(ckpt)
    state["checksum"] = _checksum(state)
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    line = one_line_error(run_cli("run", "--resume", str(evil)))
    assert f"{ckpt / 'optimizer.bin'}: the checkpoint part does not load safely" in line, line
    assert not marker.exists()

    # The untouched run still resumes.
    ok(run_cli("run", "--resume", str(runs / "run")))
    assert json.loads((runs / "run" / "run.json").read_text())["status"] == "completed"


def test_which_folder_resume_picks(tmp_path: Path) -> None:
    from tuneforge.errors import UserError
    from tuneforge.run import find_resumable

    def folder(name: str, step: int | None, mtime: float) -> Path:
        path = tmp_path / name
        path.mkdir()
        if step is not None:
            (path / "state" / f"step-{step:06d}").mkdir(parents=True)
            os.utime(path / "state" / f"step-{step:06d}", (mtime, mtime))
        return path

    final = tmp_path / "run"
    old_failed = folder("run.failed-20260101-000000", 4, 1_000)
    newer_killed = folder(f".run.partial-{DEAD_PID}", 8, 2_000)
    assert find_resumable(final) == (newer_killed, final)
    assert find_resumable(old_failed) == (old_failed, final)

    # A run still going is not touched.
    alive = folder(f".other.partial-{os.getppid()}", 3, 3_000)
    with pytest.raises(UserError, match="still going"):
        find_resumable(alive)
    with pytest.raises(UserError, match="still going"):
        find_resumable(tmp_path / "other")

    # Once the run completed, the older interrupted attempts beside it are stale.
    final.mkdir()
    (final / "run.json").write_text(json.dumps({"status": "completed"}))
    os.utime(final / "run.json", (5_000, 5_000))
    with pytest.raises(UserError, match="completed run: nothing to resume"):
        find_resumable(final)


# -- the trainer's loop state, in process -------------------------------------------------------
class NoisyRows(torch.utils.data.Dataset):
    """Rows, for training with noise from their own generator (like an augmenter's): a resume
    must restore it."""

    def __init__(self, n: int, seed: int, bad_row: int | None = None, noise: float = 0.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0.5).long()
        if bad_row is not None:  # its steps are skipped (nonfinite: skip)
            self.x[bad_row] = float("nan")
        self.rng, self.noise = np.random.default_rng(seed), noise

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        if not self.noise:
            return {"x": self.x[i], "labels": self.y[i]}
        noise = torch.tensor(self.rng.normal(size=4), dtype=torch.float32) * self.noise
        return {"x": self.x[i] + noise, "labels": self.y[i]}


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _collate(rows: list[dict]) -> dict:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def _fit(state_dir: Path, resume: Path | None = None) -> tuple[list, list, list]:
    """A 3-epoch fit with a checkpoint every optimizer step: (history, hook calls, weights)."""
    from tuneforge.config import TrainerConfig
    from tuneforge.console import Console
    from tuneforge.trainer import FitHooks, StateOptions, Trainer

    cfg = TrainerConfig(
        epochs=3,
        batch_size=16,
        lr=1e-2,
        device="cpu",
        precision="fp32",
        num_workers=0,
        early_stopping_patience=None,
        log_every_n_steps=1,
        gradient_accumulation_steps=2,
        nonfinite="skip",
        checkpoint_every_n_steps=1,
        keep_checkpoints=100,
    )
    trainer = Trainer(cfg, Console("quiet"))
    model = _Net()
    calls: list = []

    def evaluate(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return {"loss": float(torch.nn.functional.cross_entropy(logits, labels))}

    def no_rates(values: dict) -> dict:
        return {k: v for k, v in values.items() if "per_s" not in k}

    hooks = FitHooks(
        evaluate=evaluate,
        save_best=lambda m: calls.append(("best", [p.sum().item() for p in m.parameters()])),
        on_epoch_start=lambda m, epoch: calls.append(("start", epoch)),
        on_log=lambda step, values: calls.append(("log", step, no_rates(values))),
        on_epoch_end=lambda epoch, row: calls.append(("end", epoch, no_rates(row))),
    )
    result = trainer.fit(
        model,
        NoisyRows(65, seed=1, bad_row=7, noise=0.01),  # the last batch (1 row) is merged
        NoisyRows(32, seed=2),
        _collate,
        torch.nn.CrossEntropyLoss(),
        hooks,
        monitor="loss",
        mode="min",
        sample_weights=np.linspace(0.5, 2.0, 65),
        state=StateOptions(state_dir=state_dir, resume=resume),
    )
    history = [{k: v for k, v in r.items() if "per_s" not in k} for r in result.history]
    calls.append(("skipped", result.skipped_steps, result.best_epoch, result.stopped_early))
    weights = [p.detach().clone() for p in trainer.accelerator.unwrap_model(model).parameters()]
    return history, calls, weights


def test_every_training_state_checkpoint_resumes_to_the_uninterrupted_run(tmp_path: Path) -> None:
    """Mid-epoch and epoch-end checkpoints alike: the same history rows, the same hook calls
    from the checkpoint on, and the same final weights, bit for bit."""
    ref_history, ref_calls, ref_weights = _fit(tmp_path / "ref")
    assert ref_calls[-1][0] == "skipped" and ref_calls[-1][1] >= 1  # the bad row was drawn
    assert len(ref_history) == 3
    checkpoints = sorted((tmp_path / "ref").glob("step-*"))
    assert [p.name for p in checkpoints] == [f"step-{s:06d}" for s in range(1, 7)]
    for ckpt in checkpoints:
        state = json.loads((ckpt / STATE_FILE).read_text())
        history, calls, weights = _fit(tmp_path / f"from-{ckpt.name}", resume=ckpt)
        assert history == ref_history, ckpt.name
        # from where the checkpoint was: the later steps' logs, epoch ends and best models
        later = [c for c in calls if c[0] != "start"]
        assert later == [c for c in ref_calls if c[0] != "start"][-len(later) :], ckpt.name
        assert [c[1] for c in later if c[0] == "log"] == list(range(state["step"] + 1, 7))
        # the checkpoint's epoch starts again (a task may freeze layers in it)
        assert [c[1] for c in calls if c[0] == "start"] == list(range(state["epoch"], 4))
        for a, b in zip(weights, ref_weights, strict=True):
            assert torch.equal(a, b), ckpt.name
