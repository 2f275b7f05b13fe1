"""Named-component registries.

One :class:`Registry` per kind of component (validators, balancers, augmenters, tokenizers,
models, tuners, metrics, plus tasks, callbacks and commands). A plugin's ``register_<kind>``
hook receives a ``register(name, target, description="")`` callable; ``target`` is a class, a
factory or a lazy ``"module:Attr"`` string, so listing what is installed never imports the
heavy libraries a component needs (torch, transformers...).

This module must stay light: it imports nothing beyond the standard library and pydantic
lazily (only when a component's ``Config`` is resolved).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: The component kinds a plugin can register, in pipeline order.
COMPONENT_KINDS: tuple[str, ...] = (
    "tasks",
    "validators",
    "balancers",
    "augmenters",
    "tokenizers",
    "models",
    "tuners",
    "metrics",
    "advisors",
    "callbacks",
    "commands",
)


#: Config section -> the component kind its names are looked up in. A section holds one
#: component reference (``balancer: oversample``) or a list of them (``validators: [...]``).
SECTION_KINDS: dict[str, str] = {
    "task": "tasks",
    "validators": "validators",
    "balancer": "balancers",
    "augmenters": "augmenters",
    "preprocessors": "tokenizers",
    "tokenizer": "tokenizers",
    "model": "models",
    "tuner": "tuners",
    "metrics": "metrics",
    "callbacks": "callbacks",
    "advisors": "advisors",
}


def section_kind(section: str) -> str:
    """The component kind of a config section: ``section_kind("preprocessors") == "tokenizers"``.

    ``section`` may be a key path (``validators[1].name``): its first part counts.
    """
    head = section.split(".", 1)[0].split("[", 1)[0]
    try:
        return SECTION_KINDS[head]
    except KeyError:
        raise RegistryError(
            f"config section {head!r} names no component kind; sections: {', '.join(SECTION_KINDS)}"
        ) from None


class RegistryError(Exception):
    """A registration or lookup problem; the message is one line meant for the user."""


@dataclass
class Entry:
    """One registered component."""

    kind: str
    name: str
    target: Any
    plugin: str
    description: str = ""
    _resolved: Any = field(default=None, repr=False)

    @property
    def target_repr(self) -> str:
        if isinstance(self.target, str):
            return self.target
        mod = getattr(self.target, "__module__", "?")
        return f"{mod}:{getattr(self.target, '__qualname__', repr(self.target))}"

    def load(self) -> Any:
        """Import (if lazy) and return the class or factory."""
        if self._resolved is None:
            if isinstance(self.target, str):
                self._resolved = import_string(self.target, what=f"{self.kind[:-1]} {self.name!r}")
            else:
                self._resolved = self.target
        return self._resolved

    def config_model(self) -> Any:
        """The component's pydantic ``Config`` model (``extra="forbid"``), or an empty one."""
        from pydantic import BaseModel, ConfigDict

        cls = self.load()
        cfg = getattr(cls, "Config", None)
        if cfg is None:

            class _Empty(BaseModel):
                model_config = ConfigDict(extra="forbid")

            _Empty.__name__ = f"{self.name}Config"
            return _Empty
        if not (isinstance(cfg, type) and issubclass(cfg, BaseModel)):
            raise RegistryError(
                f"{self.kind[:-1]} {self.name!r} from plugin {self.plugin!r}: Config must be a "
                "pydantic BaseModel"
            )
        if cfg.model_config.get("extra") != "forbid":
            # A plain BaseModel ignores unknown keys: a misspelt parameter would be a silent
            # default. Refused rather than patched, so the author sees it while writing.
            raise RegistryError(
                f"{self.kind[:-1]} {self.name!r} from plugin {self.plugin!r}: its Config "
                f"{cfg.__qualname__!r} accepts unknown keys (a misspelt parameter would be "
                "ignored); subclass tuneforge.components.StrictConfig or set model_config = "
                "ConfigDict(extra='forbid')"
            )
        return cfg

    def problems(self) -> tuple[str, ...]:
        """The problem kinds the component declares it supports (empty: all, or unknown
        because it cannot be imported)."""
        try:
            target = self.load()
        except RegistryError:
            return ()
        return tuple(getattr(target, "problems", ()) or ())

    def summary(self) -> str:
        if self.description:
            return self.description
        if isinstance(self.target, str) and self._resolved is None:
            return ""
        doc = (getattr(self.load(), "__doc__", "") or "").strip()
        return doc.splitlines()[0] if doc else ""


