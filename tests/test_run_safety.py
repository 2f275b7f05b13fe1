"""Run folders never lose or overwrite what a run does not own, and components write only inside
them: real ``tuneforge`` processes racing for one ``output.dir``, a folder planted mid-run, two
``--resume`` at once, escaping paths, a read-only and a full file system (real mounts, in a
private mount namespace, where root may make them)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import TUNEFORGE, ok, one_line_error, run_cli

DEAD_PID = 4_999_999  # above Linux's pid_max: no process has it

#: A local plugin that holds every run at its epoch ends until the file ``go`` exists, so a
#: test can act while a run is in the middle of training (no sleeps, no timing guesses).
GATE = """
import time
from pathlib import Path

from tuneforge import hookimpl

GO = Path(__file__).with_name("go")


@hookimpl
def on_epoch_end(run, epoch, metrics):
    (Path(run.run_dir) / ".at-the-gate").touch()
    deadline = time.monotonic() + 300
    while not GO.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def gated_config(project, **sections):
    (project.root / "gate.py").write_text(GATE)
    trainer = {"epochs": 2, "num_workers": 0, **sections.pop("trainer", {})}
    return project.config(plugins={"local": ["gate.py"]}, trainer=trainer, **sections)


def start(*args: str, umask: int | None = None) -> subprocess.Popen[str]:
    """A ``tuneforge`` process in the background (stderr kept for the test to read)."""
    return subprocess.Popen(
        [str(TUNEFORGE), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def wait_for(predicate, proc: subprocess.Popen[str], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended before {what}: {out}{err}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def at_the_gate(runs: Path, name: str = "run") -> bool:
    return any(runs.glob(f".{name}.partial-*/.at-the-gate"))


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def error_line(returncode: int, err: str) -> str:
    """The one-line user error of a finished background process."""
    assert returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tuneforge: error: "), err
    return lines[0]


def test_a_second_run_on_a_busy_output_dir_stops_at_once_naming_the_first(project) -> None:
    cfg = gated_config(project)
    runs = project.root / "runs"
    first = start("run", str(cfg), umask=0o027)
    wait_for(lambda: at_the_gate(runs), first, "the first run reached its first epoch end")
    [partial] = runs.glob(".run.partial-*")
    # While it trains, the partial folder never says completed.
    assert json.loads((partial / "run.json").read_text())["status"] == "running"

    line = one_line_error(run_cli("run", str(cfg)))
    assert f"process {first.pid}" in line and str(runs / "run") in line
    line = one_line_error(run_cli("run", str(cfg), "--overwrite"))
    assert f"process {first.pid}" in line
    # --resume of the running run is refused the same way.
    assert str(first.pid) in one_line_error(run_cli("run", "--resume", str(runs / "run")))

    (project.root / "go").touch()
    returncode, out, err = finish(first)
    assert returncode == 0, out + err
    run = runs / "run"
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in runs.iterdir()) == ["run"]  # no lock, no partial left

    # Every file and folder follows the umask (027), the checkpoint's weights included.
    modes = {
        str(p.relative_to(run)): stat.S_IMODE(p.lstat().st_mode)
        for p in [run, *run.rglob("*")]
        if not p.is_symlink()
    }
    assert (run / "checkpoint" / "model.safetensors").is_file()
    wrong = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o750 if (run / name).is_dir() else 0o640)
    }
    assert wrong == {}
    info = json.loads((run / "run.json").read_text())
    assert info["processes"] == 1 and info["machines"] == 1


