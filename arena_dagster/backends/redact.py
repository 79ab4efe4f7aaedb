"""Credentials never reach a message: the one place that scrubs URLs, headers and keys.

Every text the backend layer shows a person (errors, logs, reprs, metadata) goes through
`redact`: it hides the `user:password@` part of any URL, `Authorization` / `api-key` header
values, bearer tokens, key-like query parameters (`?api_key=`, `&token=` ...), OpenAI-style
`sk-...` keys, and any secret the caller names (the API key read from the environment).
`redact_config` does the same for a model config mapping before it is stored or displayed.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

MASK = "***"

# scheme://userinfo@ : the whole userinfo goes (a "username" is often a token itself).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]+@")
_HEADER = re.compile(
    r"(?i)(?P<name>\b(?:proxy-)?authorization|\bx-api-key|\bapi[-_]key|\bopenai[-_]api[-_]key)"
    r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)(?P<scheme>(?:bearer|basic|token)\s+)?[^\s\"',;}&]+"
)
_BEARER = re.compile(r"(?i)\b(?P<scheme>bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_QUERY_SECRET = re.compile(
    r"(?i)(?P<name>[?&](?:api[-_]?key|key|token|access[-_]token|auth|password|secret|sig|signature)=)[^&\s#\"']+"
)
_OPENAI_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}")
# Config keys whose values are secrets or may hold them.
_SECRET_KEYS = re.compile(r"(?i)(api[-_]?key$|^key$|token|secret|password|authorization)")


def redact(text: object, secrets: Iterable[str] = ()) -> str:
    """`text` with every credential replaced by `***` (see the module docstring)."""
    out = str(text)
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    out = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", out)
    out = _HEADER.sub(lambda m: f"{m.group('name')}{m.group('sep')}{m.group('scheme') or ''}{MASK}", out)
    out = _BEARER.sub(lambda m: f"{m.group('scheme')} {MASK}", out)
    out = _QUERY_SECRET.sub(lambda m: f"{m.group('name')}{MASK}", out)
    return _OPENAI_KEY.sub(MASK, out)


def redact_url(url: str) -> str:
    """A URL safe to print: `http://user:secret@host:8000/v1?key=k` -> `http://***@host:8000/v1?key=***`."""
    return redact(url)


def redact_config(config: Any) -> Any:
    """A copy of a (nested) config with secret-named values masked and every string redacted."""
    if isinstance(config, dict):
        return {
            key: (MASK if isinstance(key, str) and _SECRET_KEYS.search(key) and key != "api_key_env" and value
                  else redact_config(value))
            for key, value in config.items()
        }
    if isinstance(config, (list, tuple)):
        return type(config)(redact_config(value) for value in config)
    if isinstance(config, str):
        return redact(config)
    return config
