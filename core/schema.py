"""JSON Schema of run configs, including every registered component's parameters.

``tuneforge config schema`` prints it for editors (the YAML language server). It accepts what
:class:`tuneforge.config.RunConfig` accepts: the short (``balancer: oversample``) and long
(``{name: oversample, ratio: 1.0}``) forms of every component, a single entry where a list is
expected (``validators: schema``), ``model: {candidates: [...]}`` and a tuner with its ``space``.
Every ``$ref`` points into the root ``$defs``, and every entry there is referenced.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from tuneforge.config import RunConfig

#: section -> (registry kind, whether the section is a list of components)
_SECTIONS = {
    "validators": ("validators", True),
    "balancer": ("balancers", False),
    "augmenters": ("augmenters", True),
    "preprocessors": ("tokenizers", True),
    "tokenizer": ("tokenizers", False),
    "model": ("models", False),
    "metrics": ("metrics", True),
    "callbacks": ("callbacks", True),
}
#: sections where null (or leaving them out) means the task's defaults
_NULLABLE = ("validators", "metrics", "tokenizer", "model")
_REF = "#/$defs/"


def _rename_refs(node: Any, names: dict[str, str]) -> Any:
    """``node`` with every ``$ref`` to ``#/$defs/X`` pointed at ``#/$defs/names[X]``."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(_REF):
                out[key] = _REF + names.get(value[len(_REF) :], value[len(_REF) :])
            else:
                out[key] = _rename_refs(value, names)
        return out
    if isinstance(node, list):
        return [_rename_refs(v, names) for v in node]
    return node


def _params(entry: Any, defs: dict[str, Any]) -> tuple[dict[str, Any], list[str], bool]:
    """The parameters of a component: (properties, required names, closed).

    Their own ``$defs`` move into the root ``defs`` under names prefixed with the component's
    kind and name, since a ``#/$defs/...`` reference resolves against the root document.
    """
    try:
        schema = entry.config_model().model_json_schema()
    except Exception:  # a component that cannot be imported still gets its name listed
        return {}, [], False
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{entry.kind}.{entry.name}")
    local = schema.pop("$defs", {})
    names = {name: f"{prefix}.{name}" for name in local}
    for name, sub in local.items():
        defs[names[name]] = _rename_refs(sub, names)
    schema = _rename_refs(schema, names)
    closed = schema.get("additionalProperties", True) is False
    return dict(schema.get("properties", {})), list(schema.get("required", [])), closed


def _component_schema(
    registry: Any, defs: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One registry's components, each in the short form (its name) or the long form."""
    short_names: list[str] = []
    variants: list[dict[str, Any]] = []
    for entry in registry:
        props, required, closed = _params(entry, defs)
        if not required:
            short_names.append(entry.name)
        properties = {"name": {"const": entry.name, "description": entry.summary()}}
        properties.update(props)
        properties.update(extra or {})
        variants.append(
            {
                "type": "object",
                "properties": properties,
                "required": ["name", *[r for r in required if r != "name"]],
                "additionalProperties": not closed,
            }
        )
    names: list[dict[str, Any]] = (
        [{"type": "string", "enum": short_names}]
        if short_names
        else ([] if variants else [{"type": "string"}])
    )
    return {"anyOf": names + variants}


def _referenced(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(_REF):
                found.add(value[len(_REF) :])
            else:
                _referenced(value, found)
    elif isinstance(node, list):
        for value in node:
            _referenced(value, found)


def _prune(schema: dict[str, Any]) -> None:
    """Drop the ``$defs`` nothing points to (directly or through other definitions)."""
    defs = schema.get("$defs", {})
    found: set[str] = set()
    _referenced({k: v for k, v in schema.items() if k != "$defs"}, found)
    todo = list(found)
    while todo:
        sub: set[str] = set()
        _referenced(defs.get(todo.pop(), {}), sub)
        todo.extend(sub - found)
        found |= sub
    schema["$defs"] = {k: v for k, v in defs.items() if k in found}
    if not schema["$defs"]:
        del schema["$defs"]


def run_config_schema(registries: Any) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a run config with ``registries``' components."""
    schema = copy.deepcopy(RunConfig.model_json_schema())
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    props = schema["properties"]
    props["task"] = _component_schema(registries["tasks"], defs)  # a name, or {name: ...}
    for section, (kind, is_list) in _SECTIONS.items():
        comp = _component_schema(registries[kind], defs)
        if section == "model":
            comp["anyOf"].append(
                {
                    "type": "object",
                    "properties": {
                        "candidates": {
                            "type": "array",
                            "items": _component_schema(registries[kind], defs),
                            "minItems": 2,
                            "description": "model selection: train each, keep the best on "
                            "validation",
                        }
                    },
                    "required": ["candidates"],
                    "additionalProperties": False,
                }
            )
        if is_list:  # a single entry is read as a one-item list
            comp = {"anyOf": [{"type": "array", "items": comp}, comp]}
        if section in _NULLABLE:
            comp = {
                "anyOf": [comp, {"type": "null"}],
                "description": "null or absent: the task's defaults",
            }
        props[section] = comp
    space = {
        "space": {
            "type": "object",
            "additionalProperties": {"$ref": f"{_REF}Distribution"},
            "description": "config key (as for --set) -> one distribution",
        }
    }
    defs.setdefault("Distribution", RunConfig.model_json_schema()["$defs"]["Distribution"])
    props["tuner"] = {
        "anyOf": [_component_schema(registries["tuners"], defs, extra=space), {"type": "null"}],
        "default": None,
        "description": "a hyperparameter search; null: train once",
    }
    _prune(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tuneforge run config"
    return schema
