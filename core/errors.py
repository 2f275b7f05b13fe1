"""Errors the CLI turns into one clear line and exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (config, data, plugin, checkpoint): one line, no traceback."""


class ConfigError(UserError):
    """A config value is wrong; the message starts with the key path (``model.name: ...``)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class DataError(UserError):
    """The data is unusable; the message names the file, column or row."""


class PluginError(UserError):
    """A plugin could not be loaded or registered something invalid."""
