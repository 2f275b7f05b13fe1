from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from tinymodels import make_texts, tiny_checkpoint, write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TUNEFORGE = Path(sys.executable).parent / "tuneforge"


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``tuneforge`` console script as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [str(TUNEFORGE), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_PEAK_LAUNCHER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(f'{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}')\n"
)


def peak_memory_run(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``cmd`` and measure its own peak memory (MB), through a small launcher process.

    Linux counts a child's memory from before its ``exec`` in its peak, so a child forked by
    the (large) test process would report the test process's size: a fresh small parent forks
    it instead, and reads its peak with ``wait4``.
    """
    report = Path(cwd) / f".peak-{os.getpid()}-{time.monotonic_ns()}"
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_LAUNCHER, str(report), *cmd],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    code, peak_kib = report.read_text().split()
    report.unlink()
    proc.returncode = int(code)
    return proc, int(peak_kib) / 1024


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """The command's stdout, after asserting it succeeded (its output in the failure)."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """A user error as the CLI must report it: exit 2, one line, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("tuneforge: error: ")
    return lines[0]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny-models")
    return {fam: tiny_checkpoint(base / fam, fam) for fam in ("bert", "gpt2", "roberta")}


@pytest.fixture()
def project(tmp_path: Path, tiny_models: dict[str, Path]):
    """A folder with generated data and a config that trains the tiny BERT in seconds."""

    class Project:
        root = tmp_path
        data = write_csv(tmp_path / "data.csv", make_texts(240, seed=1))

        def config(self, name: str = "config.yaml", **sections) -> Path:
            cfg = {
                "task": "text-classification",
                "data": {"path": "data.csv"},
                "model": {
                    "name": "hf-sequence-classification",
                    "checkpoint": str(tiny_models["bert"]),
                },
                "trainer": {
                    "epochs": 8,
                    "batch_size": 16,
                    "lr": 3e-3,
                    "monitor": "accuracy",
                    "early_stopping_patience": None,
                    "log_every_n_steps": 5,
                },
                "output": {"dir": str(tmp_path / "runs" / "run")},
            }
            for key, value in sections.items():
                if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                    cfg[key] = {**cfg[key], **value}
                else:
                    cfg[key] = value
            path = tmp_path / name
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            return path

    return Project()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "heavy: a real-data fine-tune of a pretrained model taking minutes on 2 CPU cores; "
        "left out of scripts/test (and CI), run with scripts/test -m heavy",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "data" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(pytest.mark.skip(reason=f"{SHARED_DATA} is absent"))
        if "gpu" in item.keywords:
            import torch

            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))
