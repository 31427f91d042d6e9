"""Streaming gzip decoding with ISA-L, multi-member aware.

pigz, eStargz and ``cat a.gz b.gz`` produce several gzip members back to back;
all of them are one valid stream. Anything after the last member that is not
another member is an error: a layer with trailing garbage has a digest that
hides bytes no client will ever look at.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING

from isal import isal_zlib

from ..errors import FormatError
from .detect import GZIP_MAGIC

if TYPE_CHECKING:
    from .. import accel

# Bound the output of one decompress call so a small, highly compressed input
# cannot allocate a huge buffer (a decompression bomb is stopped between calls).
MAX_OUTPUT_PER_CALL = 4 << 20


class GzipDecoder:
    """Feed compressed chunks, iterate decoded chunks; call ``finish`` at EOF."""

    def __init__(self, name: str = "input") -> None:
        self._name = name
        self._d = isal_zlib.decompressobj(31)
        self._pending = b""  # bytes after a member end, before we know a new member starts
        self._members = 0
        self._in_member = True

    def feed(self, data: bytes | memoryview) -> Iterator[bytes]:
        buf: bytes | memoryview = data
        if self._pending:
            buf = self._pending + bytes(data)
            self._pending = b""
        while buf:
            if not self._in_member:
                if len(buf) < 2:
                    self._pending = bytes(buf)
                    return
                if bytes(buf[:2]) != GZIP_MAGIC:
                    raise FormatError(f"{self._name}: garbage after gzip member {self._members}")
                self._d = isal_zlib.decompressobj(31)
                self._in_member = True
            buf = yield from self._inflate(buf)

    def _inflate(self, buf: bytes | memoryview) -> Generator[bytes, None, bytes]:
        try:
            out = self._d.decompress(buf, MAX_OUTPUT_PER_CALL)
            if out:
                yield out
            while self._d.unconsumed_tail and not self._d.eof:
                out = self._d.decompress(self._d.unconsumed_tail, MAX_OUTPUT_PER_CALL)
                if out:
                    yield out
        except isal_zlib.error as exc:  # type: ignore[misc]
            raise FormatError(f"{self._name}: corrupt gzip data in member {self._members + 1}: {exc}") from exc
        if self._d.eof:
            self._members += 1
            self._in_member = False
            return self._d.unused_data
        return b""

    def finish(self) -> None:
        """Raise unless the input ended exactly at the end of a gzip member."""
        if self._pending:
            raise FormatError(f"{self._name}: garbage after gzip member {self._members}")
        if self._in_member:
            if self._members == 0:
                raise FormatError(f"{self._name}: truncated gzip stream (no complete member)")
            raise FormatError(f"{self._name}: truncated gzip stream in member {self._members + 1}")

    @property
    def members(self) -> int:
        return self._members


def iter_gzip(read: Callable[[int], bytes | memoryview], name: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Decode a whole gzip stream pulled through ``read``."""
    decoder = GzipDecoder(name)
    while data := read(chunk):
        yield from decoder.feed(data)
    decoder.finish()


class GzipFrames:
    """A gzip stream inflated into frames of ``frame_size`` tar bytes.

    ``feed`` compressed bytes, then call ``next`` until it returns None (each
    call gives at most one full frame, so output stays bounded by a frame
    whatever the input expands to); at the end of input ``finish`` checks the
    stream ended at a member's end and returns the last, short frame. This is
    the pure-Python twin of ``transcoder._isal.GzipFrames``, which inflates
    into the frame itself instead of joining python-isal's pieces; the
    pipeline gets whichever ``accel.gzip_frames`` picks.
    """

    def __init__(self, name: str, frame_size: int) -> None:
        if frame_size <= 0:
            raise ValueError("frame_size must be positive")
        self._decoder = GzipDecoder(name)
        self._size = frame_size
        self._pieces: Iterator[bytes] = iter(())
        self._parts: list[memoryview] = []
        self._filled = 0
        self._carry = memoryview(b"")  # decoded bytes past the last full frame
        self._drained = True  # next() has returned None since the last feed

    @property
    def members(self) -> int:
        return self._decoder.members

    def feed(self, data: bytes | memoryview) -> None:
        if not self._drained:
            raise RuntimeError("feed: the previous input is not used up (call next until None)")
        self._pieces = self._decoder.feed(data)
        self._drained = False

    def next(self) -> bytes | None:
        while self._filled < self._size:
            if not self._carry:
                piece = next(self._pieces, None)
                if piece is None:
                    self._drained = True
                    return None
                self._carry = memoryview(piece)
            take = self._carry[: self._size - self._filled]
            self._carry = self._carry[len(take) :]
            self._parts.append(take)
            self._filled += len(take)
        return self._take()

    def finish(self) -> bytes:
        self._decoder.finish()
        return self._take()

    def _take(self) -> bytes:
        frame = b"".join(self._parts)  # one copy; compression wants contiguous bytes
        self._parts, self._filled = [], 0
        return frame


def iter_gzip_frames(read: Callable[[int], bytes | memoryview], frames: accel.GzipFrames,
                     chunk: int = 1 << 20) -> Iterator[bytes]:
    """Whole frames of the tar in a gzip stream pulled through ``read``; the last may be short or empty."""
    while data := read(chunk):
        frames.feed(data)
        while (frame := frames.next()) is not None:
            yield frame
    yield frames.finish()
