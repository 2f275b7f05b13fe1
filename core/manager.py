"""The plugin manager: loads built-in, installed and local plugins and fills the registries."""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import pluggy

from tuneforge import PROJECT_NAME, hookspecs
from tuneforge.errors import PluginError, UserError, short
from tuneforge.registry import COMPONENT_KINDS, Registries, RegistryError
from tuneforge.registry.discovery import PluginSource, discover
from tuneforge.registry.static import scan_plugin

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
    #: plugins this one declares it needs (its module's ``requires = [...]``)
    requires: list[str] = field(default_factory=list)
    #: why a plugin that was not disabled by name is not loaded (a requirement is missing)
    reason: str | None = None

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
            "requires": self.requires,
            "reason": self.reason,
        }


def disabled_from_env() -> list[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return [n.strip() for n in raw.replace(";", ",").split(",") if n.strip()]


def plugin_name_to_disable(name: str) -> str:
    """A ``--disable-plugin`` value as a plugin name: pytest's ``no:NAME`` form is accepted."""
    name = name.strip()
    return name[3:].strip() if name.startswith("no:") else name


def strict_from_env() -> bool:
    return os.environ.get(STRICT_ENV, "").lower() in {"1", "true", "yes", "on"}


# -- naming what failed -------------------------------------------------------------------------


def describe_exception(exc: BaseException, limit: int = 300) -> str:
    """``ValueError: boom`` for an error message: the first line of the text, bounded.

    ``SystemExit`` reads ``called sys.exit(CODE)``: a plugin that ends the process is named as such.
    """
    if isinstance(exc, SystemExit):
        return f"called sys.exit({short(exc.code, 40)})"
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not hide the failure
        text = ""
    first = (text.strip().splitlines() or [""])[0]
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


#: Exceptions a plugin's hook lets through unchanged: tuneforge's own one-line errors (a plugin
#: reporting bad input raises ``UserError``), Ctrl-C, and generator shutdown.
PASS_THROUGH: tuple[type[BaseException], ...] = (
    UserError,
    RegistryError,
    KeyboardInterrupt,
    GeneratorExit,
)


def is_builtin(plugin: object) -> bool:
    """Whether ``plugin`` (a module or a hook object) is tuneforge's own code."""
    module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
    return module == PROJECT_NAME or module.startswith(f"{PROJECT_NAME}.")


def _guard(function: Callable[..., Any], hook: str, who: Callable[[], str]) -> Callable[..., Any]:
    """``function`` (one plugin's hook implementation) with its failures named.

    Any exception but those in :data:`PASS_THROUGH` (``sys.exit()`` included) becomes a
    :class:`PluginError` ``plugin 'NAME' failed in HOOK: Type: message``, chained to the original
    (``--debug`` shows its traceback). Wrapper hook implementations (generators) are guarded
    around their own code only: an exception pluggy throws into them from the implementations
    they wrap goes on unchanged.
    """

    def failure(exc: BaseException) -> PluginError:
        return PluginError(f"{who()} failed in {hook}: {describe_exception(exc)}")

    if not _is_generator_function(function):

        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except PASS_THROUGH:
                raise
            except BaseException as exc:
                raise failure(exc) from exc

        return guarded

    @functools.wraps(function)
    def guarded_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        inner = function(*args, **kwargs)
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                item = inner.send(sent) if thrown is None else inner.throw(thrown)
            except StopIteration as stop:
                return stop.value
            except BaseException as exc:
                if exc is thrown or isinstance(exc, PASS_THROUGH):
                    raise
                raise failure(exc) from exc
            sent, thrown = None, None
            try:
                sent = yield item
            except BaseException as exc:  # pluggy throws the wrapped hooks' error in
                thrown = exc

    return guarded_wrapper


def _is_generator_function(function: Callable[..., Any]) -> bool:
    import inspect

    return inspect.isgeneratorfunction(function)


class HookHost(pluggy.PluginManager):
    """pluggy's manager, naming the plugin and the hook of any hook implementation that fails.

    Every plugin object registered, at start-up or later (a run's callbacks), has each of its
    lifecycle hook implementations wrapped by :func:`_guard`, unless it is tuneforge's own code:
    an exception there is a bug in tuneforge and stays an internal error. Registration hooks are
    called one by one by :meth:`PluginManager._collect`, which names their failures itself.
    """

    def __init__(self, project_name: str, describe: Callable[[object, str], str]) -> None:
        super().__init__(project_name)
        self._describe = describe

    def register(self, plugin: object, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        if registered is None or is_builtin(plugin):
            return registered
        for caller in self.get_hookcallers(plugin) or []:
            if caller.name.startswith("register_"):
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    impl.function = _guard(  # type: ignore[misc]
                        impl.function,
                        caller.name,
                        functools.partial(self._describe, plugin, registered),
                    )
        return registered


def validation_message(pm: pluggy.PluginManager, exc: BaseException) -> str:
    """pluggy's several-line ``PluginValidationError`` as one line that says what is wrong.

    ``hook 'on_epoch_end': argument 'extra' of on_epoch_end(run, epoch, metrics, extra) is not
    in the hook spec on_epoch_end(run, epoch, metrics)``.
    """
    text = str(exc).strip()
    unknown = re.match(r"unknown hook '(\w+)'", text)
    if unknown:
        name = unknown[1]
        specs = [n for n, c in vars(pm.hook).items() if n[0] != "_" and c.has_spec()]
        close = difflib.get_close_matches(name, specs, n=1)
        hint = f": did you mean {close[0]!r}?" if close else " (no hook spec has that name)"
        return f"unknown hook {name!r}{hint}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hook = re.search(r"hook '(\w+)'", lines[0]) if lines else None
    args = re.search(r"Argument\(s\) \{(.*)\} are declared", text)
    definition = re.search(r"hookimpl definition: (.*)", text)
    if hook and args and definition:
        caller = getattr(pm.hook, hook[1], None)
        spec = caller.spec if caller is not None else None
        names = sorted(args[1].replace("'", "").split(", "))
        noun = "argument" if len(names) == 1 else "arguments"
        verb = "is" if len(names) == 1 else "are"
        expected = f"{hook[1]}({', '.join(spec.argnames)})" if spec is not None else "its spec"
        return (
            f"hook {hook[1]!r}: {noun} {', '.join(repr(n) for n in names)} of "
            f"{definition[1]} {verb} not in the hook spec {expected}"
        )
    rest = [re.sub(r"^Plugin '[^']*' (for )?", "", ln) for ln in lines]
    return "; ".join(ln for ln in rest if ln) or type(exc).__name__


#: Top-level module or package name -> plugin name, for every third-party plugin loaded in this
#: process: :func:`plugin_failure` names the plugin whose code raised.
_PLUGIN_CODE: dict[str, str] = {}


def plugin_failure(exc: BaseException) -> PluginError | None:
    """A :class:`PluginError` naming the third-party plugin whose code raised ``exc``, if any.

    Components (validators, models, metrics...) are called by core directly, not through hooks;
    when one of a plugin's components raises, the innermost frame of the traceback that belongs
    to a loaded plugin's module names it: ``plugin 'NAME' failed in check (file.py:12): ...``.
    ``None`` when no plugin code is on the traceback (a bug in tuneforge itself).
    """
    frames: list[tuple[str, str, str, int]] = []
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__") or "")
        code = tb.tb_frame.f_code
        frames.append((module, code.co_name, code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    for module, function, filename, line in reversed(frames):
        plugin = _PLUGIN_CODE.get(module.partition(".")[0])
        if plugin is not None:
            return PluginError(
                f"plugin {plugin!r} failed in {function} ({Path(filename).name}:{line}): "
                f"{describe_exception(exc)}"
            )
    return None


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
        self.pm = HookHost(PROJECT_NAME, self._describe)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = {plugin_name_to_disable(n) for n in [*disable, *disabled_from_env()]} - {""}
        self._disabled_seen: set[str] = set()  # the disabled names that matched a plugin
        # plugin name -> the components its source registers, for a plugin not loaded
        self._not_loaded: dict[str, dict[str, list[str]]] = {}
        self.strict = strict_from_env() if strict is None else strict
        self.infos: dict[str, PluginInfo] = {}
        self.registries = Registries()  # filled once every plugin is loaded
        for name in self.disabled:
            # Blocked before anything is imported, as pytest's ``-p no:NAME``.
            self.pm.set_blocked(name)
        if entry_points:
            for src in discover():
                self._load_entry_point(src)
        for spec in local:
            self.load_local(spec, base_dir=base_dir)
        self._warn_unknown_disabled()
        self._drop_unmet_requirements()
        self.registries = self._collect()
        self._remember_not_loaded(self.registries)

    def _describe(self, plugin: object, name: str) -> str:
        """How an error names a registered plugin object: ``plugin 'NAME'``."""
        if name in self.infos:
            return f"plugin {name!r}"
        entry = self.registries["callbacks"].entry_of(plugin)
        if entry is not None:  # a callback object registered for one run
            return f"plugin {entry.plugin!r} (callback {entry.name!r})"
        cls = type(plugin)
        return f"plugin object {cls.__qualname__!r} ({cls.__module__})"

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
            self._disabled_seen.add(src.name)
            # Never imported: what it would register is read from its source.
            static = scan_plugin(src.value, COMPONENT_KINDS)
            info.requires = static.requires
            self._not_loaded[src.name] = static.components
            return
        try:
            obj = src.load()
        except (Exception, SystemExit) as exc:  # a broken plugin must not take the others down
            info.error = describe_exception(exc)
            self._failed(info, exc)
            return
        self._register(info, obj)

    def load_local(self, spec: str, base_dir: Path | None = None) -> None:
        """Load hook implementations from a ``.py`` file or an importable module name.

        A relative file path is taken relative to ``base_dir`` (the working directory when
        ``None``); :func:`make_plugin_manager` passes absolute paths.
        """
        is_file = spec.endswith(".py") or "/" in spec or os.sep in spec
        path = Path(spec).expanduser()
        if is_file and not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        info = PluginInfo(name=spec, source="local", target=str(path) if is_file else spec)
        if is_file:
            info.name = path.stem
        # Disabled by the string it was given with, or a file by its name or stem.
        names = {spec, info.name, path.name} if is_file else {spec}
        if names & self.disabled:
            info.disabled = True
            self._disabled_seen |= names & self.disabled
            self.infos[info.name] = info
            if is_file:
                from tuneforge.registry.static import scan_source

                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    text = ""
                self._not_loaded[info.name] = scan_source(text, COMPONENT_KINDS).components
            return
        try:
            if is_file:
                if not path.is_file():
                    raise PluginError(f"local plugin file not found: {path}")
                module = _import_file(path)
            else:
                module = importlib.import_module(spec)
        except PluginError:
            raise
        except ModuleNotFoundError as exc:
            raise PluginError(f"local plugin {spec!r} cannot be imported: {exc}") from exc
        except (Exception, SystemExit) as exc:  # sys.exit() at import is a failure like any other
            raise PluginError(
                f"local plugin {spec!r} failed to import: {describe_exception(exc)}"
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
        except (Exception, SystemExit) as exc:  # pluggy validates hook names and signatures
            if isinstance(exc, pluggy.PluginValidationError):
                info.error = validation_message(self.pm, exc)
            else:
                info.error = describe_exception(exc)
            self._failed(info, exc)
            return
        try:
            self.pm.check_pending()  # a misspelt hook name (register_metric) is an error
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(obj)
            info.error = validation_message(self.pm, exc)
            self._failed(info, exc)
            return
        info.hooks = sorted(caller.name for caller in self.pm.get_hookcallers(obj) or [])
        if not is_builtin(obj):  # where its code lives, to name it when a component raises
            module = obj.__name__ if isinstance(obj, ModuleType) else type(obj).__module__
            _PLUGIN_CODE[module.partition(".")[0]] = info.name

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

    # -- what is disabled, and what that takes with it ---------------------------------------
    def _warn_unknown_disabled(self) -> None:
        """A ``--disable-plugin`` name that matches no plugin is a warning with a did-you-mean."""
        known = sorted(self.infos)
        for name in sorted(self.disabled - self._disabled_seen - set(self.infos)):
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            print(
                f"tuneforge: warning: --disable-plugin {short(name, 80)}: no plugin has that "
                f"name; {hint}plugins: {', '.join(known) or 'none'}",
                file=sys.stderr,
            )

    def _why_not_loaded(self, name: str) -> str:
        """``which is disabled (--disable-plugin NAME)`` and the like, for plugin ``name``."""
        info = self.infos.get(name)
        if info is None:
            return "which is not installed"
        if info.reason:
            return f"which is not loaded: it {info.reason.removeprefix('it ')}"
        if info.disabled:
            return f"which is disabled (--disable-plugin {name})"
        if info.error:
            return "which failed to load"
        return "which is loaded"

    def _drop_unmet_requirements(self) -> None:
        """Unregister each plugin whose module's ``requires`` names a plugin that is not loaded.

        ``requires = ["regression"]`` at the top of a plugin module declares that it works only
        with plugin ``regression``. Repeated until nothing changes: a plugin that needs a plugin
        that was dropped is dropped too. What it registers is remembered for the error.
        """
        changed = True
        while changed:
            changed = False
            for info in list(self.infos.values()):
                plugin = self.pm.get_plugin(info.name)
                if plugin is None or info.disabled:
                    continue
                requires = (
                    vars(plugin).get("requires", []) if isinstance(plugin, ModuleType) else []
                )
                if isinstance(requires, str) or not (
                    isinstance(requires, list | tuple) and all(isinstance(r, str) for r in requires)
                ):
                    info.error = f"requires must be a list of plugin names, got {short(requires)}"
                    self.pm.unregister(plugin)
                    self._failed(info, None)
                    changed = True
                    continue
                info.requires = list(requires)
                missing = [
                    r
                    for r in requires
                    if r not in self.infos
                    or self.infos[r].disabled
                    or self.pm.get_plugin(r) is None
                ]
                if not missing:
                    continue
                need = missing[0]
                info.reason = f"needs plugin {need!r}, {self._why_not_loaded(need)}"
                self._not_loaded[info.name] = self._components_of(plugin, info.name)
                self.pm.unregister(plugin)
                info.disabled = True
                changed = True

    def _components_of(self, plugin: object, name: str) -> dict[str, list[str]]:
        """What ``plugin``'s registration hooks register, into scratch registries (best effort)."""
        scratch = Registries()
        for kind in COMPONENT_KINDS:
            caller = getattr(self.pm.hook, f"register_{kind}")
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    # It is not loaded: a failure of its registration is moot.
                    with contextlib.suppress(Exception, SystemExit):
                        impl.function(register=scratch[kind].register_fn(name))
        return scratch.by_plugin(name)

    def _remember_not_loaded(self, regs: Registries) -> None:
        for name, components in self._not_loaded.items():
            info = self.infos.get(name)
            if info is None:
                continue
            if info.reason:
                why = f"which {info.reason}"
            else:
                why = f"which is disabled (--disable-plugin {name})"
            for kind, names in components.items():
                for component in names:
                    regs[kind].mark_unavailable(component, f"comes from plugin {name!r}, {why}")

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
                except (Exception, SystemExit) as exc:
                    info = self.infos.get(plugin_name)
                    msg = (
                        f"plugin {plugin_name!r} failed in register_{kind}: "
                        f"{describe_exception(exc)}"
                    )
                    if self.strict or info is None or info.source == "local":
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


def resolve_local(spec: str, base_dir: Path | None) -> str:
    """A local plugin file path (``.py``, or any path with a ``/``) made absolute against
    ``base_dir``; module names are left alone."""
    if not (spec.endswith(".py") or "/" in spec or os.sep in spec) or base_dir is None:
        return spec
    path = Path(spec).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def make_plugin_manager(
    cfg: Any,
    base_dir: Path | None,
    disable: list[str] = (),
    local: list[str] = (),
    strict: bool | None = None,
) -> PluginManager:
    """The plugin manager for a command.

    ``plugins.local`` paths of the config are relative to ``base_dir`` (the config's folder);
    ``--plugin`` paths given on the command line are relative to the working directory, as
    every command-line path is.
    """
    dis = list(disable) + (cfg.plugins.disable if cfg else [])
    loc = [resolve_local(s, base_dir) for s in (cfg.plugins.local if cfg else [])]
    loc += [resolve_local(s, Path.cwd()) for s in local]
    return PluginManager(disable=dis, local=loc, base_dir=base_dir, strict=strict)
