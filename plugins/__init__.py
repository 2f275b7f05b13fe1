"""tuneforge's built-in plugins. Each module is one plugin, declared in the ``tuneforge``
entry-point group of tuneforge's own ``pyproject.toml`` like any third-party plugin."""
