"""Retry policy and client-side rate limit for the cache service.

What is retried (and only that): :class:`~transcoder.errors.TransientError`,
which the protocol modules raise for 429, 500/502/503/504, non-JSON bodies,
connection resets and timeouts. A 429's ``Retry-After`` is honoured when it
fits in the remaining time budget (the sink's ``timeout``), otherwise the call
fails at once rather than sleeping past the deadline; everything else backs
off exponentially with jitter, capped. The budget is per call, as BuildKit's
``timeout`` is per request.

The service allows 200 entry uploads per minute per repository and answers
429 beyond that; :class:`UploadRateLimiter` keeps this process under its own
share without waiting for the server to push back.

Retries bound attempts; :class:`Deadlines` bound each response, so that a
server trickling bytes cannot hold a call forever (:mod:`transcoder.deadline`).
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import tenacity

from ..deadline import Deadline, read_bounded, scope
from ..errors import SinkError, TransientError

T = TypeVar("T")
RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
DEFAULT_UPLOADS_PER_MINUTE = 150
MAX_ANSWER = 1 << 20  # JSON answers and blob-plane replies are small


@dataclass(frozen=True)
class Deadlines:
    """Whole-response bounds: a small answer (JSON, a blob-plane reply) within
    ``answer`` seconds; a download range within ``allowance`` seconds plus one
    second per ``min_rate`` bytes received, so big healthy downloads pass."""

    answer: float = 60.0
    allowance: float = 60.0
    min_rate: float = 64 << 10

    def download(self, what: str) -> Deadline:
        return Deadline(what, self.allowance, min_rate=self.min_rate)


def retry_after(resp: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (integer seconds or an HTTP date), if present and sane."""
    value = resp.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_retryable_status(status: int) -> bool:
    return status == 429 or status in RETRYABLE_STATUS


class RetryPolicy:
    """Runs a call until it succeeds, fails permanently, or the budget runs out."""

    def __init__(
        self, timeout: float, *, max_attempts: int = 8, initial: float = 0.5, max_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep, deadlines: Deadlines | None = None,
    ) -> None:
        self.timeout = timeout
        self.deadlines = deadlines or Deadlines()
        self.max_attempts = max_attempts
        self.initial = initial
        self.max_wait = max_wait
        self.sleep = sleep

    def call(self, fn: Callable[[], T], what: str) -> T:
        deadline = time.monotonic() + self.timeout

        def backoff(state: tenacity.RetryCallState) -> float:
            # Capped exponential with full jitter on top, so parallel jobs spread out.
            attempt = int(state.attempt_number)
            return min(self.max_wait, self.initial * 2.0 ** min(attempt - 1, 30)) + random.uniform(0, self.initial)

        def remaining() -> float:
            return deadline - time.monotonic()

        def wait(state: tenacity.RetryCallState) -> float:
            hint = _hint(state)
            delay = hint if hint is not None else backoff(state)
            return max(0.0, min(delay, remaining()))

        def stop(state: tenacity.RetryCallState) -> bool:
            hint = _hint(state)
            too_long = hint is not None and hint > remaining()
            return state.attempt_number >= self.max_attempts or remaining() <= 0 or too_long

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError), wait=wait, stop=stop, sleep=self.sleep, reraise=True,
        )
        try:
            return retrying(fn)
        except TransientError as exc:
            raise _gave_up(exc, what, retrying.statistics.get("attempt_number", 1), remaining()) from exc


def _hint(state: tenacity.RetryCallState) -> float | None:
    exc = state.outcome.exception() if state.outcome is not None else None
    return exc.retry_after if isinstance(exc, TransientError) else None


def _gave_up(exc: TransientError, what: str, attempts: int, remaining: float) -> TransientError:
    if exc.retry_after is not None and exc.retry_after > remaining:
        why = f"requested delay {exc.retry_after:.0f}s exceeds the remaining timeout"
    elif remaining <= 0:
        why = "timeout reached"
    else:
        why = f"gave up after {attempts} attempts"
    msg = str(exc) if str(exc).startswith(what) else f"{what}: {exc}"
    return TransientError(f"{msg} ({why})", exc.retry_after)


def transport_error(exc: httpx.TransportError, what: str) -> SinkError:
    """Connection problems are transient; httpx's messages carry no URL or header."""
    name = type(exc).__name__
    detail = str(exc) or name
    return TransientError(f"{what}: {name}: {detail}" if detail != name else f"{what}: {name}")


def send_tracked(send: Callable[[], httpx.Response], what: str, state: dict[str, bool] | None) -> httpx.Response:
    """Send one request; mark ``state["ambiguous"]`` when the server may have
    acted without us seeing the answer (a dropped connection after connecting,
    or a 5xx), so a retried create expects the 409 that may follow."""
    try:
        resp = send()
    except httpx.TransportError as exc:
        if state is not None and not isinstance(exc, httpx.ConnectError):
            state["ambiguous"] = True
        raise transport_error(exc, what) from exc
    if state is not None and resp.status_code >= 500:
        state["ambiguous"] = True
    return resp


def answer(http: httpx.Client, request: httpx.Request, what: str, seconds: float) -> httpx.Response:
    """Send ``request`` and read its answer whole, within ``seconds`` of sending and
    at most MAX_ANSWER bytes, headers included; returns the answer loaded (``.content`` works)."""
    with scope(Deadline(f"{what}: answer", seconds)):
        resp = http.send(request, stream=True)
        try:
            body = read_bounded(resp.iter_bytes(), MAX_ANSWER, f"{what}: answer")
        finally:
            resp.close()
    # The body is decoded already: drop the headers that describe its wire form.
    headers = [(k, v) for k, v in resp.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(resp.status_code, headers=headers, content=body, request=request)


class UploadRateLimiter:
    """At most ``per_minute`` entry creations in any sliding 60 s window (thread-safe)."""

    def __init__(self, per_minute: int = DEFAULT_UPLOADS_PER_MINUTE, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self.waited = 0.0

    def acquire(self) -> None:
        """Block until one more creation fits in the window, then count it."""
        while True:
            with self._lock:
                now = self._clock()
                while self._times and now - self._times[0] >= 60.0:
                    self._times.popleft()
                if len(self._times) < self.per_minute:
                    self._times.append(now)
                    return
                delay = 60.0 - (now - self._times[0])
            self.waited += delay
            self._sleep(delay)
