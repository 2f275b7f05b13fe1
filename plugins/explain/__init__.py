"""Built-in explain plugin: ``tuneforge explain RUN --input FILE``.

Importing this module is cheap: torch and captum are imported only when the command runs, and
the command is registered as a lazy ``"module:Attr"`` string. The explanations themselves are
the tasks' (:meth:`tuneforge.components.Task.explain`); :mod:`tuneforge.explain` writes the
page. Until the distribution declares the entry point ``explain = "tuneforge.plugins.explain"``
load it by name: ``tuneforge explain --plugin tuneforge.plugins.explain ...``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuneforge import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from tuneforge.hookspecs import Register


@hookimpl
def register_commands(register: Register) -> None:
    register(
        "explain",
        "tuneforge.plugins.explain.command:ExplainCommand",
        "Explain a finished run's predictions on a file: one HTML page",
    )
