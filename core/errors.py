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


def short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages.

    Built with :mod:`reprlib`, which formats only the first items of a container and the first
    characters of a string, to a bounded depth: a YAML alias bomb or a 50 MB cell never has its
    whole repr built.
    """
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 3, 4, 6, 6, 6
    r.maxstring = r.maxother = r.maxlong = max(limit, 8)
    try:
        text = r.repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
