"""The third-party example distribution, pip-installed into this environment for real."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    src = tmp_path_factory.mktemp("example") / "tuneforge-example"
    shutil.copytree(
        ROOT / "examples" / "plugins" / "tuneforge-example", src
    )  # build outside the repo
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    try:
        yield
    finally:
        subprocess.run(
            [*pip, "uninstall", "-y", "-q", "tuneforge-example"], check=True, capture_output=True
        )


def test_plugins_lists_the_installed_distribution(example_plugin: None) -> None:
    proc = run_cli("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    info = {i["name"]: i for i in json.loads(proc.stdout)}["example"]
    assert info["distribution"] == "tuneforge-example" and info["version"] == "0.1.0"
    assert info["components"] == {"validators": ["max-words"], "metrics": ["worst_class_recall"]}
    assert info["hooks"] == ["register_metrics", "register_validators"]


def test_a_run_selects_its_components_by_name(example_plugin: None, project) -> None:
    cfg = project.config(
        validators=["missing", {"name": "max-words", "max_words": 4}],
        metrics=["accuracy", "worst_class_recall"],
        trainer={"monitor": "worst_class_recall", "epochs": 6},
    )
    proc = run_cli("run", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "max-words:" in proc.stdout and "have more than 4 words" in proc.stdout
    run = project.root / "runs" / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["monitor"] == "val.worst_class_recall"
    assert 0.0 <= metrics["test"]["worst_class_recall"] <= metrics["test"]["accuracy"] + 1e-9
    findings = json.loads((run / "findings.json").read_text())["findings"]
    assert any(f["validator"] == "max-words" and f["kind"] == "too-long" for f in findings)
    bad = project.config("bad.yaml", validators=[{"name": "max-words", "max_words": 0}])
    proc = run_cli("validate", str(bad))
    assert (
        proc.returncode == 2
        and "validators[0].max_words: Input should be greater than or equal to 1" in proc.stderr
    )


def test_disabling_the_example_plugin(example_plugin: None) -> None:
    proc = run_cli("components", "metrics", "--disable-plugin", "example")
    assert proc.returncode == 0 and "worst_class_recall" not in proc.stdout
