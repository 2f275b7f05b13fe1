"""A damaged training state is refused before anything moves, naming the file.

One run is killed with SIGKILL after a checkpoint; each case copies its partial folder, damages
one part of ``state/step-*/`` (same-size garbage, zeroed first bytes, or zeroed with the
manifest forged to match) and runs ``tuneforge run --resume`` through the real CLI: exit 2, one
line naming the file, and the folder left exactly as it was (same files, same bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from test_resume import DEAD_PID, kill_after_checkpoint

from conftest import TUNEFORGE, one_line_error, run_cli
from tinymodels import make_texts, write_csv

# Every kind of file Accelerate and tuneforge write into a checkpoint.
PARTS = [
    "model.safetensors",
    "optimizer.bin",
    "scheduler.bin",
    "random_states_0.pkl",
    "epoch_rng.json",
    "epoch_rng.safetensors",
    "trainer_state.json",
    "best/model.safetensors",
]


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    """The partial folder of a run killed in its second epoch (with a best model saved)."""
    root = tmp_path_factory.mktemp("killed")
    write_csv(root / "data.csv", make_texts(120, seed=1))
    cfg = {
        "task": "text-classification",
        "data": {"path": "data.csv"},
        "model": {"name": "hf-sequence-classification", "checkpoint": str(tiny_models["bert"])},
        "trainer": {
            "epochs": 3,
            "batch_size": 16,
            "lr": 3e-3,
            "monitor": "loss",
            "early_stopping_patience": None,
            "checkpoint_every_n_steps": 4,
            "num_workers": 0,
        },
        "output": {"dir": str(root / "runs" / "run")},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [str(TUNEFORGE), "run", str(root / "config.yaml")]
    return kill_after_checkpoint(cmd, root / "runs", "run", min_step=7)  # 6 steps per epoch


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder``: ``dir`` or the SHA-256 of the file's bytes."""
    return {
        str(p.relative_to(folder)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def copy_of(killed: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the killed run's partial folder (by bytes, not links) and its checkpoint."""
    runs = tmp_path / "runs"
    runs.mkdir()
    partial = runs / f".run.partial-{DEAD_PID}"
    shutil.copytree(killed, partial)
    [*_, latest] = sorted((partial / "state").glob("step-*"))
    return partial, latest


def reseal(ckpt: Path) -> None:
    """Forge the manifest and checksum of ``trainer_state.json`` to match the files as they are
    now, as a user who knows the format could: only the parts' own loaders can catch it."""
    from tuneforge.checkpoint import STATE_FILE, _checksum, _manifest

    state = json.loads((ckpt / STATE_FILE).read_text())
    state["files"] = _manifest(ckpt)
    state["checksum"] = _checksum(state)
    (ckpt / STATE_FILE).write_text(json.dumps(state))


def damage(f: Path, how: str) -> None:
    data = f.read_bytes()
    if how == "garbage":  # same size, other bytes
        new = hashlib.shake_256(data).digest(len(data))
    else:  # zeroed: the first 64 bytes (size unchanged)
        new = bytes(min(64, len(data))) + data[64:]
    assert new != data and len(new) == len(data)
    f.write_bytes(new)


def refused(partial: Path) -> str:
    """``run --resume`` on ``partial`` is a one-line error that leaves it as it was."""
    before = snapshot(partial)
    line = one_line_error(run_cli("run", "--resume", str(partial)))
    assert snapshot(partial) == before  # same files, same bytes: nothing adopted or moved
    assert [p.name for p in partial.parent.iterdir()] == [partial.name]  # no run, no .failed-
    return line


def test_the_killed_checkpoint_holds_every_part(killed: Path) -> None:
    [*_, latest] = sorted((killed / "state").glob("step-*"))
    files = {str(p.relative_to(latest)) for p in latest.rglob("*") if p.is_file()}
    assert set(PARTS) <= files, sorted(files)
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["format"] == 2
    assert set(state["files"]) == files - {"trainer_state.json"}
    entry = state["files"]["random_states_0.pkl"]
    assert entry["size"] == (latest / "random_states_0.pkl").stat().st_size
    assert (
        entry["sha256"] == hashlib.sha256((latest / "random_states_0.pkl").read_bytes()).hexdigest()
    )


@pytest.mark.parametrize("how", ["garbage", "zeroed"])
@pytest.mark.parametrize("part", PARTS)
def test_a_damaged_part_is_named_and_nothing_moves(
    killed: Path, tmp_path: Path, part: str, how: str
) -> None:
    partial, ckpt = copy_of(killed, tmp_path)
    damage(ckpt / part, how)
    line = refused(partial)
    assert f"{ckpt / part}:" in line, line


@pytest.mark.parametrize(
    "part", ["random_states_0.pkl", "optimizer.bin", "scheduler.bin", "epoch_rng.safetensors"]
)
def test_a_part_that_does_not_load_is_named_even_with_a_forged_manifest(
    killed: Path, tmp_path: Path, part: str
) -> None:
    partial, ckpt = copy_of(killed, tmp_path)
    damage(ckpt / part, "zeroed")
    reseal(ckpt)
    line = refused(partial)
    assert f"{ckpt / part}:" in line, line
    assert "SHA-256" not in line and "checksum" not in line  # the part's loader caught it


def test_missing_extra_and_old_format_parts_are_refused(killed: Path, tmp_path: Path) -> None:
    partial, ckpt = copy_of(killed, tmp_path)
    moved = tmp_path / "scheduler.bin"
    os.replace(ckpt / "scheduler.bin", moved)
    assert f"{ckpt / 'scheduler.bin'}: missing" in refused(partial)
    os.replace(moved, ckpt / "scheduler.bin")

    # A file Accelerate would load instead of the safetensors weights, planted beside them.
    (ckpt / "pytorch_model.bin").write_bytes(b"planted")
    assert f"{ckpt / 'pytorch_model.bin'}: not part of the checkpoint" in refused(partial)
    (ckpt / "pytorch_model.bin").unlink()

    # A format-1 state (sizes only, from an older version) cannot be verified.
    state_file = ckpt / "trainer_state.json"
    state = json.loads(state_file.read_text())
    old = {**state, "format": 1, "files": {k: v["size"] for k, v in state["files"].items()}}
    old.pop("checksum")
    state_file.write_text(json.dumps(old))
    line = refused(partial)
    assert f"{state_file}:" in line and "format 1" in line

    # An edited number in the state (still valid JSON) breaks its checksum.
    state["best_value"] = 0.0
    state_file.write_text(json.dumps(state))
    assert f"{state_file}: damaged or edited" in refused(partial)


def test_the_undamaged_copy_passes_every_check(killed: Path, tmp_path: Path) -> None:
    """The checks refuse damage only (``test_resume`` resumes such a run to the end)."""
    from tuneforge.checkpoint import read_checkpoint

    _, ckpt = copy_of(killed, tmp_path)
    state = read_checkpoint(ckpt)
    assert state["step"] == int(ckpt.name.split("-")[1])
