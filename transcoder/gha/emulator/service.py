"""The cache service's rules, shared by the v2 (Twirp) and v1 (REST) surfaces.

Authorization from the runtime token, key validation, the reserve/finalize
state machine, lookups across the token's scopes, and the bookkeeping that
ties entries to blobs in the data plane. The surfaces translate these results
and exceptions into their own wire formats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import jwt
from .blobplane import BlobPlane
from .faults import UploadBudget
from .store import AlreadyExists, Entry, NotReserved, Store

MAX_KEY_LENGTH = 512
MAX_KEYS = 10
WRITE_DENIED = "cache write denied: token has no writable scopes"

__all__ = ["AlreadyExists", "CacheService", "Config", "Invalid", "NotReserved", "RateLimited", "Refused", "WriteDenied"]


@dataclass
class Config:
    """Behaviour knobs; the defaults follow GitHub where it is known."""

    visibility_delay: float = 0.0
    size_cap: int | None = None
    reservation_ttl: float = 86400.0
    idle_ttl: float = 7 * 86400.0
    upload_url_ttl: float = 3600.0
    download_url_ttl: float = 600.0
    uploads_per_minute: int | None = None
    max_entry_size: int | None = None  # v1 reserve refuses a larger cacheSize (GHES data cap)
    check_finalize_size: bool = True
    write_denied: str = "ok_false"  # or "permission_denied" (Twirp 403)
    verify_signature: bool = True


class Invalid(Exception):
    """Bad request arguments (Twirp invalid_argument, v1 400)."""


class WriteDenied(Exception):
    """The token has no writable scope."""


class Refused(Exception):
    """Finalize cannot commit (not reserved, no blob, wrong size); ``str()`` is the message."""


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limit exceeded: too many cache entry uploads; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


def check_key(key: object, *, v1: bool = False, name: str = "key") -> str:
    if not isinstance(key, str) or not key:
        raise Invalid(f"{name} is required and must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise Invalid(f"{name} is longer than {MAX_KEY_LENGTH} characters")
    if v1 and "," in key:
        raise Invalid(f"Key Validation Error: {key} cannot contain commas.")
    return key


def check_version(version: object) -> str:
    if not isinstance(version, str) or not version:
        raise Invalid("version is required and must be a non-empty string")
    if len(version) > MAX_KEY_LENGTH:
        raise Invalid(f"version is longer than {MAX_KEY_LENGTH} characters")
    return version


def lookup_keys(primary: object, restore: Iterable[object], *, v1: bool = False) -> list[str]:
    """Primary then restore keys, duplicates dropped (Go clients repeat the primary), at most 10."""
    keys: list[str] = []
    for i, key in enumerate([primary, *restore]):
        checked = check_key(key, v1=v1, name="key" if i == 0 else "restore key")
        if checked not in keys:
            keys.append(checked)
    if len(keys) > MAX_KEYS:
        raise Invalid(f"Key Validation Error: Keys are limited to a maximum of {MAX_KEYS}.")
    return keys


class CacheService:
    def __init__(self, config: Config, plane: BlobPlane, secret: bytes, clock: Callable[[], float],
                 on_evict: Callable[[Entry], None] | None = None) -> None:
        self.config = config
        self.plane = plane
        self.secret = secret
        self.clock = clock
        self._extra_evict = on_evict
        self.store = Store(config, clock, self._evicted)
        self.budget = UploadBudget(lambda: config.uploads_per_minute, clock)

    def _evicted(self, entry: Entry) -> None:
        self.plane.delete(entry.blob_name)
        if self._extra_evict is not None:
            self._extra_evict(entry)

    def authorize(self, header: str | None) -> jwt.Grant:
        """The grant of the request's bearer token; raises :class:`jwt.TokenError`."""
        secret = self.secret if self.config.verify_signature else None
        return jwt.verify(jwt.bearer(header), secret, now=self.clock())

    def _write_scope(self, grant: jwt.Grant) -> str:
        scope = grant.write_scope
        if scope is None:
            raise WriteDenied(WRITE_DENIED)
        return scope

    def reserve(self, grant: jwt.Grant, key: str, version: str, size_hint: int | None = None) -> Entry:
        """Reserve (scope, key, version); raises WriteDenied, RateLimited or AlreadyExists."""
        scope = self._write_scope(grant)
        wait = self.budget.admit(grant.repository)
        if wait is not None:
            raise RateLimited(wait)
        return self.store.reserve(grant.repository, scope, key, version, size_hint)

    def upload_url(self, entry: Entry) -> str:
        return self.plane.upload_url(entry.blob_name, self.config.upload_url_ttl)

    def download_url(self, entry: Entry) -> str:
        return self.plane.download_url(entry.blob_name, self.config.download_url_ttl)

    def finalize(self, grant: jwt.Grant, key: str, version: str, size: int) -> Entry:
        """Commit the caller's reservation after checking its blob; raises WriteDenied or Refused."""
        scope = self._write_scope(grant)
        try:
            entry = self.store.reserved(grant.repository, scope, key, version)
        except NotReserved as exc:
            raise Refused(str(exc)) from exc
        actual = self.plane.committed_size(entry.blob_name)
        if actual is None:
            raise Refused("no blob has been uploaded for this cache entry")
        if self.config.check_finalize_size and actual != size:
            raise Refused(f"size_bytes {size} does not match the uploaded blob of {actual} bytes")
        return self._commit(entry, actual)

    def _commit(self, entry: Entry, size: int) -> Entry:
        try:
            committed = self.store.commit(entry.id, size)
        except NotReserved as exc:
            raise Refused(str(exc)) from exc
        self.plane.seal(entry.blob_name)
        return committed

    def commit_v1(self, grant: jwt.Grant, entry_id: int, source_path: Path, size: int) -> Entry:
        """v1: the assembled upload file becomes the entry's blob, then the entry commits."""
        self._write_scope(grant)
        entry = self.store.reserved_by_id(grant.repository, entry_id)
        self.plane.store_file(entry.blob_name, source_path)
        return self._commit(entry, size)

    def lookup(self, grant: jwt.Grant, keys: list[str], version: str) -> Entry | None:
        return self.store.lookup(grant.repository, grant.readable, keys, version)
