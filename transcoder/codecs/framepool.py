"""Parallel zstd encoding: the tar cut into fixed-size frames, one thread each.

``FramePool.add`` takes decoded tar pieces of any size, cuts them at every
``FRAME_SIZE`` bytes of the stream and queues each whole frame for
compression; ``frames`` yields each frame and the future of its compression in stream
order. Where the cuts fall depends on the tar only, never on how it arrived
or which thread compressed it, so the output is deterministic (see ``zstd``).

Threads: of ``workers`` compressing threads, ``workers - 1`` are dedicated and
the producer (the decode thread) is the last: whenever every dedicated
worker already has two frames waiting, the producer compresses the oldest
waiting frame itself before decoding more, and every waiting frame once it
has decoded the last. On two cores that keeps exactly two threads busy,
decode+some zstd and zstd, instead of time-slicing three over two cores
(measured: more libzstd CPU per byte, longer wall), and the split settles
wherever the two halves balance. Two waiting frames, not one: while the
producer compresses a frame and then decodes the next, a dedicated thread
gets through more than one frame, and with only one in reserve it ran dry
about ten times per layer (measured: idle core time 0.55 -> 0.34 s on a
525 MB layer).

Memory is bounded: the producer blocks once ``3 x workers`` frames are
submitted and not yet taken by the consumer, so at most that many frames of
input and output exist at once plus the one being filled.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

from .. import allocator
from .constants import FRAME_SIZE
from .zstd import ZstdParams

_END = object()
IN_FLIGHT = 3  # frames submitted and not yet consumed, per worker: the memory bound


_Job = tuple["_Encoder", bytes, "Compression"]


class Compression:
    """One frame's compression: the result the compressing thread leaves for the consumer.

    The four calls of ``concurrent.futures.Future`` the pool needs; that
    module and the ``logging`` it imports would add 5 ms to the start of
    every command that converts a blob.
    """

    __slots__ = ("_done", "_lock", "_state", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._state = _PENDING
        self._value: bytes | BaseException | None = None

    def claim(self) -> bool:
        """Called by the thread about to compress the frame; False if it was cancelled first."""
        with self._lock:
            if self._state != _PENDING:
                return False
            self._state = _RUNNING
            return True

    def cancel(self) -> bool:
        """Drop a frame nobody has started on; False if it is already running or done."""
        with self._lock:
            if self._state != _PENDING:
                return self._state == _CANCELLED
            self._state = _CANCELLED
        self._done.set()
        return True

    def finish(self, value: bytes | BaseException) -> None:
        self._value = value
        self._state = _FINISHED
        self._done.set()

    def result(self) -> bytes:
        """The compressed frame, once ready; raises what compressing it raised, or ``Cancelled``."""
        self._done.wait()
        if self._state == _CANCELLED:
            raise Cancelled("frame encoding cancelled")
        if isinstance(self._value, BaseException):
            raise self._value
        assert self._value is not None
        return self._value


_PENDING, _RUNNING, _CANCELLED, _FINISHED = range(4)


class EncoderThreads:
    """Dedicated compressing threads and the frames waiting for them.

    One group serves one pipeline, or several running at once (an image's
    layers): then the cores are shared by frames, not split by layer, and a
    layer left alone at the end still has every thread.
    """

    def __init__(self, dedicated: int) -> None:
        self._waiting: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        # A producer helps once every dedicated thread has two frames waiting.
        self.help_at = 2 * dedicated + 1
        self._threads = [threading.Thread(target=self._work, name=f"zstd-{i}", daemon=True) for i in range(dedicated)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: _Job) -> None:
        with self._cond:
            self._waiting.append(job)
            self._cond.notify()

    def help(self, finished: bool = False) -> None:
        """Run in a producer: compress the oldest waiting frames while the threads have enough,
        or, once the producer has ``finished`` decoding, every waiting frame (its core is free)."""
        at = 1 if finished else self.help_at
        while True:
            with self._cond:
                if len(self._waiting) < at:
                    return
                job = self._waiting.popleft()
            _run(*job)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return
                job = self._waiting.popleft()
            _run(*job)

    def close(self) -> None:
        """Cancel the frames still waiting and end the threads."""
        with self._cond:
            self._closed = True
            for _encode, _frame, compression in self._waiting:
                compression.cancel()
            self._waiting.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> EncoderThreads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run(encode: _Encoder, frame: bytes, compression: Compression) -> None:
    if not compression.claim():
        return
    try:
        value: bytes | BaseException = encode(frame)
    except BaseException as exc:
        value = exc
    compression.finish(value)


class FramePool:
    def __init__(self, params: ZstdParams, workers: int, frame_size: int = FRAME_SIZE,
                 threads: EncoderThreads | None = None) -> None:
        """``workers`` compressing threads counting the producer, or ``threads`` shared with other pools."""
        allocator.tune()  # frame-sized buffers reused from the heap, not faulted in anew
        self._frame_size = frame_size
        self._encode = _Encoder(params)
        workers = max(1, workers)
        # Frames and their compressions in stream order, for the consumer; its bound is the memory bound.
        self._ready: queue.Queue[Any] = queue.Queue(IN_FLIGHT * workers)
        self._own = threads is None
        self._threads = EncoderThreads(workers - 1) if threads is None else threads
        self._parts: list[memoryview] = []
        self._room = frame_size
        self._submitted = 0
        self._cancelled = False
        # Source bytes the producer read and left unhashed, carried with the next
        # frame to the consumer; what follows the last frame, once frames() ends.
        self._source: list[bytes | memoryview] = []
        self.leftover_source: list[bytes | memoryview] = []

    @property
    def frame_size(self) -> int:
        return self._frame_size

    # -- producer side -----------------------------------------------------

    def add(self, piece: bytes, source: list[bytes | memoryview] | None = None) -> None:
        """Append tar bytes; submits every frame they complete (may block).
        A piece that is exactly one whole frame, at a frame boundary, is
        submitted as it is, without a copy. ``source``: unhashed source bytes
        read for it, passed on with the next frame."""
        if source:
            self._source.extend(source)
        if len(piece) == self._room == self._frame_size and isinstance(piece, bytes):
            self._submit(whole=piece)
            return
        view = memoryview(piece)
        while len(view) >= self._room:
            self._parts.append(view[: self._room])
            view = view[self._room :]
            self._submit()
        if view:
            self._parts.append(view)
            self._room -= len(view)

    def close(self, source: list[bytes | memoryview] | None = None) -> None:
        """End of the tar: submit the last, short frame (an empty tar is one empty frame)."""
        if source:
            self._source.extend(source)
        if self._parts or not self._submitted:
            self._submit()
        self.leftover_source, self._source = self._source, []
        self._ready.put(_END)
        self._threads.help(finished=True)  # the tail: no core idles while frames wait

    def fail(self, exc: BaseException) -> None:
        """The producer failed: ``frames`` raises ``exc`` after the frames before it."""
        self._ready.put(exc)

    def _submit(self, whole: bytes | None = None) -> None:
        if self._cancelled:
            raise Cancelled("frame encoding cancelled")
        frame = whole if whole is not None else b"".join(self._parts)  # compression wants contiguous bytes
        self._parts, self._room = [], self._frame_size
        self._submitted += 1
        compression = Compression()
        source, self._source = self._source, []
        self._ready.put((frame, compression, source))  # blocks while too many frames are in flight
        self._threads.submit((self._encode, frame, compression))
        self._threads.help()

    # -- consumer side -----------------------------------------------------

    def frames(self) -> Iterator[tuple[bytes, Compression, list[bytes | memoryview]]]:
        """(frame, its compression, the unhashed source bytes read for it) in stream
        order, until ``close`` (or the producer's error); then ``leftover_source``
        holds what was read after the last frame. The frame comes as soon as it
        is submitted, so the consumer can hash it while it is still being
        compressed (the last frame's hash then overlaps its compression instead
        of following it)."""
        while True:
            item = self._ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

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
        if isinstance(item, tuple):
            item[1].cancel()
        return True

    def __enter__(self) -> FramePool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._own:
            self._threads.close()


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
    from concurrent.futures import ThreadPoolExecutor  # here: the pipeline itself never needs it

    view = memoryview(data)
    frames = [view[i : i + frame_size] for i in range(0, len(view), frame_size)] or [view]
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="zstd") as pool:
        return b"".join(pool.map(_Encoder(params), frames))


class Cancelled(Exception):
    """Raised in the producer once the consumer has given up."""
