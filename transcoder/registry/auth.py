"""Registry authentication: anonymous, HTTP Basic, a registry bearer token
given as it is, and the bearer-token flow of the distribution token spec
(challenge in ``WWW-Authenticate``, token from ``realm`` for ``service`` and
``scope``).

At the token service, a user name and password go as Basic on a GET; an
identity (refresh) token goes in the OAuth2 form POST (``grant_type=
refresh_token``), as docker sends it, and only when the service answers that
POST with 404 or 405 (it has no OAuth2 endpoint, which the spec allows) is the
token sent as the Basic password of a GET instead, as containerd does.

Where credentials come from is :mod:`.credentials`. No message built here
contains a secret.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import AuthError
from ..redact import Secret
from .credentials import Credentials, load_docker_credentials

_PARAM = re.compile(r'([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))')
_SCHEME = re.compile(r"\s*([A-Za-z][\w-]*)\s+")
_REPO_PATH = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags)/")
TOKEN_LIFETIME_DEFAULT = 60.0
TOKEN_EXPIRY_MARGIN = 10.0
CLIENT_ID = "transcoder"  # the OAuth2 client_id; docker sends "docker"


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


@dataclass
class _Token:
    value: str = field(repr=False)
    expires: float


# (method, realm URL, query or form fields, Basic user and password or None) -> response
TokenFetcher = Callable[[str, str, dict[str, Any], "tuple[str, Secret] | None"], httpx.Response]


class RegistryAuth(httpx.Auth):
    """An httpx auth flow that answers registry challenges and then sends
    credentials up front, so large request bodies are not sent twice.

    After a 401 a request is sent again with the answer to the challenge,
    unless its body was streamed (it cannot be read twice); uploads stream
    only after an earlier request of the same scope has been answered. A
    registry token is sent on every request, with nothing to fall back on."""

    def __init__(self, host: str, credentials: Credentials | None, fetch_token: TokenFetcher) -> None:
        self.host = host
        self.credentials = credentials
        self._fetch = fetch_token
        self._scheme: str | None = None
        self._tokens: dict[str, _Token] = {}
        self._refresh = credentials.identity_token if credentials else Secret("")
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RegistryAuth(host={self.host!r}, credentials={self.credentials!r})"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not self._ours(request):
            yield request
            return
        scopes = scope_for(request)
        self._apply(request, scopes)
        sent_basic = request.headers.get("Authorization", "").startswith("Basic ")
        response = yield request
        if response.status_code != 401 or not isinstance(request.stream, httpx.ByteStream):
            return  # a streamed body cannot be sent twice: the 401 stands
        challenge = parse_challenge(response.headers.get("www-authenticate"))
        if challenge is None or not self._answer(challenge, scopes, sent_basic):
            return
        self._apply(request, scopes)
        yield request

    def _ours(self, request: httpx.Request) -> bool:
        # Never send credentials to another host (an upload Location may
        # point at blob storage elsewhere).
        return request.url.netloc.decode("ascii", "replace") == self.host

    def _apply(self, request: httpx.Request, scopes: list[str]) -> None:
        creds = self.credentials
        if creds is not None and creds.registry_token:
            request.headers["Authorization"] = f"Bearer {creds.registry_token.reveal()}"
        elif self._scheme == "basic" and creds is not None and creds.can_basic:
            request.headers["Authorization"] = creds.basic_header()
        elif self._scheme == "bearer":
            with self._lock:
                token = self._tokens.get(" ".join(scopes))
            if token is not None and token.expires > time.monotonic():
                request.headers["Authorization"] = f"Bearer {token.value}"

    def _answer(self, challenge: Challenge, scopes: list[str], sent_basic: bool) -> bool:
        """Learn from a challenge; False when there is nothing better to send.

        Basic credentials are sent again only if this request went without
        them: another request may have learnt the scheme since this one left,
        and its 401 is then the anonymous one, not a rejection."""
        if self.credentials is not None and self.credentials.registry_token:
            return False
        if challenge.scheme == "basic":
            self._scheme = "basic"
            return self.credentials is not None and self.credentials.can_basic and not sent_basic
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
        what = f"registry {self.host}: token for {' '.join(scopes) or 'the registry'}"
        try:
            resp = self._request_token(realm, service, scopes)
        except httpx.HTTPError as exc:
            raise AuthError(f"{what}: token service unreachable ({type(exc).__name__})") from exc
        if resp.status_code in (400, 401, 403):
            raise AuthError(f"{what}: {resp.status_code} from the token service, {self._who()}")
        if resp.status_code != 200:
            raise AuthError(f"{what}: token service answered {resp.status_code}")
        try:
            body = resp.json()
            value = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or TOKEN_LIFETIME_DEFAULT)
            refresh = body.get("refresh_token")
        except (ValueError, AttributeError, TypeError) as exc:
            raise AuthError(f"{what}: token service sent a malformed answer") from exc
        if not isinstance(value, str) or not value:
            raise AuthError(f"{what}: token service sent no token")
        if self._refresh and isinstance(refresh, str) and refresh:
            self._refresh = Secret(refresh)  # the service may rotate it, as docker keeps the newest
        return _Token(value, time.monotonic() + max(1.0, lifetime - TOKEN_EXPIRY_MARGIN))

    def _request_token(self, realm: str, service: str | None, scopes: list[str]) -> httpx.Response:
        creds = self.credentials
        refresh = self._refresh
        if creds is not None and refresh:
            form = {"grant_type": "refresh_token", "refresh_token": refresh.reveal(), "client_id": CLIENT_ID,
                    "scope": " ".join(scopes), **({"service": service} if service else {})}
            resp = self._fetch("POST", realm, form, None)
            if resp.status_code not in (404, 405):
                return resp
            return self._fetch("GET", realm, self._query(service, scopes), (creds.username, refresh))
        basic = (creds.username, creds.password) if creds is not None and creds.can_basic else None
        return self._fetch("GET", realm, self._query(service, scopes), basic)

    @staticmethod
    def _query(service: str | None, scopes: list[str]) -> dict[str, Any]:
        params: dict[str, Any] = {"scope": scopes} if scopes else {}
        if service:
            params["service"] = service
        return params

    def _who(self) -> str:
        creds = self.credentials
        if creds is None or not (creds.can_basic or self._refresh):
            return "anonymous access refused; give credentials"
        rejected = "the identity token was rejected" if self._refresh else "the credentials given were rejected"
        return rejected + creds.origin_note


__all__ = ["Challenge", "Credentials", "RegistryAuth", "load_docker_credentials", "parse_challenge", "scope_for"]
