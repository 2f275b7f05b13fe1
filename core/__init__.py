"""tuneforge: plugin-based fine-tuning that applies the best practices by default.

Public plugin API: ``tuneforge.hookimpl`` / ``tuneforge.hookspec`` markers (project name
``"tuneforge"``) and the entry-point group ``tuneforge``. Importing this package is cheap: it
never imports torch.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "tuneforge"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "__version__", "hookimpl", "hookspec"]