@pytest.mark.parametrize(
    ("planted", "overwrite"),
    [("empty folder", False), ("folder with a file", True), ("completed run", False)],
)
def test_what_appears_at_output_dir_during_a_run_is_never_replaced(
    project, planted: str, overwrite: bool
) -> None:
    cfg = gated_config(project, trainer={"epochs": 1})
    runs = project.root / "runs"
    args = ["run", str(cfg), *(["--overwrite"] if overwrite else [])]
    proc = start(*args)
    wait_for(lambda: at_the_gate(runs), proc, "the run reached its epoch end")
    target = runs / "run"
    target.mkdir()
    if planted == "folder with a file":
        (target / "precious.txt").write_text("mine\n")
    elif planted == "completed run":
        (target / "run.json").write_text(json.dumps({"status": "completed", "task": "other"}))
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    (project.root / "go").touch()

    returncode, out, err = finish(proc)
    line = error_line(returncode, err)
    assert str(target) in line and ".failed-" in line
    if planted == "completed run":
        assert "--overwrite" in line
    else:
        assert "not a tuneforge run folder" in line
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # left untouched
    # The run's own result is kept beside it, whole, and says it failed.
    [kept] = runs.glob("run.failed-*")
    assert f"kept in {kept}" in out
    assert json.loads((kept / "run.json").read_text())["status"] == "failed"
    assert "test" in json.loads((kept / "metrics.json").read_text())
    assert (kept / "checkpoint" / "model.safetensors").is_file()
    assert sorted(p.name for p in runs.iterdir()) == sorted(["run", kept.name])


