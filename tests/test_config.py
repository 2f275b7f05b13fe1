from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.config import (
    ComponentRef,
    RunConfig,
    YAMLLimitError,
    build_config,
    check_tree,
    dump_config,
    format_loc,
    instantiate,
    load_yaml,
    parse_key,
    parse_overrides,
    read_yaml,
    set_by_path,
)
from tuneforge.errors import ConfigError

from conftest import ok, run_cli

BASE = {"task": "text-classification", "data": {"path": "d.csv"}}


def cfg_error(raw: dict, overrides=()) -> str:
    with pytest.raises(ConfigError) as exc:
        build_config(raw, list(overrides))
    return str(exc.value)


def test_defaults_are_the_best_practice_split() -> None:
    cfg = build_config(BASE)
    assert (cfg.split.train, cfg.split.val, cfg.split.test) == (0.70, 0.15, 0.15)
    assert cfg.split.stratify and cfg.balancer.name == "none"


def test_short_and_long_component_forms() -> None:
    cfg = build_config(
        {**BASE, "balancer": "oversample", "augmenters": [{"name": "token-noise", "p": 0.2}]}
    )
    assert cfg.balancer == ComponentRef(name="oversample")
    assert cfg.augmenters[0].params == {"p": 0.2}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {**BASE, "trainer": {"epochs": "many"}},
            "trainer.epochs: Input should be a valid integer",
        ),
        ({**BASE, "trainer": {"lrr": 1e-3}}, "trainer.lrr: unknown key"),
        ({**BASE, "split": {"train": 0.8}}, "split: Value error, train + val + test must be 1.0"),
        ({**BASE, "augmenters": ["token-noise", {"p": 0.1}]}, "augmenters[1].name: Field required"),
        ({"data": {"path": "x.csv"}}, "task: Field required"),
        (
            {**BASE, "tuner": {"name": "random", "space": {"trainer.lr": {"loguniform": [0, 1]}}}},
            "tuner.space.trainer.lr: Value error, loguniform needs low > 0",
        ),
        ({**BASE, "trainer": {"precision": "fp8"}}, "trainer.precision: Input should be"),
    ],
)
def test_errors_name_the_key_path(raw: dict, expected: str) -> None:
    assert cfg_error(raw).startswith(expected)


def test_unknown_key_suggests_the_close_one() -> None:
    assert "did you mean 'epochs'?" in cfg_error({**BASE, "trainer": {"epoch": 3}})


def test_set_overrides_values_and_lists() -> None:
    raw = {**BASE, "augmenters": ["token-noise", {"name": "token-noise", "p": 0.5}]}
    cfg = build_config(
        raw,
        parse_overrides(
            [
                "trainer.lr=1e-4",
                "augmenters[1].p=0.2",
                "augmenters.0.p=0.1",
                "balancer=class-weights",
                "split.seed=7",
            ]
        ),
    )
    assert cfg.trainer.lr == 1e-4
    assert cfg.augmenters[1].params["p"] == 0.2
    assert cfg.augmenters[0].params["p"] == 0.1
    assert cfg.balancer.name == "class-weights" and cfg.split.seed == 7


def test_set_unknown_key_is_refused_with_suggestion() -> None:
    msg = cfg_error(BASE, parse_overrides(["trainer.lrr=0.1"]))
    assert msg.startswith("--set trainer.lrr: no such key") and "trainer.lr" in msg
    assert cfg_error(BASE, parse_overrides(["nosuch=1"])).startswith("--set nosuch: no such key")
    assert "index [3] does not exist" in cfg_error(BASE, parse_overrides(["augmenters[3].p=1"]))
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["trainer.lr"])


def test_read_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        read_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        read_yaml(listy)
    # safe_load only: python tags are refused, never executed
    evil = tmp_path / "evil.yaml"
    evil.write_text("task: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        read_yaml(evil)


def test_dump_config_round_trips() -> None:
    raw = {
        **BASE,
        "balancer": {"name": "oversample", "ratio": 0.5},
        "metrics": ["accuracy"],
        "tuner": {"name": "grid", "space": {"trainer.batch_size": {"choice": [8, 16]}}},
    }
    cfg = build_config(raw)
    again = build_config(dump_config(cfg))
    assert again == cfg


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(_names, st.integers(min_value=0, max_value=50)), min_size=1, max_size=5
    ).filter(lambda parts: isinstance(parts[0], str))
)
def test_parse_key_inverts_format_loc(parts: list) -> None:
    assert parse_key(format_loc(parts)) == parts


