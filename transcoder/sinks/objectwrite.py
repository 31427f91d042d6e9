"""Blob writes into an object store (:mod:`transcoder.sinks.objectstore`).

A blob is written in parts as it arrives (several parts in flight, memory
bounded by ``(concurrency + 1) x part size``). Where it goes depends on what
is known when the writer opens:

* the whole blob fits in the first part: one create-only put at commit;
* the caller passed its digest as ``key_hint`` (copies, canonical blobs):
  parts go to an upload on the final key, which stays invisible until a
  create-only completion at commit;
* otherwise (transcoder output, digest known only at the end): parts go to
  an upload under ``ingest/``, completed at commit, then published by a
  server-side create-only copy to the final key and removed. No byte crosses
  the client's network twice.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

from ..digest import Digest
from ..errors import DigestMismatch, StoreError, TranscoderError
from ..faults import crashpoint
from ..writers import WriterBase
from .base import as_digest

if TYPE_CHECKING:
    from .objectstore import ObjectSink, Upload

log = logging.getLogger(__name__)

# Parts grow so that a blob of any size fits the services' part-count limits
# (S3: 10,000 parts; Azure: 50,000 blocks) while small blobs use small parts.
PARTS_PER_SIZE_STEP = 1000


class ObjectWriter(WriterBase):
    """Streams a blob into an object store in parts; see the module docstring."""

    def __init__(self, sink: ObjectSink, hint: Digest | None) -> None:
        super().__init__(f"{sink.location}: blob")
        self._sink, self._store, self._hint = sink, sink.store, hint
        self._buf = bytearray()
        self._key = ""
        self._upload: Upload | None = None
        self._parts = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self._slots = threading.Semaphore(sink.tuning.concurrency)
        self._staged = False  # an ingest object exists and must be removed
        self._exists = False  # the hinted blob is already stored

    def _part_size(self) -> int:
        return self._sink.tuning.part_size << (self._parts // PARTS_PER_SIZE_STEP)

    def write(self, data: bytes | memoryview) -> None:
        if self.done:
            raise StoreError(f"{self.name}: write after commit or abort")
        self._account(data)
        self._buf += data
        try:
            while len(self._buf) >= self._part_size():
                self._send(self._part_size())
        except BaseException:
            self.abort()
            raise

    def _send(self, n: int) -> None:
        if self._upload is None and self._hint is not None and not self._exists:
            # Already stored: hash the rest for the commit check, upload nothing.
            self._exists = self._store.head(self._sink.blob_key(self._hint)) is not None
        if self._exists:
            del self._buf[:n]
            return
        with memoryview(self._buf) as view:
            part = bytes(view[:n])
        del self._buf[:n]
        if self._upload is None:
            self._key = self._sink.blob_key(self._hint) if self._hint else self._sink.ingest_key()
            self._pool = ThreadPoolExecutor(self._sink.tuning.concurrency, thread_name_prefix="upload")
            self._upload = self._store.upload(self._key)
        self._raise_failed()
        self._slots.acquire()  # blocks while `concurrency` parts are in flight: bounded memory
        self._parts += 1
        assert self._pool is not None
        future = self._pool.submit(self._store_part, self._upload, self._parts, part)
        future.add_done_callback(lambda _: self._slots.release())
        self._pending.append(future)

    def _store_part(self, upload: Upload, number: int, data: bytes) -> None:
        upload.put_part(number, data)
        if self._hint is None:
            crashpoint("ingest-part")

    def _raise_failed(self) -> None:
        for future in [f for f in self._pending if f.done()]:
            self._pending.remove(future)
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]

    def commit(self, size: int, digest: Digest) -> None:
        if self.done:
            raise StoreError(f"{self.name}: commit after commit or abort")
        try:
            digest = as_digest(digest)
            self._check(size, digest)
            if self._hint is not None and digest != self._hint:
                raise DigestMismatch(f"{self.name}: committed as {digest}, but opened for {self._hint}")
            self._publish(size, digest)
        except BaseException:
            self.abort()
            raise
        self.done = True
        self._shutdown()

    def _publish(self, size: int, digest: Digest) -> None:
        key = self._sink.blob_key(digest)
        if self._exists:
            self._sink.check_existing(key, size)
            return
        if self._upload is None:
            if not self._store.put(key, bytes(self._buf)):
                self._sink.check_existing(key, size)
            return
        if self._buf:
            self._send(len(self._buf))
        wait(self._pending)
        self._raise_failed()
        upload, self._upload = self._upload, None
        if self._key == key:
            if not upload.complete(self._parts, if_absent=True):
                self._sink.check_existing(key, size)
            return
        self._staged = True
        upload.complete(self._parts, if_absent=False)
        crashpoint("ingest-complete")
        # Skip the copy when another writer published the same bytes first.
        if self._store.head(key) is not None or not self._store.copy(self._key, key, size):
            self._sink.check_existing(key, size)
        self._store.delete(self._key)
        self._staged = False

    def abort(self) -> None:
        """Always leaves nothing visible; removing the ingest upload is best effort (gc clears the rest)."""
        if self.done:
            return
        self.done = True
        for future in self._pending:
            future.cancel()
        wait(self._pending)
        try:
            if self._upload is not None:
                self._upload.abort()
            if self._staged:
                self._store.delete(self._key)
        except TranscoderError as exc:
            log.warning("%s: could not remove the upload %s: %s", self._sink.location, self._key, exc)
        self._shutdown()

    def _shutdown(self) -> None:
        self._buf = bytearray()
        self._pending = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)


__all__ = ["ObjectWriter"]