def test_two_concurrent_resumes_of_one_run_one_wins(project) -> None:
    cfg = gated_config(project, trainer={"checkpoint_every_n_steps": 2})
    runs = project.root / "runs"
    killed = start("run", str(cfg))
    wait_for(lambda: any(runs.glob(".run.partial-*/state/step-*")), killed, "a checkpoint")
    wait_for(lambda: at_the_gate(runs), killed, "the epoch end")
    killed.send_signal(signal.SIGKILL)
    finish(killed)
    [partial] = runs.glob(".run.partial-*")
    # A killed run's folder does not claim to be complete.
    assert json.loads((partial / "run.json").read_text())["status"] == "running"

    # Both start together; the gate (closed) keeps the winner from finishing meanwhile.
    for leftover in runs.glob(".run.partial-*/.at-the-gate"):
        leftover.unlink()
    a = start("run", "--resume", str(runs / "run"))
    b = start("run", "--resume", str(runs / "run"))
    deadline = time.monotonic() + 300
    while a.poll() is None and b.poll() is None:
        assert time.monotonic() < deadline, "neither resume ended"
        time.sleep(0.05)
    loser, winner = (a, b) if a.poll() is not None else (b, a)
    line = error_line(*finish(loser)[::2])
    assert str(winner.pid) in line, line
    (project.root / "go").touch()
    returncode, out, err = finish(winner)
    assert returncode == 0, out + err
    assert "resuming" in out
    assert json.loads((runs / "run" / "run.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in runs.iterdir()) == ["run"]


def test_a_run_killed_in_its_last_hooks_is_committed_and_stale_lock_is_harmless(project) -> None:
    (project.root / "die.py").write_text(
        textwrap.dedent("""
        import os, signal
        from tuneforge import hookimpl

        @hookimpl
        def on_run_end(run, metrics, status):
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    )
    cfg = project.config(plugins={"local": ["die.py"]}, trainer={"epochs": 1})
    runs = project.root / "runs"
    proc = run_cli("run", str(cfg))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # Killed after the commit: the folder is complete under its final name, no partial says
    # completed, and the killed process's lock file is left, unlocked.
    assert not list(runs.glob(".run.partial-*"))
    assert json.loads((runs / "run" / "run.json").read_text())["status"] == "completed"
    assert (runs / ".run.lock").is_file()
    assert "completed run" in one_line_error(run_cli("run", "--resume", str(runs / "run")))
    (project.root / "die.py").write_text("")
    ok(run_cli("run", str(cfg), "--overwrite"))
    assert sorted(p.name for p in runs.iterdir()) == ["run"]


def test_resume_of_a_partial_whose_state_is_gone_says_so(project) -> None:
    runs = project.root / "runs"
    partial = runs / f".run.partial-{DEAD_PID}"
    partial.mkdir(parents=True)
    (partial / "config.yaml").write_text("task: text-classification\n")
    line = one_line_error(run_cli("run", "--resume", str(runs / "run")))
    assert str(partial) in line and "exists but has no training-state checkpoint" in line
    assert "is missing" in line
    (partial / "state").mkdir()
    line = one_line_error(run_cli("run", "--resume", str(runs / "run")))
    assert "holds no complete checkpoint" in line
    assert sorted(p.name for p in runs.iterdir()) == [partial.name]  # nothing else written


@pytest.mark.parametrize(
    ("callback", "key", "problem"),
    [
        ({"name": "csv", "file": "../../victim.csv"}, "file", "leaves the run folder"),
        ({"name": "csv", "file": "logs/../../../victim.csv"}, "file", "leaves the run folder"),
        ({"name": "csv", "file": "VICTIM"}, "file", "is an absolute path"),
        ({"name": "csv", "file": "~/victim.csv"}, "file", "is an absolute path"),
        ({"name": "csv", "file": "logs/.."}, "file", "is the run folder itself"),
        ({"name": "csv", "file": "./run.json"}, "file", "run.json belongs to the run folder"),
        ({"name": "tensorboard", "log_dir": "../../tb"}, "log_dir", "leaves the run folder"),
        ({"name": "tensorboard", "log_dir": "checkpoint/tb"}, "log_dir", "belongs to the run"),
    ],
)
def test_a_component_path_that_leaves_the_run_folder_is_a_config_error(
    project, callback: dict, key: str, problem: str
) -> None:
    victim = project.root / "victim.csv"
    victim.write_text("precious\n")
    callback = {k: str(victim) if v == "VICTIM" else v for k, v in callback.items()}
    cfg = project.config(callbacks=["csv", callback])
    line = one_line_error(run_cli("run", str(cfg), cwd=project.root))
    assert line.startswith(f"tuneforge: error: callbacks[1].{key}: "), line
    assert problem in line
    assert victim.read_text() == "precious\n"
    assert not (project.root / "runs").exists()


def test_confined_follows_symbolic_links_when_a_component_writes(tmp_path: Path) -> None:
    """In-process, the real csv logger: a link inside the run folder that leads out of it is
    refused when the file is opened, and the file outside is not touched."""
    from tuneforge.config import build_config
    from tuneforge.errors import ConfigError, UserError
    from tuneforge.plugins.loggers import CsvLogger
    from tuneforge.run import RunContext, confined

    run_dir, outside = tmp_path / ".run.partial-1", tmp_path / "outside"
    run_dir.mkdir()
    outside.mkdir()
    (outside / "m.csv").write_text("precious\n")
    (run_dir / "logs").symlink_to(outside)
    with pytest.raises(ConfigError, match=r"^k: 'logs/m.csv' leads outside the run folder"):
        confined(run_dir, "logs/m.csv", "k")
    assert confined(run_dir, "sub/m.csv", "k") == run_dir.resolve() / "sub" / "m.csv"

    cfg = build_config({"task": "text-classification", "data": {"path": "data.csv"}})
    ctx = RunContext(cfg, run_dir, tmp_path / "run", "text-classification", "classification")
    logger = CsvLogger(CsvLogger.Config(file="logs/m.csv"))
    with pytest.raises(UserError, match="csv logger: file: .*leads outside the run folder"):
        logger.on_run_start(run=ctx)
    (run_dir / "metrics.csv").symlink_to(outside / "m.csv")  # a link at the file itself
    with pytest.raises(UserError, match="csv logger: file: 'metrics.csv' leads outside"):
        CsvLogger(CsvLogger.Config()).on_run_start(run=ctx)
    assert (outside / "m.csv").read_text() == "precious\n"


def test_run_folder_commit_rechecks_the_target_and_never_clobbers(tmp_path: Path) -> None:
    """In-process, the mechanism the CLI tests above drive: the lock, the commit-time check,
    the rename that cannot replace an empty folder."""
    from tuneforge.errors import UserError
    from tuneforge.run import RunFolder, rename_noreplace

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()  # os.rename(a, b) would silently replace this empty folder
    with pytest.raises(FileExistsError):
        rename_noreplace(a, b)
    assert a.is_dir() and b.is_dir()

    final = tmp_path / "runs" / "run"
    folder = RunFolder(final)
    with pytest.raises(UserError, match=f"process {os.getpid()}"):
        RunFolder(final)  # the name is locked while the first one holds it
    folder.write_json("metrics.json", {"x": 1})
    final.mkdir()
    with pytest.raises(UserError, match="not a tuneforge run folder"):
        folder.commit({"status": "completed"})
    kept = folder.fail(UserError("stopped"))
    assert kept.name.startswith("run.failed-") and (kept / "metrics.json").is_file()
    assert final.is_dir() and not any(final.iterdir())
    shutil.rmtree(final)

    first = RunFolder(final)
    assert first.commit({"status": "completed", "n": 1}) == final.resolve()
    with pytest.raises(UserError, match="run folder already exists"):
        RunFolder(final)
    second = RunFolder(final, overwrite=True)
    second.commit({"status": "completed", "n": 2})
    assert json.loads((final / "run.json").read_text())["n"] == 2
    assert sorted(p.name for p in final.parent.iterdir()) == sorted(["run", kept.name])


def _can_mount(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", probe],
        capture_output=True,
    )
    probe.rmdir()
    return proc.returncode == 0


def in_mount(tmp_path: Path, options: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (sh) in a private mount namespace with a tmpfs mounted at ``$MNT``.

    The mount exists only for that process tree: nothing is left mounted on the machine.
    """
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs -o {options} tmpfs "$MNT" && {script}'],
        env={**os.environ, "MNT": str(mnt), "TF": str(TUNEFORGE), "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip


def test_a_read_only_output_dir_is_a_one_line_error(project, tmp_path: Path) -> None:
    # Without privileges: a path under a regular file, a folder of /proc.
    blocker = project.root / "a-file"
    blocker.write_text("not a folder\n")
    cfg = project.config(trainer={"epochs": 1})
    line = one_line_error(run_cli("run", str(cfg), "--set", f"output.dir={blocker}/runs/run"))
    assert f"{blocker} is a file, not a folder" in line
    line = one_line_error(run_cli("run", str(cfg), "--set", "output.dir=/proc/tuneforge/run"))
    assert "cannot write the run folder /proc/tuneforge/run" in line
    assert blocker.read_text() == "not a folder\n"

    if not _can_mount(tmp_path):
        pytest.skip("mounting a read-only tmpfs needs a private mount namespace (unshare -m)")
    proc = in_mount(
        tmp_path,
        "ro",
        f'"$TF" run {cfg} --set output.dir="$MNT/run"; echo "rc=$?"; ls -A "$MNT"',
    )
    assert "rc=2" in proc.stdout and proc.stdout.strip().endswith("rc=2"), proc.stdout
    [line] = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("tuneforge: error: cannot write the run folder ")
    assert f"{tmp_path / 'mnt'}: Read-only file system" in line


def test_a_full_file_system_is_a_one_line_error(project, tmp_path: Path) -> None:
    if not _can_mount(tmp_path):
        pytest.skip("mounting a small tmpfs needs a private mount namespace (unshare -m)")
    cfg = project.config(trainer={"epochs": 1})
    proc = in_mount(
        tmp_path,
        "size=64k",
        f'"$TF" run {cfg} -q --set output.dir="$MNT/run"; echo "rc=$?"; '
        'for f in "$MNT"/*; do echo "kept $f"; cat "$f/run.json"; done; '
        'echo "all: $(ls -A "$MNT" | tr "\\n" " ")"',
    )
    assert "rc=2" in proc.stdout, proc.stdout + proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith(f"tuneforge: error: cannot write the run folder {tmp_path}/mnt/run: ")
    assert "No space left on device" in line or "disk full" in line
    # Training had started: what it logged is kept beside the final name, and says so.
    kept = [ln for ln in proc.stdout.splitlines() if ln.startswith("kept ")]
    assert len(kept) == 1 and ".failed-" in kept[0], proc.stdout
    assert '"status": "failed"' in proc.stdout
    [listing] = [ln for ln in proc.stdout.splitlines() if ln.startswith("all: ")]
    assert listing.split()[1:] == [kept[0].split("/")[-1]]  # no lock, no partial left


def test_a_missing_model_checkpoint_folder_writes_nothing(project) -> None:
    """A set-up failure (tokenizer, datasets, model) is a config error: no .failed- folder."""
    cfg = project.config(
        model={"name": "hf-sequence-classification", "checkpoint": "./no-such-model"}
    )
    err = one_line_error(run_cli("run", str(cfg), cwd=project.root))
    assert "model.checkpoint" in err and "no-such-model" in err
    runs = project.root / "runs"
    assert not runs.exists() or not list(runs.iterdir()), list(runs.iterdir())
