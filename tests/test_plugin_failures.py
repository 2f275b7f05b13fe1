"""Plugins that misbehave: hooks that raise or call sys.exit(), components that raise, and
tuneforge's own bugs, as the CLI reports them (real subprocesses, real plugin files)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_plugins import fake_distribution

from conftest import ok, one_line_error, run_cli


def write(path: Path, code: str) -> Path:
    path.write_text(textwrap.dedent(code))
    return path


def leftovers(runs: Path) -> list[str]:
    return sorted(p.name for p in runs.iterdir()) if runs.exists() else []


RAISES_AT_START = """
from tuneforge import hookimpl

@hookimpl
def on_run_start(run):
    raise ValueError("boom at start")
"""


def test_hook_raising_before_training_names_plugin_and_hook_and_writes_nothing(project) -> None:
    write(project.root / "myplug.py", RAISES_AT_START)
    cfg = project.config(trainer={"epochs": 1})
    line = one_line_error(run_cli("run", str(cfg), "--plugin", "myplug.py", cwd=project.root))
    assert line == (
        "tuneforge: error: plugin 'myplug' failed in on_run_start: ValueError: boom at start"
    )
    assert leftovers(project.root / "runs") == []  # nothing half-written


def test_the_first_error_is_reported_when_on_run_end_fails_too(project) -> None:
    write(
        project.root / "myplug.py",
        RAISES_AT_START
        + textwrap.dedent(
            """
            @hookimpl
            def on_run_end(run, metrics, status):
                raise RuntimeError("second failure in on_run_end")
            """
        ),
    )
    cfg = project.config(trainer={"epochs": 1})
    proc = run_cli("run", str(cfg), "--plugin", "myplug.py", cwd=project.root)
    line = one_line_error(proc)
    assert "failed in on_run_start: ValueError: boom at start" in line
    assert "second failure in on_run_end" in proc.stdout  # noted, not hiding the first
    assert leftovers(project.root / "runs") == []


def test_a_plugin_failing_in_a_study_stops_the_study(project) -> None:
    # Not "every trial failed" after trying them all: the plugin's bug is no trial's outcome.
    write(project.root / "myplug.py", RAISES_AT_START)
    tuner = {"name": "grid", "space": {"trainer.epochs": {"choice": [1, 2]}}}
    proc = run_cli(
        "run", str(project.config(tuner=tuner)), "--plugin", "myplug.py", cwd=project.root
    )
    line = one_line_error(proc)
    assert line == (
        "tuneforge: error: plugin 'myplug' failed in on_run_start: ValueError: boom at start"
    )
    assert "trial 0:" in proc.stdout and "trial 1:" not in proc.stdout


RAISES_IN_EPOCH = """
from tuneforge import hookimpl

@hookimpl
def on_epoch_end(run, epoch, metrics):
    if epoch == 2:
        raise KeyError("no such column: " + "x" * 5000)
