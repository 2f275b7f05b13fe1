"""JSON Schema of run configs, including every registered component's parameters."""

from __future__ import annotations

from typing import Any

from tuneforge.config import RunConfig

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


def _component_schema(registry: Any) -> dict[str, Any]:
    names = registry.names()
    variants: list[dict[str, Any]] = (
        [{"type": "string", "enum": names}] if names else [{"type": "string"}]
    )
    for entry in registry:
        try:
            params = entry.config_model().model_json_schema()
        except Exception:  # a component that cannot be imported still gets its name listed
            params = {"properties": {}}
        props = {"name": {"const": entry.name, "description": entry.summary()}}
        props.update(params.get("properties", {}))
        variants.append(
            {
                "type": "object",
                "properties": props,
                "required": ["name"],
                "additionalProperties": False,
                **({"$defs": params["$defs"]} if "$defs" in params else {}),
            }
        )
    return {"anyOf": variants}


def run_config_schema(registries: Any) -> dict[str, Any]:
    schema = RunConfig.model_json_schema()
    props = schema["properties"]
    props["task"] = {
        "type": "string",
        "enum": registries["tasks"].names(),
        "description": "task name",
    }
    for section, (kind, is_list) in _SECTIONS.items():
        comp = _component_schema(registries[kind])
        props[section] = {"type": "array", "items": comp} if is_list else comp
        if section in ("validators", "metrics", "tokenizer", "model"):
            props[section] = {
                "anyOf": [props[section], {"type": "null"}],
                "description": "null or absent: the task's defaults",
            }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tuneforge run config"
    return schema
