"""Built-in export plugin: ``tuneforge export RUN --format onnx``.

Importing this module is cheap: torch, onnx and onnxruntime are imported only when the command
runs, and the command is registered as a lazy ``"module:Attr"`` string. ``tuneforge predict
--engine onnx`` runs an export (:mod:`tuneforge.onnx_engine`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuneforge import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from tuneforge.hookspecs import Register


@hookimpl
def register_commands(register: Register) -> None:
    register(
        "export",
        "tuneforge.plugins.export.onnx:ExportCommand",
        "Export a finished run's model to ONNX, checked against PyTorch on its test split",
    )
