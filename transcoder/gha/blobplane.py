"""The data plane: signed Azure Block Blob URLs handed out by the cache service.

Upload (v2): Put Block for each chunk while the stream is still being
produced, several in flight, then Put Block List; a blob that fits in one
chunk goes up as a single Put Blob. Block ids are base64 of a random UUID and
the zero-padded block index (the toolkit's form), so ids of one upload never
collide with another's.

Download (v1 and v2): one streamed ranged GET for the range asked for; if the
stream breaks it is resumed from where it stopped, and a 401/403 (the signed
URL expired, ~10 minutes on github.com) asks the service for a fresh URL.
Each ranged GET has a deadline that grows with the bytes received (the
policy's :class:`~transcoder.gha.retry.Deadlines`), headers included and
counted only while we wait on the server: a trickling server fails it, a big
healthy download does not.

Signed URLs are credentials: they are held as :class:`Secret` and every
message shows them through :func:`redact_url` only.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Callable, Iterator
from xml.sax.saxutils import escape

import httpx

from ..deadline import Deadline, scope
from ..errors import AuthError, NotFound, SinkError, TransientError
from ..redact import Secret, redact_url, scrub
from .chunks import Chunk, ChunkPipe
from .retry import RetryPolicy, answer, is_retryable_status, retry_after, transport_error

MS_VERSION = "2024-11-04"
DEFAULT_BLOCK = 4 << 20  # x DEFAULT_IN_FLIGHT: the memory an upload may hold; 50,000 blocks = 195 GiB
DEFAULT_IN_FLIGHT = 4


def _with_query(url: str, extra: str) -> str:
    return url + ("&" if "?" in url else "?") + extra


def check_blob_response(resp: httpx.Response, what: str, ok: tuple[int, ...]) -> None:
    """Raise the error matching a data-plane status; the message names no secret."""
    if resp.status_code in ok:
        return
    code = resp.headers.get("x-ms-error-code", "")
    detail = f"{what}: HTTP {resp.status_code}" + (f" {code}" if code else "")
    if is_retryable_status(resp.status_code):
        raise TransientError(detail, retry_after(resp) if resp.status_code == 429 else None)
    if resp.status_code in (401, 403):
        raise AuthError(detail + " (signed URL refused or expired)")
    if resp.status_code == 404:
        raise NotFound(detail)
    raise SinkError(detail)


def pieces(body: Chunk, size: int = 1 << 20) -> Iterator[bytes]:
    """A request body sent in slices, so the HTTP stack never joins a copy of a whole chunk
    (one slice is copied at a time). Sent with an explicit Content-Length, so it is not
    chunk-encoded: Azure needs the length."""
    view = memoryview(body)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


class BlockUpload:
    """Streams one blob to a signed upload URL; ``finish`` commits the block list."""

    def __init__(self, http: httpx.Client, policy: RetryPolicy, url: Secret, *, name: str,
                 block_size: int = DEFAULT_BLOCK, in_flight: int = DEFAULT_IN_FLIGHT) -> None:
        self._http = http
        self._policy = policy
        self._url = url
        self.name = name
        self._prefix = str(uuid.uuid4())
        self._pipe = ChunkPipe(self._put_block, self._put_blob, chunk_size=block_size, in_flight=in_flight, name=name)
        self.requests = 0

    def write(self, data: bytes | memoryview) -> None:
        self._pipe.write(data)

    def finish(self) -> None:
        blocks = self._pipe.finish()
        if blocks:
            self._put_block_list(blocks)

    def abort(self) -> None:
        self._pipe.close()

    def _block_id(self, index: int) -> str:
        return base64.b64encode(f"{self._prefix}{index:012d}".encode()).decode()

    def _put(self, query: str, body: Chunk, what: str, headers: dict[str, str] | None = None) -> None:
        url = _with_query(self._url.reveal(), query) if query else self._url.reveal()
        hdrs = {"x-ms-version": MS_VERSION, "content-length": str(len(body)), **(headers or {})}

        def attempt() -> None:
            self.requests += 1
            try:
                request = self._http.build_request("PUT", url, content=pieces(body), headers=hdrs)
                resp = answer(self._http, request, what, self._policy.deadlines.answer)
            except httpx.TransportError as exc:
                raise transport_error(exc, what) from exc
            check_blob_response(resp, what, (200, 201))

        self._policy.call(attempt, what)

    def _put_block(self, index: int, offset: int, data: Chunk) -> None:
        block = httpx.QueryParams({"comp": "block", "blockid": self._block_id(index)})
        self._put(str(block), data, f"{self.name}: put block {index}")

    def _put_blob(self, data: Chunk) -> None:
        self._put("", data, f"{self.name}: put blob", {"x-ms-blob-type": "BlockBlob"})

    def _put_block_list(self, count: int) -> None:
        ids = "".join(f"<Latest>{escape(self._block_id(i))}</Latest>" for i in range(count))
        body = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{ids}</BlockList>'.encode()
        self._put("comp=blocklist", body, f"{self.name}: put block list", {"content-type": "application/xml"})


def blob_size(http: httpx.Client, policy: RetryPolicy, url: Secret, what: str) -> int:
    """The blob's length, from a one-byte ranged GET.

    Not HEAD: a URL signed for GET (an S3-style presigned URL behind GitHub
    Enterprise Server's v1 service) may refuse any other method.
    """

    def attempt() -> int:
        try:
            headers = {"x-ms-version": MS_VERSION, "range": "bytes=0-0"}
            with scope(Deadline(f"{what}: answer", policy.deadlines.answer)), http.stream("GET", url.reveal(),
                                                                                          headers=headers) as resp:
                if resp.status_code == 416:  # empty blob: "bytes */0"
                    return _range_total(resp, what)
                check_blob_response(resp, what, (200, 206))
                if resp.status_code == 206:
                    return _range_total(resp, what)
                length = resp.headers.get("content-length", "")
                if not length.isdigit():
                    raise SinkError(f"{what}: no Content-Length in the answer")
                return int(length)
        except httpx.TransportError as exc:
            raise transport_error(exc, what) from exc

    return policy.call(attempt, what)


def _range_total(resp: httpx.Response, what: str) -> int:
    _, _, total = resp.headers.get("content-range", "").rpartition("/")
    if not total.isdigit():
        raise SinkError(f"{what}: no blob length in Content-Range")
    return int(total)


UrlSource = Callable[[bool], Secret]  # refresh? -> signed URL


class RangedReader(io.RawIOBase):
    """Reads ``[start, end)`` of a blob with streamed ranged GETs, resuming on failure.

    ``url_source(True)`` must return a freshly signed URL (the old one expired).
    Resumption and refreshes count against the retry policy's attempts.
    """

    def __init__(self, http: httpx.Client, policy: RetryPolicy, url_source: UrlSource, start: int, end: int, what: str) -> None:
        super().__init__()
        self._http = http
        self._policy = policy
        self._url_source = url_source
        self._url = url_source(False)
        self.pos = start
        self.end = end
        self.what = what
        self._resp: httpx.Response | None = None
        self._iter: Iterator[bytes] | None = None
        self._deadline: Deadline | None = None
        self._left = b""
        self.requests = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        if self.pos >= self.end:
            return 0
        if not self._left:
            self._left = self._policy.call(self._next_piece, self.what)
        want = min(len(buf), self.end - self.pos)
        if want <= 0:
            return 0
        n = min(want, len(self._left))
        buf[:n] = self._left[:n]
        self._left = self._left[n:]
        self.pos += n
        return n

    def _next_piece(self) -> bytes:
        if self._iter is None:
            self._open()
        assert self._iter is not None and self._deadline is not None
        try:
            with scope(self._deadline):
                piece = next(self._iter, b"")
        except httpx.TransportError as exc:
            self._drop()
            raise transport_error(exc, self.what) from exc
        except SinkError:
            self._drop()
            raise
        if not piece and self.pos >= self.end:
            return b""
        if not piece:
            self._drop()
            raise TransientError(f"{self.what}: stream ended {self.end - self.pos} bytes early")
        return piece[: self.end - self.pos]

    def _open(self) -> None:
        req = self._http.build_request("GET", self._url.reveal(), headers={
            "x-ms-version": MS_VERSION, "range": f"bytes={self.pos}-{self.end - 1}"})
        self.requests += 1
        deadline = self._policy.deadlines.download(self.what)
        try:
            with scope(deadline):
                resp = self._http.send(req, stream=True)
        except httpx.TransportError as exc:
            raise transport_error(exc, self.what) from exc
        if resp.status_code in (401, 403):
            resp.close()
            self._url = self._url_source(True)
            raise TransientError(f"{self.what}: signed URL expired, asked for a new one")
        if resp.status_code == 416:  # asked past the end: the blob is shorter than ``end``
            resp.close()
            self.end = self.pos
            self._resp, self._iter, self._deadline = None, iter(()), deadline
            return
        if resp.status_code not in (200, 206):
            resp.close()
            check_blob_response(resp, self.what, (206,))
        if resp.status_code == 200 and self.pos:
            resp.close()
            raise SinkError(f"{self.what}: the blob store ignored the Range header")
        self.end = min(self.end, self._total(resp))
        self._resp, self._iter, self._deadline = resp, resp.iter_raw(), deadline

    def _total(self, resp: httpx.Response) -> int:
        """The blob's length from Content-Range (206) or Content-Length (200)."""
        if resp.status_code == 206:
            _, _, total = resp.headers.get("content-range", "").rpartition("/")
            return int(total) if total.isdigit() else self.end
        length = resp.headers.get("content-length", "")
        return int(length) if length.isdigit() else self.end

    def _drop(self) -> None:
        if self._resp is not None:
            self._resp.close()
        self._resp, self._iter, self._deadline = None, None, None

    def close(self) -> None:
        self._drop()
        super().close()

    def __repr__(self) -> str:
        return f"<RangedReader {self.what} pos={self.pos} end={self.end}>"


def describe(url: Secret) -> str:
    """A signed URL as messages may show it."""
    return scrub(redact_url(url.reveal()))
