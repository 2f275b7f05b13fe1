"""Hostile configs through the real CLI: each is refused with one line naming the file (and line)
or the key, exit status 2, nothing under ``output.dir``, in bounded time and memory.

The classes of issue 14 that belong to config loading: YAML alias bombs, deep nesting, bytes
that are not UTF-8, non-finite numbers, integers given as floats or past their bounds, keys given
twice, oversized or special files (a FIFO, ``/dev/zero``, a folder, ``/proc/self/mem``) and
unbounded user input in messages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import TUNEFORGE, ok, one_line_error, peak_memory_run, run_cli
from tinymodels import make_texts, write_csv

BASE = "task: text-classification\ndata: {{path: {data}}}\noutput: {{dir: {out}}}\n"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    write_csv(tmp_path / "data.csv", make_texts(60, seed=3))
    return tmp_path


def config(folder: Path, body: str = "", name: str = "config.yaml") -> Path:
    """A config whose data and run folder lie in ``folder``, with ``body`` appended."""
    path = folder / name
    text = BASE.format(data=folder / "data.csv", out=folder / "runs" / "run")
    path.write_text(text + textwrap.dedent(body), encoding="utf-8")
    return path


def refused(folder: Path, *args: str) -> str:
    """Run ``tuneforge ARGS``: it must refuse with one line and write nothing under output.dir."""
    line = one_line_error(run_cli(*args, cwd=folder))
    assert not (folder / "runs").exists(), sorted(p.name for p in (folder / "runs").iterdir())
    return line


def measured(*args: str, cwd: Path) -> tuple[int, str, int]:
    """(exit status, stderr, peak memory in MB) of ``tuneforge ARGS`` (its own peak)."""
    proc, peak_mb = peak_memory_run([str(TUNEFORGE), *args], cwd=cwd)
    return proc.returncode, proc.stderr, int(peak_mb)


def bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs" under a known key: each anchor a list of aliases of the one before."""
    lines = ["balancer:", "  name: oversample", '  l0: &l0 ["lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + f"\n  ratio: *l{levels}\n"


# -- YAML alias bombs, recursion and size -------------------------------------------------------


def test_an_alias_bomb_under_a_known_key_is_refused_in_bounded_memory(folder: Path) -> None:
    """9**9 = 387 million values once expanded: refused while composing, before any expansion."""
    path = config(folder, bomb())
    status, err, peak_mb = measured("run", str(path), cwd=folder)
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("tuneforge: error: "), err
    assert f"{path}: line " in err and "more than 1,000,000 values" in err, err
    assert peak_mb < 600, f"{peak_mb} MB"
    assert not (folder / "runs").exists()


def test_an_alias_bomb_in_a_set_value_is_refused(folder: Path) -> None:
    levels = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    value = "{" + ", ".join(levels) + "}"  # 10**8 values once expanded
    line = refused(folder, "validate", str(config(folder)), "--set", f"balancer.ratio={value}")
    assert "--set balancer.ratio: the value: more than 1,000,000 values" in line, line


def test_too_many_alias_uses_are_refused_naming_the_line(folder: Path) -> None:
    body = "x: &x 1\nfail_on: [" + ", ".join(["*x"] * 10_001) + "]\n"
    line = refused(folder, "validate", str(config(folder, body)))
    assert "line 5: more than 10,000 alias uses" in line, line


def test_a_recursive_alias_is_refused(folder: Path) -> None:
    line = refused(folder, "run", str(config(folder, "balancer: &b {name: oversample, x: *b}\n")))
    assert "line 4: alias *b refers to a value that contains it" in line, line


def test_a_merge_chain_deeper_than_the_limit_is_refused(folder: Path) -> None:
    """``<<: *prev`` 300 times: flat text, 300 levels once expanded (PyYAML recurses on it)."""
    lines = ["chain:", "  m0: &m0 {a: 1}"]
    lines += [f"  m{i}: &m{i} {{<<: *m{i - 1}, k{i}: 1}}" for i in range(1, 300)]
    line = refused(folder, "validate", str(config(folder, "\n".join(lines) + "\n")))
    assert "nested more than 100 levels deep once aliases are expanded" in line, line


def test_config_files_over_10_mb_are_refused_without_reading_them_all(folder: Path) -> None:
    path = config(folder, "# " + "x" * (11 * 2**20) + "\n")
    assert "larger than 10 MB" in refused(folder, "run", str(path))


def test_dev_zero_as_the_config_is_refused(folder: Path) -> None:
    """An endless file: at most 10 MB + 1 byte is read."""
    assert "/dev/zero: larger than 10 MB" in refused(folder, "validate", "/dev/zero")


def test_usual_anchors_aliases_and_merge_keys_still_work(folder: Path) -> None:
    body = """\
    augmenters:
      - &noise {name: token-noise, p: 0.2}
      - {<<: *noise, p: 0.4}
    metrics: &metrics [accuracy, f1_macro]
    trainer: {monitor: accuracy}
    """
    assert "rows loaded" in ok(run_cli("validate", str(config(folder, body)), cwd=folder))


# -- nesting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("balancer: " + "[" * 100_000 + "]" * 100_000 + "\n", "line 4"),
        ("balancer: " + "{a: " * 150 + "1" + "}" * 150 + "\n", "nested more than 100 levels"),
        (
            "balancer:\n"
            + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(150))
            + "  " * 151
            + "x\n",
            "line 103: nested more than 100 levels deep",
        ),
    ],
    ids=["flow-100000", "flow-150", "block-150"],
)
def test_deep_nesting_is_refused_without_a_recursion_error(
    folder: Path, body: str, expected: str
) -> None:
    line = refused(folder, "run", str(config(folder, body)))
    assert expected in line and "RecursionError" not in line, line


