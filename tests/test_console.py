"""What a user sees while a run trains: quiet, normal, verbose; terminal or plain lines."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios

from conftest import TUNEFORGE, run_cli

CONTROL = re.compile(r"[\r\x1b]")


def test_plain_lines_when_not_a_terminal(project) -> None:
    cfg = project.config(trainer={"epochs": 3})
    proc = run_cli("run", str(cfg))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert not CONTROL.search(out) and not CONTROL.search(proc.stderr)
    lines = out.splitlines()
    header = [ln for ln in lines if ln.split()[:3] == ["epoch", "train.loss", "val.loss"]]
    assert len(header) == 1 and "val.accuracy" in header[0] and "samples/s" in header[0]
    start = lines.index(header[0])
    rows = lines[start + 1 : start + 4]
    assert [r.split()[0] for r in rows] == ["1", "2", "3"]
    assert all(len(r.split()) >= len(header[0].split()) for r in rows)
    assert "step" not in out.split("samples/s", 1)[1].split("test:")[0]  # no step lines by default


def test_quiet_and_verbose(project) -> None:
    cfg = project.config(trainer={"epochs": 2, "log_every_n_steps": 5})
    quiet = run_cli("run", str(cfg), "-q", "--set", f"output.dir={project.root / 'q'}")
    assert quiet.returncode == 0, quiet.stderr
    assert [ln.split(":")[0] for ln in quiet.stdout.splitlines()] == ["test", "run folder"]
    verbose = run_cli("run", str(cfg), "--verbose", "--set", f"output.dir={project.root / 'v'}")
    steps = [ln for ln in verbose.stdout.splitlines() if " step " in ln]
    assert steps and all(
        re.search(r"loss \d+\.\d+ lr \S+ \d+ samples/s eta \d+s$", s) for s in steps
    )
    assert not CONTROL.search(verbose.stdout)
    proc = run_cli("run", str(cfg), "-q", "-v")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr


def test_progress_bar_in_a_terminal(project) -> None:
    cfg = project.config(trainer={"epochs": 2, "log_every_n_steps": 2})
    master, slave = pty.openpty()
    size = struct.pack("HHHH", 40, 160, 0, 0)  # 40 rows, 160 columns: a pty starts with none
    fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
    proc = subprocess.Popen(
        [str(TUNEFORGE), "run", str(cfg)], stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    out = b"".join(chunks).decode(errors="replace")
    assert "\r" in out and "epoch 1/2" in out  # a live bar, redrawn in place
    assert re.search(r"loss=\d\.\d+, lr=\S+, sps=\d+", out)
    assert re.search(r"\[\d\d:\d\d<(\?|\d\d:\d\d), ", out)  # elapsed<ETA, as tqdm shows it
