"""Keep secrets out of everything the harness writes: configs, identities, error text.

One URL function, `redact_url`, hides the credentials in a URL (the password of `user:password@`, a bare
`token@`, and the values of query parameters named like a secret: `api-key=`, `token=`, `sig=`…); the model
identity, every stored config and every report use it, so a rotated key never changes an identity. `redact`
applies it (and hides secret-named keys) across a config; `redact_text` cleans free text such as a server's
error message: URLs, `Bearer …` tokens, key-shaped strings (`sk-…`), values after `key=`/`token=`/`"secret":`,
and the values of keys registered with `register_secret` (the API keys a backend actually sends).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

REDACTED = "***"

_SECRET_NAMES = frozenset({
    "api_key", "apikey", "key", "token", "password", "passwd", "pwd", "pass", "secret", "credentials", "credential",
    "sig", "signature", "auth", "authorization", "bearer", "session", "sessionid",
})
_SECRET_SUFFIXES = ("_key", "_token", "_password", "_passwd", "_secret", "_credentials", "_credential", "_signature",
                    "_sig")
# keys that only NAME where a secret lives (an env var, a file): safe to store
_SAFE_SUFFIXES = ("_env", "_env_var", "_file", "_path")
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*://"
_URL = re.compile(_SCHEME + r"[^\s'\"<>`]+")
# scheme://USERINFO@host (userinfo: no '/', '@' or whitespace)
_USERINFO = re.compile(r"^(?P<scheme>" + _SCHEME + r")(?P<info>[^/@\s?#]*)@")
# `Bearer <token>` and `Basic <base64>` (a base64 run with a digit, + / or =, so that "basic example" survives)
_BEARER = re.compile(r"\b([Bb]earer)(\s+)(?!\*\*\*)[A-Za-z0-9._~+/=\-]{6,}"
                     r"|\b(Basic)(\s+)(?=[A-Za-z0-9+/]*[0-9+/=])[A-Za-z0-9+/]{8,}={0,2}")
# key-shaped strings: OpenAI/Anthropic-style sk-…, Stripe-style sk_live_…, GitHub, Hugging Face, AWS, Slack, JWTs
_KEY_SHAPES = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-]{8,}|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{8,}|gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|hf_[A-Za-z0-9]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9\-]{10,}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})"
)
_NAME = (r"(?:[A-Za-z0-9]+[_\-])*(?:api[_\-]?key|apikey|key|token|secret|password|passwd|pwd|signature|sig"
         r"|credentials?|authorization|auth)")
# NAME=value, NAME: value, "NAME": "value" (JSON, headers, query strings, log lines)
_ASSIGN = re.compile(
    r"(?i)(?P<head>(?<![A-Za-z0-9])(?P<q>[\"']?)" + _NAME + r"(?P=q)\s*[=:]\s*(?P<vq>[\"']?))"
    r"(?!(?:bearer|basic|null|none|true|false)\b)(?!\*\*\*)[^\s\"'&,;<>(){}\[\]]+"
)

_registered: set[str] = set()
_lock = threading.Lock()
MIN_SECRET_LEN = 6  # shorter values are not replaced in text (it would mangle ordinary words)


def register_secret(value: str | None) -> None:
    """Remember a secret this process sends (an API key) so that `redact_text` and `redact` hide its value."""
    if value and len(value) >= MIN_SECRET_LEN:
        with _lock:
            _registered.add(value)


def is_secret_key(name: str) -> bool:
    """True for a key named like a secret: api_key, *_key, token, *_token, password, secret, sig (case-insensitive).

    Keys that only name a secret's location (`api_key_env`, `token_file`) are not secrets.
    """
    n = name.strip().lower().replace("-", "_")
    if n.endswith(_SAFE_SUFFIXES):
        return False
    return n in _SECRET_NAMES or n.endswith(_SECRET_SUFFIXES)


def _redact_one_url(url: str) -> str:
    m = _USERINFO.match(url)
    if m:
        user, colon, pw = m["info"].partition(":")
        # a user:password pair keeps the user name; a bare `token@` (or `key:@`) is itself the credential
        info = f"{user}:{REDACTED}" if colon and pw and user else REDACTED
        url = m["scheme"] + info + "@" + url[m.end():]
    if "?" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(is_secret_key(k) for k, _ in pairs):
        return url
    out = []
    for piece in parts.query.split("&"):  # keep the query's own spelling; replace only secret values
        k, eq, _ = piece.partition("=")
        out.append(f"{k}={REDACTED}" if eq and is_secret_key(k) else piece)
    return urlunsplit(parts._replace(query="&".join(out)))


def redact_url(value: str | None) -> str | None:
    """`value` with the credentials of every URL in it hidden: `user:***@`, `***@` for a bare token, and `***`
    for the values of secret-named query parameters (`api-key`, `token`, `sig`, …). None stays None."""
    if not value:
        return value
    def one(m: re.Match[str]) -> str:
        url = m.group(0)
        body = url.rstrip(".,;:!?)]}")  # punctuation after a URL in prose is not part of it
        return _redact_one_url(body) + url[len(body):]

    return _URL.sub(one, value)


def _replace_registered(text: str, extra: Iterable[str] = ()) -> str:
    with _lock:
        secrets = sorted({*_registered, *(s for s in extra if s and len(s) >= MIN_SECRET_LEN)}, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def redact_text(text: str | None, secrets: Iterable[str] = ()) -> str | None:
    """Free text (an error message, a log line) with secrets hidden; None stays None.

    Hides registered secrets and `secrets`, URL credentials, `Bearer …`/`Basic …` tokens, key-shaped strings
    (`sk-…`, `hf_…`, `AKIA…`, JWTs) and the value after a secret-named `key=`, `token:`, `"api_key": "…"`.
    """
    if not text:
        return text
    text = _replace_registered(text, secrets)
    text = redact_url(text) or text
    text = _BEARER.sub(lambda m: f"{m[1] or m[3]}{m[2] or m[4]}{REDACTED}", text)
    text = _KEY_SHAPES.sub(REDACTED, text)
    return _ASSIGN.sub(lambda m: m["head"] + REDACTED, text)


def redact(obj: Any) -> Any:
    """A copy of `obj` (dicts, lists, tuples, scalars) with secret-named keys' values replaced by "***".

    Strings go through `redact_url` (URL credentials) and lose the values of registered secrets. A secret-named
    key whose value is None or empty keeps it (there is nothing to hide, and it shows the field was unset).
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
        return _replace_registered(redact_url(obj) or obj)
    return obj