def test_deep_set_keys_and_values_are_refused(folder: Path) -> None:
    path = str(config(folder))
    key = "balancer." + ".".join(["a"] * 150)
    assert "a key path of more than 100 parts" in refused(
        folder, "validate", path, "--set", f"{key}=1"
    )
    deep = "[" * 150 + "]" * 150
    line = refused(folder, "validate", path, "--set", f"balancer.ratio={deep}")
    assert "--set balancer.ratio: the value: nested more than 100 levels deep" in line


# -- bytes and characters -----------------------------------------------------------------------


def test_a_byte_that_is_not_utf8_names_the_file_line_and_column(folder: Path) -> None:
    path = config(folder)
    path.write_bytes(path.read_bytes() + b"model: {name: caf\xe9}\n")
    line = refused(folder, "run", str(path))
    assert f"{path}: line 4, column 18: byte 0xe9 is not valid UTF-8" in line, line


def test_a_utf16_config_is_named_as_such(folder: Path) -> None:
    path = folder / "utf16.yaml"
    path.write_bytes("task: text-classification\n".encode("utf-16"))
    assert "looks like UTF-16" in refused(folder, "validate", str(path))


def test_a_control_character_names_the_line_and_column(folder: Path) -> None:
    path = config(folder, "trainer: {monitor: a\x00b}\n")
    line = refused(folder, "run", str(path))
    assert f"{path}: line 4, column 21: character U+0000 is not allowed" in line, line


def test_a_5000_digit_integer_is_refused_naming_the_line(folder: Path) -> None:
    line = refused(folder, "run", str(config(folder, "trainer: {epochs: 1" + "0" * 5000 + "}\n")))
    assert "line 4: cannot read '1000" in line and "too large" in line and len(line) < 300


# -- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("trainer: {lr: .inf}\n", "trainer.lr: numbers must be finite (got inf)"),
        ("balancer: {name: oversample, ratio: .nan}\n", "balancer.ratio: numbers must be finite"),
        (
            "trainer: {epochs: 1.0e+26}\n",
            "trainer.epochs: Input should be a whole number (an integer), not a float (got 1e+26)",
        ),
        (
            "trainer: {epochs: 1000000}\n",
            "trainer.epochs: Input should be less than or equal to 100000 (got 1000000)",
        ),
        (
            "validators: [{name: class-size, min_count: 5.0}]\n",
            "validators[0].min_count: Input should be a whole number (an integer), not a float",
        ),
        (
            "validators: [{name: class-size, min_count: 100000000000000000000000}]\n",
            "validators[0].min_count: integer too large",
        ),
    ],
)
def test_numbers_must_be_finite_whole_and_bounded(folder: Path, body: str, expected: str) -> None:
    """Every bound of the core sections is listed in tests/test_config.py; these go the whole way."""
    line = refused(folder, "validate", str(config(folder, body)))
    assert expected in line, line


