"""The CLI fuzzer behind tests/test_fuzz.py, run in its own process (so its peak memory is its own).

Hypothesis generates configs (random keys, types, nesting, YAML anchors and aliases, duplicate
keys, raw bytes) and data files (random bytes; CSV variants with quoting, delimiters, encodings,
ragged rows, empty and huge cells; special paths such as a FIFO or ``/dev/zero``) and runs
``tuneforge run`` or ``tuneforge validate`` on each, in this process, through
:func:`tuneforge.cli.main`. For every example it asserts what the CLI promises:

- the exit status is 0 or 2, never 1 (``internal error``), and no traceback is printed;
- a refusal (exit 2) is one ``tuneforge: error:`` line and leaves nothing under ``output.dir``'s
  folder (no run folder, no partial folder, no lock);
- each example finishes within ``--example-seconds`` (an alarm interrupts a hang).

Usage: ``python tests/fuzz_cli.py --seed N --examples M --work DIR``; exit 0 when every example
held. The peak memory of the process is checked by the caller.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import string
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from tinymodels import make_texts, tiny_checkpoint, write_csv  # noqa: E402


class Hang(Exception):
    """An example ran past its time bound."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang("the command ran past its time bound")


# -- strategies ---------------------------------------------------------------------------------
SECTIONS = {
    "task": [],
    "data": ["path", "format", "columns", "label", "classes", "target", "read_options"],
    "validators": [],
    "split": ["train", "val", "test", "stratify", "seed", "group_duplicates"],
    "balancer": ["name", "ratio"],
    "augmenters": [],
    "preprocessors": [],
    "tokenizer": ["name", "max_length", "truncation"],
    "model": ["name", "checkpoint", "dropout", "candidates"],
    "trainer": [
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "schedule",
        "warmup_ratio",
        "max_grad_norm",
        "monitor",
        "early_stopping_patience",
        "seed",
        "nonfinite",
        "gradient_accumulation_steps",
        "num_workers",
        "checkpoint_every_n_steps",
    ],
    "tuner": ["name", "trials", "space"],
    "metrics": [],
    "fail_on": [],
    "callbacks": [],
}
NAMES = st.text(string.ascii_lowercase + "_-", min_size=1, max_size=12)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["accuracy", "loss", "none", "oversample", "csv", "mlp", "1e26", ".inf"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(NAMES, inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def mutated_config(draw: Any, base: dict[str, Any]) -> str:
    """The valid base config with a few keys set to random values (or random keys added)."""
    cfg = yaml.safe_load(yaml.safe_dump(base))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from([*SECTIONS, "zz_unknown"]))
        keys = SECTIONS.get(section, [])
        value = draw(VALUES)
        if keys and draw(st.booleans()):
            key = draw(st.one_of(st.sampled_from(keys), NAMES))
            node = cfg.get(section)
            if not isinstance(node, dict):
                node = {} if node is None else {"name": node}
                cfg[section] = node
            node[key] = value
        else:
            cfg[section] = value
    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)


