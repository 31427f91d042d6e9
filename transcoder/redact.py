"""Secrets that never show themselves, and text scrubbed of them.

Tokens, passwords and the ``sig`` of signed URLs never reach ``repr``,
``str``, a log line or an error message: :class:`Secret` masks itself and
:func:`scrub` removes secrets, signatures and bearer tokens from any text
that may be shown.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_SECRET_QUERY = re.compile(r"(?i)((?:^|[?&\s\"'])(?:sig|ske|skoid|sktid|token)=)[^&\s\"']+")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


class Secret:
    """A string that never shows itself; ``reveal()`` is the only way in."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def redact_url(url: str) -> str:
    """``scheme://host/path`` without the query (where SAS signatures live)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?…" if parts.query else "")


def scrub(text: str, *secrets: Secret | str | None) -> str:
    """Remove signatures, bearer tokens and the given secrets from ``text``."""
    for s in secrets:
        raw = s.reveal() if isinstance(s, Secret) else s
        if raw and len(raw) >= 4:
            text = text.replace(raw, "***")
    text = _SECRET_QUERY.sub(r"\1***", text)
    return _BEARER.sub(r"\1***", text)


__all__ = ["Secret", "redact_url", "scrub"]
