"""A file-backed Azure block blob store (the emulator's built-in data plane).

A committed blob is a list of segment files (one per block, or one for a Put
Blob), so committing a block list never copies bytes and a ranged read walks
the segments. Uploaded data always lands in a private file first and becomes
visible only under the lock, so concurrent Put Block calls do not interfere.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from .wire import READ_SIZE, Body


class BlobStoreError(Exception):
    """An Azure error: ``status``, ``code`` (x-ms-error-code) and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class Blob:
    segments: list[tuple[Path, int]] = field(default_factory=list)
    committed: dict[str, tuple[Path, int]] = field(default_factory=dict)
    uncommitted: dict[str, tuple[Path, int]] = field(default_factory=dict)
    exists: bool = False  # has a committed version (Put Blob or Put Block List)
    sealed: bool = False  # the cache entry is committed: bytes are immutable now
    etag: str = ""
    modified: float = 0.0

    @property
    def size(self) -> int:
        return sum(n for _, n in self.segments)


@dataclass(frozen=True)
class BlobInfo:
    size: int
    etag: str
    last_modified: str
    segments: tuple[tuple[Path, int], ...]


def block_key(block_id: str) -> str:
    """Validate a base64 block id (at most 64 bytes decoded) and return it as hex."""
    try:
        raw = base64.b64decode(block_id, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BlobStoreError(400, "InvalidQueryParameterValue", "Value for one of the query parameters specified "
                             "in the request URI is invalid (blockid is not base64).") from exc
    if not raw or len(raw) > 64:
        raise BlobStoreError(400, "InvalidQueryParameterValue", "blockid must decode to 1..64 bytes")
    return raw.hex()


class BlockStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._blobs: dict[str, Blob] = {}
        self._counter = 0

    # -- lifecycle driven by the cache service -------------------------------

    def register(self, name: str) -> None:
        """Allow writes to ``name`` (its entry was reserved)."""
        with self._lock:
            self._blobs.setdefault(name, Blob())

    def seal(self, name: str) -> None:
        with self._lock:
            if name in self._blobs:
                self._blobs[name].sealed = True

    def delete(self, name: str) -> None:
        with self._lock:
            blob = self._blobs.pop(name, None)
        if blob is not None:
            for path, _ in {*blob.segments, *blob.committed.values(), *blob.uncommitted.values()}:
                path.unlink(missing_ok=True)

    def info(self, name: str) -> BlobInfo | None:
        with self._lock:
            blob = self._blobs.get(name)
            if blob is None or not blob.exists:
                return None
            return BlobInfo(blob.size, blob.etag, formatdate(blob.modified, usegmt=True), tuple(blob.segments))

    # -- Azure operations ------------------------------------------------------

    def put_blob(self, name: str, body: Body) -> BlobInfo:
        self._writable(name)
        path, size = self._receive(name, body)
        with self._lock:
            blob = self._writable(name, path)
            stale = {*blob.segments, *blob.committed.values(), *blob.uncommitted.values()}
            blob.segments, blob.committed, blob.uncommitted = [(path, size)], {}, {}
            self._touch(blob)
            info = self._info(blob)
        self._unlink(stale)
        return info

    def adopt(self, name: str, source: Path) -> BlobInfo:
        """Make the file ``source`` the committed content of ``name`` (v1 uploads); moves it."""
        path = self.root / f"{name}.{uuid.uuid4().hex}"
        source.replace(path)
        with self._lock:
            blob = self._blobs.setdefault(name, Blob())
            stale = {*blob.segments, *blob.committed.values(), *blob.uncommitted.values()}
            blob.segments, blob.committed, blob.uncommitted = [(path, path.stat().st_size)], {}, {}
            self._touch(blob)
            info = self._info(blob)
        self._unlink(stale)
        return info

    def put_block(self, name: str, block_id: str, body: Body) -> None:
        key = block_key(block_id)
        self._writable(name)
        path, size = self._receive(name, body)
        with self._lock:
            blob = self._writable(name, path)
            lengths = {len(k) for k in (*blob.uncommitted, *blob.committed)}
            if lengths and lengths != {len(key)}:
                path.unlink(missing_ok=True)
                raise BlobStoreError(400, "InvalidBlobOrBlock", "The specified blob or block content is invalid "
                                     "(block ids of one blob must have the same length).")
            old = blob.uncommitted.get(key)
            blob.uncommitted[key] = (path, size)
        if old:
            old[0].unlink(missing_ok=True)

    def put_block_list(self, name: str, wanted: list[tuple[str, str]]) -> BlobInfo:
        """Commit blocks in list order; ``wanted`` is ``[(Latest|Committed|Uncommitted, id)]``."""
        with self._lock:
            blob = self._writable(name)
            segments = [self._resolve(blob, kind, block_key(block_id)) for kind, block_id in wanted]
            keep = set(segments)
            stale = {*blob.segments, *blob.committed.values(), *blob.uncommitted.values()} - keep
            blob.committed = {block_key(bid): seg for (_, bid), seg in zip(wanted, segments, strict=True)}
            blob.uncommitted, blob.segments = {}, segments
            self._touch(blob)
            info = self._info(blob)
        self._unlink(stale)
        return info

    def read(self, info: BlobInfo, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start..end`` inclusive of a blob snapshot."""
        offset = 0
        for path, size in info.segments:
            lo, hi = max(start, offset), min(end + 1, offset + size)
            if lo < hi:
                with open(path, "rb") as f:
                    f.seek(lo - offset)
                    left = hi - lo
                    while left:
                        data = f.read(min(READ_SIZE, left))
                        if not data:
                            raise OSError(f"segment {path.name} is shorter than recorded")
                        left -= len(data)
                        yield data
            offset += size

    # -- helpers ----------------------------------------------------------------

    @staticmethod
    def _resolve(blob: Blob, kind: str, key: str) -> tuple[Path, int]:
        sources = {"Latest": (blob.uncommitted, blob.committed), "Committed": (blob.committed,),
                   "Uncommitted": (blob.uncommitted,)}[kind]
        for source in sources:
            if key in source:
                return source[key]
        raise BlobStoreError(400, "InvalidBlockList", "The specified block list is invalid.")

    def _writable(self, name: str, cleanup: Path | None = None) -> Blob:
        blob = self._blobs.get(name)
        error = None
        if blob is None:
            error = BlobStoreError(403, "AuthorizationFailure", "This request is not authorized to perform this "
                                   "operation (no cache entry is reserved for this blob).")
        elif blob.sealed:
            error = BlobStoreError(409, "BlobImmutableDueToPolicy", "This operation is not permitted as the blob "
                                   "is immutable due to a policy (the cache entry is committed).")
        if error is not None:
            if cleanup is not None:
                cleanup.unlink(missing_ok=True)
            raise error
        assert blob is not None
        return blob

    def _receive(self, name: str, body: Body) -> tuple[Path, int]:
        path = self.root / f"{name}.{uuid.uuid4().hex}"
        try:
            with open(path, "wb") as f:
                size = body.copy_to(f)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, size

    def _touch(self, blob: Blob) -> None:
        self._counter += 1
        blob.exists, blob.modified = True, time.time()
        blob.etag = f'"0x8D{self._counter:013X}"'

    @staticmethod
    def _info(blob: Blob) -> BlobInfo:
        return BlobInfo(blob.size, blob.etag, formatdate(blob.modified, usegmt=True), tuple(blob.segments))

    @staticmethod
    def _unlink(paths: set[tuple[Path, int]]) -> None:
        for path, _ in paths:
            path.unlink(missing_ok=True)
