"""Parallel zstd encoding: the tar cut into fixed-size frames, one worker each.

``FramePool.add`` takes decoded tar pieces of any size, cuts them at every
``FRAME_SIZE`` bytes of the stream and hands each whole frame to a worker
thread; ``frames`` yields the compressed frames in stream order. Where the
cuts fall depends on the tar only, never on how it arrived or how many
workers there are, so the output is deterministic (see ``zstd``).

Memory is bounded: ``add`` blocks once ``depth`` frames are submitted and not
yet taken, so at most ``depth`` frames of input and output exist at once plus
the one being filled.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .. import allocator
from .zstd import FRAME_SIZE, ZstdParams

_END = object()


class FramePool:
    def __init__(self, params: ZstdParams, workers: int, frame_size: int = FRAME_SIZE) -> None:
        allocator.tune()  # frame-sized buffers reused from the heap, not faulted in anew
        self._frame_size = frame_size
        self._encode = _Encoder(params)
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="zstd")
        # One frame per worker in progress, one more each ready to go: the
        # workers never wait for the producer, and memory stays bounded.
        self._ready: queue.Queue[Any] = queue.Queue(2 * max(1, workers))
        self._parts: list[memoryview] = []
        self._room = frame_size
        self._submitted = 0
        self._cancelled = False

    # -- producer side -----------------------------------------------------

    def add(self, piece: bytes) -> None:
        """Append tar bytes; submits every frame they complete (may block)."""
        view = memoryview(piece)
        while len(view) >= self._room:
            self._parts.append(view[: self._room])
            view = view[self._room :]
            self._submit()
        if view:
            self._parts.append(view)
            self._room -= len(view)

    def close(self) -> None:
        """End of the tar: submit the last, short frame (an empty tar is one empty frame)."""
        if self._parts or not self._submitted:
            self._submit()
        self._ready.put(_END)

    def fail(self, exc: BaseException) -> None:
        """The producer failed: ``frames`` raises ``exc`` after the frames before it."""
        self._ready.put(exc)

    def _submit(self) -> None:
        if self._cancelled:
            raise Cancelled("frame encoding cancelled")
        frame = b"".join(self._parts)  # one copy; compression wants contiguous bytes
        self._parts, self._room = [], self._frame_size
        self._submitted += 1
        self._ready.put(self._pool.submit(self._encode, frame))

    # -- consumer side -----------------------------------------------------

    def frames(self) -> Iterator[bytes]:
        """Compressed frames in stream order, until ``close`` (or the producer's error)."""
        while True:
            item = self._ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            future: Future[bytes] = item
            yield future.result()

    def cancel(self, producer: threading.Thread) -> None:
        """The consumer failed: stop ``producer`` (its next ``add`` raises) and drop queued frames."""
        self._cancelled = True
        while producer.is_alive():
            self._discard(timeout=0.05)
        while self._discard(timeout=None):
            pass

    def _discard(self, timeout: float | None) -> bool:
        """Drop one queued item (waiting up to ``timeout``; None: not at all); False if none."""
        try:
            item = self._ready.get(timeout=timeout) if timeout else self._ready.get_nowait()
        except queue.Empty:
            return False
        if isinstance(item, Future):
            item.cancel()
        return True

    def __enter__(self) -> FramePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Encoder:
    """Compresses one frame with this thread's libzstd context (contexts are not thread-safe)."""

    def __init__(self, params: ZstdParams) -> None:
        self._params = params
        self._local = threading.local()

    def __call__(self, frame: bytes | memoryview) -> bytes:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = self._params.frame_compressor()
        return cctx.compress(frame)  # releases the GIL for the whole frame


def compress_frames(data: bytes | memoryview, params: ZstdParams, workers: int = 1, frame_size: int = FRAME_SIZE) -> bytes:
    """The pipeline's output for tar bytes held in memory (tests, benchmarks, small blobs)."""
    view = memoryview(data)
    frames = [view[i : i + frame_size] for i in range(0, len(view), frame_size)] or [view]
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="zstd") as pool:
        return b"".join(pool.map(_Encoder(params), frames))


class Cancelled(Exception):
    """Raised in the producer once the consumer has given up."""
