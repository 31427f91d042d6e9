"""Signed, expiring blob URLs in the shape of an Azure service SAS.

The query carries ``sv``, ``sr=b``, ``sp`` (permissions: ``r`` read, ``c``
create, ``w`` write), ``st``/``se`` (start and expiry, ISO 8601 UTC) and
``sig``, an HMAC-SHA256 over the permissions, times and the URL path with the
emulator's secret. A URL for one blob is useless for another, a download URL
cannot write, and an expired one answers 403 AuthenticationFailed as Azure does.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlencode

SAS_VERSION = "2025-05-05"
_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class SasError(Exception):
    """The URL does not authorize this request; ``str()`` is Azure's detail text."""

    def __init__(self, detail: str, code: str = "AuthenticationFailed") -> None:
        super().__init__(detail)
        self.code = code


def _iso(t: float) -> str:
    return time.strftime(_FORMAT, time.gmtime(t))


def _parse_iso(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, _FORMAT)))


class SasSigner:
    def __init__(self, secret: bytes, clock: Callable[[], float]) -> None:
        self._secret = secret
        self._clock = clock

    def _sig(self, path: str, permissions: str, start: str, expiry: str) -> str:
        message = "\n".join((permissions, start, expiry, path, SAS_VERSION)).encode()
        return base64.b64encode(hmac.new(self._secret, message, hashlib.sha256).digest()).decode()

    def query(self, path: str, permissions: str, ttl: float) -> str:
        """The query string (without ``?``) authorizing ``permissions`` on ``path`` for ``ttl`` s."""
        now = self._clock()
        start, expiry = _iso(now - 300), _iso(now + ttl)  # st backdated like real SAS, for clock skew
        params = {"sv": SAS_VERSION, "sr": "b", "sp": permissions, "st": start, "se": expiry}
        params["sig"] = self._sig(path, permissions, start, expiry)
        return urlencode(params)

    def check(self, path: str, query: Mapping[str, list[str]], need: str) -> None:
        """Raise :class:`SasError` unless the query authorizes ``need`` (one letter) on ``path``."""

        def one(name: str) -> str:
            values = query.get(name)
            if not values:
                raise SasError(f"Signature fields not well formed: {name} is missing")
            return values[0]

        permissions, start, expiry, sig = one("sp"), one("st"), one("se"), one("sig")
        if not hmac.compare_digest(self._sig(path, permissions, start, expiry), sig):
            raise SasError("Signature did not match. String to sign used was <redacted>")
        try:
            starts, expires = _parse_iso(start), _parse_iso(expiry)
        except ValueError as exc:
            raise SasError(f"Signed time [{start}, {expiry}] is not a valid time") from exc
        now = self._clock()
        if now < starts:
            raise SasError(f"Signed start time [{start}] must be before current time [{_iso(now)}]")
        if now >= expires:
            raise SasError(f"Signed expiry time [{expiry}] must be after current time [{_iso(now)}]")
        if need not in permissions:
            raise SasError(f"Signed permissions [{permissions}] do not allow this operation", "AuthorizationPermissionMismatch")