@st.composite
def alias_bomb(draw: Any, base_text: str) -> str:
    """Nested anchors (a billion-laughs document) under a known or unknown key."""
    levels, fan = draw(st.integers(2, 9)), draw(st.integers(2, 10))
    lines = ["bomb_0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"bomb_{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]")
    where = draw(st.sampled_from(["plugins", "trainer", "augmenters", "zz"]))
    last = f"*a{levels - 1}"
    tail = {
        "plugins": f"plugins: {{disable: {last}}}",
        "trainer": f"trainer: {{epochs: {last}}}",
        "augmenters": f"augmenters: {last}",
        "zz": f"zz: {last}",
    }[where]
    kept = [ln for ln in base_text.splitlines() if not ln.startswith(where)]
    return "\n".join(lines + kept + [tail]) + "\n"


@st.composite
def raw_config(draw: Any, base: dict[str, Any]) -> bytes:
    base_text = yaml.safe_dump(base, sort_keys=False)
    kind = draw(st.sampled_from(["mutated", "bomb", "deep", "duplicate", "bytes", "spliced"]))
    if kind == "mutated":
        return draw(mutated_config(base)).encode("utf-8")
    if kind == "bomb":
        return draw(alias_bomb(base_text)).encode("utf-8")
    if kind == "deep":
        depth = draw(st.sampled_from([50, 150, 1000, 30_000, 100_000]))
        bracket = draw(st.sampled_from(["[]", "{}"]))
        inner = (
            bracket[0] * depth + bracket[1] * depth
            if bracket == "[]"
            else "{a: " * depth + "1" + "}" * depth
        )
        key = draw(st.sampled_from(["trainer", "data", "zz"]))
        kept = [ln for ln in base_text.splitlines() if not ln.startswith(key)]
        return ("\n".join(kept) + f"\n{key}: {inner}\n").encode("utf-8")
    if kind == "duplicate":
        lines = base_text.splitlines()
        top = [i for i, ln in enumerate(lines) if ln and not ln.startswith(" ")]
        i = draw(st.sampled_from(top))
        return ("\n".join(lines + [lines[i]]) + "\n").encode("utf-8")
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    # spliced: a valid config with random bytes (non-UTF-8 among them) in the middle
    cut = draw(st.integers(0, len(base_text)))
    junk = draw(st.binary(min_size=1, max_size=20))
    data = base_text.encode("utf-8")
    return data[:cut] + junk + data[cut:]


CELL = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", '"', '""', ",", ";", "\t", "\n", "\r\n", "NaN", "null", "é", "💥"]),
    st.from_regex(r"[a-z ]{1,20}", fullmatch=True),
)


@st.composite
def data_file(draw: Any) -> tuple[bytes, str]:
    """(file bytes, suffix)."""
    kind = draw(st.sampled_from(["csv", "csv", "csv", "bytes", "jsonl", "huge"]))
    if kind == "bytes":
        return draw(st.binary(max_size=2000)), draw(st.sampled_from([".csv", ".jsonl", ".tsv"]))
    if kind == "jsonl":
        lines = draw(
            st.lists(
                st.one_of(st.text(max_size=40), st.just('{"text": "a b", "label": "x"}')),
                max_size=20,
            )
        )
        return "\n".join(lines).encode("utf-8"), ".jsonl"
    sep = draw(st.sampled_from([",", ",", ",", ";", "\t", "|"]))
    header = draw(
        st.sampled_from([["text", "label"]] * 4 + [["label", "text"], ["text"], ["a", "b", "c"]])
    )
    good = draw(st.booleans())
    rows = []
    if good:  # mostly valid rows, so some examples reach training
        rows = [
            list(r) if header[0] == "text" else list(r)[::-1]
            for r in make_texts(draw(st.integers(0, 60)), seed=draw(st.integers(0, 9)))
        ]
    if not good or draw(st.booleans()):  # junk rows: other widths, quotes, separators
        rows += draw(st.lists(st.lists(CELL, max_size=5), max_size=10))
    if kind == "huge":
        size = draw(st.sampled_from([100_000, 1_500_000, 3_000_000]))
        rows.append(["word " * (size // 5), "billing"])
    quote = draw(st.booleans())

    def cell(c: str) -> str:
        if quote or any(ch in c for ch in (sep, '"', "\n", "\r")):
            return '"' + c.replace('"', '""') + '"' if quote or draw(st.booleans()) else c
        return c

    text = "\n".join(sep.join(cell(c) for c in row) for row in [header, *rows]) + "\n"
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "latin-1", "utf-16", "cp1252"]))
    return text.encode(encoding, errors="replace"), ".tsv" if sep == "\t" else ".csv"


