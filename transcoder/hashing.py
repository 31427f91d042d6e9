"""Hashing a stream on its way somewhere else, once."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .digest import Digest


class _HashingWriter(Protocol):
    hashes: bool

    def written_digest(self) -> Digest: ...


class StreamDigest:
    """Size and sha256 of a stream that is also given to ``writer``.

    A writer that hashes what it is given (``hashes`` true, as every
    ``writers.WriterBase`` that does) already computes this digest, so it is
    taken from the writer instead of hashing every byte twice. Nothing here
    loads ``transcoder.digest`` before ``value`` is asked for: the decode side
    starts before the rest of the program is loaded (``transcoder.decode``).
    """

    def __init__(self, writer: object | None = None) -> None:
        hashes = getattr(writer, "hashes", False) is True and hasattr(writer, "written_digest")
        self._writer: _HashingWriter | None = writer if hashes else None  # type: ignore[assignment]
        self._hash = None if self._writer else hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        if self._hash is not None:
            self._hash.update(data)
        self.size += len(data)

    def value(self) -> Digest:
        if self._writer is not None:
            return self._writer.written_digest()
        from .digest import Digest

        assert self._hash is not None
        return Digest.from_hasher(self._hash)