@settings(max_examples=100, deadline=None)
@given(
    lr=st.floats(min_value=1e-7, max_value=1.0),
    epochs=st.integers(1, 1000),
    bs=st.integers(1, 4096),
    seed=st.integers(0, 2**31),
)
def test_set_then_validate_keeps_values(lr: float, epochs: int, bs: int, seed: int) -> None:
    tree = {**BASE}
    for key, value in (
        ("trainer.lr", lr),
        ("trainer.epochs", epochs),
        ("trainer.batch_size", bs),
        ("split.seed", seed),
    ):
        set_by_path(tree, key, value)
    cfg = build_config(tree)
    assert (cfg.trainer.lr, cfg.trainer.epochs, cfg.trainer.batch_size, cfg.split.seed) == (
        lr,
        epochs,
        bs,
        seed,
    )


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0.01, max_value=0.98), st.floats(min_value=0.01, max_value=0.98))
def test_split_fractions_must_sum_to_one(a: float, b: float) -> None:
    c = 1.0 - a - b
    raw = {**BASE, "split": {"train": a, "val": b, "test": c}}
    if 0 < c < 1:
        cfg = build_config(raw)
        assert abs(cfg.split.train + cfg.split.val + cfg.split.test - 1) < 1e-6
    else:
        with pytest.raises(ConfigError, match=r"^split\.test"):
            build_config(raw)


# -- numbers: finite, whole, bounded ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"trainer": {"lr": float("inf")}}, "trainer.lr: numbers must be finite (got inf)"),
        ({"trainer": {"weight_decay": float("nan")}}, "trainer.weight_decay: numbers must be"),
        ({"split": {"train": float("-inf")}}, "split.train: numbers must be finite (got -inf)"),
        ({"trainer": {"max_grad_norm": float("inf")}}, "trainer.max_grad_norm: numbers must be"),
        (
            {
                "tuner": {
                    "name": "random",
                    "space": {"trainer.lr": {"uniform": [0.1, float("inf")]}},
                }
            },
            "tuner.space.trainer.lr.uniform[1]: numbers must be finite",
        ),
        ({"data": {"path": "d.csv", "read_options": {"x": [float("nan")]}}}, "read_options.x[0]"),
        ({"trainer": {"epochs": 1e26}}, "trainer.epochs: Input should be a whole number"),
        ({"trainer": {"epochs": 3.0}}, "trainer.epochs: Input should be a whole number"),
        ({"trainer": {"epochs": True}}, "trainer.epochs: Input should be a valid integer"),
        ({"trainer": {"epochs": 100_001}}, "less than or equal to 100000"),
        ({"trainer": {"batch_size": 2**24 + 1}}, "less than or equal to 16777216"),
        ({"trainer": {"eval_batch_size": 2**24 + 1}}, "less than or equal to 16777216"),
        ({"trainer": {"gradient_accumulation_steps": 65_537}}, "less than or equal to 65536"),
        ({"trainer": {"early_stopping_patience": 100_001}}, "less than or equal to 100000"),
        ({"trainer": {"log_every_n_steps": 10**9 + 1}}, "less than or equal to 1000000000"),
        ({"trainer": {"checkpoint_every_n_steps": 10**9 + 1}}, "less than or equal to 1000000000"),
        ({"trainer": {"keep_checkpoints": 1001}}, "less than or equal to 1000"),
        ({"trainer": {"nonfinite_max_consecutive": 10**9 + 1}}, "less than or equal to 1000000000"),
        ({"trainer": {"prefetch_factor": 1025}}, "less than or equal to 1024"),
        ({"trainer": {"num_workers": 1025}}, "must be a whole number from 0 to 1024, or auto"),
        ({"trainer": {"num_workers": 2.0}}, "must be a whole number from 0 to 1024, or auto"),
        ({"trainer": {"seed": 2**32}}, "trainer.seed: Input should be less than or equal to"),
        ({"split": {"seed": -1}}, "split.seed: Input should be greater than or equal to 0"),
        ({"split": {"seed": 2**63}}, "split.seed: integer too large"),
    ],
)
def test_numbers_are_finite_whole_and_bounded(raw: dict, expected: str) -> None:
    tree = {**BASE, **raw}
    if "data" in raw:
        tree["data"] = raw["data"]
    assert expected in cfg_error(tree)


def test_the_largest_allowed_counts_pass() -> None:
    cfg = build_config(
        {
            **BASE,
            "trainer": {"epochs": 100_000, "batch_size": 2**24, "seed": 2**32 - 1},
            "split": {"seed": 0},
        }
    )
    assert cfg.trainer.epochs == 100_000 and cfg.trainer.batch_size == 2**24


