"""The plugin manager: loads built-in, installed and local plugins and fills the registries."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from tuneforge import PROJECT_NAME, hookspecs
from tuneforge.errors import PluginError
from tuneforge.registry import COMPONENT_KINDS, Registries, RegistryError
from tuneforge.registry.discovery import PluginSource, discover

DISABLE_ENV = "TUNEFORGE_DISABLE_PLUGINS"
STRICT_ENV = "TUNEFORGE_STRICT_PLUGINS"


@dataclass
class PluginInfo:
    """What ``tuneforge plugins`` reports about one plugin."""

    name: str
    source: str  # "entry-point" or "local"
    target: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    disabled: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "target": self.target,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "components": self.components,
            "disabled": self.disabled,
            "error": self.error,
        }


def disabled_from_env() -> list[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return [n.strip() for n in raw.replace(";", ",").split(",") if n.strip()]


def strict_from_env() -> bool:
    return os.environ.get(STRICT_ENV, "").lower() in {"1", "true", "yes", "on"}


class PluginManager:
    """Wraps ``pluggy.PluginManager`` with tuneforge's discovery and registries."""

    def __init__(
        self,
        disable: Iterable[str] = (),
        strict: bool | None = None,
        local: Iterable[str] = (),
        base_dir: Path | None = None,
        entry_points: bool = True,
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = set(disable) | set(disabled_from_env())
        self.strict = strict_from_env() if strict is None else strict
        self.infos: dict[str, PluginInfo] = {}
        for name in self.disabled:
            # Blocked before anything is imported, as pytest's ``-p no:NAME``.
            self.pm.set_blocked(name)
        if entry_points:
            for src in discover():
                self._load_entry_point(src)
        for spec in local:
            self.load_local(spec, base_dir=base_dir)
        self.registries = self._collect()

    # -- loading --------------------------------------------------------------------------
    def _load_entry_point(self, src: PluginSource) -> None:
        info = PluginInfo(
            name=src.name,
            source="entry-point",
            target=src.value,
            distribution=src.distribution,
            version=src.version,
        )
        if src.name in self.infos:
            # Two distributions declare the same plugin name: refuse the second.
            first = self.infos[src.name]
            info.error = f"plugin name {src.name!r} is declared by {first.distribution} and {src.distribution}"
            self._failed(info, None)
            return
        self.infos[src.name] = info
        if src.name in self.disabled:
            info.disabled = True
            return
        try:
            obj = src.load()
        except Exception as exc:  # a broken plugin must not take the others down
            info.error = f"{type(exc).__name__}: {exc}"
            self._failed(info, exc)
            return
        self._register(info, obj)

    def load_local(self, spec: str, base_dir: Path | None = None) -> None:
        """Load hook implementations from a ``.py`` file or an importable module name."""
        path = Path(spec)
        if not path.is_absolute() and base_dir is not None and spec.endswith(".py"):
            path = base_dir / path
        info = PluginInfo(
            name=spec, source="local", target=str(path) if spec.endswith(".py") else spec
        )
        if spec in self.disabled or (spec.endswith(".py") and path.stem in self.disabled):
            info.disabled = True
            info.name = path.stem if spec.endswith(".py") else spec
            self.infos[info.name] = info
            return
        try:
            if spec.endswith(".py") or os.sep in spec:
                if not path.is_file():
                    raise PluginError(f"local plugin file not found: {path}")
                info.name = path.stem
                module = _import_file(path)
            else:
                module = importlib.import_module(spec)
        except PluginError:
            raise
        except ModuleNotFoundError as exc:
            raise PluginError(f"local plugin {spec!r} cannot be imported: {exc}") from exc
        except Exception as exc:
            raise PluginError(
                f"local plugin {spec!r} failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        if info.name in self.infos and not self.infos[info.name].disabled:
            raise PluginError(
                f"local plugin {spec!r}: a plugin named {info.name!r} is already loaded"
            )
        self.infos[info.name] = info
        self._register(info, module)

    def _register(self, info: PluginInfo, obj: object) -> None:
        try:
            self.pm.register(obj, name=info.name)
        except Exception as exc:  # pluggy validates hook names and signatures
            first = (str(exc).strip().splitlines() or [""])[0]
            info.error = f"{type(exc).__name__}: {first}"
            self._failed(info, exc)
            return
        try:
            self.pm.check_pending()  # a misspelt hook name (register_metric) is an error
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(obj)
            info.error = str(exc).strip().splitlines()[0]
            self._failed(info, exc)
            return
        info.hooks = sorted(caller.name for caller in self.pm.get_hookcallers(obj) or [])

    def _failed(self, info: PluginInfo, exc: BaseException | None) -> None:
        self.infos.setdefault(info.name, info)
        if self.infos[info.name] is not info:
            self.infos[f"{info.name} ({info.distribution})"] = info
        if self.strict or info.source == "local":  # a file the user named must work
            raise PluginError(f"plugin {info.name!r} failed to load: {info.error}") from exc
        print(
            f"tuneforge: warning: plugin {info.name!r} failed to load and is skipped: {info.error}",
            file=sys.stderr,
        )
        if os.environ.get("TUNEFORGE_DEBUG") and exc is not None:
            traceback.print_exception(exc)

    # -- registries -----------------------------------------------------------------------
    def _collect(self) -> Registries:
        regs = Registries()
        for kind in COMPONENT_KINDS:
            caller = getattr(self.pm.hook, f"register_{kind}")
            # Call each implementation on its own so every entry knows its plugin.
            for impl in reversed(caller.get_hookimpls()):
                plugin_name = self.pm.get_name(impl.plugin) or "?"
                try:
                    impl.function(register=regs[kind].register_fn(plugin_name))
                except RegistryError as exc:
                    raise PluginError(str(exc)) from exc
                except Exception as exc:
                    info = self.infos.get(plugin_name)
                    msg = f"plugin {plugin_name!r} failed in register_{kind}: {type(exc).__name__}: {exc}"
                    if self.strict or info is None:
                        raise PluginError(msg) from exc
                    info.error = msg
                    print(f"tuneforge: warning: {msg}", file=sys.stderr)
        for info in self.infos.values():
            if not info.disabled and self.pm.get_plugin(info.name) is not None:
                info.components = regs.by_plugin(info.name)
        return regs

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def failures(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.error]


def _import_file(path: Path) -> ModuleType:
    mod_name = f"tuneforge_local_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"local plugin file cannot be loaded: {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return module
