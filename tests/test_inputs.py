"""Data inputs, predict and report under hostile input (issue 14), through the real CLI.

Every data path is stat-checked before it is opened (a real FIFO, /dev/zero, a socket);
per-row text work is bounded (a multi-megabyte cell, peak memory measured); predict refuses
bad outputs before any work and writes atomically (a real read-only tmpfs and a full one, in
a private mount namespace); regression targets beyond float32 are named by row; predict warns
on runs that never finished; report warns on damaged JSON; ``runs --sort`` shows its column.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import TUNEFORGE, ok, one_line_error, run_cli
from tinymodels import make_texts, write_csv

#: Seconds a command that must fail fast may take; a hang on a FIFO would exceed it.
QUICK = 90


def write_config(root: Path, checkpoint: Path, name: str = "config.yaml", **sections) -> Path:
    cfg = {
        "task": "text-classification",
        "data": {"path": "data.csv"},
        "model": {"name": "hf-sequence-classification", "checkpoint": str(checkpoint)},
        "trainer": {"epochs": 1, "batch_size": 16, "lr": 3e-3, "early_stopping_patience": None},
        "output": {"dir": str(root / "runs" / "run")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = root / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
) -> tuple[Path, int]:
    """One finished tiny-BERT run (tests copy it before changing anything) and the peak RSS
    of the process that trained it: the baseline of the bounded-memory test."""
    root = tmp_path_factory.mktemp("inputs-run")
    write_csv(root / "data.csv", make_texts(120, seed=3))
    rc, peak, err = peak_run("run", str(write_config(root, tiny_models["bert"])), "-q", cwd=root)
    assert rc == 0, err
    return root / "runs" / "run", peak


@pytest.fixture(scope="module")
def trained(trained_run: tuple[Path, int]) -> Path:
    return trained_run[0]


PEAK = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=600)\n"
    "sys.stderr.write(p.stderr)\n"
    "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_run(*args: str, cwd: Path) -> tuple[int, int, str]:
    """(exit status, peak RSS in KiB, stderr) of one CLI process, measured in a fresh parent
    (RUSAGE_CHILDREN of this test process holds the largest of all earlier children)."""
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, str(TUNEFORGE), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    rc, peak = proc.stdout.split()[-2:]
    return int(rc), int(peak), proc.stderr


def new_messages(path: Path, n: int = 5) -> Path:
    return write_csv(path, [(t, "") for t, _ in make_texts(n, seed=9)], ("text", "note"))


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def unix_socket(path: Path) -> Path:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the socket file stays
    return path


# -- data paths: regular files only ---------------------------------------------------------

SPECIAL = {
    "fifo": (fifo, "is a FIFO (named pipe), not a regular file"),
    "device": (lambda _: Path("/dev/zero"), "is a character device, not a regular file"),
    "socket": (unix_socket, "is a socket, not a regular file"),
}


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("kind", list(SPECIAL))
def test_a_data_path_that_is_not_a_regular_file_is_refused_without_opening_it(
    tmp_path: Path, tiny_models: dict[str, Path], command: str, kind: str
) -> None:
    make, what = SPECIAL[kind]
    special = make(tmp_path / "data.csv")
    # format csv: /dev/zero has no suffix, and must not be read as an endless CSV
    cfg = write_config(tmp_path, tiny_models["bert"], data={"path": str(special), "format": "csv"})
    line = one_line_error(run_cli(command, str(cfg), cwd=tmp_path, timeout=QUICK))
    assert f"{special}: data file {what}" in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_predict_refuses_an_input_that_is_not_a_regular_file(
    trained: Path, tmp_path: Path, kind: str
) -> None:
    make, what = SPECIAL[kind]
    special = make(tmp_path / "new.csv")
    proc = run_cli("predict", str(trained), "--input", str(special), timeout=QUICK)
    line = one_line_error(proc)
    assert f"{special}: input file {what}" in line, line


def _images(root: Path) -> Path:
    from PIL import Image

    for name, colour in {"red": (220, 40, 40), "blue": (40, 40, 220)}.items():
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (24, 24), colour).save(root / name / f"{i}.png")
    return root


def _image_config(root: Path, data: str) -> Path:
    cfg = {
        "task": "image-classification",
        "data": {"path": data},
        "model": {"name": "timm", "architecture": "test_efficientnet"},
        "tokenizer": {"name": "timm-transforms", "input_size": 32},
        "output": {"dir": str(root / "runs" / "run")},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root / "config.yaml"


def test_image_folders_and_image_paths_must_be_regular_files(tmp_path: Path) -> None:
    images = _images(tmp_path / "images")
    # a FIFO inside a class folder: named, never opened
    pipe = fifo(images / "red" / "6.png")
    line = one_line_error(
        run_cli("validate", str(_image_config(tmp_path, "images")), timeout=QUICK)
    )
    assert f"{pipe}: is a FIFO (named pipe)" in line and "inside the image folder" in line, line
    pipe.unlink()
    # a table whose image column names a FIFO and a device: the image-files validator names rows
    rows = [(str(images / "red" / "0.png"), "red"), (str(fifo(tmp_path / "p.png")), "red")]
    rows += [("/dev/zero", "blue")] + [
        (str(images / "blue" / f"{i}.png"), "blue") for i in range(6)
    ]
    rows += [(str(images / "red" / f"{i}.png"), "red") for i in range(1, 6)]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp_path / "table.csv", index=False)
    proc = run_cli("validate", str(_image_config(tmp_path, "table.csv")), timeout=QUICK)
    line = one_line_error(proc)
    assert "image-files" in line, line
    assert f"row 1 {tmp_path / 'p.png'}: is a FIFO (named pipe)" in line, line
    assert "row 2 /dev/zero: is a character device" in line, line


# -- bounded per-row work -------------------------------------------------------------------


def test_a_multi_megabyte_text_cell_costs_bounded_memory_and_is_named(
    trained_run: tuple[Path, int], tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    rows = make_texts(120, seed=3)  # the data of trained_run, whose peak is the baseline
    huge = "refund card late " * 400_000  # 6.8 MB, 1.2 million words: a 1.2M-token encoding
    rows[3] = (huge, rows[3][1])
    write_csv(tmp_path / "huge.csv", rows)
    cfg = write_config(tmp_path, tiny_models["bert"], data={"path": "huge.csv"})
    rc, peak, err = peak_run("run", str(cfg), "-q", cwd=tmp_path)
    assert rc == 0, err
    # Tokenizing the whole cell alone takes ~700 MB more (and the old truncation count grew
    # past 10 GB on 50 MB); bounded, the cell costs a few copies of its string.
    assert peak - trained_run[1] < 200 * 1024, (trained_run[1], peak)
    assert re.search(r"warning: 1 of \d+ texts \([\d.]+%\) were truncated", err), err
    run = tmp_path / "runs" / "run"
    findings = json.loads((run / "findings.json").read_text())["findings"]
    long = [f for f in findings if f["kind"] == "long-text"]
    assert long and long[0]["rows"] == [3], findings
    assert (
        "longer than 1,000,000 characters (longest 6,800,000), cut to their first"
        in (long[0]["message"])
    )
    # predict on the same cell: a warning naming the row, bounded too
    out = tmp_path / "p.csv"
    ok(proc := run_cli("predict", str(run), "-i", str(tmp_path / "huge.csv"), "-o", str(out)))
    assert "huge.csv: 1 texts in column 'text' are longer than 1,000,000 characters" in proc.stderr
    assert "rows 3" in proc.stderr
    assert len(pd.read_csv(out)) == 120


def test_long_text_policies_drop_and_fail_name_the_rows(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    rows = make_texts(60, seed=6)
    rows[7] = ("word " * 250_000, rows[7][1])  # 1.25 million characters
    write_csv(tmp_path / "data.csv", rows)
    cfg = write_config(tmp_path, tiny_models["bert"])
    drop = "validators=[{name: long-text, policy: drop}]"
    report = json.loads(ok(run_cli("validate", str(cfg), "--set", drop, "--json")))
    assert (report["rows_loaded"], report["rows_kept"]) == (60, 59)
    fail = "validators=[{name: long-text, policy: fail}]"
    line = one_line_error(run_cli("validate", str(cfg), "--set", fail))
    assert "long-text, policy fail" in line and "rows 7" in line, line


# -- predict: inputs, outputs, atomic writes -------------------------------------------------


def test_predict_bad_inputs_and_outputs_are_one_line_errors_before_any_work(
    trained: Path, tmp_path: Path
) -> None:
    new = new_messages(tmp_path / "new.csv")
    (tmp_path / "header.csv").write_text("text\n")
    line = one_line_error(run_cli("predict", str(trained), "-i", str(tmp_path / "header.csv")))
    assert "header.csv: no data rows to predict on" in line, line
    (tmp_path / "outdir").mkdir()
    cases = {
        str(tmp_path / "outdir"): "is a folder; name a file",
        str(new): "is the input file; the predictions would replace the data",
        "/dev/null": "is a character device, not a regular file",
        str(tmp_path / "p.xlsx"): "unknown suffix '.xlsx'",
        str(new / "p.csv"): f"{new} is a file, not a folder",
        "/proc/tuneforge-p.csv": "cannot create files in /proc",
    }
    for output, expected in cases.items():
        line = one_line_error(run_cli("predict", str(trained), "-i", str(new), "-o", output))
        assert f"--output {output}: " in line and expected in line, (output, line)
    assert new.read_text().startswith("text,note")  # the input is untouched
    assert list((tmp_path / "outdir").iterdir()) == []
    # a good output, into folders made for it; no temporary file left
    ok(run_cli("predict", str(trained), "-i", str(new), "-o", str(tmp_path / "a/b/p.parquet")))
    assert len(pd.read_parquet(tmp_path / "a" / "b" / "p.parquet")["prediction"]) == 5
    leftovers = [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def in_private_mount(target: Path, options: str, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) with a fresh tmpfs mounted at ``target`` in a private mount
    namespace (``unshare -m``): the mount is gone when the script ends. Skips the test where
    the kernel or the sandbox forbids it."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    target.mkdir(parents=True, exist_ok=True)
    mount = f'mount -t tmpfs -o {options} tuneforge-test "{target}"'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", mount], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private namespace: {probe.stderr.strip()}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{mount} && {script}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_predict_to_a_read_only_or_full_file_system_is_one_line_and_leaves_nothing(
    trained: Path, tmp_path: Path
) -> None:
    new = new_messages(tmp_path / "new.csv", n=60)
    cli = f'"{TUNEFORGE}" predict "{trained}" -i "{new}"'
    mnt = tmp_path / "mnt"
    proc = in_private_mount(mnt, "ro,size=1m", f'{cli} -o "{mnt}/p.csv"')
    line = one_line_error(proc)
    assert f"--output {mnt}/p.csv: cannot create files in {mnt}: Read-only file system" in line
    # A 4 KiB file system holding an old file: the 60 predictions do not fit; the old file is
    # kept whole and no temporary file is left beside it.
    script = (
        f'printf "old\\n" > "{mnt}/p.csv" && {cli} -o "{mnt}/p.csv"; '
        f'echo "rc=$?"; ls -A "{mnt}"; cat "{mnt}/p.csv"'
    )
    proc = in_private_mount(mnt, "size=4k", script)
    assert "tuneforge: error: --output" in proc.stderr, proc.stderr
    assert "cannot write it: No space left on device" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.split() == ["rc=2", "p.csv", "old"], proc.stdout


# -- predict on runs that never finished ----------------------------------------------------


def test_predict_warns_on_a_run_that_did_not_complete_and_refuses_one_without_checkpoint(
    trained: Path, tmp_path: Path
) -> None:
    new = new_messages(tmp_path / "new.csv")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    partial = tmp_path / f".run.partial-{dead.pid}"
    shutil.copytree(trained, partial)
    (partial / "run.json").unlink()
    proc = run_cli("predict", str(partial), "-i", str(new), "-o", str(tmp_path / "a.csv"))
    ok(proc)
    warning = [ln for ln in proc.stderr.splitlines() if ln.startswith("tuneforge: warning:")]
    assert len(warning) == 1, proc.stderr
    assert "the run did not complete (no run.json: it was interrupted)" in warning[0]
    assert f"best checkpoint so far, {partial / 'checkpoint'}" in warning[0]
    # the run's final name: not there, and the message points at the partial folder
    line = one_line_error(run_cli("predict", str(tmp_path / "run"), "-i", str(new)))
    assert f"run folder not found: {tmp_path / 'run'} (only the unfinished {partial.name}" in line
    # still running (and no checkpoint yet): said so, and refused
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) as alive:
        try:
            running = tmp_path / f".live.partial-{alive.pid}"
            shutil.copytree(partial, running, ignore=shutil.ignore_patterns("checkpoint"))
            line = one_line_error(run_cli("predict", str(running), "-i", str(new)))
            assert f"it is still running as process {alive.pid}" in line, line
            assert "saved no best checkpoint" in line
        finally:
            alive.kill()
    # a failed run: its status and error are in the warning
    failed = tmp_path / "run.failed-20260101-000000"
    shutil.copytree(trained, failed)
    (failed / "run.json").write_text(
        json.dumps({"status": "failed", "error": "RuntimeError: CUDA error: device lost"})
    )
    proc = run_cli("predict", str(failed), "-i", str(new), "-o", str(tmp_path / "c.csv"))
    ok(proc)
    assert "run.json status 'failed': RuntimeError: CUDA error: device lost" in proc.stderr
    assert len(pd.read_csv(tmp_path / "c.csv")) == 5
    # no checkpoint: nothing to predict with
    shutil.rmtree(failed / "checkpoint")
    line = one_line_error(run_cli("predict", str(failed), "-i", str(new)))
    assert "the run did not complete (run.json status 'failed'" in line
    assert "saved no best checkpoint (no checkpoint/): nothing to predict with" in line
    # a damaged labels.json is named
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / "labels.json").write_text('{"classes": ["bill')
    line = one_line_error(run_cli("predict", str(broken), "-i", str(new)))
    assert f"{broken / 'labels.json'}: unreadable (not valid JSON)" in line


# -- regression targets --------------------------------------------------------------------


def test_a_target_beyond_float32_is_named_by_row_and_column(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    rows = make_texts(60, seed=4)
    frame = pd.DataFrame({"text": [t for t, _ in rows], "y": [float(i % 7) for i in range(60)]})
    frame.loc[5, "y"] = 1e308
    frame.loc[11, "y"] = -3e39
    frame.to_csv(tmp_path / "data.csv", index=False)
    cfg = write_config(tmp_path, tiny_models["bert"], task="text-regression", data={"target": "y"})
    report = json.loads(ok(run_cli("validate", str(cfg), "--json")))
    over = [f for f in report["findings"] if f["kind"] == "overflowing-target"]
    assert over and over[0]["rows"] == [5, 11] and over[0]["action"] == "dropped 2 rows", report
    assert "beyond float32's range" in over[0]["message"] and "'y'" in over[0]["message"]
    # without the validator the run is refused before training, naming the rows
    line = one_line_error(run_cli("run", str(cfg), "--set", "validators=[schema]"))
    assert "target column 'y': 2 rows have a target beyond float32's range" in line, line
    assert "rows 5, 11" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# -- report and runs ----------------------------------------------------------------------


def test_report_warns_on_corrupt_json_files_and_names_them(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    metrics = run / "metrics.json"
    metrics.write_text(metrics.read_text()[:40])  # truncated mid-write
    (run / "split.json").write_text("[1, 2]")
    proc = run_cli("report", str(run))
    ok(proc)
    assert f"tuneforge: warning: {metrics}: is truncated or not valid JSON" in proc.stderr
    assert f"{run / 'split.json'}: holds a JSON list, not an object" in proc.stderr
    assert (run / "report.html").is_file()
    proc = run_cli("runs", str(tmp_path))
    ok(proc)
    assert f"tuneforge: warning: {metrics}: is truncated or not valid JSON" in proc.stderr
    # run.json, the proof the run completed, is still required
    (run / "run.json").write_text("{")
    line = one_line_error(run_cli("report", str(run)))
    assert f"{run / 'run.json'} is unreadable or not valid JSON" in line


def test_runs_sort_shows_the_column_it_sorts_by(trained: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        shutil.copytree(trained, tmp_path / name, ignore=shutil.ignore_patterns("checkpoint"))
    header = ok(run_cli("runs", str(tmp_path))).splitlines()[0].split()
    assert "test.f1_weighted" not in header and "started" not in header
    for key, column in (
        ("f1_weighted", "test.f1_weighted"),
        ("started", "started"),
        ("best_value", "best_value"),
    ):
        header = ok(run_cli("runs", str(tmp_path), "--sort", key)).splitlines()[0].split()
        assert column in header, (key, header)
        assert header[-1] == "seconds"