def import_string(path: str, what: str = "target") -> Any:
    """Import ``"package.module:Attr.sub"`` and return the attribute."""
    if ":" not in path:
        raise RegistryError(f"{what}: lazy target {path!r} must look like 'module:Attr'")
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"{what}: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise RegistryError(f"{what}: {module_name!r} has no attribute {attr!r}") from exc
    return obj


class Registry:
    """Maps names to components of one kind and remembers which plugin registered each."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        #: names of components that are not loaded -> why (their plugin is disabled...)
        self._unavailable: dict[str, str] = {}

    @property
    def singular(self) -> str:
        return self.kind[:-1]

    def add(self, name: str, target: Any, plugin: str, description: str = "") -> Entry:
        if not isinstance(name, str) or not name:
            raise RegistryError(
                f"plugin {plugin!r} registered a {self.singular} with an empty name"
            )
        if not (isinstance(target, str) or callable(target)):
            raise RegistryError(
                f"plugin {plugin!r} registered {self.singular} {name!r} with target {target!r}: "
                "expected a class, a factory or a 'module:Attr' string"
            )
        if name in self._entries:
            held = self._entries[name].plugin
            raise RegistryError(
                f"{self.singular} {name!r} is registered twice: by plugin {held!r} and by plugin "
                f"{plugin!r} (disable one of them)"
            )
        entry = Entry(self.kind, name, target, plugin, description)
        if isinstance(target, type):
            entry.config_model()  # a class given eagerly: its Config is checked now
        self._entries[name] = entry
        self._unavailable.pop(name, None)
        return entry

    def register_fn(self, plugin: str) -> Callable[..., Entry]:
        """The ``register`` callable handed to one plugin's ``register_<kind>`` hook."""

        def register(name: str, target: Any, description: str = "") -> Entry:
            return self.add(name, target, plugin, description)

        register.__doc__ = f"Register a {self.singular}: register(name, target, description='')."
        return register

    def entry_of(self, obj: object) -> Entry | None:
        """The entry whose class built ``obj`` (an instance of a registered class), if any."""
        cls = type(obj)
        for entry in self._entries.values():
            if entry.target is cls or entry._resolved is cls:
                return entry
        return None

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            if name in self._unavailable:
                raise RegistryError(f"{name!r} {self._unavailable[name]}") from None
            raise RegistryError(self.unknown_message(name)) from None

    def mark_unavailable(self, name: str, reason: str) -> None:
        """Remember ``name`` as a component that is not loaded, and why, for :meth:`get`'s error.

        ``reason`` completes ``'NAME' ...``: ``comes from plugin 'regression', which is
        disabled (--disable-plugin regression)``. A loaded component of that name wins.
        """
        if name not in self._entries:
            self._unavailable.setdefault(name, reason)

    def unavailable(self) -> dict[str, str]:
        """Names of components not loaded, and why (see :meth:`mark_unavailable`)."""
        return {n: r for n, r in sorted(self._unavailable.items()) if n not in self._entries}

    def unknown_message(self, name: str) -> str:
        names = sorted(self._entries)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        avail = ", ".join(names) if names else "none"
        return (
            f"unknown {self.singular} {name!r}: {hint}available: {avail} "
            f"(a plugin providing it may not be installed or may be disabled)"
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)


class Registries:
    """All registries of one plugin manager, one per kind."""

    def __init__(self) -> None:
        self._by_kind = {kind: Registry(kind) for kind in COMPONENT_KINDS}

    def __getitem__(self, kind: str) -> Registry:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise RegistryError(
                f"unknown component kind {kind!r}: available: {', '.join(COMPONENT_KINDS)}"
            ) from None

    def __iter__(self) -> Iterator[Registry]:
        return iter(self._by_kind.values())

    def by_plugin(self, plugin: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for reg in self:
            names = [e.name for e in reg if e.plugin == plugin]
            if names:
                out[reg.kind] = names
        return out


__all__ = [
    "COMPONENT_KINDS",
    "SECTION_KINDS",
    "Entry",
    "Registries",
    "Registry",
    "RegistryError",
    "import_string",
    "section_kind",
]
