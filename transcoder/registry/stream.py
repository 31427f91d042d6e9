"""A blob read from a registry as a file: ranged, and resumed where it broke.

The bytes are passed through exactly as the server sent them (no transparent
decompression), because they are hashed against the blob's digest by the
caller. A connection that drops mid-blob is reopened with a ``Range`` request
from the byte where it stopped, so a long download survives a reset.

The reader is buffered by the chunks it receives: ``read(n)`` returns ``n``
bytes unless the blob ends, and ``read1(n)`` returns what one chunk holds,
the chunk object itself when it fits; ``read_view(n)`` returns a view of
part of a chunk instead of a copy, so a consumer that takes any length and
any buffer (the transcoder's decoder) gets the bytes without another copy.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import httpx

from ..deadline import Deadline, scope
from ..errors import TransientError
from ..httpclient import direct_body, heads_apart

RESUMES = 3
# A response must keep coming: DOWNLOAD_ALLOWANCE seconds plus one per
# DOWNLOAD_MIN_RATE bytes received (a slow-loris server is cut off, a slow
# but healthy download of any size passes). Only time spent waiting counts.
DOWNLOAD_ALLOWANCE = 60.0
DOWNLOAD_MIN_RATE = 64 << 10

# opener(start, end) -> a streaming response for bytes [start, end] (end None: to
# the end); 206 if the server honoured the range, 200 if it sent the whole blob,
# 416 if the range starts at or past the end.
Opener = Callable[[int, "int | None"], httpx.Response]


class BlobReader(io.BufferedIOBase):
    """Reads ``length`` bytes (None: to the end) of a blob from ``offset``."""

    def __init__(self, opener: Opener, name: str, offset: int = 0, length: int | None = None) -> None:
        super().__init__()
        self._opener = opener
        self.name = name
        self._start = offset
        self._length = length
        self._pos = 0  # bytes handed out so far
        self._resumes = 0
        self._chunk = b""  # the received chunk that _pending is the rest of
        self._pending = memoryview(b"")
        self._response: httpx.Response | None = None
        self._chunks: Iterator[bytes] | None = None
        self._open()

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        # Each request (and resume) gets its own deadline.
        self._deadline = Deadline(f"{self.name}: download", DOWNLOAD_ALLOWANCE, min_rate=DOWNLOAD_MIN_RATE)
        first = self._start + self._pos
        last = None if self._length is None else self._start + self._length - 1
        if last is not None and first > last:
            self._chunks = iter(())
            return
        with scope(self._deadline), heads_apart():
            response = self._opener(first, last)
        self._response = response
        if response.status_code == 416:
            self._chunks = iter(())
            return
        # Read from the connection itself where it can be (plain HTTP), else
        # through httpx; either way with no chunk size: httpx would hold bytes
        # back to fill one, and a reset would lose them.
        self._chunks = direct_body(response) or response.iter_raw()
        if response.status_code == 200 and first:
            self._skip(first)  # the server ignored Range: drop what precedes it

    def _skip(self, count: int) -> None:
        assert self._chunks is not None
        while count > 0:
            with scope(self._deadline):
                chunk = next(self._chunks, b"")
            if not chunk:
                raise TransientError(f"{self.name}: the server sent fewer bytes than the requested offset")
            if len(chunk) > count:
                self._chunk, self._pending = chunk, memoryview(chunk)[count:]
                return
            count -= len(chunk)

    def _next_chunk(self) -> bytes:
        assert self._chunks is not None
        while True:
            try:
                with scope(self._deadline):
                    return next(self._chunks, b"")
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout) as exc:
                if self._resumes >= RESUMES:
                    raise TransientError(f"{self.name}: download broke off after {self._pos} bytes "
                                         f"({type(exc).__name__})") from exc
                self._resumes += 1
                self._close_response()
                self._open()

    def _fill(self, want: int) -> int:
        """Make bytes pending unless the blob is done; how many may be handed out now (at most ``want``, -1: all)."""
        room = want
        if self._length is not None:
            left = self._length - self._pos
            if left <= 0:
                return 0
            room = left if want < 0 else min(want, left)
        if not self._pending:
            self._chunk = self._next_chunk()
            self._pending = memoryview(self._chunk)
        return len(self._pending) if room < 0 else min(room, len(self._pending))

    def _take(self, n: int) -> memoryview:
        piece, self._pending = self._pending[:n], self._pending[n:]
        self._pos += n
        return piece

    def read1(self, size: int = -1) -> bytes:
        piece = self.read_view(size)
        return piece if isinstance(piece, bytes) else bytes(piece)  # the whole chunk as received: no copy

    def read_view(self, size: int = -1) -> bytes | memoryview:
        """Up to ``size`` bytes of one received chunk: the chunk itself when
        they are all of it, else a view of it (``read1`` copies that view).
        Chunks are immutable, so the view may be kept (the transcoder keeps
        the source's pieces until its consumer hashes them)."""
        n = self._fill(size)
        if n == len(self._chunk) and len(self._pending) == n:
            self._take(n)
            return self._chunk
        return self._take(n)

    def read(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        parts: list[bytes] = []
        got = 0
        while size < 0 or got < size:
            piece = self.read1(size - got if size >= 0 else -1)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readinto1(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        n = self._fill(len(view))
        view[:n] = self._take(n)
        return n

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        got = 0
        while got < len(view):
            n = self.readinto1(view[got:])
            if not n:
                break
            got += n
        return got

    def _close_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def close(self) -> None:
        self._close_response()
        super().close()


def open_reader(opener: Opener, name: str, offset: int = 0, length: int | None = None) -> BlobReader:
    return BlobReader(opener, name, offset, length)


__all__ = ["BlobReader", "open_reader"]
