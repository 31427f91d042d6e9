"""Cache entries and their state machine, per repository.

An entry is identified by (repository, scope, key, version). It is created
``reserved`` (CreateCacheEntry / POST caches), becomes ``committed`` when the
upload is finalized, and is then immutable. Lookups see only committed
entries, and only ``visibility_delay`` seconds after the commit, to mimic the
service's eventual consistency. The store knows nothing of HTTP or blobs; it
names each entry's blob and lets the caller move bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

RESERVED = "reserved"
COMMITTED = "committed"
DAY = 86400.0


class AlreadyExists(Exception):
    """The key is committed or reserved in this scope."""


class NotReserved(Exception):
    """Finalize found no live reservation for the caller."""


@dataclass
class Entry:
    id: int
    repository: str
    scope: str
    key: str
    version: str
    state: str
    created_at: float
    last_accessed_at: float
    committed_at: float | None = None
    size: int | None = None
    size_hint: int | None = None

    @property
    def blob_name(self) -> str:
        return f"{self.repository}-{self.id}"

    def identity(self) -> tuple[str, str, str, str]:
        return (self.repository, self.scope, self.key, self.version)


class Limits(Protocol):
    """Read on every call, so a running emulator can be retuned."""

    reservation_ttl: float
    idle_ttl: float
    visibility_delay: float
    size_cap: int | None  # bytes per repository; None = unlimited


class Store:
    """Thread-safe entry table. Every method takes the lock; none does I/O."""

    def __init__(self, limits: Limits, clock: Callable[[], float], on_evict: Callable[[Entry], None]) -> None:
        self.limits = limits
        self._clock = clock
        self._on_evict = on_evict
        self._lock = threading.RLock()
        self._entries: dict[int, Entry] = {}
        self._next_id = 1

    # -- introspection -------------------------------------------------

    def snapshot(self, repository: str | None = None) -> list[Entry]:
        """Copies of the entries (by id), so callers cannot change state."""
        with self._lock:
            return [replace(e) for e in self._entries.values() if repository in (None, e.repository)]

    def get(self, entry_id: int) -> Entry | None:
        with self._lock:
            entry = self._entries.get(entry_id)
            return replace(entry) if entry else None

    def total_size(self, repository: str) -> int:
        with self._lock:
            return sum(e.size or 0 for e in self._entries.values() if e.repository == repository and e.state == COMMITTED)

    # -- state machine -------------------------------------------------

    def reserve(self, repository: str, scope: str, key: str, version: str, size_hint: int | None = None) -> Entry:
        """A new reservation, or :class:`AlreadyExists` if the key is taken."""
        with self._lock:
            self._expire()
            ident = (repository, scope, key, version)
            if any(e.identity() == ident for e in self._entries.values()):
                raise AlreadyExists(key)
            now = self._clock()
            entry = Entry(self._next_id, repository, scope, key, version, RESERVED, now, now, size_hint=size_hint)
            self._next_id += 1
            self._entries[entry.id] = entry
            return replace(entry)

    def reserved(self, repository: str, scope: str, key: str, version: str) -> Entry:
        """The live reservation for this identity, or :class:`NotReserved`."""
        with self._lock:
            self._expire()
            ident = (repository, scope, key, version)
            for e in self._entries.values():
                if e.identity() == ident:
                    if e.state != RESERVED:
                        raise NotReserved("cache entry is already finalized")
                    return replace(e)
            raise NotReserved("no reserved cache entry with this key and version in the write scope")

    def reserved_by_id(self, repository: str, entry_id: int) -> Entry:
        with self._lock:
            self._expire()
            e = self._entries.get(entry_id)
            if e is None or e.repository != repository:
                raise NotReserved(f"cache {entry_id} does not exist")
            if e.state != RESERVED:
                raise NotReserved(f"cache {entry_id} is already committed")
            return replace(e)

    def commit(self, entry_id: int, size: int) -> Entry:
        """Mark a reservation committed; then evict LRU entries over the size cap."""
        with self._lock:
            e = self._entries.get(entry_id)
            if e is None or e.state != RESERVED:
                raise NotReserved(f"cache {entry_id} is not reserved")
            now = self._clock()
            e.state, e.size, e.committed_at, e.last_accessed_at = COMMITTED, size, now, now
            committed = replace(e)
            self._evict_over_cap(e.repository, keep=e.id)
            return committed

    def delete(self, entry_id: int) -> Entry | None:
        with self._lock:
            e = self._entries.pop(entry_id, None)
        if e is not None:
            self._on_evict(e)
        return e

    # -- lookup ----------------------------------------------------------

    def lookup(self, repository: str, scopes: Iterable[str], keys: list[str], version: str) -> Entry | None:
        """§4.3: per scope in order, per key in order: exact, then newest prefix match."""
        with self._lock:
            self._expire()
            visible = [e for e in self._visible(repository) if e.version == version]
            for scope in scopes:
                in_scope = [e for e in visible if e.scope == scope]
                for key in keys:
                    hit = self._match(in_scope, key)
                    if hit is not None:
                        hit.last_accessed_at = self._clock()
                        return replace(hit)
            return None

    def listing(self, repository: str, scopes: Iterable[str], prefix: str) -> list[Entry]:
        with self._lock:
            wanted = set(scopes)
            return [replace(e) for e in self._visible(repository) if e.scope in wanted and e.key.startswith(prefix)]

    @staticmethod
    def _match(entries: list[Entry], key: str) -> Entry | None:
        exact = [e for e in entries if e.key == key]
        if exact:
            return exact[0]
        prefixed = [e for e in entries if e.key.startswith(key)]
        return max(prefixed, key=lambda e: (e.created_at, e.id), default=None)

    def _visible(self, repository: str) -> Iterator[Entry]:
        horizon = self._clock() - self.limits.visibility_delay
        for e in self._entries.values():
            if e.repository == repository and e.state == COMMITTED and e.committed_at is not None and e.committed_at <= horizon:
                yield e

    # -- expiry and eviction ---------------------------------------------

    def _expire(self) -> None:
        now = self._clock()
        for e in list(self._entries.values()):
            stale_reservation = e.state == RESERVED and now - e.created_at >= self.limits.reservation_ttl
            idle = e.state == COMMITTED and now - e.last_accessed_at >= self.limits.idle_ttl
            if stale_reservation or idle:
                self._drop(e)

    def _evict_over_cap(self, repository: str, keep: int) -> None:
        cap = self.limits.size_cap
        if cap is None:
            return
        # GitHub stores the new entry first and evicts afterwards; the newest survives.
        victims = sorted(
            (e for e in self._entries.values() if e.repository == repository and e.state == COMMITTED and e.id != keep),
            key=lambda e: (e.last_accessed_at, e.id),
        )
        for victim in victims:
            if self.total_size(repository) <= cap:
                break
            self._drop(victim)

    def _drop(self, entry: Entry) -> None:
        self._entries.pop(entry.id, None)
        self._on_evict(entry)
