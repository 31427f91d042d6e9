"""HTTP to one registry host: TLS policy, auth, retries and error mapping.

Transport: HTTPS with verification by default (certifi's CAs, or those named
by SSL_CERT_FILE / SSL_CERT_DIR). Plain HTTP is tried only for a loopback
host or with ``insecure=True`` (which also turns verification off), and only
when the host does not speak TLS at all, as Docker does for insecure
registries: a certificate that fails verification is an error, never a
reason to downgrade.

Retries (tenacity): a request whose bytes never left (connect error), and any
idempotent request that met a reset, a timeout, 429 or 5xx, is retried with
backoff, honouring ``Retry-After``. Uploads restart or resume in
:mod:`.upload`, which knows what the registry already holds.

Deadlines: every request's answer (headers, and the body of a small
document) must arrive within ``read_deadline`` seconds of being sent, so a
server trickling bytes cannot hold a client (:mod:`transcoder.deadline`).

Errors name the registry, the repository and what was asked, never a secret:
401 and 403 are AuthError, 404 NotFound, 429 and 5xx TransientError.
"""

from __future__ import annotations

import json
import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin

import httpx

if TYPE_CHECKING:
    import tenacity

from .. import __version__, preconnect
from ..deadline import Deadline, current, scope
from ..errors import AuthError, NotFound, SinkError, TransientError
from ..httpclient import new_client
from ..redact import Secret
from .auth import RegistryAuth
from .credentials import Credentials, load_docker_credentials
from .reference import check_host, endpoint_of, is_loopback

ATTEMPTS = 4
BACKOFF_BASE = 0.25
BACKOFF_MAX = 4.0
RETRY_AFTER_MAX = 30.0
# The bound of the client's own TLS probe (the GET in _probe); the probe made ahead
# has the same one, so both take a silent server alike. The first request waits as
# long for a probe made ahead and still under way before it asks itself: its own
# probe would spend that time waiting anyway.
PROBE_WAIT = preconnect.PROBE_TIMEOUT
T = TypeVar("T")


class Retryable(TransientError):
    """A transient failure, and whether sending the request again is safe."""

    def __init__(self, message: str, retry_after: float | None = None, *, safe: bool) -> None:
        super().__init__(message, retry_after)
        self.safe = safe


def _untrusted(exc: BaseException) -> str | None:
    """The reason, if ``exc`` comes from a failed certificate verification."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen.reason)
        seen = seen.__cause__ or seen.__context__
    return None


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return min(float(resp.headers.get("retry-after", "")), RETRY_AFTER_MAX)
    except ValueError:
        return None


def error_detail(resp: httpx.Response) -> str:
    """`` (CODE: message)`` from a distribution error body, if it has one."""
    try:
        if resp.is_stream_consumed:
            body = resp.content
        else:
            buf = bytearray()
            for chunk in resp.iter_bytes():
                buf += chunk
                if len(buf) > 65536:
                    break
            body = bytes(buf)
        first = (json.loads(body).get("errors") or [])[0]
        return f" ({str(first.get('code'))[:40]}: {str(first.get('message'))[:160]})"
    except Exception:
        return ""


def _delay(exc: BaseException | None, failed: int) -> float:
    """The wait after the ``failed``-th failed attempt: the server's Retry-After, else jittered backoff."""
    hint = getattr(exc, "retry_after", None)
    if hint:
        return float(hint)
    backoff: float = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (failed - 1))
    return backoff * random.uniform(0.5, 1.0)


def _wait_after_first(state: tenacity.RetryCallState) -> float:
    # tenacity counts from the second attempt (see RegistryHTTP.retrying)
    return _delay(state.outcome.exception() if state.outcome else None, state.attempt_number + 1)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, Retryable) and exc.safe


