"""Masking of passwords and tokens in URIs (tracking stores, databases) before they are shown
or stored: in logs, in the run folder's resolved config and in reports."""

from __future__ import annotations

import re
from typing import Any

_SECRET_QUERY = re.compile(
    r"([?&;](?:password|passwd|pwd|secret|client_secret|token|access_token|api_key|apikey|"
    r"sig|signature)=)[^&#;\s]*",
    re.IGNORECASE,
)
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def mask_uri(uri: str) -> str:
    """``uri`` with its password (and secret query values such as ``token=``) replaced by ``***``.

    >>> mask_uri("postgresql://user:secret@db.example.com:5432/mlflow")
    'postgresql://user:***@db.example.com:5432/mlflow'
    >>> mask_uri("http://localhost:5000")
    'http://localhost:5000'
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    userinfo, at, after = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    # The userinfo runs to the last "@" (a password may hold a raw "@" or "/"), unless that "@"
    # is in the path: "host/a@b", "host:5000/a@b".
    port = re.split(r"[/?#]", password, maxsplit=1)
    if re.search(r"[/?#]", user) or (colon and len(port) > 1 and port[0].isdigit()):
        at = ""
    if not at:
        userinfo, after = "", rest
    end = min((i for i in (after.find(c) for c in "/?#") if i >= 0), default=len(after))
    host, tail = after[:end], after[end:]
    authority = host
    if userinfo:
        authority = f"{user}:***@{host}" if colon else f"{user}@{host}"
    tail = _SECRET_QUERY.sub(r"\1***", tail)
    return f"{scheme}://{authority}{tail}"


def mask_secrets(text: str) -> str:
    """``text`` with every URI in it passed through :func:`mask_uri`."""
    return _URI_IN_TEXT.sub(lambda m: mask_uri(m.group(0)), text)


def mask_tree(obj: Any) -> Any:
    """A copy of a config-like tree (dicts, lists, strings) with every URI masked."""
    if isinstance(obj, dict):
        return {k: mask_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask_tree(v) for v in obj]
    if isinstance(obj, str):
        return mask_secrets(obj)
    return obj
