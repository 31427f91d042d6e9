"""The pipeline's decode side: read the source, hash it, decode it into frames.

This module loads only what decoding needs (hashlib, ISA-L and the gzip
framer), not ``zstandard``, the variant table or the data classes, so that a
:class:`HeadStart` can begin decoding while the rest of the program is still
loading. ``transcode.transcode_stream`` runs :func:`decode_thread` as the
producer of its frame pool.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol

from . import accel
from .codecs.detect import Format, detect
from .codecs.gzip import iter_gzip, iter_gzip_frames
from .errors import FormatError, InputError, SizeLimitExceeded
from .faults import crashpoint
from .hashing import StreamDigest

# Source bytes per read. 256 KiB of gzip decodes to ~1 MiB of tar, which
# ISA-L writes straight into its frame (``transcoder._isal``; the Python twin
# copies it in while it is still in the core's cache).
CHUNK = 256 << 10

Progress = Callable[[int], None]


class SourceReader:
    """Reads the source, hashing and counting every byte exactly once.

    With ``defer`` (and no tee), the bytes read are kept instead of hashed:
    :meth:`take_pending` hands them to the pipeline, whose consumer hashes
    them into ``digest`` in one pass with the tar (``transcode._write_frames``).
    """

    def __init__(self, stream: BinaryIO, progress: Progress | None = None, tee: object | None = None,
                 defer: bool = False) -> None:
        self._stream = stream
        # The decoders take pieces of any length and any buffer: read_view and
        # read1 hand over what one read brings (a registry download's chunks,
        # or views of them, without another copy).
        self._read: Callable[[int], bytes | memoryview] = (
            getattr(stream, "read_view", None) or getattr(stream, "read1", None) or stream.read)
        self.progress = progress
        self._reported = 0
        self._tee = tee
        # A tee that hashes what it is given hashes the source for us.
        self.digest = StreamDigest(tee)
        self._pending: list[bytes | memoryview] | None = [] if defer and tee is None else None
        self._size = 0
        self._head = b""

    @property
    def size(self) -> int:
        return self._size

    def take_pending(self) -> list[bytes | memoryview]:
        """The bytes read and not yet hashed (deferred), in order; they are the caller's to hash now."""
        if not self._pending:
            return []
        out, self._pending = self._pending, []
        return out

    def peek(self, n: int) -> bytes:
        while len(self._head) < n:
            more = self._stream.read(n - len(self._head))
            if not more:
                break
            self._head += more
        return self._head

    def read_bytes(self, n: int) -> bytes:
        """:meth:`read` for a consumer that needs bytes (a view is copied)."""
        data = self.read(n)
        return data if isinstance(data, bytes) else bytes(data)

    def read(self, n: int) -> bytes | memoryview:
        data: bytes | memoryview
        if self._head:
            data, self._head = self._head, b""
        else:
            data = self._read(n)
        if data:
            self._size += len(data)
            if self._pending is not None:
                self._pending.append(data)
            else:
                self.digest.update(data)
            if self._tee is not None:
                self._tee.write(data)  # type: ignore[attr-defined]
            if self.progress is not None:
                # Everything since the last report: a callback set after reading
                # began (a HeadStart's) first hears of all bytes read so far.
                self.progress(self.size - self._reported)
                self._reported = self.size
        return data


class Decoded:
    """What the decode thread learned, read by the caller after the join."""

    __slots__ = ("fmt", "tar_size")

    def __init__(self) -> None:
        self.fmt = Format.UNKNOWN
        self.tar_size = 0


def decoded_chunks(src: SourceReader, fmt: Format, name: str, frame_size: int | None) -> Iterator[bytes]:
    """The tar in pieces; for gzip and a ``frame_size``, in whole frames of that size (the last one short)."""
    if fmt is Format.GZIP:
        if frame_size is not None:
            return iter_gzip_frames(src.read, accel.gzip_frames(name, frame_size), CHUNK)
        return iter_gzip(src.read, name, CHUNK)
    if fmt is Format.ZSTD:
        from .codecs.zstd import iter_zstd

        return iter_zstd(src.read_bytes, name)
    return iter(lambda: src.read_bytes(CHUNK), b"")


def open_decoder(src: SourceReader, name: str, frame_size: int | None = None) -> tuple[Format, Iterator[bytes]]:
    head = src.peek(512)
    if not head:
        raise FormatError(f"{name}: empty input")
    fmt = detect(head)
    if fmt is Format.UNKNOWN:
        raise FormatError(f"{name}: not gzip, zstd or tar (starts with {head[:4].hex()})")
    return fmt, decoded_chunks(src, fmt, name, frame_size)


class Producer(Protocol):
    """Where the decode thread puts the tar: a ``codecs.framepool.FramePool``, or a HeadStart's hold.
    ``source``: the source bytes read since the last call, not yet hashed (SourceReader.take_pending)."""

    @property
    def frame_size(self) -> int: ...

    def add(self, piece: bytes, source: list[bytes | memoryview] | None = None) -> None: ...

    def close(self, source: list[bytes | memoryview] | None = None) -> None: ...

    def fail(self, exc: BaseException) -> None: ...


def decode_thread(src: SourceReader, name: str, max_size: int | None, pool: Producer, info: Decoded) -> None:
    """Producer: always ends the pool's stream, with ``close`` or ``fail``."""
    try:
        info.fmt, chunks = open_decoder(src, name, pool.frame_size)
        for chunk in chunks:
            info.tar_size += len(chunk)
            if max_size is not None and info.tar_size > max_size:
                raise SizeLimitExceeded(f"{name}: decoded size exceeds --max-size {max_size} bytes")
            crashpoint("decode")
            pool.add(chunk, src.take_pending())
        pool.close(src.take_pending())
    except BaseException as exc:
        pool.fail(exc)


