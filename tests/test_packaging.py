"""The wheel: built from this checkout, installed into a fresh virtual environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # Build from a copy of the sources: an in-tree build leaves build/ and tuneforge.egg-info/
    # in the checkout, whose stale entry points Python would then see from the repository root.
    src = tmp_path_factory.mktemp("src") / "tuneforge"
    files = (
        subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    [whl] = out.glob("tuneforge-*.whl")
    return whl


def test_wheel_contains_the_three_packages_and_no_top_level_folders(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "tuneforge/cli.py" in names
    assert "tuneforge/plugins/text/task.py" in names
    assert "tuneforge/registry/__init__.py" in names
    assert not any(n.startswith(("core/", "plugins/", "registry/", "tests/")) for n in names)
    eps = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(eps).decode()
    assert "[tuneforge]" in text and "text = tuneforge.plugins.text" in text
    assert "tuneforge = tuneforge.cli:main" in text


def test_cli_runs_from_a_fresh_venv_with_the_wheel(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    # The heavy dependencies (torch, transformers...) come from this environment, appended after
    # the fresh venv's own site-packages; this checkout's editable install is not activated there.
    deps = Path(sysconfig.get_paths()["purelib"])
    (site / "zz_parent_deps.pth").write_text(str(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run(
        [
            str(py),
            "-c",
            "import tuneforge, tuneforge.plugins, tuneforge.registry; print(tuneforge.__file__)",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert where.stdout.strip().startswith(str(site)), where.stdout
    proc = subprocess.run(
        [str(venv / "bin" / "tuneforge"), "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    names = {i["name"] for i in json.loads(proc.stdout)}
    assert {"text", "validators", "balancers", "metrics", "tuners"} <= names
    proc = subprocess.run(
        [str(venv / "bin" / "tuneforge"), "config", "schema"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and "text-classification" in proc.stdout
