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
    assert 1 <= len(kept) <= 2, kept  # keep_checkpoints: 2
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
