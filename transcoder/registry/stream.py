"""A blob read from a registry as a file: ranged, and resumed where it broke.

The bytes are passed through exactly as the server sent them (no transparent
decompression), because they are hashed against the blob's digest by the
caller. A connection that drops mid-blob is reopened with a ``Range`` request
from the byte where it stopped, so a long download survives a reset.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import httpx

from ..deadline import Deadline, scope
from ..errors import TransientError

READ_CHUNK = 1 << 20
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


class BlobReader(io.RawIOBase):
    """Reads ``length`` bytes (None: to the end) of a blob from ``offset``."""

    def __init__(self, opener: Opener, name: str, offset: int = 0, length: int | None = None) -> None:
        super().__init__()
        self._opener = opener
        self.name = name
        self._start = offset
        self._length = length
        self._pos = 0  # bytes handed out so far
        self._resumes = 0
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
        with scope(self._deadline):
            response = self._opener(first, last)
        self._response = response
        if response.status_code == 416:
            self._chunks = iter(())
            return
        # No chunk size: httpx would hold bytes back to fill one, and a reset
        # would lose them; as they arrive, every byte received counts.
        self._chunks = response.iter_raw()
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
                self._pending = memoryview(chunk)[count:]
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

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._length is not None:
            room = self._length - self._pos
            if room <= 0:
                return 0
            buffer = memoryview(buffer)[:room]
        if not self._pending:
            self._pending = memoryview(self._next_chunk())
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._pos += n
        return n

    def _close_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def close(self) -> None:
        self._close_response()
        super().close()


def open_reader(opener: Opener, name: str, offset: int = 0, length: int | None = None) -> io.BufferedReader:
    return io.BufferedReader(BlobReader(opener, name, offset, length), buffer_size=READ_CHUNK)


__all__ = ["BlobReader", "open_reader"]
