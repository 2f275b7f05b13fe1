from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.config import (
    ComponentRef,
    build_config,
    dump_config,
    format_loc,
    parse_key,
    parse_overrides,
    read_yaml,
    set_by_path,
)
from tuneforge.errors import ConfigError

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
