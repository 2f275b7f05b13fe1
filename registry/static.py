"""What a plugin provides and requires, read from its source without importing it.

A disabled plugin is never imported (as pytest's ``-p no:NAME``), yet a config that names one
of its components deserves ``'target-values' comes from plugin 'regression', which is
disabled``, not ``unknown validator``. :func:`scan_plugin` parses the plugin module's source
with :mod:`ast` and collects the names its ``register_<kind>(register)`` hooks register:
``register("name", ...)`` calls with a literal name, also inside a ``for`` loop over a literal
list, tuple or dict (or a module-level constant bound to one), and the module-level
``requires = ["other-plugin", ...]`` declaration. Names built at run time are not seen: the
error for them stays the generic one. Standard library only.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StaticPlugin:
    """What a plugin's source says: kind -> component names, and the plugins it requires."""

    components: dict[str, list[str]] = field(default_factory=dict)
    requires: list[str] = field(default_factory=list)


def module_source(target: str) -> Path | None:
    """The source file of an entry point's module (``"pkg.mod"`` or ``"pkg.mod:attr"``).

    Only the parent packages are imported (to find the module), never the module itself; a
    package gives its ``__init__.py``. ``None`` when it cannot be found.
    """
    name = target.partition(":")[0].strip()
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None
    origin = spec.origin if spec is not None else None
    if not origin or not origin.endswith(".py"):
        return None
    return Path(origin)


def _literal_names(node: ast.AST, constants: dict[str, ast.AST]) -> list[str]:
    """String keys or items of a literal list/tuple/set/dict (or a module constant of one)."""
    if isinstance(node, ast.Name) and node.id in constants:
        node = constants[node.id]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("items", "keys")
        and not node.args
    ):
        return _literal_names(node.func.value, constants)
    if isinstance(node, ast.Dict):
        items: list[ast.AST | None] = list(node.keys)
    elif isinstance(node, ast.List | ast.Tuple | ast.Set):
        items = list(node.elts)
    else:
        return []
    out = []
    for item in items:
        if isinstance(item, ast.Tuple) and item.elts:  # (name, target) pairs
            item = item.elts[0]
        if isinstance(item, ast.Constant) and isinstance(item.value, str):
            out.append(item.value)
    return out


def _loop_bindings(loop: ast.For, constants: dict[str, ast.AST]) -> dict[str, list[str]]:
    """``for name, cls in X.items()`` -> ``{"name": [keys of X]}``."""
    names = _literal_names(loop.iter, constants)
    target = loop.target
    first = target.elts[0] if isinstance(target, ast.Tuple) and target.elts else target
    return {first.id: names} if isinstance(first, ast.Name) and names else {}


def _hook_names(hook: ast.FunctionDef, constants: dict[str, ast.AST]) -> list[str]:
    args = hook.args.args
    if not args:
        return []
    param = args[-1].arg if args[0].arg == "self" and len(args) > 1 else args[0].arg
    found: list[str] = []

    def visit(node: ast.AST, bound: dict[str, list[str]]) -> None:
        if isinstance(node, ast.For):
            bound = {**bound, **_loop_bindings(node, constants)}
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == param
            and node.args
        ):
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append(first.value)
            elif isinstance(first, ast.Name) and first.id in bound:
                found.extend(bound[first.id])
        for child in ast.iter_child_nodes(node):
            visit(child, bound)

    for stmt in hook.body:
        visit(stmt, {})
    return found


def scan_source(source: str, kinds: tuple[str, ...]) -> StaticPlugin:
    """:class:`StaticPlugin` of one module's source text (a syntax error gives an empty one)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return StaticPlugin()
    constants: dict[str, ast.AST] = {}
    requires: list[str] = []
    for stmt in tree.body:
        targets: list[ast.expr] = []
        value: ast.AST | None = None
        if isinstance(stmt, ast.Assign):
            targets, value = list(stmt.targets), stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        for t in targets:
            if isinstance(t, ast.Name) and value is not None:
                constants[t.id] = value
                if t.id == "requires":
                    requires = _literal_names(value, {})
    out = StaticPlugin(requires=requires)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("register_"):
            kind = node.name.removeprefix("register_")
            if kind in kinds:
                names = _hook_names(node, constants)
                if names:
                    out.components.setdefault(kind, []).extend(names)
    return out


def scan_plugin(target: str, kinds: tuple[str, ...]) -> StaticPlugin:
    """:class:`StaticPlugin` of the module an entry point names, unimported; empty if unreadable."""
    path = module_source(target)
    if path is None:
        return StaticPlugin()
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return StaticPlugin()
    return scan_source(source, kinds)
