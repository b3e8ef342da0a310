"""Redact secrets from configs before they are stored."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"

_SECRET_NAMES = frozenset({"api_key", "apikey", "token", "password", "passwd", "secret", "credentials"})
_SECRET_SUFFIXES = ("_key", "_token", "_password", "_passwd", "_secret", "_credentials")
# keys that only NAME where a secret lives (an env var, a file): safe to store
_SAFE_SUFFIXES = ("_env", "_env_var", "_file", "_path")
# the password in a URL's user-info part: scheme://user:PASSWORD@host
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)[^@\s/]+(?P<at>@)")


def is_secret_key(name: str) -> bool:
    """True for a key named like a secret: api_key, *_key, token, *_token, password, secret (case-insensitive).

    Keys that only name a secret's location (`api_key_env`, `token_file`) are not secrets.
    """
    n = name.strip().lower().replace("-", "_")
    if n.endswith(_SAFE_SUFFIXES):
        return False
    return n in _SECRET_NAMES or n.endswith(_SECRET_SUFFIXES)


def redact_url(value: str) -> str:
    """Replace the password of any `scheme://user:password@host` inside `value` with ***."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}{m['at']}", value)


def redact(obj: Any) -> Any:
    """A copy of `obj` (dicts, lists, tuples, scalars) with secret-named keys' values replaced by "***".

    Also hides passwords embedded in URL strings. A secret-named key whose value is None or empty keeps it
    (there is nothing to hide, and it shows the field was unset).
    """
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            if isinstance(k, str) and is_secret_key(k) and v not in (None, ""):
                out[k] = REDACTED
            else:
                out[k] = redact(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_url(obj)
    return obj
