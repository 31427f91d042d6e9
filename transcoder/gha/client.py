"""Client of the GitHub Actions cache service: what v1 (REST) and v2 (Twirp)
have in common, and :func:`open_client` choosing between them.

The service stores immutable entries named by (scope, key, version). A client
can ``lookup`` a key (exact match, else the newest entry whose key starts with
it), ``reserve`` a new key and stream its bytes (the entry becomes visible
only when the upload is finished), and read an entry's bytes by range.
Reserving a key that exists, or is merely reserved by someone else, raises
:class:`~transcoder.errors.Conflict`; there is no delete and no listing.

The HTTP transport is injectable (``httpx.Client(transport=...)``) so tests can
inject faults without patching; the client comes from
:func:`~transcoder.httpclient.new_client`, so every read honours the
response deadlines of :mod:`.retry`.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import httpx

from .. import __version__
from ..errors import NotFound, SinkError
from ..httpclient import new_client
from ..redact import Secret, scrub
from .blobplane import DEFAULT_BLOCK, DEFAULT_IN_FLIGHT, RangedReader, blob_size
from .env import GhaConfig
from .retry import DEFAULT_UPLOADS_PER_MINUTE, RetryPolicy, UploadRateLimiter

USER_AGENT = f"transcoder/{__version__}"
MAX_KEY = 512
_LIMITERS: dict[str, UploadRateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class CacheEntry:
    """A committed entry found by ``lookup``; ``url`` is a signed download URL."""

    key: str
    version: str
    url: Secret


class EntryUpload(Protocol):
    """A reserved entry being written: ``write``\\*, then ``finish(size)`` or ``abort()``."""

    key: str

    def write(self, data: bytes | memoryview) -> None: ...

    def finish(self, size: int) -> None: ...

    def abort(self) -> None: ...


class _ScrubFilter(logging.Filter):
    """httpx logs every request URL at INFO; signed URLs carry their signature in the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def _install_log_filter() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _ScrubFilter) for f in logger.filters):
        logger.addFilter(_ScrubFilter())


_install_log_filter()


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY or "," in key:
        raise SinkError(f"cache key {key[:80]!r}: must be 1-{MAX_KEY} characters without commas")
    return key


def shared_limiter(root: str, per_minute: int = DEFAULT_UPLOADS_PER_MINUTE) -> UploadRateLimiter:
    """One limiter per service per process: every sink of this job shares the budget."""
    with _LIMITERS_LOCK:
        if root not in _LIMITERS:
            _LIMITERS[root] = UploadRateLimiter(per_minute)
        return _LIMITERS[root]


class CacheClient(ABC):
    """Shared machinery; :class:`~transcoder.gha.v2.TwirpClient` and
    :class:`~transcoder.gha.v1.RestClient` implement ``lookup`` and ``reserve``."""

    protocol = 0

    def __init__(
        self, config: GhaConfig, *, transport: httpx.BaseTransport | None = None, policy: RetryPolicy | None = None,
        limiter: UploadRateLimiter | None = None, block_size: int = DEFAULT_BLOCK, in_flight: int = DEFAULT_IN_FLIGHT,
    ) -> None:
        self.config = config
        self.policy = policy or RetryPolicy(config.timeout)
        self.limiter = limiter or shared_limiter(config.api_root)
        self.block_size = block_size
        self.in_flight = in_flight
        limits = httpx.Limits(max_connections=max(8, 2 * in_flight), max_keepalive_connections=max(8, 2 * in_flight))
        self.http = new_client(transport=transport, nodelay=True, limits=limits, timeout=httpx.Timeout(60.0, connect=10.0),
                               headers={"user-agent": USER_AGENT}, follow_redirects=False)
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def count(self, what: str, n: int = 1) -> None:
        with self._calls_lock:
            self.calls[what] += n

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.config.token.reveal()}"}

    def lookup(self, key: str, version: str, *, restore_keys: Sequence[str] = (), exact: bool = False) -> CacheEntry | None:
        """The entry for ``key`` (exact, else newest with that prefix; ``exact`` refuses prefix hits)."""
        entry = self._lookup(check_key(key), version, [check_key(k) for k in restore_keys])
        if entry is not None and exact and entry.key != key:
            return None
        return entry

    def reserve(self, key: str, version: str, *, size_hint: int | None = None) -> EntryUpload:
        """Reserve ``key`` and return its upload; raises Conflict if it exists or is reserved."""
        self.limiter.acquire()
        return self._reserve(check_key(key), version, size_hint)

    def size(self, entry: CacheEntry) -> int:
        self.count("head")
        return blob_size(self.http, self.policy, entry.url, f"cache entry {entry.key}")

    def open(self, entry: CacheEntry, start: int, end: int) -> BinaryIO:
        """Bytes ``[start, end)`` of the entry; an expired URL is re-requested by exact lookup."""

        def url_source(refresh: bool) -> Secret:
            if not refresh:
                return entry.url
            self.count("refresh")
            fresh = self.lookup(entry.key, entry.version, exact=True)
            if fresh is None:
                raise NotFound(f"cache entry {entry.key}: no longer exists (evicted?)")
            return fresh.url

        self.count("download")
        raw = RangedReader(self.http, self.policy, url_source, start, end, f"cache entry {entry.key}")
        return io.BufferedReader(raw, buffer_size=1 << 20)  # type: ignore[return-value]

    def read_small(self, entry: CacheEntry, limit: int) -> bytes:
        """A small entry whole (records, aliases); refuses one over ``limit`` bytes."""
        with self.open(entry, 0, limit + 1) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise SinkError(f"cache entry {entry.key}: over {limit} bytes, not a record")
        return data

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> CacheClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _lookup(self, key: str, version: str, restore_keys: list[str]) -> CacheEntry | None:
        """One protocol's lookup (v1 REST or v2 Twirp)."""

    @abstractmethod
    def _reserve(self, key: str, version: str, size_hint: int | None) -> EntryUpload:
        """One protocol's reservation of a new entry."""

    def wait_visible(self, key: str, version: str, seconds: float = 5.0) -> bool:
        """Poll for a just-finalized entry (the service shows it after 1-3 s)."""
        deadline = time.monotonic() + seconds
        delay = 0.2
        while True:
            if self.lookup(key, version, exact=True) is not None:
                return True
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def open_client(config: GhaConfig, **kwargs: object) -> CacheClient:
    """The v1 or v2 client the configuration asks for."""
    if config.version == 2:
        from .v2 import TwirpClient

        return TwirpClient(config, **kwargs)  # type: ignore[arg-type]
    from .v1 import RestClient

    return RestClient(config, **kwargs)  # type: ignore[arg-type]
