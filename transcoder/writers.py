"""Blob writers: where the pipeline's output goes until it is committed.

Contract (containerd's content Writer): ``write`` any number of times, then
exactly one of ``commit(size, digest)`` or ``abort()``. ``commit`` makes the
bytes visible only if their size and digest match what the caller computed;
``abort`` leaves nothing behind. Writers are context managers that abort when
the block exits without a commit, so an exception never leaves half a blob.
"""

from __future__ import annotations

import errno
import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from .digest import Digest
from .errors import DigestMismatch, SizeMismatch, StoreError
from .faults import crashpoint
from .hashing import StreamDigest, new_sha256, update_pair

__all__ = ["BlobWriter", "FileWriter", "NullWriter", "StreamDigest", "WriterBase"]


class BlobWriter(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...

    def commit(self, size: int, digest: Digest) -> None: ...

    def abort(self) -> None: ...


class WriterBase(ABC):
    """Hashes and counts what it is given, so every writer can refuse a bad commit."""

    # False in a writer whose _account counts without hashing.
    hashes = True

    def __init__(self, name: str) -> None:
        self.name = name
        self._hash = new_sha256()
        self._size = 0
        self.done = False
        self._prehashed = False  # the data being written was hashed by write_along

    def _account(self, data: bytes | memoryview) -> None:
        if not self._prehashed:
            self._hash.update(data)
        self._size += len(data)

    def write_along(self, data: bytes, hasher: Any, other: bytes | memoryview) -> None:
        """``write(data)``, with ``data`` hashed in one pass alongside ``other`` into
        ``hasher`` (``hashing.update_pair``: two SHA-256 streams at once cost about one)."""
        update_pair(self._hash, data, hasher, other)
        self._prehashed = True
        try:
            self.write(data)
        finally:
            self._prehashed = False

    def written_digest(self) -> Digest:
        """The digest of everything written so far."""
        return Digest.from_hasher(self._hash)

    def _check(self, size: int, digest: Digest) -> None:
        if self._size != size:
            raise SizeMismatch(f"{self.name}: wrote {self._size} bytes, expected {size}")
        actual = self.written_digest()
        if actual != digest:
            raise DigestMismatch(f"{self.name}: wrote {actual}, expected {digest}")

    def __enter__(self) -> WriterBase:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if not self.done:
            self.abort()

    @abstractmethod
    def write(self, data: bytes | memoryview) -> None: ...

    @abstractmethod
    def commit(self, size: int, digest: Digest) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...


# Bytes written between two early-writeback requests of a FileWriter.
WRITEBACK_STEP = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of dirty pages, do not wait


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range(2), or None where there is none (not Linux)."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_INGEST_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _create_ingest(path: Path) -> tuple[int, Path]:
    """A new private file beside ``path`` (``.NAME.RANDOM.ingest``), as ``tempfile.mkstemp`` makes one.

    Written out because the ``tempfile`` module (with the ``shutil``,
    ``random`` and compression modules it imports) adds 4 ms to the start of
    every command that writes a blob.
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.ingest")
        try:
            return os.open(tmp, _INGEST_FLAGS, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused ingest file name", str(path))


class FileWriter(WriterBase):
    """Writes beside ``path`` and renames into place on commit (atomic on POSIX).

    With ``fsync`` (the default), the data is made durable before the rename.
    So that the commit does not wait for the whole blob to reach the disk, the
    kernel is asked to start writing back every ``WRITEBACK_STEP`` bytes as
    they are written (sync_file_range, which does not wait); the final fsync
    then has little left to do (measured: 80 ms -> 5 ms for 164 MB).
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        super().__init__(str(self.path))
        self._fsync = fsync
        self._writeback = _sync_file_range() if fsync else None
        self._flushed = 0  # bytes already handed to writeback
        try:
            fd, self._tmp = _create_ingest(self.path)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._file = os.fdopen(fd, "wb", buffering=0)

    def write(self, data: bytes | memoryview) -> None:
        self._account(data)
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        if self._writeback is not None and self._size - self._flushed >= WRITEBACK_STEP:
            # Advisory: a failure here shows up, if it matters, in the fsync.
            self._writeback(self._file.fileno(), self._flushed, self._size - self._flushed, _SYNC_FILE_RANGE_WRITE)
            self._flushed = self._size

    def commit(self, size: int, digest: Digest) -> None:
        try:
            self._check(size, digest)
            if self._fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
            crashpoint("blob-committed")
        except OSError as exc:
            self.abort()
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        except Exception:
            self.abort()
            raise
        self.done = True

    def abort(self) -> None:
        self.done = True
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class NullWriter(WriterBase):
    """Discards output (benchmarks, dry runs) but still checks the commit."""

    def write(self, data: bytes | memoryview) -> None:
        self._account(data)

    def commit(self, size: int, digest: Digest) -> None:
        self._check(size, digest)
        self.done = True

    def abort(self) -> None:
        self.done = True