"""


def test_hook_raising_during_training_leaves_a_failed_folder(project, tmp_path: Path) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "tf-epochs", {"epoch-watch": RAISES_IN_EPOCH})
    cfg = project.config(trainer={"epochs": 3})
    line = one_line_error(run_cli("run", str(cfg), env={"PYTHONPATH": str(site)}))
    assert line.startswith(
        "tuneforge: error: plugin 'epoch-watch' failed in on_epoch_end: KeyError: 'no such column: xxx"
    )
    assert len(line) < 400  # the plugin's message is bounded
    kept = leftovers(project.root / "runs")
    assert len(kept) == 1 and kept[0].startswith("run.failed-"), kept
    run = json.loads((project.root / "runs" / kept[0] / "run.json").read_text())
    assert run["status"] == "failed" and "epoch-watch" in run["error"]


def test_sys_exit_in_a_hook_is_a_named_failure_not_a_silent_exit(project) -> None:
    write(
        project.root / "quits.py",
        """
        import sys
        from tuneforge import hookimpl

        @hookimpl
        def on_run_start(run):
            sys.exit(0)
        """,
    )
    cfg = project.config(trainer={"epochs": 1})
    line = one_line_error(run_cli("run", str(cfg), "--plugin", str(project.root / "quits.py")))
    assert line == "tuneforge: error: plugin 'quits' failed in on_run_start: called sys.exit(0)"
    assert leftovers(project.root / "runs") == []


QUITS_AT_IMPORT = """
import sys
sys.exit(0)
"""


def test_sys_exit_at_import_is_a_load_failure(project, tmp_path: Path) -> None:
    site = tmp_path / "site"
    good = "from tuneforge import hookimpl\n@hookimpl\ndef on_run_start(run):\n    pass\n"
    fake_distribution(site, "tf-quit", {"quitter": QUITS_AT_IMPORT, "fine": good})
    env = {"PYTHONPATH": str(site)}
    # Not strict: skipped with a warning, the others load and the command does its work.
    proc = run_cli("plugins", "--json", env=env)
    infos = {i["name"]: i for i in json.loads(ok(proc))}
    assert (
        "tuneforge: warning: plugin 'quitter' failed to load and is skipped: called sys.exit(0)"
        in proc.stderr
    )
    assert infos["quitter"]["error"] == "called sys.exit(0)"
    assert infos["fine"]["hooks"] == ["on_run_start"] and infos["text"]["error"] is None
    # Strict: an error before anything runs.
    line = one_line_error(run_cli("plugins", "--strict-plugins", env=env))
    assert line == "tuneforge: error: plugin 'quitter' failed to load: called sys.exit(0)"
    # A local file the user named must work.
    write(project.root / "bye.py", "import sys\nsys.exit(3)\n")
    line = one_line_error(
        run_cli("validate", str(project.config()), "--plugin", "bye.py", cwd=project.root)
    )
    assert line.endswith("bye.py' failed to import: called sys.exit(3)"), line


def test_registration_hook_failures_follow_the_strict_rules(tmp_path: Path) -> None:
    site = tmp_path / "site"
    code = """
    import sys
    from tuneforge import hookimpl

    @hookimpl
    def register_metrics(register):
        sys.exit("bye")
    """
    fake_distribution(site, "tf-reg", {"regquit": code})
    env = {"PYTHONPATH": str(site)}
    proc = run_cli("components", "metrics", env=env)
    assert "accuracy" in ok(proc)
    assert (
        "warning: plugin 'regquit' failed in register_metrics: called sys.exit('bye')"
        in proc.stderr
    )
    line = one_line_error(run_cli("components", "--strict-plugins", env=env))
    assert line == (
        "tuneforge: error: plugin 'regquit' failed in register_metrics: called sys.exit('bye')"
    )


def test_a_wrapper_hook_is_not_blamed_for_the_hook_it_wraps(project) -> None:
    write(
        project.root / "wrapping.py",
        """
        from tuneforge import hookimpl

        @hookimpl(wrapper=True)
        def on_run_start(run):
            return (yield)  # lets the wrapped hooks' error through
        """,
    )
    write(project.root / "myplug.py", RAISES_AT_START)
    cfg = project.config(trainer={"epochs": 1})
    args = ("--plugin", "wrapping.py", "--plugin", "myplug.py")
    line = one_line_error(run_cli("run", str(cfg), *args, cwd=project.root))
    assert line == (
        "tuneforge: error: plugin 'myplug' failed in on_run_start: ValueError: boom at start"
    )
    # A wrapper whose own code raises is named itself.
    write(
        project.root / "wrapping.py",
        """
        from tuneforge import hookimpl

        @hookimpl(wrapper=True)
        def on_run_start(run):
            yield
            raise RuntimeError("after the others")
        """,
    )
    line = one_line_error(run_cli("run", str(cfg), "--plugin", "wrapping.py", cwd=project.root))
    assert line == (
        "tuneforge: error: plugin 'wrapping' failed in on_run_start: RuntimeError: after the others"
    )


CALLBACK = """
from tuneforge import hookimpl
from tuneforge.components import Component

class Tracker(Component):
    '''Sends metrics somewhere.'''

    @hookimpl
    def on_epoch_end(self, run, epoch, metrics):
        raise ConnectionError("tracker at 10.0.0.1 refused")

@hookimpl
def register_callbacks(register):
    register("tracker", Tracker)