# -- the property -------------------------------------------------------------------------------
class Fuzz:
    def __init__(self, work: Path, example_seconds: int) -> None:
        self.work = work
        self.example_seconds = example_seconds
        self.model = tiny_checkpoint(work / "tiny-bert", "bert")
        self.good = write_csv(work / "good.csv", make_texts(60, seed=3))
        self.n = 0
        self.outcomes: Counter[str] = Counter()

    def base(self, data_path: str) -> dict[str, Any]:
        return {
            "task": "text-classification",
            "data": {"path": data_path},
            "model": {"name": "hf-sequence-classification", "checkpoint": str(self.model)},
            "trainer": {
                "epochs": 1,
                "batch_size": 16,
                "lr": 1e-3,
                "early_stopping_patience": None,
                "num_workers": 0,
            },
            "output": {"dir": "out/run"},
        }

    def check(
        self, config: bytes, data: tuple[bytes, str] | None, special: str, command: str
    ) -> None:
        self.n += 1
        case = self.work / f"case-{self.n:04d}"
        case.mkdir()
        if data is not None:
            (case / f"data{data[1]}").write_bytes(data[0])
        if special == "fifo":
            os.mkfifo(case / "data.csv")
        (case / "config.yaml").write_bytes(config)
        out, err = io.StringIO(), io.StringIO()
        old = os.getcwd()
        os.chdir(case)
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(self.example_seconds)
        started = time.time()
        try:
            from tuneforge.cli import main

            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main([command, "config.yaml"] + (["-q"] if command == "run" else []))
        finally:
            signal.alarm(0)
            os.chdir(old)
        seconds = time.time() - started
        stderr = err.getvalue()
        what = f"case {case.name} ({command}, {seconds:.1f}s): rc {rc}\n{stderr[-2000:]}"
        assert rc in (0, 2), what
        assert "Traceback" not in stderr and "internal error" not in stderr, what
        self.outcomes[f"{command} exit {rc}"] += 1
        if os.environ.get("TUNEFORGE_FUZZ_VERBOSE"):
            print(f"{case.name} {command} rc {rc}: {stderr.strip()[-200:]}", file=sys.__stdout__)
        outdir = case / "out"
        if rc == 2:
            errors = [ln for ln in stderr.splitlines() if ln.startswith("tuneforge: error:")]
            assert len(errors) == 1, what
            left = sorted(p.name for p in outdir.iterdir()) if outdir.exists() else []
            assert not left, f"{what}\nleft under output.dir's folder: {left}"
        shutil.rmtree(case, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--example-seconds", type=int, default=60)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    fuzz = Fuzz(args.work, args.example_seconds)
    configs_base = fuzz.base(str(fuzz.good))
    common = settings(
        max_examples=args.examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )

    @seed(args.seed)
    @common
    @given(config=raw_config(configs_base), command=st.sampled_from(["run", "validate"]))
    def configs(config: bytes, command: str) -> None:
        fuzz.check(config, None, "", command)

    @seed(args.seed)
    @common
    @given(
        data=data_file(),
        special=st.sampled_from([""] * 8 + ["fifo", "/dev/zero", "folder", "missing"]),
        fmt=st.sampled_from(["auto"] * 6 + ["csv", "tsv", "jsonl", "parquet"]),
        command=st.sampled_from(["run", "validate"]),
    )
    def data_files(data: tuple[bytes, str], special: str, fmt: str, command: str) -> None:
        cfg = fuzz.base(f"data{data[1]}")
        if special == "fifo":
            cfg["data"]["path"] = "data.csv"
            data = None
        elif special == "/dev/zero":
            cfg["data"]["path"] = "/dev/zero"
            fmt = "csv"
        elif special == "folder":
            cfg["data"]["path"] = "."
        elif special == "missing":
            cfg["data"]["path"] = "nope.csv"
        cfg["data"]["format"] = fmt
        fuzz.check(yaml.safe_dump(cfg).encode(), data, special, command)

    started = time.time()
    configs()
    data_files()
    print(f"fuzz: {fuzz.n} examples held in {time.time() - started:.0f}s (seed {args.seed})")
    print("fuzz outcomes: " + ", ".join(f"{k}: {v}" for k, v in sorted(fuzz.outcomes.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