class RegistryHTTP:
    """Requests to one registry host; thread-safe (uploads run on their own threads)."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool = False,
        credentials: Credentials | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 60.0,
        attempts: int = ATTEMPTS,
        authfile: str | os.PathLike[str] | None = None,
        repository: str | None = None,
    ) -> None:
        """Without ``credentials``, they come from ``authfile`` or the default
        auth files and credential helpers (:mod:`.credentials`), for
        ``repository`` when the client serves one (repo-scoped auth-file keys)."""
        self.host = check_host(host)
        self.insecure = insecure
        self.plain_allowed = insecure or is_loopback(host)
        self.credentials = (credentials if credentials is not None
                            else load_docker_credentials(host, authfile=authfile, repository=repository))
        self.attempts = attempts
        self.requests = 0  # every request sent, retries and auth round trips included
        self._auth = RegistryAuth(host, self.credentials, self._token_request)
        self._http = new_client(
            transport=transport, verify=not insecure, auth=self._auth,  # new_client takes the shared context
            timeout=httpx.Timeout(timeout, connect=10.0),
            headers={"User-Agent": f"transcoder/{__version__}"}, event_hooks={"request": [self._count]},
        )
        self._base: str | None = None
        self._lock = threading.Lock()

    # A server trickling bytes defeats per-read timeouts: an answer's headers (and
    # a whole small document) must arrive within this many seconds of the request.
    read_deadline = 60.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(host={self.host!r}, credentials={self.credentials!r})"

    def deadline(self, repo: str | None, what: str) -> Deadline:
        """The caller's deadline scope if it set one, else a new one for this answer."""
        return current() or Deadline(f"{self.where(repo)}: {what}", self.read_deadline)

    def close(self) -> None:
        self._http.close()

    def _count(self, request: httpx.Request) -> None:
        self.requests += 1

    def _token_request(
        self, method: str, realm: str, fields: dict[str, Any], basic: tuple[str, Secret] | None,
    ) -> httpx.Response:
        # httpx.Auth() sends nothing: the client's RegistryAuth must not answer for the token service.
        auth = httpx.BasicAuth(basic[0], basic[1].reveal()) if basic else httpx.Auth()
        with scope(self.deadline(None, "token")):
            if method == "POST":
                return self._http.post(realm, data=fields, auth=auth)
            return self._http.get(realm, params=fields, auth=auth)

    # -- transport ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        with self._lock:
            if self._base is None:
                self._base = self._probe()
            return self._base

    def _probe(self) -> str:
        secure = f"https://{self.host}"
        if not self.plain_allowed:
            return secure
        if preconnect.speaks_tls(*endpoint_of(self.host), PROBE_WAIT) is False:
            return f"http://{self.host}"  # asked while the program loaded (the command line's probe_ahead)
        try:
            with scope(Deadline(f"{self.where(None)}: probe", self.read_deadline)):
                self._http.get(secure + "/v2/", auth=None, timeout=PROBE_WAIT).close()
            return secure
        except httpx.TransportError as exc:
            if (reason := _untrusted(exc)) is not None:  # it speaks TLS: never fall back to plain HTTP
                raise self._untrusted_error(reason) from exc
            return f"http://{self.host}"

    def _untrusted_error(self, reason: str) -> SinkError:
        hint = "" if self.insecure else "; trust its CA with SSL_CERT_FILE, or pass insecure=true"
        return SinkError(f"registry {self.host}: TLS certificate not trusted ({reason[:120]}){hint}")

    def url(self, path_or_url: str) -> str:
        return urljoin(self.base_url + "/", path_or_url)

    def where(self, repo: str | None) -> str:
        return f"registry {self.host}" + (f", repository {repo}" if repo else "")

    def request(
        self, method: str, path_or_url: str, *, what: str, repo: str | None, ok: Iterable[int] = (200,),
        idempotent: bool = True, stream: bool = False, redirects: bool = False, replayable: bool = True, **kwargs: Any,
    ) -> httpx.Response:
        """Send with retries; return a response whose status is in ``ok``, else raise.

        ``replayable=False``: the body is a stream the first attempt may have
        consumed, so only a request that never left is sent again."""
        expected = frozenset(ok)
        url = self.url(path_or_url)

        def attempt() -> httpx.Response:
            try:
                request = self._http.build_request(method, url, **kwargs)
                with scope(self.deadline(repo, what)):
                    response = self._http.send(request, stream=stream, follow_redirects=redirects)
            except httpx.TransportError as exc:
                if (reason := _untrusted(exc)) is not None:
                    raise self._untrusted_error(reason) from exc
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                raise Retryable(f"{self.where(repo)}: {what}: {type(exc).__name__}: {str(exc)[:160]}",
                                 safe=idempotent or unsent) from exc
            if response.status_code in expected:
                return response
            try:
                self.raise_for(response, what, repo, idempotent, replayable)
            finally:
                response.close()
            raise AssertionError("unreachable")

        return self.retrying(attempt)

    def retrying(self, fn: Callable[[], T]) -> T:
        """``fn`` until it returns, fails for good, or has failed ``attempts`` times.

        The first attempt runs bare and tenacity takes over only after it has
        failed: its imports (5 ms on one core, before the first request of
        every run) and its per-call bookkeeping are for the rare bad day."""
        try:
            return fn()
        except Retryable as exc:
            if not exc.safe or self.attempts <= 1:
                raise
            first: BaseException = exc
        import tenacity

        time.sleep(_delay(first, 1))
        retryer = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts - 1), wait=_wait_after_first, reraise=True,
            retry=tenacity.retry_if_exception(_retryable),
        )
        return retryer(fn)

    def raise_for(
        self, resp: httpx.Response, what: str, repo: str | None, idempotent: bool = True, replayable: bool = True,
    ) -> None:
        code = resp.status_code
        detail = error_detail(resp)
        where = f"{self.where(repo)}: {what}"
        if code == 401:
            who = (f"the credentials given were rejected{self.credentials.origin_note}" if self.credentials
                   else "no credentials given (pass username/password or log in with docker login)")
            raise AuthError(f"{where}: 401 Unauthorized, {who}{detail}")
        if code == 403:
            raise AuthError(f"{where}: 403 Forbidden, access denied{detail}")
        if code == 404:
            raise NotFound(f"{where}: not found{detail}")
        if code == 429 or code >= 500:
            # A refusal (429, 503) means the request was not acted upon.
            refused = replayable and code in (429, 503)
            raise Retryable(f"{where}: HTTP {code}{detail}", _retry_after(resp), safe=idempotent or refused)
        raise SinkError(f"{where}: HTTP {code}{detail}")


__all__ = ["RegistryHTTP", "Retryable", "error_detail"]
