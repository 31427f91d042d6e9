"""Registry authentication: anonymous, HTTP Basic, and the bearer-token flow
of the distribution token spec (challenge in ``WWW-Authenticate``, token from
``realm`` for ``service`` and ``scope``).

Credentials come from the caller or from ``$DOCKER_CONFIG/config.json``
(default ``~/.docker/config.json``, ``auths`` entries with a base64 ``auth``
or ``username``/``password``). Secrets are held in objects whose ``repr``
hides them, and no message built here contains one.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..errors import AuthError, UsageError

_PARAM = re.compile(r'([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))')
_SCHEME = re.compile(r"\s*([A-Za-z][\w-]*)\s+")
_REPO_PATH = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags)/")
TOKEN_LIFETIME_DEFAULT = 60.0
TOKEN_EXPIRY_MARGIN = 10.0


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer", lower case
    params: dict[str, str]


def parse_challenge(header: str | None) -> Challenge | None:
    """The first Basic or Bearer challenge in a ``WWW-Authenticate`` value."""
    if not header:
        return None
    m = _SCHEME.match(header)
    if not m:
        return None
    scheme = m.group(1).lower()
    params = {k.lower(): (q if q is not None else bare).replace('\\"', '"')
              for k, q, bare in _PARAM.findall(header[m.end():])}
    if scheme not in ("basic", "bearer"):
        return None
    return Challenge(scheme, params)


def scope_for(request: httpx.Request) -> list[str]:
    """The token scopes a request needs: pull to read, pull+push to write, and
    pull on the source repository of a cross-repository mount."""
    m = _REPO_PATH.match(request.url.path)
    if not m:
        return []
    action = "pull" if request.method in ("GET", "HEAD") else "pull,push"
    scopes = [f"repository:{m.group(1)}:{action}"]
    source = request.url.params.get("from")
    if source:
        scopes.append(f"repository:{source}:pull")
    return scopes


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def _normalize_key(key: str) -> str:
    key = re.sub(r"^[a-z]+://", "", key.strip())
    key = key.split("/", 1)[0]
    return "docker.io" if key in ("index.docker.io", "registry-1.docker.io") else key


def _entry_credentials(entry: object, where: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(str(entry["auth"]), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise UsageError(f"{where}: the 'auth' value is not base64 of user:password") from exc
        if not sep:
            raise UsageError(f"{where}: the 'auth' value is not base64 of user:password")
        return Credentials(user, password)
    if entry.get("username") and entry.get("password") is not None:
        return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def load_docker_credentials(host: str, path: Path | None = None) -> Credentials | None:
    """Credentials for ``host`` from a docker config file; None if it has none.

    Credential helpers (``credsStore``/``credHelpers``) are not run: only
    inline ``auths`` entries are read."""
    path = path or docker_config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from exc
    try:
        auths = json.loads(text).get("auths") or {}
    except (ValueError, AttributeError) as exc:
        raise UsageError(f"{path}: not a JSON object with 'auths'") from exc
    wanted = _normalize_key(host)
    for key, entry in (auths.items() if isinstance(auths, dict) else []):
        if _normalize_key(str(key)) == wanted:
            return _entry_credentials(entry, f"{path}: auths[{key!r}]")
    return None


@dataclass
class _Token:
    value: str = field(repr=False)
    expires: float


TokenFetcher = Callable[[str, dict[str, str | list[str]], "Credentials | None"], httpx.Response]


class RegistryAuth(httpx.Auth):
    """An httpx auth flow that answers registry challenges and then sends
    credentials up front, so large request bodies are not sent twice.

    After a 401 a request is sent again with the answer to the challenge,
    unless its body was streamed (it cannot be read twice); uploads stream
    only after an earlier request of the same scope has been answered."""

    def __init__(self, host: str, credentials: Credentials | None, fetch_token: TokenFetcher) -> None:
        self.host = host
        self.credentials = credentials
        self._fetch = fetch_token
        self._scheme: str | None = None
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RegistryAuth(host={self.host!r}, credentials={self.credentials!r})"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not self._ours(request):
            yield request
            return
        scopes = scope_for(request)
        self._apply(request, scopes)
        response = yield request
        if response.status_code != 401 or not isinstance(request.stream, httpx.ByteStream):
            return  # a streamed body cannot be sent twice: the 401 stands
        challenge = parse_challenge(response.headers.get("www-authenticate"))
        if challenge is None or not self._answer(challenge, scopes):
            return
        self._apply(request, scopes)
        yield request

    def _ours(self, request: httpx.Request) -> bool:
        # Never send credentials to another host (an upload Location may
        # point at blob storage elsewhere).
        return request.url.netloc.decode("ascii", "replace") == self.host

    def _apply(self, request: httpx.Request, scopes: list[str]) -> None:
        if self._scheme == "basic" and self.credentials is not None:
            request.headers["Authorization"] = self.credentials.basic_header()
        elif self._scheme == "bearer":
            with self._lock:
                token = self._tokens.get(" ".join(scopes))
            if token is not None and token.expires > time.monotonic():
                request.headers["Authorization"] = f"Bearer {token.value}"

    def _answer(self, challenge: Challenge, scopes: list[str]) -> bool:
        """Learn from a challenge; False when there is nothing better to send."""
        if challenge.scheme == "basic":
            already = self._scheme == "basic"
            self._scheme = "basic"
            return self.credentials is not None and not already
        realm = challenge.params.get("realm")
        if not realm:
            return False
        self._scheme = "bearer"
        wanted = list(dict.fromkeys(scopes + challenge.params.get("scope", "").split()))
        token = self.fetch_token(realm, challenge.params.get("service"), wanted)
        with self._lock:
            self._tokens[" ".join(scopes)] = token
        return True

    def fetch_token(self, realm: str, service: str | None, scopes: list[str]) -> _Token:
        params: dict[str, str | list[str]] = {"scope": scopes} if scopes else {}
        if service:
            params["service"] = service
        what = f"registry {self.host}: token for {' '.join(scopes) or 'the registry'}"
        try:
            resp = self._fetch(realm, params, self.credentials)
        except httpx.HTTPError as exc:
            raise AuthError(f"{what}: token service unreachable ({type(exc).__name__})") from exc
        if resp.status_code in (401, 403):
            who = "the credentials given were rejected" if self.credentials else "anonymous access refused; give credentials"
            raise AuthError(f"{what}: {resp.status_code} from the token service, {who}")
        if resp.status_code != 200:
            raise AuthError(f"{what}: token service answered {resp.status_code}")
        try:
            body = resp.json()
            value = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or TOKEN_LIFETIME_DEFAULT)
        except (ValueError, AttributeError, TypeError) as exc:
            raise AuthError(f"{what}: token service sent a malformed answer") from exc
        if not isinstance(value, str) or not value:
            raise AuthError(f"{what}: token service sent no token")
        return _Token(value, time.monotonic() + max(1.0, lifetime - TOKEN_EXPIRY_MARGIN))


__all__ = ["Challenge", "Credentials", "RegistryAuth", "load_docker_credentials", "parse_challenge", "scope_for"]
