"""A real 2-process DDP fine-tune on CPU (torchrun, gloo) against a 1-process run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

TORCHRUN = Path(sys.executable).parent / "torchrun"

pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")


def torchrun(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def steps_and_losses(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    steps, losses = {}, {}
    for line in (run / "history.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] == "train" and rec["epoch"] is not None:
            if rec["name"] == "steps":
                steps[rec["epoch"]] = rec["value"]
            elif rec["name"] == "loss":
                losses[rec["epoch"]] = rec["value"]
    return steps, losses


def test_two_process_run_matches_one_process_run(project) -> None:
    """Same global batch (2 x 8 = 16): same optimiser steps per epoch, one run folder."""
    runs = project.root / "runs"
    trainer = {"epochs": 2, "log_every_n_steps": 3}
    one = project.config(
        "one.yaml",
        balancer="weighted-sampler",
        trainer={**trainer, "batch_size": 16},
        output={"dir": str(runs / "one")},
    )
    two = project.config(
        "two.yaml",
        balancer="weighted-sampler",
        trainer={**trainer, "batch_size": 8, "group_by_length": True},
        output={"dir": str(runs / "two")},
    )
    proc = torchrun("-m", "tuneforge.cli", "run", str(two), cwd=project.root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the console prints from the main process only
    assert proc.stdout.count("run folder:") == 1, proc.stdout
    assert proc.stdout.count("test: ") == 1
    one_proc = run_cli("run", str(one), cwd=project.root)
    assert one_proc.returncode == 0, one_proc.stderr
    # one folder per run: no partial, failed or per-rank leftovers
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"]
    assert {p.name for p in (runs / "two").iterdir()} >= {
        "checkpoint",
        "metrics.json",
        "run.json",
        "history.jsonl",
        "config.yaml",
    }
    steps2, loss2 = steps_and_losses(runs / "two")
    steps1, loss1 = steps_and_losses(runs / "one")
    train_rows = len(json.loads((runs / "two" / "split.json").read_text())["balanced_train"])
    expected = math.ceil(train_rows / 16)
    assert steps2 == steps1 == {1: expected, 2: expected}
    assert all(math.isfinite(v) for v in [*loss1.values(), *loss2.values()])
    metrics = json.loads((runs / "two" / "metrics.json").read_text())
    assert math.isfinite(metrics["test"]["loss"]) and metrics["epochs_run"] == 2
    info = json.loads((runs / "two" / "run.json").read_text())
    assert info["status"] == "completed" and info["processes"] == 2 and info["machines"] == 1
    assert json.loads((runs / "one" / "run.json").read_text())["processes"] == 1
    # the history is written once (not once per process)
    assert len([ln for ln in (runs / "two" / "history.jsonl").read_text().splitlines()]) == len(
        [ln for ln in (runs / "one" / "history.jsonl").read_text().splitlines()]
    )


PROBE = """
import json, sys
import numpy as np
import torch
from tuneforge.config import TrainerConfig
from tuneforge.sampling import check_prepared, find_sampler, set_epoch
from tuneforge.trainer import Trainer

class Rows:
    def __init__(self, n):
        self.n, self.lengths = n, [(i * 7) % 61 + 2 for i in range(n)]
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        return {"idx": i, "labels": i % 2}

def collate(rows):
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}

n, out = int(sys.argv[1]), {}
weights = np.where(np.arange(n) % 4 == 0, 3.0, 1.0)
for grouped in (False, True):
    trainer = Trainer(TrainerConfig(batch_size=8, seed=11, group_by_length=grouped, device="cpu"))
    acc = trainer.accelerator
    dl = trainer._loader(Rows(n), collate, 8, True, weights)
    sampler = find_sampler(dl)
    dl = acc.prepare(dl)
    check_prepared(dl, sampler, acc.num_processes)
    for epoch in (1, 2):
        set_epoch(dl, sampler, epoch)
        out[f"{grouped}-{epoch}"] = [b["idx"].tolist() for b in dl]
out["world"] = acc.num_processes
with open(f"{sys.argv[2]}/rank{acc.process_index}.json", "w") as fh:
    json.dump(out, fh)
"""


def test_samplers_shard_one_global_draw_over_two_processes(tmp_path: Path) -> None:
    """Each rank sees different batches; together exactly the 1-process draw, step by step."""
    from tuneforge.sampling import LengthGroupedBatchSampler, WeightedSampler

    n = 96  # 12 batches of 8: 6 steps of 2 x 8
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    proc = torchrun(str(script), str(n), str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    weights = np.where(np.arange(n) % 4 == 0, 3.0, 1.0)
    lengths = [(i * 7) % 61 + 2 for i in range(n)]
    for epoch in (1, 2):
        draw = WeightedSampler(weights, seed=11)
        draw.set_epoch(epoch)
        grouped = LengthGroupedBatchSampler(lengths, 16, seed=11, base=draw)
        grouped.set_epoch(epoch)
        # one process with batch 16 (the same global batch): its batches, step by step
        one_plain = [draw.indices().tolist()[k : k + 16] for k in range(0, n, 16)]
        one_grouped = list(grouped)
        for key, one in ((f"False-{epoch}", one_plain), (f"True-{epoch}", one_grouped)):
            b0, b1 = r0[key], r1[key]
            assert len(b0) == len(b1) == len(one) == 6
            assert b0 != b1  # different shards
            for k, batch in enumerate(one):
                assert sorted(b0[k] + b1[k]) == sorted(batch)
    assert r0["False-1"] != r0["False-2"]  # a new draw each epoch


def test_a_study_under_a_multi_process_launch_is_a_one_line_error(project) -> None:
    """Checked before any process group starts (the launcher's variables are enough)."""
    from conftest import one_line_error

    cfg = project.config(tuner={"name": "grid", "space": {"trainer.lr": {"choice": [1e-4, 1e-3]}}})
    proc = run_cli("run", str(cfg), cwd=project.root, env={"WORLD_SIZE": "2", "RANK": "0"})
    line = one_line_error(proc)
    assert "tuner" in line and "2-process" in line
    assert not (project.root / "runs").exists() or not any((project.root / "runs").iterdir())
