"""Blob uploads: a streaming writer for the transcoder's output, and a
monolithic push for small blobs.

The writer sends its bytes as they come: once a chunk (4 MiB) is buffered,
a background thread opens an upload session (POST) and PATCHes chunks in
order while the encoder keeps producing; ``commit`` PUTs the tail with
``?digest=``, and the registry checks the digest before publishing. Memory
is bounded by ``(QUEUE_DEPTH + 2) x CHUNK``; nothing touches a disk.

A blob smaller than one chunk goes in one POST then one PUT carrying the
bytes (distribution 2.8 ignores the body of a single ``POST ?digest=``), after
a HEAD that skips it when the registry has it already.

Failures: a PATCH that met a transient error is resumed from the offset the
registry reports holding, when it reports one that fits; otherwise the
session is cancelled and the writer raises, having published nothing. A
monolithic push is restarted from scratch. A commit whose answer was lost is
checked with a HEAD: if the blob is there, it landed.
"""

from __future__ import annotations

import queue
import threading
import time

from ..digest import Digest
from ..errors import AuthError, NotFound, SinkError, TransientError
from ..writers import WriterBase
from .client import RegistryClient, Retryable

CHUNK = 4 << 20
QUEUE_DEPTH = 2
PATCH_ATTEMPTS = 3


def push_blob(client: RegistryClient, repo: str, data: bytes, digest: Digest) -> bool:
    """Store ``data`` under ``digest`` unless present; True if it was uploaded."""
    if client.head_blob(repo, digest) == len(data):
        return False

    def once() -> None:
        location = client.start_upload(repo)
        try:
            client.complete_upload(repo, location, digest, data)
        except TransientError as exc:
            client.cancel_upload(repo, location)
            if client.head_blob(repo, digest) == len(data):
                return  # the PUT landed; only its answer was lost
            raise Retryable(str(exc), exc.retry_after, safe=True) from exc

    client.retrying(once)
    return True


class _Session:
    """One upload session, PATCHed in order by a background thread."""

    def __init__(self, client: RegistryClient, repo: str, name: str) -> None:
        self._client = client
        self._repo = repo
        self._name = name
        self._location = client.start_upload(repo)
        self._offset = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="blob-upload", daemon=True)
        self._thread.start()

    def send(self, chunk: bytes) -> None:
        """Queue a chunk; blocks while the queue is full, raises if the uploader failed."""
        while True:
            self._raise_failure()
            try:
                self._queue.put(chunk, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None and not self._stop:
                try:
                    self._patch(chunk)
                except BaseException as exc:  # re-raised in the writer's thread
                    self._error = exc

    def _patch(self, data: bytes) -> None:
        for attempt in range(PATCH_ATTEMPTS):
            try:
                self._location = self._client.patch_upload(self._repo, self._location, data, self._offset)
                self._offset += len(data)
                return
            except TransientError as exc:
                held = self._client.upload_status(self._repo, self._location, self._offset)
                if held is None or not self._offset <= held <= self._offset + len(data) \
                        or attempt == PATCH_ATTEMPTS - 1:
                    raise self._lost() from exc
            except AuthError:
                raise
            except (NotFound, SinkError) as exc:
                if attempt == 0:
                    raise
                # The registry dropped the session after a broken PATCH it had half read.
                raise self._lost() from exc
            data, self._offset = data[held - self._offset :], held
            if not data:
                return
            time.sleep(0.2 * (attempt + 1))

    def _lost(self) -> TransientError:
        return TransientError(f"{self._name}: upload broke off at byte {self._offset} and the registry cannot "
                              "resume it; nothing was published")

    def _join(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def finish(self, tail: bytes, digest: Digest) -> None:
        self._join()
        self._raise_failure()
        size = self._offset + len(tail)
        try:
            self._client.complete_upload(self._repo, self._location, digest, tail)
        except TransientError as exc:
            if self._client.head_blob(self._repo, digest) == size:
                return
            self._client.cancel_upload(self._repo, self._location)
            raise TransientError(f"{self._name}: commit broke off; nothing was published") from exc

    def cancel(self) -> None:
        self._stop = True
        while True:  # drop what is queued so the thread sees the end at once
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._join()
        self._client.cancel_upload(self._repo, self._location)


class RegistryBlobWriter(WriterBase):
    """A :class:`~transcoder.writers.BlobWriter` into one repository."""

    def __init__(self, client: RegistryClient, repo: str, name: str, chunk: int = CHUNK) -> None:
        super().__init__(name)
        self._client = client
        self._repo = repo
        self._chunk = chunk
        self._buf = bytearray()
        self._session: _Session | None = None

    def write(self, data: bytes | memoryview) -> None:
        if self.done:
            raise SinkError(f"{self.name}: write after commit or abort")
        self._account(data)
        self._buf += data
        if len(self._buf) >= self._chunk:
            chunk, self._buf = bytes(self._buf), bytearray()
            if self._session is None:
                self._session = _Session(self._client, self._repo, self.name)
            self._session.send(chunk)

    def commit(self, size: int, digest: Digest) -> None:
        try:
            self._check(size, digest)
            if self._session is None:
                push_blob(self._client, self._repo, bytes(self._buf), digest)
            else:
                self._session.finish(bytes(self._buf), digest)
        except BaseException:
            self.abort()
            raise
        self.done = True
        self._buf = bytearray()

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        self._buf = bytearray()
        if self._session is not None:
            self._session.cancel()


__all__ = ["CHUNK", "RegistryBlobWriter", "push_blob"]
