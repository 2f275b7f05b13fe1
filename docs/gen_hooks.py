"""Generate the hook and base-class references of docs/plugins.md and the component tables
of docs/config.md.

Usage (from the repository root, with tuneforge installed)::

    python docs/gen_hooks.py               # print the hook reference's Markdown
    python docs/gen_hooks.py --bases       # print the base-class reference's Markdown
    python docs/gen_hooks.py --components  # print the component tables' Markdown
    python docs/gen_hooks.py --check       # exit 1 if any of them is out of date
    python docs/gen_hooks.py --write       # replace the text between the markers in both files

The hook reference lies in docs/plugins.md between ``<!-- hooks:start -->`` and
``<!-- hooks:end -->``. Every function of ``tuneforge.hookspecs`` marked ``@tuneforge.hookspec``
is listed, in source order, with its signature and its docstring (reST roles turned into
Markdown code spans).

The base-class reference lies in docs/plugins.md between ``<!-- bases:start -->`` and
``<!-- bases:end -->``: for each base class of :mod:`tuneforge.components` in :data:`BASES`, its
docstring, its declared attributes (with their ``#:`` comments) and every public method it
declares, in source order, with its signature and docstring; a method a subclass must
implement (abstract, or raising ``NotImplementedError``) is marked *required*.

The component tables lie in docs/config.md between ``<!-- components:start -->`` and
``<!-- components:end -->``: one table per kind of every component the built-in plugins (those
of the ``tuneforge`` distribution) register, with its plugin, the first line of its docstring
(or registered description) and its parameters with their defaults, read from the registries
the way ``tuneforge components`` reads them. Third-party plugins installed beside it are left
out, so the page is the same on every machine.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tuneforge
import tuneforge.hookspecs as hookspecs

START = "<!-- hooks:start -->"
END = "<!-- hooks:end -->"
DOC = Path(__file__).resolve().parent / "plugins.md"
BASES_START = "<!-- bases:start -->"
BASES_END = "<!-- bases:end -->"
#: The base classes of tuneforge.components in the reference, in this order.
BASES = (
    "Task",
    "ModelBuilder",
    "ModelSpec",
    "Validator",
    "Balancer",
    "Augmenter",
    "Preprocessor",
    "Metric",
    "Tuner",
    "Advisor",
    "Command",
)
COMPONENTS_START = "<!-- components:start -->"
COMPONENTS_END = "<!-- components:end -->"
COMPONENTS_DOC = Path(__file__).resolve().parent / "config.md"

#: kind -> where a config (or a command) selects components of that kind
KIND_TITLES = {
    "tasks": "Tasks (`task`)",
    "validators": "Validators (`validators`)",
    "balancers": "Balancers (`balancer`)",
    "augmenters": "Augmenters (`augmenters`)",
    "tokenizers": "Preprocessors and tokenizers (`preprocessors`, `tokenizer`)",
    "models": "Models (`model`)",
    "tuners": "Tuners (`tuner`)",
    "metrics": "Metrics (`metrics`)",
    "callbacks": "Callbacks (`callbacks`)",
    "advisors": "Advisors (`tuneforge refine`)",
}

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_PARAM = re.compile(r"^:param\s+(\w+):\s*(.*)$")


def is_spec(obj: Any) -> bool:
    """True for a function marked with ``@tuneforge.hookspec``."""
    return (
        inspect.isfunction(obj) and getattr(obj, f"{tuneforge.PROJECT_NAME}_spec", None) is not None
    )


def specs() -> list[Callable[..., Any]]:
    """The hookspecs of :mod:`tuneforge.hookspecs`, in source order."""
    found = [obj for _, obj in vars(hookspecs).items() if is_spec(obj)]
    return sorted(found, key=lambda f: f.__code__.co_firstlineno)


def inline(text: str) -> str:
    """reST inline markup -> Markdown."""
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    return _LITERAL.sub(lambda m: f"`{m.group(1)}`", text)


def render_doc(doc: str) -> str:
    """A hookspec docstring as Markdown: paragraphs, then a parameter list."""
    lines = inspect.cleandoc(doc).splitlines()
    body: list[str] = []
    params: list[list[str]] = []  # [name, text]
    for line in lines:
        m = _PARAM.match(line.strip())
        if m:
            params.append([m.group(1), m.group(2)])
        elif params and line.startswith((" ", "\t")) and line.strip():
            params[-1][1] += " " + line.strip()  # continuation of the last :param:
        else:
            body.append(line.rstrip())
    while body and not body[-1]:
        body.pop()
    out = [inline(line) for line in body]
    if params:
        out += ["", "Parameters:", ""]
        out += [f"- `{name}`: {inline(text)}" for name, text in params]
    return "\n".join(out)


def _parts(func: Callable[..., Any]) -> tuple[list[str], str]:
    """Parameter texts and the `` -> ret`` suffix, annotations as written in the source."""

    def ann(a: Any) -> str:
        return a if isinstance(a, str) else inspect.formatannotation(a)

    sig = inspect.signature(func)
    params = []
    for p in sig.parameters.values():
        text = p.name if p.annotation is p.empty else f"{p.name}: {ann(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        params.append(text)
    ret = "" if sig.return_annotation is sig.empty else f" -> {ann(sig.return_annotation)}"
    return params, ret


def signature(func: Callable[..., Any]) -> str:
    """``(run: RunContext, epoch: int) -> None``: annotations as written in the source."""
    params, ret = _parts(func)
    return f"({', '.join(params)}){ret}"


def definition(func: Callable[..., Any], width: int = 100) -> str:
    """``def name(...) -> ret: ...`` wrapped the way ``ruff format`` wraps it at ``width``."""
    line = f"def {func.__name__}{signature(func)}: ..."
    if len(line) <= width:
        return line
    params, ret = _parts(func)
    inner = f"    {', '.join(params)}"
    if len(inner) <= width:
        return f"def {func.__name__}(\n{inner}\n){ret}: ..."
    one_per_line = "".join(f"    {p},\n" for p in params)
    return f"def {func.__name__}(\n{one_per_line}){ret}: ..."


def render_spec(func: Callable[..., Any]) -> str:
    return "\n".join(
        [
            f"#### `{func.__name__}`",
            "",
            "```python",
            "@tuneforge.hookimpl",
            definition(func),
            "```",
            "",
            render_doc(func.__doc__ or "(undocumented)"),
        ]
    )


def generate() -> str:
    """The Markdown that belongs between the markers (without the markers)."""
    funcs = specs()
    groups = [
        ("Registration hooks", [f for f in funcs if f.__name__.startswith("register_")]),
        ("Lifecycle hooks", [f for f in funcs if not f.__name__.startswith("register_")]),
    ]
    parts = [
        "<!-- Generated by docs/gen_hooks.py from tuneforge/hookspecs.py (core/hookspecs.py); "
        "do not edit by hand. -->",
    ]
    for title, group in groups:
        if not group:
            continue
        parts.append(f"### {title}")
        parts.extend(render_spec(f) for f in group)
    return "\n\n".join(parts) + "\n"


# -- base classes -------------------------------------------------------------------------


def _required(func: Callable[..., Any]) -> bool:
    """True for an abstract method, or one whose body raises ``NotImplementedError``."""
    if getattr(func, "__isabstractmethod__", False):
        return True
    return "raise NotImplementedError" in inspect.getsource(func)


def _attributes(cls: type) -> list[str]:
    """``- `name: type = default`: comment`` for each attribute the class itself annotates."""
    source = inspect.getsource(cls).splitlines()
    out = []
    for name, ann in vars(cls).get("__annotations__", {}).items():
        if name.startswith("_") or name == "Config":
            continue
        comment: list[str] = []
        for i, line in enumerate(source):
            if re.match(rf"^\s+{re.escape(name)}\s*:", line):
                j = i - 1
                while j >= 0 and source[j].strip().startswith("#:"):
                    comment.insert(0, source[j].strip()[2:].strip())
                    j -= 1
                break
        default = vars(cls).get(name, inspect.Parameter.empty)
        text = f"`{name}: {ann}" + ("" if default is inspect.Parameter.empty else f" = {default!r}")
        out.append(f"- {text}`" + (f": {inline(' '.join(comment))}" if comment else ""))
    return out


def _methods(cls: type) -> list[tuple[str, Callable[..., Any], bool]]:
    """``(name, function, is_property)`` for the public methods ``cls`` declares itself."""
    found = []
    for name, obj in vars(cls).items():
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(obj, property) and obj.fget is not None:
            found.append((name, obj.fget, True))
        elif isinstance(obj, (staticmethod, classmethod)):
            found.append((name, obj.__func__, False))
        elif inspect.isfunction(obj):
            found.append((name, obj, False))
    return sorted(found, key=lambda m: m[1].__code__.co_firstlineno)


def render_base(cls: type) -> str:
    parts = [f"### `{cls.__name__}`"]
    parts.append(render_doc(cls.__doc__ or "(undocumented)"))
    attrs = _attributes(cls)
    if attrs:
        parts.append("Attributes:\n\n" + "\n".join(attrs))
    for _name, func, is_property in _methods(cls):
        head = f"#### `{cls.__name__}.{func.__name__}`" + (" (required)" if _required(func) else "")
        code = ("@property\n" if is_property else "") + definition(func)
        parts.append(f"{head}\n\n```python\n{code}\n```")
        parts.append(render_doc(func.__doc__ or "(undocumented)"))
    return "\n\n".join(parts)


def generate_bases() -> str:
    """The Markdown that belongs between the base-class markers (without the markers)."""
    import tuneforge.components as components

    parts = [
        "<!-- Generated by docs/gen_hooks.py from tuneforge/components.py (core/components.py); "
        "do not edit by hand. -->",
    ]
    parts.extend(render_base(getattr(components, name)) for name in BASES)
    return "\n\n".join(parts) + "\n"


# -- component tables ---------------------------------------------------------------------


def builtin_registries() -> Any:
    """The registries of the built-in plugins (the ``tuneforge`` distribution's) alone.

    Plugins disabled through ``TUNEFORGE_DISABLE_PLUGINS`` are loaded anyway, and a built-in
    plugin that fails to load is an error: the tables list what tuneforge ships.
    """
    import os

    from tuneforge.manager import DISABLE_ENV, PluginManager
    from tuneforge.registry import Registries

    saved = os.environ.pop(DISABLE_ENV, None)
    try:
        pm = PluginManager(strict=True)
    finally:
        if saved is not None:
            os.environ[DISABLE_ENV] = saved
    builtin = {n for n, info in pm.infos.items() if info.distribution == tuneforge.PROJECT_NAME}
    regs = Registries()
    for reg in pm.registries:
        for entry in reg:
            if entry.plugin in builtin:
                regs[reg.kind].add(entry.name, entry.target, entry.plugin, entry.description)
    return regs


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, pipes and HTML brackets escaped."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def _default(field: Any) -> str | None:
    """A field's default as YAML would write it, or None for a required field."""
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return None
    else:
        value = field.default
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    if isinstance(value, tuple):
        value = list(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value).replace('"', "")
    return str(value)


def parameters(entry: Any) -> str:
    """``p`` (0.1), ``delete`` (0.1), ...: a component's parameters and their defaults."""
    fields = entry.config_model().model_fields
    out = []
    for name, field in fields.items():
        default = _default(field)
        out.append(f"`{name}`" + (" (required)" if default is None else f" ({default})"))
    return ", ".join(out) if out else "none"


def render_kind(registry: Any) -> str:
    rows = [
        f"#### {KIND_TITLES[registry.kind]}",
        "",
        "| name | plugin | description | parameters (defaults) |",
        "|---|---|---|---|",
    ]
    for entry in registry:
        params = parameters(entry)
        summary = inline(entry.summary()) or "(undocumented)"
        rows.append(f"| `{entry.name}` | `{entry.plugin}` | {_cell(summary)} | {_cell(params)} |")
    return "\n".join(rows)


def generate_components(registries: Any = None) -> str:
    """The Markdown that belongs between the component markers (without the markers)."""
    regs = builtin_registries() if registries is None else registries
    parts = [
        "<!-- Generated by docs/gen_hooks.py from the registries of the built-in plugins; "
        "do not edit by hand. -->",
    ]
    parts.extend(render_kind(regs[kind]) for kind in KIND_TITLES if len(regs[kind]))
    return "\n\n".join(parts) + "\n"


# -- markers --------------------------------------------------------------------------------


def current(doc: Path = DOC, start_marker: str = START, end_marker: str = END) -> str | None:
    """The text between the markers in ``doc``, or None when the file or a marker is missing."""
    if not doc.is_file():
        return None
    text = doc.read_text(encoding="utf-8")
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        return None
    return text[start + len(start_marker) : end]


def write(
    doc: Path = DOC,
    start_marker: str = START,
    end_marker: str = END,
    content: Callable[[], str] = generate,
) -> None:
    text = doc.read_text(encoding="utf-8")
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        raise SystemExit(f"{doc}: markers {start_marker} ... {end_marker} not found")
    new = text[: start + len(start_marker)] + "\n" + content() + text[end:]
    doc.write_text(new, encoding="utf-8")


def check(
    doc: Path, start_marker: str, end_marker: str, content: Callable[[], str], what: str
) -> bool:
    """True when the text between the markers in ``doc`` is ``content()``; says which."""
    found = current(doc, start_marker, end_marker)
    if found is None:
        print(
            f"{doc}: missing, or markers {start_marker} ... {end_marker} not found", file=sys.stderr
        )
        return False
    if found.strip() != content().strip():
        print(
            f"{doc}: {what}: out of date; run: python docs/gen_hooks.py --write",
            file=sys.stderr,
        )
        return False
    print(f"{doc}: {what}: up to date")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="exit 1 if docs/plugins.md or docs/config.md is stale"
    )
    mode.add_argument("--write", action="store_true", help="update both documents in place")
    mode.add_argument(
        "--components", action="store_true", help="print the component tables instead"
    )
    mode.add_argument("--bases", action="store_true", help="print the base-class reference instead")
    parser.add_argument(
        "--doc", type=Path, default=DOC, help="the hook reference's file (default docs/plugins.md)"
    )
    parser.add_argument(
        "--components-doc",
        type=Path,
        default=COMPONENTS_DOC,
        help="the component tables' file (default docs/config.md)",
    )
    args = parser.parse_args(argv)
    docs = [
        (args.doc, START, END, generate, "hook reference"),
        (args.doc, BASES_START, BASES_END, generate_bases, "base-class reference"),
        (
            args.components_doc,
            COMPONENTS_START,
            COMPONENTS_END,
            generate_components,
            "component tables",
        ),
    ]
    if args.check:
        results = [check(*d) for d in docs]  # every document is checked, and said
        return 0 if all(results) else 1
    if args.write:
        for doc, start, end, content, _ in docs:
            write(doc, start, end, content)
        return 0
    if args.bases:
        sys.stdout.write(generate_bases())
        return 0
    sys.stdout.write(generate_components() if args.components else generate())
    return 0


if __name__ == "__main__":
    sys.exit(main())