class HeadStartCancelled(Exception):
    """Raised in a HeadStart's decode thread once nobody will take its frames."""


# Held after the frames when the stream ended before a pool was attached.
_CLOSED = object()


class _Hold:
    """A HeadStart's producer: holds whole frames, then the stream's end (closed or
    its error), until a pool is attached; from then on passes everything on."""

    def __init__(self, name: str, frame_size: int, limit: int) -> None:
        self._name, self._frame_size, self._limit = name, frame_size, max(1, limit)
        self._held: list[object] = []  # (frame, source), then at most one (_CLOSED, source) or exception
        self._pool: Producer | None = None
        self._cancelled = False
        self._cond = threading.Condition()

    @property
    def frame_size(self) -> int:
        return self._frame_size

    @property
    def taken(self) -> bool:
        with self._cond:
            return self._pool is not None

    # -- the decode thread's side -------------------------------------------------

    def add(self, piece: bytes, source: list[bytes | memoryview] | None = None) -> None:
        with self._cond:
            while self._pool is None and len(self._held) >= self._limit and not self._cancelled:
                self._cond.wait()
            if self._cancelled:
                raise HeadStartCancelled(f"{self._name}: decoding cancelled")
        self._put((piece, source))

    def close(self, source: list[bytes | memoryview] | None = None) -> None:
        self._put((_CLOSED, source))

    def fail(self, exc: BaseException) -> None:
        self._put(exc)

    def _put(self, item: object) -> None:
        with self._cond:
            pool = self._pool
            if pool is None:
                self._held.append(item)
                return
        _deliver(pool, item)  # after attach: the pool itself (what was held went first, under the lock)

    # -- the pipeline's side ----------------------------------------------------

    def attach(self, pool: Producer) -> None:
        if pool.frame_size != self._frame_size:
            raise ValueError(f"{self._name}: decoding began for {self._frame_size}-byte frames, "
                             f"the pool takes {pool.frame_size}")
        with self._cond:
            if self._pool is not None or self._cancelled:
                raise RuntimeError(f"{self._name}: this head start is already taken or cancelled")
            # Under the lock, so the decode thread's next frame waits for these:
            # the order is the stream's. Two held frames neither fill a pool's
            # queue nor make this thread compress (codecs.framepool).
            for item in self._held:
                _deliver(pool, item)
            self._held.clear()
            self._pool = pool
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            if self._pool is not None:
                raise RuntimeError(f"{self._name}: a head start taken by a pipeline is cancelled through it")
            self._cancelled = True
            self._held.clear()
            self._cond.notify_all()


def _deliver(pool: Producer, item: object) -> None:
    if isinstance(item, BaseException):
        pool.fail(item)
        return
    piece: object
    source: list[bytes | memoryview] | None
    piece, source = item  # type: ignore[misc]  # (a frame or _CLOSED, its source bytes)
    if piece is _CLOSED:
        pool.close(source)
    else:
        pool.add(piece, source)  # type: ignore[arg-type]  # a frame


class HeadStart:
    """Decoding that begins before the pipeline exists.

    A conversion from the command line spends its first 30-40 ms loading the
    encoder side (``zstandard``, the variant table, data classes) on one core
    while the other idles, and then, in a pipeline started from nothing, the
    time of one frame's decode before any compression can begin. A HeadStart
    runs :func:`decode_thread` at once, on its own thread, holding at most
    ``hold`` whole frames; ``transcode_stream`` then takes it over
    (:meth:`attach`): the held frames go to the compressors at once and the
    same thread goes on decoding into the pool. So the loading overlaps the
    decode, and the first compression starts as soon as the pool exists.

    The decode is the pipeline's own: same reader, hashes, size bound and
    errors (an error is held, and raised by the pipeline after the frames
    before it). :meth:`close` ends it if no pipeline took it (a variant-table
    hit, a bad option).
    """

    def __init__(self, stream: BinaryIO, *, name: str, frame_size: int, max_size: int | None = None,
                 path: str | None = None, hold: int = 2, owned: bool = False) -> None:
        self.started = time.perf_counter()
        self.name, self.path, self.max_size = name, path, max_size
        self._stream, self._owned = stream, owned
        self.reader = SourceReader(stream, defer=True)
        self.info = Decoded()
        self._hold = _Hold(name, frame_size, hold)
        self.thread = threading.Thread(target=decode_thread, args=(self.reader, name, max_size, self._hold, self.info),
                                       name="decode", daemon=True)
        self.thread.start()

    @classmethod
    def begin(cls, src: str, *, frame_size: int, max_size: int | None = None) -> HeadStart:
        """Start decoding the file ``src`` (``-``: stdin), named as ``blobs.convert_blob`` names it."""
        if src == "-":
            return cls(sys.stdin.buffer, name="stdin", frame_size=frame_size, max_size=max_size)
        try:
            stream = open(src, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise InputError(f"{src}: {exc.strerror or exc}") from exc
        return cls(stream, name=src, frame_size=frame_size, max_size=max_size, path=src, owned=True)

    def attach(self, pool: Producer, progress: Progress | None = None) -> None:
        """Hand the held frames, and from now on every frame, to ``pool``."""
        self.reader.progress = progress
        self._hold.attach(pool)

    def cancel(self) -> None:
        """Drop what was decoded; the thread stops at its next frame. Not joined:
        a read from a pipe may wait for its writer (closing the stream ends it)."""
        self._hold.cancel()

    def close(self) -> None:
        """Cancel the decode unless a pipeline took it, and close the stream if ``begin`` opened it."""
        if not self._hold.taken:
            self._hold.cancel()
        if self._owned:
            self._stream.close()
