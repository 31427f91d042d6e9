"""Content-addressed blobs on the cache service: find, read and stream-write them.

A blob whose digest is known before it is written (a canonical layer being
copied, a config, a manifest) goes to ``buildkit-blob-1-<digest>``. A blob
being produced by the transcoder is streamed while its digest is still
unknown, to ``transcoder-blob-1-<hint>``; once it is finished, and its size
and digest have been checked, a small alias entry ``transcoder-alias-1-<digest>``
names it. Either way nothing is findable by digest before its bytes are
complete and checked, and "already exists" is success.

A key can be blocked by a reservation that never finished (a crashed job, or
our own create that timed out after the server acted on it); the service gives
no way to clear it. Then the writer takes a fresh fallback key beside it
(``<key>-t<hex>``), which a lookup of the plain key still finds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from ..digest import Digest, is_digest
from ..errors import Conflict, DigestMismatch, ManifestError, NotFound, SinkError
from ..writers import WriterBase
from . import keys
from .client import CacheClient, CacheEntry, EntryUpload

ALIAS_LIMIT = 64 << 10


ENTRY_REUSE = 300.0  # seconds a looked-up download URL is reused (GitHub signs them for ~10 minutes)


@dataclass(frozen=True)
class Located:
    key: str
    version: str
    size: int
    entry: CacheEntry | None = field(default=None, compare=False)
    found_at: float = field(default_factory=time.monotonic, compare=False)

    def fresh_entry(self) -> CacheEntry | None:
        return self.entry if self.entry is not None and time.monotonic() - self.found_at < ENTRY_REUSE else None


class BlobStore:
    def __init__(self, client: CacheClient) -> None:
        self.client = client
        self._known: dict[Digest, Located] = {}
        self._lock = threading.Lock()

    # --- reading -------------------------------------------------------------

    def locate(self, digest: Digest) -> Located | None:
        with self._lock:
            if digest in self._known:
                return self._known[digest]
        loc = self._find_direct(digest) or self._find_alias(digest)
        if loc is not None:
            self.remember(digest, loc)
        return loc

    def remember(self, digest: Digest, loc: Located) -> None:
        with self._lock:
            self._known[digest] = loc

    def _find_direct(self, digest: Digest) -> Located | None:
        key = keys.blob_key(digest)
        entry = self.client.lookup(key, keys.BUILDKIT_VERSION)
        if entry is None or not keys.is_key_for(entry.key, key):
            return None
        return Located(entry.key, entry.version, self.client.size(entry), entry)

    def _find_alias(self, digest: Digest) -> Located | None:
        key = keys.alias_key(digest)
        entry = self.client.lookup(key, keys.VERSION)
        if entry is None or not keys.is_key_for(entry.key, key):
            return None
        target, size = self._parse_alias(self.client.read_small(entry, ALIAS_LIMIT), digest, entry.key)
        found = self.client.lookup(target, keys.VERSION, exact=True)
        if found is None:
            return None  # the blob was evicted; the alias alone is worth nothing
        return Located(target, keys.VERSION, size, found)

    @staticmethod
    def _parse_alias(data: bytes, digest: Digest, what: str) -> tuple[str, int]:
        try:
            obj = json.loads(data)
            target, size, named = obj["key"], obj["size"], obj["digest"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"cache entry {what}: malformed alias") from exc
        if named != str(digest) or not isinstance(target, str) or not isinstance(size, int) or size < 0:
            raise ManifestError(f"cache entry {what}: alias does not describe {digest}")
        return target, size

    def open(self, digest: Digest, offset: int = 0, length: int | None = None) -> BinaryIO:
        loc = self.locate(digest)
        if loc is None:
            raise NotFound(f"blob {digest}: not in the cache")
        entry = loc.fresh_entry() or self.client.lookup(loc.key, loc.version, exact=True)
        if entry is None and self.client.wait_visible(loc.key, loc.version):
            entry = self.client.lookup(loc.key, loc.version, exact=True)
        if entry is None:
            raise NotFound(f"blob {digest}: cache entry {loc.key} is gone (evicted?)")
        if offset < 0 or (length is not None and length < 0):
            raise SinkError(f"blob {digest}: bad range {offset}+{length}")
        offset = min(offset, loc.size)
        end = loc.size if length is None else min(loc.size, offset + length)
        stream = self.client.open(entry, offset, end)
        if offset == 0 and end == loc.size:
            return _Verifying(stream, digest, loc.size)  # type: ignore[return-value]
        return stream

    # --- writing -------------------------------------------------------------

    def reserve(self, key: str, version: str, size_hint: int | None, *, present: Callable[[], bool] | None = None,
                ) -> EntryUpload | None:
        """Reserve ``key``, or a fallback beside it; None if it is taken and ``present()`` says the content is there."""
        try:
            return self.client.reserve(key, version, size_hint=size_hint)
        except Conflict:
            if present is not None and present():
                return None
            return self.client.reserve(keys.fallback(key), version, size_hint=size_hint)

    def _visible(self, key: str, version: str) -> Callable[[], bool]:
        def check() -> bool:
            entry = self.client.lookup(key, version)
            return entry is not None and keys.is_key_for(entry.key, key)

        return check

    def put_small(self, key: str, data: bytes) -> None:
        """A small immutable entry under ``key`` (or a fallback), unless it already exists."""
        upload = self.reserve(key, keys.VERSION, len(data), present=self._visible(key, keys.VERSION))
        if upload is None:
            return
        try:
            upload.write(data)
            upload.finish(len(data))
        except BaseException:
            upload.abort()
            raise

    def write_alias(self, digest: Digest, target: str, size: int, media_type: str) -> None:
        body = json.dumps({"digest": str(digest), "key": target, "size": size, "mediaType": media_type},
                          sort_keys=True).encode()
        key = keys.alias_key(digest)
        with contextlib.suppress(Conflict):  # the key and a fallback both taken: another writer named it
            self.put_small(key, body)
        self.remember(digest, Located(target, keys.VERSION, size))


class GhaBlobWriter(WriterBase):
    """Streams to the cache while the pipeline runs; published only by ``commit``."""

    def __init__(self, store: BlobStore, media_type: str, key_hint: str | None, size_hint: int | None) -> None:
        self.expect = Digest.parse(key_hint) if key_hint and is_digest(key_hint) else None
        super().__init__(f"blob {self.expect}" if self.expect else f"blob for {key_hint or 'stream'}")
        self._store = store
        self._media_type = media_type
        self._hint = key_hint
        self._size_hint = size_hint
        self._upload: EntryUpload | None = None
        self._primary = keys.blob_key(self.expect) if self.expect else keys.stream_key(key_hint)
        self._started = False
        self.skipped = False  # the blob was already there: nothing uploaded

    def write(self, data: bytes | memoryview) -> None:
        self._account(data)
        if not self._started:
            self._start()
        if self._upload is not None:
            try:
                self._upload.write(data)
            except BaseException:
                self.abort()
                raise

    def _start(self) -> None:
        self._started = True
        if self.expect is not None:
            if self._store.locate(self.expect) is not None:
                self.skipped = True
                return
            expect = self.expect
            self._upload = self._store.reserve(self._primary, keys.BUILDKIT_VERSION, self._size_hint,
                                               present=lambda: self._store.locate(expect) is not None)
            self.skipped = self._upload is None
        else:
            self._upload = self._store.reserve(self._primary, keys.VERSION, self._size_hint)

    def commit(self, size: int, digest: Digest) -> None:
        try:
            self._check(size, digest)
            if self.expect is not None and digest != self.expect:
                raise DigestMismatch(f"{self.name}: content is {digest}")
            if not self._started:
                self._start()
            if self._upload is not None and self._fallback_unneeded(digest):
                self._upload.abort()  # a racing writer published it first: keep one copy in the cache
                self._upload, self.skipped = None, True
            if self._upload is not None:
                self._upload.finish(size)
                self._publish(digest, size, self._upload.key)
        except BaseException:
            self.abort()
            raise
        self.done = True

    def _fallback_unneeded(self, digest: Digest) -> bool:
        """Writing beside a taken key, or under a random one: is the digest published already?

        Dropping the upload then only costs its reservation, which expires on its own.
        """
        assert self._upload is not None
        unnamed = self._upload.key != self._primary or self._hint is None
        return unnamed and self._store.locate(digest) is not None

    def _publish(self, digest: Digest, size: int, key: str) -> None:
        if self.expect is None:
            self._store.write_alias(digest, key, size, self._media_type)
        else:
            self._store.remember(digest, Located(key, keys.BUILDKIT_VERSION, size))

    def abort(self) -> None:
        self.done = True
        if self._upload is not None:
            self._upload.abort()
            self._upload = None


class _Verifying:
    """A whole-blob reader that refuses, at the end, bytes that do not match the digest."""

    def __init__(self, raw: BinaryIO, digest: Digest, size: int) -> None:
        self._raw = raw
        self._digest = digest
        self._size = size
        self._hash = hashlib.sha256()
        self._seen = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._hash.update(data)
        self._seen += len(data)
        if (not data and n != 0) or self._seen >= self._size:
            self._finish()
        return data

    def _finish(self) -> None:
        if self._seen != self._size:
            raise SinkError(f"blob {self._digest}: cache entry ended after {self._seen} of {self._size} bytes")
        actual = Digest.from_hasher(self._hash.copy())
        if actual != self._digest:
            raise DigestMismatch(f"blob {self._digest}: cache entry holds {actual}")

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _Verifying:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BlobStore", "CacheEntry", "GhaBlobWriter", "Located"]