def test_set_values_are_checked_the_same_way(folder: Path) -> None:
    path = str(config(folder))
    line = refused(folder, "run", path, "--set", "trainer.lr=.inf")
    assert "trainer.lr: numbers must be finite (got inf)" in line
    line = refused(folder, "run", path, "--set", "trainer.epochs=1.0e+26")
    assert "trainer.epochs: Input should be a whole number" in line


def test_a_float_for_a_component_count_is_refused_at_run(folder: Path) -> None:
    body = "tuner: {name: random, trials: 8.0, space: {trainer.lr: {choice: [0.1, 0.2]}}}\n"
    line = refused(folder, "run", str(config(folder, body)))
    assert "tuner.trials: Input should be a whole number (an integer), not a float" in line, line


# -- keys given twice -------------------------------------------------------------------------


def test_a_top_level_key_given_twice_names_both_lines(folder: Path) -> None:
    path = config(folder, "task: text-regression\n")
    line = refused(folder, "run", str(path))
    assert f"{path}: line 4: key 'task' is given twice (first on line 1)" in line, line


def test_a_nested_key_given_twice_is_refused(folder: Path) -> None:
    body = "trainer:\n  lr: 0.1\n  epochs: 2\n  lr: 0.001\n"
    line = refused(folder, "validate", str(config(folder, body)))
    assert "line 7: key 'lr' is given twice (first on line 5)" in line, line
    line = refused(folder, "validate", str(config(folder)), "--set", "trainer={lr: 1, lr: 2}")
    assert "--set trainer: the value: key 'lr' is given twice" in line


# -- files that are not config files ------------------------------------------------------------


def test_a_fifo_nobody_writes_to_is_refused_at_once(folder: Path) -> None:
    fifo = folder / "config.fifo"
    os.mkfifo(fifo)
    line = refused(folder, "validate", str(fifo))
    assert "the config is empty (a FIFO or pipe that nothing wrote to?)" in line


def test_a_config_read_from_a_pipe_works(folder: Path) -> None:
    """``tuneforge validate <(generate-config)``: the shell hands over a pipe with its writer."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("needs bash for process substitution")
    path = config(folder)
    proc = subprocess.run(
        [bash, "-c", f'"{TUNEFORGE}" validate <(sleep 0.2; cat "{path}")'],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert "rows loaded" in ok(proc)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("folder", "is a folder, not a config file"),
        ("under-a-file", "cannot read the config: Not a directory"),
        ("/proc/self/mem", "cannot read the config: "),  # EIO: its page 0 is unmapped
        ("missing", "config file not found"),
    ],
)
def test_unreadable_config_paths_are_named(folder: Path, target: str, expected: str) -> None:
    paths = {
        "folder": folder,
        "under-a-file": folder / "data.csv" / "config.yaml",
        "missing": folder / "nope.yaml",
    }
    path = str(paths.get(target, target))
    line = refused(folder, "run", path)
    assert path in line and expected in line, line


# -- messages stay bounded ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "trainer: {precision: " + "x" * 1_000_000 + "}\n",
        "trainer: {" + "k" * 100_000 + ": 1}\n",
        "model: {name: " + "m" * 100_000 + "}\n",
        "fail_on: [" + ", ".join(["{a: " + "v" * 1000 + "}"] * 1000) + "]\n",
        "trainer: {lr: " + "[" * 90 + "1" + "]" * 90 + "}\n",
    ],
    ids=["long-value", "long-key", "long-name", "long-list", "deep-value"],
)
def test_messages_never_hold_an_unbounded_repr(folder: Path, body: str) -> None:
    line = refused(folder, "run", str(config(folder, body)))
    assert len(line) < 1000, len(line)


def test_the_limits_are_documented_values() -> None:
    from tuneforge import config as C

    assert (C.MAX_CONFIG_BYTES, C.MAX_DEPTH, C.MAX_VALUES, C.MAX_ALIASES) == (
        10 * 2**20,
        100,
        1_000_000,
        10_000,
    )
    assert sys.getrecursionlimit() > 3 * C.MAX_DEPTH  # composing and validating stay below it
