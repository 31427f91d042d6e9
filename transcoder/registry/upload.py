"""Blob uploads: a streaming writer for the transcoder's output, and a
monolithic push for small blobs.

The writer sends its bytes as they come. Once a blob is past one buffer
(4 MiB) a session opens (POST) and a background thread streams everything
into a single PATCH (chunked transfer encoding, as docker and containerd
push) while the encoder keeps producing; ``commit`` ends the body and PUTs
``?digest=``, and the registry checks the digest before publishing. Memory
is bounded by the buffer, the queue (``QUEUE_DEPTH x PIECE``) and the replay
window; nothing touches a disk. One PATCH instead of many chunks halves the
registry's work per byte (distribution reopens the session per request).

A blob smaller than the buffer goes in one POST then one PUT carrying the
bytes (distribution 2.8 ignores the body of a single ``POST ?digest=``), after
a HEAD that skips it when the registry has it already (unless the writer was
told the bytes are new). For new bytes the session's POST goes out as the
writer is made, on a thread of its own, so no round trip waits on it later.

Failures: a PATCH that breaks while it is still within its first ``REPLAY``
bytes is sent again from the offset the registry reports holding (a stale
keep-alive connection, a reset before the body got through). Past that, or
when the registry has dropped the session (distribution does, after a PATCH
it half read), the session is cancelled and the writer raises, having
published nothing; the caller can run the whole layer again. A monolithic
push is restarted from scratch. A commit whose answer was lost is checked
with a HEAD: if the blob is there, it landed.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

from ..digest import Digest
from ..errors import AuthError, DigestMismatch, NotFound, SinkError, SizeMismatch, TranscoderError, TransientError
from ..parallel import Parallel
from ..writers import WriterBase
from .client import RegistryClient, Retryable

CHUNK = 4 << 20
PIECE = 1 << 20
QUEUE_DEPTH = 4
REPLAY = 8 << 20
PATCH_ATTEMPTS = 3

# What travels to the upload thread: bytes, or a view of immutable bytes.
Piece = bytes | memoryview


def push_blob(client: RegistryClient, repo: str, data: bytes, digest: Digest, *, fresh: bool = False,
              opened: str | None = None) -> bool:
    """Store ``data`` under ``digest`` unless present; True if it was uploaded.

    ``fresh``: the bytes cannot be there yet (a record, which carries its
    creation time), so no HEAD asks first; pushing a blob the registry has
    already is harmless anyway. ``opened``: an upload session already open
    for them, used by the first attempt."""
    if not fresh and client.head_blob(repo, digest) == len(data):
        return False
    sessions = [opened] if opened else []

    def once() -> None:
        location = sessions.pop() if sessions else client.start_upload(repo)
        try:
            client.complete_upload(repo, location, digest, data)
        except TransientError as exc:
            client.cancel_upload(repo, location)
            if client.head_blob(repo, digest) == len(data):
                return  # the PUT landed; only its answer was lost
            raise Retryable(str(exc), exc.retry_after, safe=True) from exc

    client.retrying(once)
    return True


class _Aborted(Exception):
    """Raised inside the PATCH body to break the request off."""


class _Session:
    """One upload session, streamed into one PATCH by a background thread."""

    def __init__(self, client: RegistryClient, repo: str, name: str, opened: str | None = None) -> None:
        self._client = client
        self._repo = repo
        self._name = name
        self._location = opened or client.start_upload(repo)
        self._offset = 0  # bytes the session held when the current PATCH began
        self._queue: queue.Queue[Piece | None] = queue.Queue(QUEUE_DEPTH)
        self._ended = False  # the end of the stream was taken from the queue
        self._retained: list[Piece] | None = []  # what the current PATCH sent, while within REPLAY
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="blob-upload", daemon=True)
        self._thread.start()

    def send(self, piece: Piece) -> None:
        """Queue a piece; blocks while the queue is full, raises if the uploader failed."""
        while True:
            self._raise_failure()
            try:
                self._queue.put(piece, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self._upload()
        except BaseException as exc:  # re-raised in the writer's thread
            self._error = exc

    def _body(self, replay: list[Piece]) -> Iterator[Piece]:
        self._retained = list(replay)
        size = sum(map(len, replay))
        yield from replay
        while not self._ended:
            piece = self._queue.get()
            if self._stop:
                raise _Aborted()
            if piece is None:
                self._ended = True
                return
            if self._retained is not None:
                size += len(piece)
                if size <= REPLAY:
                    self._retained.append(piece)
                else:
                    self._retained = None
            yield piece

    def _upload(self) -> None:
        replay: list[Piece] = []
        for attempt in range(PATCH_ATTEMPTS):
            try:
                self._location = self._client.patch_upload(self._repo, self._location, self._body(replay), self._offset)
                return
            except _Aborted:
                raise
            except TransientError as exc:
                if self._stop:
                    raise
                held = self._client.upload_status(self._repo, self._location, self._offset)
                again = self._replay_from(held)
                if attempt == PATCH_ATTEMPTS - 1 or held is None or again is None:
                    raise self._lost() from exc
                replay, self._offset = again, held
            except AuthError:
                raise
            except (NotFound, SinkError) as exc:
                if attempt == 0:
                    raise
                raise self._lost() from exc  # the registry dropped the session after a broken PATCH
            time.sleep(0.2 * (attempt + 1))

    def _replay_from(self, held: int | None) -> list[Piece] | None:
        """The retained bytes past ``held``, if the retained window covers it."""
        if held is None or self._retained is None or held < self._offset:
            return None
        skip = held - self._offset
        out = []
        for piece in self._retained:
            if skip >= len(piece):
                skip -= len(piece)
                continue
            out.append(piece[skip:])
            skip = 0
        return out if skip == 0 else None

    def _lost(self) -> TransientError:
        return TransientError(f"{self._name}: upload broke off after byte {self._offset} and the registry cannot "
                              "resume it; nothing was published")

    def finish(self, digest: Digest, size: int) -> None:
        self.send_end()
        self._thread.join()
        self._raise_failure()
        try:
            self._client.complete_upload(self._repo, self._location, digest)
        except TransientError as exc:
            if self._client.head_blob(self._repo, digest) == size:
                return
            self._client.cancel_upload(self._repo, self._location)
            raise TransientError(f"{self._name}: commit broke off; nothing was published") from exc

    def send_end(self) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                return
            except queue.Full:
                continue

    def cancel(self) -> None:
        self._stop = True
        while True:  # drop what is queued so the thread sees the stop at once
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self.send_end()
        self._thread.join()
        self._client.cancel_upload(self._repo, self._location)


class RegistryBlobWriter(WriterBase):
    """A :class:`~transcoder.writers.BlobWriter` into one repository."""

    hashes = False

    def __init__(self, client: RegistryClient, repo: str, name: str, chunk: int = CHUNK, *,
                 ask_first: bool = True) -> None:
        """``ask_first``: a blob that stays under one buffer is pushed only if a
        HEAD does not find it; False for bytes just produced (a transcode's
        output, which the registry is not expected to hold): one round trip
        less, and a blob that is there after all is pushed again, harmlessly.
        Such bytes are sent whatever their size, so their upload session opens
        at once, on a thread of its own: its round trip overlaps their making
        instead of delaying their first byte or, for a small blob, the commit."""
        super().__init__(name)
        self._client = client
        self._repo = repo
        self._chunk = chunk
        self._ask_first = ask_first
        self._buf = bytearray()
        self._session: _Session | None = None
        self._opening = None if ask_first else Parallel(lambda _: client.start_upload(repo), [None], 1, "upload-open")

    def _opened(self) -> str | None:
        """The session opened ahead, taken once; None if there is none or it failed to open."""
        opening, self._opening = self._opening, None
        if opening is None:
            return None
        try:
            return opening.join()[0]
        except TranscoderError:
            return None  # the push opens one itself, and reports what fails

    def _account(self, data: bytes | memoryview) -> None:
        # Size only: the pipeline already hashed these bytes to name the digest,
        # and the registry hashes them again before it publishes anything.
        self._size += len(data)

    def _check(self, size: int, digest: Digest) -> None:
        if self._size != size:
            raise SizeMismatch(f"{self.name}: wrote {self._size} bytes, expected {size}")
        if self._session is None:  # still all in memory: check here, before sending
            actual = Digest.of(memoryview(self._buf))
            if actual != digest:
                raise DigestMismatch(f"{self.name}: wrote {actual}, expected {digest}")

    def write(self, data: bytes | memoryview) -> None:
        if self.done:
            raise SinkError(f"{self.name}: write after commit or abort")
        self._account(data)
        if self._session is not None and isinstance(data, bytes) and not self._buf:
            # Immutable: its pieces are sent as views, not copied (the encoder's
            # frames are megabytes each).
            view = memoryview(data)
            for i in range(0, len(view), PIECE):
                self._session.send(view[i : i + PIECE])
            return
        self._buf += data
        if self._session is None and len(self._buf) >= self._chunk:
            self._session = _Session(self._client, self._repo, self.name, self._opened())
        if self._session is not None and len(self._buf) >= PIECE:
            self._flush()

    def _flush(self) -> None:
        assert self._session is not None
        view = memoryview(self._buf)
        for i in range(0, len(view), PIECE):
            self._session.send(bytes(view[i : i + PIECE]))
        view.release()
        self._buf = bytearray()

    def commit(self, size: int, digest: Digest) -> None:
        try:
            self._check(size, digest)
            if self._session is None:
                push_blob(self._client, self._repo, bytes(self._buf), digest, fresh=not self._ask_first,
                          opened=self._opened())
            else:
                if self._buf:
                    self._flush()
                self._session.finish(digest, size)
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
        elif (opened := self._opened()) is not None:
            self._client.cancel_upload(self._repo, opened)


__all__ = ["CHUNK", "RegistryBlobWriter", "push_blob"]
