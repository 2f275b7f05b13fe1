from __future__ import annotations

import sys

import pytest
from pydantic import BaseModel

from tuneforge.registry import Registries, Registry, RegistryError, import_string


def test_duplicate_name_names_both_plugins() -> None:
    reg = Registry("metrics")
    reg.add("accuracy", "x:Y", plugin="first")
    with pytest.raises(RegistryError) as exc:
        reg.add("accuracy", "x:Z", plugin="second")
    assert "'first'" in str(exc.value) and "'second'" in str(exc.value)
    assert "registered twice" in str(exc.value)


def test_unknown_name_suggests_closest_and_lists_available() -> None:
    reg = Registry("models")
    reg.add("hf-sequence-classification", "a:B", plugin="text")
    reg.add("timm", "a:C", plugin="image")
    with pytest.raises(RegistryError) as exc:
        reg.get("hf-sequence-clasification")
    msg = str(exc.value)
    assert "did you mean 'hf-sequence-classification'?" in msg
    assert "available: hf-sequence-classification, timm" in msg
    assert "may not be installed" in msg


def test_unknown_name_without_close_match_has_no_suggestion() -> None:
    reg = Registry("models")
    reg.add("timm", "a:C", plugin="image")
    msg = reg.unknown_message("zzzzzz")
    assert "did you mean" not in msg and "available: timm" in msg


def test_lazy_target_is_not_imported_until_loaded() -> None:
    reg = Registry("metrics")
    sys.modules.pop("json.tool", None)
    entry = reg.add("lazy", "json.tool:main", plugin="p")
    assert "json.tool" not in sys.modules
    assert entry.target_repr == "json.tool:main"
    assert callable(entry.load())
    assert "json.tool" in sys.modules


def test_bad_targets_are_refused() -> None:
    reg = Registry("metrics")
    with pytest.raises(RegistryError, match="expected a class"):
        reg.add("x", 42, plugin="p")
    with pytest.raises(RegistryError, match="empty name"):
        reg.add("", "a:b", plugin="p")
    with pytest.raises(RegistryError, match="cannot import 'no_such_module_xyz'"):
        import_string("no_such_module_xyz:thing")
    with pytest.raises(RegistryError, match="has no attribute"):
        import_string("json:no_such_attr")


def test_config_model_defaults_to_forbid_extra() -> None:
    class NoConfig:
        def __init__(self, config: BaseModel) -> None:
            self.config = config

    entry = Registry("metrics").add("plain", NoConfig, plugin="p")
    model = entry.config_model()
    with pytest.raises(Exception, match="Extra inputs are not permitted"):
        model.model_validate({"unexpected": 1})


def test_unknown_kind() -> None:
    with pytest.raises(RegistryError, match="unknown component kind 'widgets'"):
        Registries()["widgets"]
