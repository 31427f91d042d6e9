"""HTTP request and response values shared by the three surfaces.

The surfaces (Twirp v2, REST v1, the blob plane) are plain functions from
:class:`Request` to :class:`Response`, so they do not depend on the server
class. Request bodies are streamed: uploads of 64 MiB blocks, 8 at a time, and
``Transfer-Encoding: chunked`` PATCH bodies go to disk without being held in
memory.
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol
from urllib.parse import parse_qs

READ_SIZE = 1 << 20


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def readline(self, size: int = -1, /) -> bytes: ...


class BadBody(Exception):
    """The request body is malformed (chunk framing) or larger than allowed."""


class Body:
    """A request body read from the socket, by Content-Length or chunked framing."""

    def __init__(self, rfile: Readable, headers: email.message.Message) -> None:
        self._rfile = rfile
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        length = headers.get("Content-Length")
        self.length: int | None = None if self.chunked or length is None else int(length)
        if self.length is not None and self.length < 0:
            raise ValueError("negative Content-Length")
        self._left = self.length or 0
        self.done = not self.chunked and not self._left

    def chunks(self) -> Iterator[bytes]:
        """The body in pieces of at most 1 MiB; consumes it."""
        if self.chunked:
            yield from self._dechunk()
        else:
            while self._left:
                data = self._rfile.read(min(READ_SIZE, self._left))
                if not data:
                    raise BadBody("connection closed before the end of the body")
                self._left -= len(data)
                yield data
        self.done = True

    def _dechunk(self) -> Iterator[bytes]:
        while True:
            line = self._rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise BadBody("malformed chunk size in a chunked body") from exc
            if size == 0:
                while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            while size:
                data = self._rfile.read(min(READ_SIZE, size))
                if not data:
                    raise BadBody("connection closed inside a chunk")
                size -= len(data)
                yield data
            self._rfile.readline(16)

    def read(self, limit: int) -> bytes:
        """The whole body, refusing more than ``limit`` bytes."""
        if self.length is not None and self.length > limit:
            raise BadBody(f"body of {self.length} bytes exceeds the limit of {limit}")
        parts, total = [], 0
        for chunk in self.chunks():
            total += len(chunk)
            if total > limit:
                raise BadBody(f"body exceeds the limit of {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def copy_to(self, out: IO[bytes]) -> int:
        n = 0
        for chunk in self.chunks():
            out.write(chunk)
            n += len(chunk)
        return n


@dataclass
class Request:
    method: str
    path: str
    query_string: str
    headers: email.message.Message
    body: Body

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.query_string, keep_blank_values=True)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterable[bytes] | None = None  # set Content-Length in headers when streaming
    drop: bool = False  # close the connection without any reply (fault injection)
    operation: str = ""  # filled by the router, for counters and logs


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(obj).encode()
    return Response(status, body, {"Content-Type": "application/json", **(headers or {})})


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body (a UTF-8 BOM is tolerated); ValueError otherwise."""
    value = json.loads(raw.decode("utf-8-sig") or "{}")
    if not isinstance(value, dict):
        raise ValueError("body is not a JSON object")
    return value
