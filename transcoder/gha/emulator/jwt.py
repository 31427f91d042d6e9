"""Runtime tokens: mint and check the HS256 JWTs the cache service accepts.

The real ``ACTIONS_RUNTIME_TOKEN`` is a JWT whose ``ac`` claim is a JSON
*string* holding ``[{"Scope": ref, "Permission": bits}]`` (1 read, 2 write);
its order is the lookup order. ``exp`` and ``nbf`` are numeric and Go clients
refuse tokens without them, so every minted token carries all three.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

READ = 1
WRITE = 2
DEFAULT_TTL = 6 * 3600.0
DEFAULT_REPOSITORY = "1"


class TokenError(ValueError):
    """The bearer token is missing, malformed, expired or badly signed."""


@dataclass(frozen=True)
class Grant:
    """What a verified token allows: scopes in lookup order and the repository."""

    scopes: tuple[tuple[str, int], ...]
    repository: str

    @property
    def readable(self) -> list[str]:
        return [scope for scope, perm in self.scopes if perm & READ]

    @property
    def write_scope(self) -> str | None:
        # The service picks the first writable scope; clients never send one.
        return next((scope for scope, perm in self.scopes if perm & WRITE), None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, signing_input: str) -> str:
    return _b64(hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest())


def mint(
    secret: bytes,
    scopes: Iterable[tuple[str, int]],
    *,
    ttl: float = DEFAULT_TTL,
    now: float | None = None,
    repository: str = DEFAULT_REPOSITORY,
    extra: dict[str, Any] | None = None,
) -> str:
    """An HS256 runtime token granting ``scopes`` (``[(ref, permission), ...]``)."""
    issued = int(time.time() if now is None else now)
    ac = [{"Scope": scope, "Permission": int(perm)} for scope, perm in scopes]
    claims: dict[str, Any] = {
        "ac": json.dumps(ac, separators=(",", ":")),
        "nbf": issued - 60,  # tolerate small clock skew, as real tokens do
        "iat": issued,
        "exp": int(issued + ttl),
        "scp": "Actions.Results:emulator:emulator",
        "repository_id": repository,
    }
    claims.update(extra or {})
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}"
    return f"{signing_input}.{_sign(secret, signing_input)}"


def _decode_part(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_unb64(part))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise TokenError(f"token {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise TokenError(f"token {what} is not a JSON object")
    return value


def _parse_ac(raw: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(raw, str):
        raise TokenError("token claim 'ac' must be a JSON string")
    try:
        items = json.loads(raw)
    except ValueError as exc:
        raise TokenError("token claim 'ac' is not valid JSON") from exc
    if not isinstance(items, list):
        raise TokenError("token claim 'ac' must encode a list")
    scopes = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("Scope"), str) or not isinstance(item.get("Permission"), int):
            raise TokenError("token claim 'ac' entries need Scope (string) and Permission (int)")
        scopes.append((item["Scope"], item["Permission"]))
    return tuple(scopes)


def _check_times(claims: dict[str, Any], now: float) -> None:
    for name in ("exp", "nbf"):
        if not isinstance(claims.get(name), int | float) or isinstance(claims.get(name), bool):
            raise TokenError(f"token claim {name!r} is missing or not numeric")
    if claims["exp"] <= now:
        raise TokenError("token has expired")
    if claims["nbf"] > now:
        raise TokenError("token is not valid yet (nbf)")


def verify(token: str, secret: bytes | None, *, now: float) -> Grant:
    """Check a bearer token and return its grant; ``secret=None`` skips the signature."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("token is not a JWT")
    header = _decode_part(parts[0], "header")
    claims = _decode_part(parts[1], "payload")
    if secret is not None:
        if header.get("alg") != "HS256":
            raise TokenError("token algorithm must be HS256")
        if not hmac.compare_digest(_sign(secret, f"{parts[0]}.{parts[1]}"), parts[2]):
            raise TokenError("token signature does not match")
    _check_times(claims, now)
    repository = claims.get("repository_id", DEFAULT_REPOSITORY)
    return Grant(scopes=_parse_ac(claims.get("ac")), repository=str(repository))


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not header:
        raise TokenError("missing Authorization header")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise TokenError("Authorization header is not a bearer token")
    return token.strip()


def scopes_arg(scopes: Sequence[tuple[str, int]] | None) -> list[tuple[str, int]]:
    """Default grant: read and write on ``refs/heads/main``."""
    return list(scopes) if scopes is not None else [("refs/heads/main", READ | WRITE)]
