"""Plugin loading: entry points, failures, strict mode, disabling, local files, duplicates."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli


def fake_distribution(site: Path, dist: str, plugins: dict[str, str]) -> None:
    """A real installed distribution (dist-info + modules) on a PYTHONPATH folder."""
    info = site / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    eps = "[tuneforge]\n" + "".join(f"{name} = {name.replace('-', '_')}_mod\n" for name in plugins)
    (info / "entry_points.txt").write_text(eps)
    for name, code in plugins.items():
        (site / f"{name.replace('-', '_')}_mod.py").write_text(textwrap.dedent(code))


BROKEN = """
raise RuntimeError("boom: missing native library")
"""

GOOD = """
from tuneforge import hookimpl
from tuneforge.components import Metric

class Always(Metric):
    '''Always one.'''
    def __call__(self, y_true, y_pred, y_score):
        return 1.0

@hookimpl
def register_metrics(register):
    register("always-one", Always)
"""

CLASH = """
from tuneforge import hookimpl

@hookimpl
def register_metrics(register):
    register("accuracy", "json:loads")
"""

MARKER = """
import pathlib, os
pathlib.Path(os.environ["MARKER_FILE"]).write_text("imported")
"""


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    return tmp_path / "site"


def test_broken_plugin_is_reported_and_others_keep_working(site: Path) -> None:
    fake_distribution(site, "tf-extra", {"broken": BROKEN, "good": GOOD})
    env = {"PYTHONPATH": str(site)}
    proc = run_cli("plugins", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (
        "plugin 'broken' failed to load and is skipped: RuntimeError: boom: missing native library"
        in proc.stderr
    )
    infos = {i["name"]: i for i in json.loads(proc.stdout)}
    assert infos["broken"]["error"] == "RuntimeError: boom: missing native library"
    assert infos["broken"]["distribution"] == "tf-extra"
    assert infos["good"]["components"] == {"metrics": ["always-one"]}
    assert infos["text"]["components"]["tasks"] == [
        "text-classification",
        "text-multilabel",
        "text-regression",
    ]


def test_strict_mode_reraises(site: Path) -> None:
    fake_distribution(site, "tf-extra", {"broken": BROKEN})
    for args, env in ((["--strict-plugins"], {}), ([], {"TUNEFORGE_STRICT_PLUGINS": "1"})):
        proc = run_cli("plugins", *args, env={"PYTHONPATH": str(site), **env})
        assert proc.returncode == 2
        assert proc.stderr.strip() == (
            "tuneforge: error: plugin 'broken' failed to load: RuntimeError: boom: missing native library"
        )


def test_disabled_plugins_are_never_imported(site: Path, tmp_path: Path) -> None:
    marker = tmp_path / "imported.txt"
    fake_distribution(site, "tf-extra", {"noisy": MARKER})
    env = {"PYTHONPATH": str(site), "MARKER_FILE": str(marker)}
    assert run_cli("plugins", env=env).returncode == 0 and marker.exists()
    marker.unlink()
    proc = run_cli("plugins", "--json", "--disable-plugin", "noisy", env=env)
    assert not marker.exists()
    assert {i["name"]: i for i in json.loads(proc.stdout)}["noisy"]["disabled"] is True
    run_cli("plugins", env={**env, "TUNEFORGE_DISABLE_PLUGINS": "noisy,other"})
    assert not marker.exists()


def test_disabling_a_builtin_removes_its_components(project) -> None:
    proc = run_cli("components", "balancers", "-p", "balancers")
    assert proc.returncode == 0 and "oversample" not in proc.stdout
    cfg = project.config(plugins={"disable": ["balancers"]}, balancer="oversample")
    proc = run_cli("validate", str(cfg))
    assert proc.returncode == 2
    assert (
        "balancer.name: 'oversample' comes from plugin 'balancers', which is disabled "
        "(--disable-plugin balancers)"
    ) in proc.stderr


def test_same_name_from_two_plugins_is_an_error_naming_both(site: Path) -> None:
    fake_distribution(site, "tf-clash", {"clash": CLASH})
    proc = run_cli("plugins", env={"PYTHONPATH": str(site)})
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "metric 'accuracy' is registered twice" in err
    assert "'metrics'" in err and "'clash'" in err


def test_local_plugin_file_from_config_and_cli(project, tmp_path: Path) -> None:
    (project.root / "my_hooks.py").write_text(textwrap.dedent(GOOD))
    proc = run_cli("components", "metrics", "--plugin", str(project.root / "my_hooks.py"))
    assert proc.returncode == 0 and "always-one" in proc.stdout
    # From config: relative to the config file; selected by name.
    cfg = project.config(plugins={"local": ["my_hooks.py"]}, metrics=["accuracy", "always-one"])
    proc = run_cli("validate", str(cfg))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("components", "metrics", "--plugin", str(project.root / "nope.py"))
    assert proc.returncode == 2 and "local plugin file not found" in proc.stderr
    (project.root / "bad_hooks.py").write_text("import no_such_dependency_zz\n")
    proc = run_cli("plugins", "--plugin", str(project.root / "bad_hooks.py"))
    assert proc.returncode == 2
    assert (
        "bad_hooks.py' cannot be imported: No module named 'no_such_dependency_zz'" in proc.stderr
    )


def test_misspelt_hook_name_is_reported(project, site: Path) -> None:
    typo = "from tuneforge import hookimpl\n@hookimpl\ndef register_metric(register):\n    pass\n"
    fake_distribution(site, "tf-typo", {"typo": typo})
    proc = run_cli("plugins", "--json", env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0
    assert "plugin 'typo' failed to load" in proc.stderr and "register_metric" in proc.stderr
    (project.root / "typo.py").write_text(typo)
    proc = run_cli("plugins", "--plugin", str(project.root / "typo.py"))
    assert proc.returncode == 2 and "unknown hook 'register_metric'" in proc.stderr


def test_cli_plugin_paths_are_relative_to_the_working_directory(project) -> None:
    (project.root / "my_hooks.py").write_text(textwrap.dedent(GOOD))
    proc = run_cli("components", "metrics", "--plugin", "my_hooks.py", cwd=project.root)
    assert proc.returncode == 0 and "always-one" in proc.stdout
    # Disabled by its stem: the file is never run.
    proc = run_cli(
        "components", "metrics", "--plugin", "my_hooks.py", "-p", "my_hooks", cwd=project.root
    )
    assert proc.returncode == 0 and "always-one" not in proc.stdout


def test_plugin_paths_cli_from_working_directory_config_from_its_folder(project) -> None:
    # --plugin is a command-line path: relative to the working directory, for every command
    # (run and validate too); plugins.local in a config is relative to the config's folder.
    conf_dir, elsewhere = project.root / "conf", project.root / "elsewhere"
    conf_dir.mkdir()
    elsewhere.mkdir()
    (elsewhere / "cwd_hooks.py").write_text(textwrap.dedent(GOOD))
    (conf_dir / "cwd_hooks.py").write_text("raise RuntimeError('the wrong file was loaded')\n")
    data = {"path": str(project.data)}
    cfg = project.config("conf/config.yaml", data=data, metrics=["accuracy", "always-one"])
    for command in ("validate", "run"):
        args = [command, str(cfg), "--plugin", "cwd_hooks.py"]
        if command == "run":
            args += ["--set", "trainer.epochs=1"]
        proc = run_cli(*args, cwd=elsewhere)
        assert proc.returncode == 0, proc.stderr
    # A file beside the config but not in the working directory is not found, and the error
    # names the path it looked at.
    (conf_dir / "only_here.py").write_text(textwrap.dedent(GOOD))
    proc = run_cli("validate", str(cfg), "--plugin", "only_here.py", cwd=elsewhere)
    assert proc.returncode == 2
    assert f"local plugin file not found: {elsewhere / 'only_here.py'}" in proc.stderr
    # plugins.local: relative to the config's folder, whatever the working directory.
    cfg = project.config("conf/config.yaml", data=data, plugins={"local": ["only_here.py"]})
    assert run_cli("validate", str(cfg), cwd=elsewhere).returncode == 0
    # --help says the same.
    assert "relative path is taken from the working directory" in " ".join(
        run_cli("run", "--help").stdout.split()
    )


def test_output_to_a_closed_pipe_is_quiet() -> None:
    import subprocess

    from conftest import TUNEFORGE

    proc = subprocess.run(
        f"'{TUNEFORGE}' components | head -1", shell=True, capture_output=True, text=True
    )
    assert proc.stdout.strip() == "tasks:" and "error" not in proc.stderr


COMMAND = """
from tuneforge import hookimpl
from tuneforge.components import Command

class Hello(Command):
    help = "say hello"

    def add_arguments(self, parser):
        parser.add_argument("who")

    def run(self, args):
        print(f"hello {args.who}")
        return 3

@hookimpl
def register_commands(register):
    register("hello", Hello)
"""


def test_plugins_add_cli_commands(site: Path) -> None:
    fake_distribution(site, "tf-cmd", {"greeter": COMMAND})
    env = {"PYTHONPATH": str(site)}
    proc = run_cli("hello", "world", env=env)
    assert proc.returncode == 3 and proc.stdout.strip() == "hello world"
    assert "hello" in run_cli("components", "commands", env=env).stdout
    assert "say hello" in run_cli("--help", env=env).stdout
    proc = run_cli("hello", "world", "-p", "greeter", env=env)
    assert proc.returncode == 2 and "invalid choice: 'hello'" in proc.stderr
