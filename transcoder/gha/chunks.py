"""Streamed, parallel, bounded upload of a byte stream in fixed-size chunks.

The transcoder writes small pieces; this cuts them into chunks and hands each
to a sender on a worker thread while the next one fills, so the upload
overlaps the transcode. At most ``in_flight`` chunks are queued or being sent;
``write`` blocks beyond that (back-pressure), so memory stays at
``(in_flight + 1) x chunk_size`` whatever the blob size. A sender's exception
is re-raised in the writer's thread at the next ``write`` or at ``finish``.

The first chunk is held back until a second one starts: a blob that fits in
one chunk is sent with ``single`` (one request) instead of ``send``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

Chunk = bytes | bytearray  # a chunk handed to a sender is never touched again by the pipe
Send = Callable[[int, int, Chunk], None]  # (index, offset, data)


class ChunkPipe:
    def __init__(self, send: Send, single: Callable[[Chunk], None], *, chunk_size: int, in_flight: int, name: str) -> None:
        if chunk_size < 1 or in_flight < 1:
            raise ValueError("chunk_size and in_flight must be positive")
        self._send = send
        self._single = single
        self.chunk_size = chunk_size
        self._slots = threading.BoundedSemaphore(in_flight)
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix=f"upload-{name}")
        self._buf = bytearray()
        self._held: Chunk | None = None  # the first full chunk, until we know there is more
        self._futures: list[Future[None]] = []
        self._error: BaseException | None = None
        self.count = 0  # chunks handed out
        self.offset = 0  # bytes handed out
        self.closed = False

    def write(self, data: bytes | memoryview) -> None:
        self._raise_pending()
        view = memoryview(data)
        while view:
            room = self.chunk_size - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            if len(self._buf) == self.chunk_size:
                self._cut()

    def finish(self) -> int:
        """Send what is left, wait for every chunk; returns the number of chunks (0 = sent single)."""
        try:
            if self.count == 0 and len(self._held or b"") + len(self._buf) <= self.chunk_size:
                self._single(self._held or self._buf)
                return 0
            self._release_held()
            if self._buf:
                last, self._buf = self._buf, bytearray()
                self._submit(last)
            for fut in self._futures:
                fut.result()
            return self.count
        finally:
            self.close()

    def close(self) -> None:
        """Stop: drop queued chunks, wait for the ones in progress. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for fut in self._futures:
            fut.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._buf = bytearray()
        self._held = None

    def _cut(self) -> None:
        chunk, self._buf = self._buf, bytearray()  # handed over, not copied
        if self._held is None and self.count == 0:
            self._held = chunk
            return
        self._release_held()
        self._submit(chunk)

    def _release_held(self) -> None:
        if self._held is not None and self.count == 0:
            held, self._held = self._held, b""
            self._submit(held)

    def _submit(self, chunk: Chunk) -> None:
        index, offset = self.count, self.offset
        self.count += 1
        self.offset += len(chunk)
        while not self._slots.acquire(timeout=0.5):
            self._raise_pending()
        try:
            fut = self._pool.submit(self._run, index, offset, chunk)
        except BaseException:
            self._slots.release()
            raise
        self._futures.append(fut)
        self._futures = [f for f in self._futures if not f.done() or f.exception() is not None]

    def _run(self, index: int, offset: int, chunk: Chunk) -> None:
        try:
            self._send(index, offset, chunk)
        except BaseException as exc:
            self._error = self._error or exc
            raise
        finally:
            self._slots.release()

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error