"""


def test_a_third_party_callback_is_named_with_its_plugin(project, tmp_path: Path) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "tf-track", {"tracking": CALLBACK})
    cfg = project.config(trainer={"epochs": 1}, callbacks=["tracker"])
    line = one_line_error(run_cli("run", str(cfg), env={"PYTHONPATH": str(site)}))
    assert line == (
        "tuneforge: error: plugin 'tracking' (callback 'tracker') failed in on_epoch_end: "
        "ConnectionError: tracker at 10.0.0.1 refused"
    )


def test_a_raising_component_names_its_plugin(project) -> None:
    write(
        project.root / "checks.py",
        """
        from tuneforge import hookimpl
        from tuneforge.components import Validator

        class Picky(Validator):
            '''Fails on every input.'''

            def check(self, data, task=None):
                return [None][1]

        @hookimpl
        def register_validators(register):
            register("picky", Picky)
        """,
    )
    cfg = project.config(plugins={"local": ["checks.py"]}, validators=["picky"])
    line = one_line_error(run_cli("validate", str(cfg)))
    assert line == (
        "tuneforge: error: plugin 'checks' failed in check (checks.py:9): "
        "IndexError: list index out of range"
    )


def test_a_user_error_from_a_plugin_is_shown_as_written(project) -> None:
    # UserError is how a plugin reports bad input: its message goes out unchanged, as the
    # built-in loggers' do (tests/test_loggers.py).
    write(
        project.root / "tokens.py",
        """
        from tuneforge import hookimpl
        from tuneforge.errors import UserError

        @hookimpl
        def on_run_start(run):
            raise UserError("tokens: TRACKER_TOKEN is not set")
        """,
    )
    cfg = project.config(trainer={"epochs": 1}, plugins={"local": ["tokens.py"]})
    line = one_line_error(run_cli("run", str(cfg)))
    assert line == "tuneforge: error: tokens: TRACKER_TOKEN is not set"
    assert leftovers(project.root / "runs") == []


BUG = """
import sys
from tuneforge import cli

def broken(args):
    raise RuntimeError("a bug in tuneforge")

cli.HANDLERS["plugins"] = broken
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_bug_in_tuneforge_is_an_internal_error_with_the_debug_hint(tmp_path: Path) -> None:
    script = write(tmp_path / "buggy.py", BUG)
    proc = subprocess.run(
        [sys.executable, str(script), "plugins"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "tuneforge: internal error: RuntimeError: a bug in tuneforge "
        "(rerun with --debug for the traceback)"
    )
    proc = subprocess.run(
        [sys.executable, str(script), "--debug", "plugins"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert proc.stderr.strip().endswith(
        "tuneforge: internal error: RuntimeError: a bug in tuneforge"
    )


def test_debug_shows_the_plugins_traceback(project) -> None:
    write(project.root / "myplug.py", RAISES_AT_START)
    cfg = project.config(trainer={"epochs": 1})
    proc = run_cli("--debug", "run", str(cfg), "--plugin", "myplug.py", cwd=project.root)
    assert proc.returncode == 2
    assert 'myplug.py", line 6, in on_run_start' in proc.stderr
    assert proc.stderr.strip().endswith("failed in on_run_start: ValueError: boom at start")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (
            "@hookimpl\ndef on_epoch_end(run, epoch, metrics, extra):\n    pass\n",
            "hook 'on_epoch_end': argument 'extra' of on_epoch_end(run, epoch, metrics, extra) "
            "is not in the hook spec on_epoch_end(run, epoch, metrics)",
        ),
        (
            "@hookimpl\ndef register_metrics(reg, more):\n    pass\n",
            "hook 'register_metrics': arguments 'more', 'reg' of register_metrics(reg, more) "
            "are not in the hook spec register_metrics(register)",
        ),
        (
            "@hookimpl\ndef on_epoch_ends(run):\n    pass\n",
            "unknown hook 'on_epoch_ends': did you mean 'on_epoch_end'?",
        ),
        (
            "@hookimpl(wrapper=True)\ndef on_run_start(run):\n    pass\n",
            "hook 'on_run_start'; hookimpl definition: on_run_start(run); Declared as "
            "wrapper=True or hookwrapper=True but function is not a generator function",
        ),
    ],
)
def test_hook_signature_errors_are_one_line_and_say_what_is_wrong(
    tmp_path: Path, code: str, expected: str
) -> None:
    plugin = write(tmp_path / "sig.py", "from tuneforge import hookimpl\n" + code)
    line = one_line_error(run_cli("plugins", "--plugin", str(plugin)))
    assert line == f"tuneforge: error: plugin 'sig' failed to load: {expected}"