def test_check_tree_walks_without_recursion() -> None:
    deep: dict = {}
    node = deep
    for _ in range(100_000):  # deeper than Python's recursion limit
        node["a"] = {}
        node = node["a"]
    with pytest.raises(ConfigError, match=r"^balancer\.a\.a\.\.\.: nested more than 100 levels"):
        check_tree({"balancer": deep})
    shared: list = [1] * 10
    for _ in range(8):  # 10**9 values through shared references, built in microseconds
        shared = [shared] * 10
    with pytest.raises(ConfigError, match="more than 1,000,000 values"):
        build_config({**BASE, "balancer": {"name": "oversample", "ratio": shared}})


# -- the bounded YAML loader ------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_docs = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(_docs, st.booleans())
def test_load_yaml_reads_what_safe_load_reads(doc: object, flow: bool) -> None:
    text = yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True)
    assert load_yaml(text) == yaml.safe_load(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nb: 2\na: 3\n", "line 3: key 'a' is given twice (first on line 1)"),
        ("a: {x: 1, y: 2, x: 3}\n", "line 1: key 'x' is given twice"),
        ("1: a\n0x1: b\n", "key 1 is given twice"),
        ("x: &x [*x]\n", "line 1: alias *x refers to a value that contains it"),
        ("x: " + "[" * 101 + "]" * 101 + "\n", "line 1: nested more than 100 levels deep"),
        ("x: a\x07b\n", "line 1, column 5: character U+0007 is not allowed in YAML"),
        ("x: 2024-13-45\n", "line 1: cannot read '2024-13-45'"),
    ],
)
def test_load_yaml_refuses_with_the_line(text: str, expected: str) -> None:
    with pytest.raises(YAMLLimitError) as exc:
        load_yaml(text)
    assert expected in str(exc.value)


def test_merge_keys_may_override_what_they_merge() -> None:
    text = "base: &b {p: 1, q: 2}\nuse: {<<: *b, p: 3}\n"
    assert load_yaml(text)["use"] == {"p": 3, "q": 2} == yaml.safe_load(text)["use"]


def test_set_values_go_through_the_bounded_loader() -> None:
    assert parse_overrides(["a=[1, 2]", "b=not: valid: yaml", "c="]) == [
        ("a", [1, 2]),
        ("b", "not: valid: yaml"),  # kept as the string given, as before
        ("c", ""),
    ]
    with pytest.raises(ConfigError, match=r"^--set a: the value: key 'x' is given twice"):
        parse_overrides(["a={x: 1, x: 2}"])


# -- the editor schema ------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = ROOT / "examples" / "plugins" / "tuneforge-example" / "src"
BOW_PLUGIN = ROOT / "examples" / "plugins" / "tuneforge-bow" / "src"


class EditorYAML(yaml.SafeLoader):
    """YAML as an editor's language server reads it (YAML 1.2: ``1e-5`` is a number)."""


EditorYAML.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


@pytest.fixture(scope="module")
def schema() -> dict:
    """``tuneforge config schema``, with the example plugins the docs use loaded from source."""
    env = {"PYTHONPATH": f"{EXAMPLE_PLUGIN}:{BOW_PLUGIN}"}
    args = ("config", "schema", "--plugin", "tuneforge_example", "--disable-plugin", "example")
    args += ("--plugin", "tuneforge_bow", "--disable-plugin", "bow")
    return json.loads(ok(run_cli(*args, env=env)))


def documented_configs() -> list[tuple[str, dict]]:
    """Every example config, and every YAML block of the docs that is (part of) a config."""
    out = []
    for path in sorted(ROOT.glob("examples/**/*.yaml")):
        out.append((str(path.relative_to(ROOT)), yaml.load(path.read_text(), EditorYAML)))
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pages += sorted(ROOT.glob("examples/**/*.md"))
    for page in pages:
        blocks = re.findall(r"```ya?ml\n(.*?)```", page.read_text(), flags=re.S)
        for i, block in enumerate(blocks):
            doc = yaml.load(block, EditorYAML)
            if isinstance(doc, dict) and doc and set(doc) <= set(RunConfig.model_fields):
                out.append((f"{page.relative_to(ROOT)} block {i}", doc))
    return out


def test_every_example_and_documented_config_is_valid_against_the_schema(schema: dict) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    configs = documented_configs()
    assert len([n for n, _ in configs if n.startswith("examples/")]) >= 4
    assert any("candidates" in (c.get("model") or {}) for _, c in configs)  # the flagged feature
    for name, doc in configs:
        # A fragment shows some sections: the required ones are filled in.
        full = {"task": "text-classification", "data": {"path": "data.csv"}, **doc}
        errors = [
            f"{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in validator.iter_errors(full)
        ]
        assert not errors, (name, errors)


