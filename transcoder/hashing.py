"""Hashing a stream on its way somewhere else, once.

Every pipeline hashes three streams per layer: the source, the tar (the
diffID) and the output. With the x86 SHA extensions (``accel.NATIVE_SHA256``)
two SHA-256 streams hashed together by :func:`update_pair` cost about one
(3.33 GB/s for the pair against 1.81 GB/s for one stream with hashlib, on
this project's 2-vCPU AMD EPYC), so the pipeline's consumer hashes each
frame's tar together with the source bytes read for it and then with the
previous frame's output (``transcode._write_frames``; the decode thread
leaves the source unhashed, ``SourceReader(defer=True)``, which also takes
that work off the one serial stage). The native hasher also clears the vector
registers' upper halves before hashing: in the decode thread, after ISA-L's
AVX code, hashlib's SHA-256 runs a third slower (measured: 243 MiB in 189 ms
against 141 ms), the native one at full speed. Measured on the three-layer
corpus image: 4.38 -> 4.18 CPU-s, 2.30 -> 2.18 s.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Protocol

from . import accel

if TYPE_CHECKING:
    from .digest import Digest

_MODULE = accel.native_sha256()
_NATIVE = _MODULE.Sha256 if _MODULE is not None else None


def new_sha256() -> Any:
    """A SHA-256 hasher with hashlib's interface: the native one where it is used, else hashlib's."""
    return _NATIVE() if _NATIVE is not None else hashlib.sha256()


def update_pair(a: Any, data_a: bytes | memoryview, b: Any, data_b: bytes | memoryview) -> None:
    """``a.update(data_a)`` and ``b.update(data_b)``: interleaved, in about the time of
    the longer one, when both are native hashers from :func:`new_sha256`."""
    if _MODULE is not None and type(a) is type(b) is _NATIVE and a is not b:
        _MODULE.update_pair(a, data_a, b, data_b)
    else:
        a.update(data_a)
        b.update(data_b)


class _HashingWriter(Protocol):
    hashes: bool

    def written_digest(self) -> Digest: ...

    def write_along(self, data: bytes, hasher: Any, other: bytes | memoryview) -> None: ...


class _Writer(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...


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
        self._hash = None if self._writer else new_sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        if self._hash is not None:
            self._hash.update(data)
        self.size += len(data)

    def update_along(self, data: bytes | memoryview, hasher: Any, other: bytes | memoryview) -> None:
        """``update(data)``, hashed in one pass with ``other`` into ``hasher``
        (a source's digest, which hashes for itself: no tee)."""
        assert self._hash is not None
        update_pair(self._hash, data, hasher, other)
        self.size += len(data)

    def write_along(self, writer: _Writer, data: bytes, hasher: Any = None, other: bytes | memoryview = b"") -> None:
        """Give ``data`` to ``writer`` (the one this digest was made for) and count it,
        hashing it in one pass with ``other`` into ``hasher`` (None: ``data`` alone)."""
        if hasher is None:
            self.update(data)
            writer.write(data)
            return
        if self._writer is not None:
            self._writer.write_along(data, hasher, other)
        else:
            assert self._hash is not None
            update_pair(self._hash, data, hasher, other)
            writer.write(data)
        self.size += len(data)

    def value(self) -> Digest:
        if self._writer is not None:
            return self._writer.written_digest()
        from .digest import Digest

        assert self._hash is not None
        return Digest.from_hasher(self._hash)