def test_documented_config_blocks_load_with_tuneforge(tmp_path: Path) -> None:
    """The blocks load with the bounded loader too: no key given twice, no limit broken."""
    for name, doc in documented_configs():
        text = yaml.safe_dump(doc)
        assert load_yaml(text) == yaml.safe_load(text), name
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```ya?ml\n(.*?)```", page.read_text(), flags=re.S):
            load_yaml(block)  # raises on a key given twice


def refuses(raw: dict) -> bool:
    """True when tuneforge refuses ``raw``: validating it, or building its components."""
    from tuneforge.manager import PluginManager

    try:
        cfg = build_config(raw)
        regs = PluginManager(disable=["example"]).registries
        for key, kind in (("balancer", "balancers"), ("tuner", "tuners")):
            if getattr(cfg, key) is not None:
                instantiate(regs, kind, getattr(cfg, key), key)
        for i, ref in enumerate(cfg.augmenters):
            instantiate(regs, "augmenters", ref, f"augmenters[{i}]")
    except ConfigError:
        return True
    return False


@pytest.mark.parametrize(
    "section",
    [
        {"model": {"candidates": ["mlp"]}},  # one candidate is no selection
        {"model": {"candidates": ["mlp", "timm"], "name": "mlp"}},
        {"balancer": {"name": "oversample", "ratoi": 1.0}},
        {"balancer": "no-such-balancer"},
        {"augmenters": [{"name": "albumentations"}]},  # its transforms are required
        {"trainer": {"epochs": 1_000_000}},
        {"trainer": {"epochs": 2.5}},
        {"tuner": {"name": "random", "space": {"trainer.lr": {"loguniformm": [0.1, 1]}}}},
        {"tuner": {"name": "random", "trialz": 3}},
        {"validators": 3},
    ],
)
def test_the_schema_flags_what_tuneforge_refuses(schema: dict, section: dict) -> None:
    full = {"task": "text-classification", "data": {"path": "data.csv"}, **section}
    assert not jsonschema.Draft202012Validator(schema).is_valid(full)
    assert refuses(full)


def test_every_schema_reference_resolves_and_every_definition_is_used(schema: dict) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    text = json.dumps(schema)
    refs = set(re.findall(r'"\$ref": "#/\$defs/([^"]+)"', text))
    assert refs == set(schema["$defs"]), refs ^ set(schema["$defs"])


# -- the component tables of docs/config.md ---------------------------------------------------


def test_config_md_lists_every_built_in_component() -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    start, end = text.index("<!-- components:start -->"), text.index("<!-- components:end -->")
    tables = text[start:end]
    data = json.loads(ok(run_cli("components", "--json", "--disable-plugin", "example")))
    for kind in ("validators", "balancers", "augmenters", "tokenizers", "models", "metrics"):
        for entry in data[kind]:
            assert f"| `{entry['name']}` | `{entry['plugin']}` |" in tables, (kind, entry)
    for name in ("stem", "lemmatize", "lowercase", "mask", "stopwords", "typo", "word-swap"):
        assert f"| `{name}` |" in tables


def test_stale_component_tables_fail_the_check_and_write_fixes_them(tmp_path: Path) -> None:
    gen = [sys.executable, str(ROOT / "docs" / "gen_hooks.py")]
    docs = ["--components-doc", str(tmp_path / "config.md"), "--doc", str(tmp_path / "plugins.md")]
    (tmp_path / "plugins.md").write_text((ROOT / "docs" / "plugins.md").read_text())
    text = (ROOT / "docs" / "config.md").read_text()
    (tmp_path / "config.md").write_text(re.sub(r"\| `typo` \|[^\n]*\n", "", text))
    proc = subprocess.run([*gen, "--check", *docs], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "config.md: component tables: out of date" in proc.stderr
    assert "plugins.md: hook reference: up to date" in proc.stdout
    assert subprocess.run([*gen, "--write", *docs]).returncode == 0
    assert "| `typo` | `text` |" in (tmp_path / "config.md").read_text()
    assert subprocess.run([*gen, "--check", *docs]).returncode == 0


@pytest.mark.parametrize("key", ["path", "val_path", "test_path"])
def test_an_empty_data_path_is_refused_not_read_as_the_config_folder(key: str) -> None:
    data = {"path": "data.csv", key: "  "}
    with pytest.raises(ConfigError, match=f"data.{key}.*empty path"):
        build_config({"task": "text-classification", "data": data})
