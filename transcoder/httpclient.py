"""The project's httpx clients, made in one place so that no read outlives its deadline.

httpx's read timeout bounds one socket read, so a server sending its status
line and headers a byte at a time holds a request forever. Every client made
by :func:`new_client` reads through :class:`DeadlineBackend`, under httpcore's
connection pool: while a :func:`~transcoder.deadline.scope` is active on the
calling thread (sync httpx sends and reads in the caller's thread), no read
waits past that deadline, and one that would raises the deadline's one-line
error instead. Headers and bodies are bounded alike; the deadline's clock
(re)starts each time a request has been written, so uploading a big request
body never eats into the time its answer is given.

Outside any scope, reads keep httpx's per-read timeout only.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx
from httpcore._backends.sync import SyncBackend, SyncStream  # the plain-socket stream httpcore's backend makes

from . import eyeballs, preconnect, tls
from .deadline import current

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
# Bytes asked of the socket per read. httpcore asks for 64 KiB; a layer
# download then passes through h11, httpx and the blob reader 16 times per
# MiB. A read returns what has arrived, at most this, so small answers are
# unchanged. Measured on a loopback registry conversion of 245 MB of gzip:
# 0.05 s less client CPU (4.81 -> 4.77 s).
READ_SIZE = 1 << 20


HEAD_END = b"\r\n\r\n"
HEAD_PEEK = 64 << 10  # bytes looked at per read for the end of a response's head
_exact = threading.local()


@contextmanager
def heads_apart() -> Iterator[None]:
    """While active on this thread, reads on plain connections stop at the end
    of a response head, so that h11 never holds body bytes: the body of the
    answer can then be read from the connection itself (:func:`direct_body`)."""
    _exact.on = True
    try:
        yield
    finally:
        _exact.on = False


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads end by the calling thread's current deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        sock = inner.get_extra_info("socket")
        # Only a plain socket can be peeked at (TLS records cannot).
        self._plain: socket.socket | None = (
            sock if isinstance(sock, socket.socket) and inner.get_extra_info("ssl_object") is None else None)
        self.exact_head = False  # the last read stopped at a head's end (or before it), under heads_apart
        self._tail = b""  # the last bytes of a head handed over so far: its end may be split across reads

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        exact = self._plain is not None and getattr(_exact, "on", False)
        self.exact_head = exact
        return self._bounded(max(max_bytes, READ_SIZE), timeout, exact)

    def read_body(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Up to ``max_bytes`` of a body that h11 does not see (see :func:`direct_body`)."""
        return self._bounded(max_bytes, timeout, False)

    def _bounded(self, max_bytes: int, timeout: float | None, exact: bool) -> bytes:
        deadline = current()
        if deadline is None:
            return self._recv(max_bytes, timeout, exact)
        left = deadline.left()
        if left <= 0:
            raise deadline.error()
        capped = timeout is None or left < timeout
        try:
            data = self._recv(max_bytes, left if capped else timeout, exact)
        except httpcore.ReadTimeout as exc:
            if capped:
                raise deadline.error() from exc
            raise
        deadline.feed(len(data))
        return data

    def _recv(self, max_bytes: int, timeout: float | None, exact: bool) -> bytes:
        if not exact or self._plain is None:
            self._tail = b""
            return self._inner.read(max_bytes, timeout)
        # Everything before a head's end is head: take up to the end and no further.
        try:
            self._plain.settimeout(timeout)
            seen = self._plain.recv(min(max_bytes, HEAD_PEEK), socket.MSG_PEEK)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc
        end = (self._tail + seen).find(HEAD_END)
        take = end + len(HEAD_END) - len(self._tail) if end >= 0 else max(1, len(seen))
        data = self._inner.read(take, timeout)
        # A head's end never lies within the tail alone, so take >= 1.
        self._tail = b"" if end >= 0 and len(data) == take else (self._tail + data)[-(len(HEAD_END) - 1):]
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)
        if (deadline := current()) is not None:
            deadline.restart()

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class Secured(httpcore.NetworkStream):
    """A connection opened ahead whose TLS handshake is made already
    (:mod:`transcoder.preconnect`). httpcore asks a new connection for TLS
    before anything else: asked with the context and server name the
    handshake was made with, this is that connection; asked with others, or
    for plain bytes, it is closed and ``connect`` makes a new connection."""

    def __init__(self, sock: ssl.SSLSocket, connect: Callable[[float | None], httpcore.NetworkStream]) -> None:
        self._sock = sock
        self._connect = connect
        self._fresh: httpcore.NetworkStream | None = None

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        if self._fresh is None and ssl_context is self._sock.context and server_hostname == self._sock.server_hostname:
            return SyncStream(self._sock)
        return self._instead(timeout).start_tls(ssl_context, server_hostname, timeout)

    def _instead(self, timeout: float | None) -> httpcore.NetworkStream:
        if self._fresh is None:
            self._sock.close()
            self._fresh = self._connect(timeout)
        return self._fresh

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._instead(timeout).read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._instead(timeout).write(buffer, timeout)

    def close(self) -> None:
        (self._fresh or self._sock).close()

    def get_extra_info(self, info: str) -> Any:
        return None if self._fresh is None else self._fresh.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """Wraps httpcore's backend: its streams are :class:`DeadlineStream`, with
    ``socket_options`` added. Where the inner backend is httpcore's plain
    sync one, it makes the sockets itself: taken from :mod:`transcoder.preconnect`,
    else raced over the name's addresses (:mod:`transcoder.eyeballs`)."""

    def __init__(self, inner: httpcore.NetworkBackend, socket_options: Iterable[Any] = ()) -> None:
        self._inner = inner
        self._options = list(socket_options)

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        options = [*(socket_options or ()), *self._options]
        if local_address is not None or not isinstance(self._inner, SyncBackend):
            return DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, options))
        sock = self._opened_ahead(host, port, timeout)
        if sock is None:
            return DeadlineStream(self._fresh(host, port, timeout, options))
        _set(sock, options)
        if isinstance(sock, ssl.SSLSocket):
            return DeadlineStream(Secured(sock, lambda left: self._fresh(host, port, left, options)))
        return DeadlineStream(SyncStream(sock))

    @staticmethod
    def _fresh(host: str, port: int, timeout: float | None, options: list[Any]) -> httpcore.NetworkStream:
        """A new connection, raced over the name's addresses."""
        try:
            sock = eyeballs.connect(host, port, timeout)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return SyncStream(_set(sock, options))

    @staticmethod
    def _opened_ahead(host: str, port: int, timeout: float | None) -> socket.socket | None:
        try:
            return preconnect.take(host, port, timeout)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _set(sock: socket.socket, options: list[Any]) -> socket.socket:
    """``sock`` with the socket options, and TCP_NODELAY, as httpcore sets them on a socket of its own."""
    for option in (*options, NODELAY):
        sock.setsockopt(*option)
    return sock


def _install(transport: httpx.BaseTransport | None, options: list[Any]) -> None:
    """Put the deadline backend under an httpx transport's pool (httpx has no option for it)."""
    if transport is None:  # a mount that bypasses proxies: the client's own transport serves it
        return
    pool = getattr(transport, "_pool", None)
    inner = getattr(pool, "_network_backend", None)
    if not isinstance(inner, httpcore.NetworkBackend):
        raise RuntimeError(f"httpx {httpx.__version__}: cannot bound reads of {type(transport).__name__}")
    if not isinstance(inner, DeadlineBackend):
        pool._network_backend = DeadlineBackend(inner, options)  # type: ignore[union-attr]


def new_client(*, transport: httpx.BaseTransport | None = None, verify: ssl.SSLContext | bool = True,
               nodelay: bool = False, **options: Any) -> httpx.Client:
    """An ``httpx.Client`` whose connections honour deadline scopes.

    Without ``transport``, httpx builds its own (honouring proxy variables) and
    each gets the deadline backend; ``nodelay`` sets TCP_NODELAY, so request
    bodies sent in slices never wait for the peer's delayed ACK. An injected
    transport (tests) is used as given. ``verify`` True or False takes the
    process's shared context for that setting (:mod:`transcoder.tls`)."""
    if isinstance(verify, bool):
        verify = tls.context(verify)
    client = httpx.Client(transport=transport, verify=verify, **options)
    if transport is None:
        extra = [NODELAY] if nodelay else []
        for made in (client._transport, *client._mounts.values()):
            _install(made, extra)
    return client


def direct_body(response: httpx.Response) -> Iterator[bytes] | None:
    """The body of a streamed answer read from its connection itself, without
    h11's three copies of every byte (into its buffer, out of it, into bytes);
    None where that cannot be done: the head was not read under
    :func:`heads_apart`, the connection is TLS, or the body is not plainly
    ``Content-Length`` bytes. The connection is not reused afterwards (closing
    the response closes it). A body cut short raises ``httpx.RemoteProtocolError``,
    a failed read ``httpx.ReadError`` or ``httpx.ReadTimeout``, as httpx would."""
    stream = response.extensions.get("network_stream")
    headers = response.headers
    length = headers.get("content-length", "")
    if (not isinstance(stream, DeadlineStream) or not stream.exact_head or response.request.method != "GET"
            or "transfer-encoding" in headers or headers.get("content-encoding", "identity") != "identity"
            or not length.isdigit()):
        return None
    timeout = response.request.extensions.get("timeout", {}).get("read")
    return _body_chunks(stream, int(length), timeout)


def _body_chunks(stream: DeadlineStream, length: int, timeout: float | None) -> Iterator[bytes]:
    left = length
    while left > 0:
        try:
            data = stream.read_body(min(left, READ_SIZE), timeout)
        except httpcore.ReadTimeout as exc:
            raise httpx.ReadTimeout(str(exc)) from exc
        except httpcore.NetworkError as exc:
            raise httpx.ReadError(str(exc)) from exc
        if not data:
            raise httpx.RemoteProtocolError(f"peer closed connection with {left} of {length} body bytes unsent")
        left -= len(data)
        yield data


__all__ = ["DeadlineBackend", "DeadlineStream", "Secured", "direct_body", "heads_apart", "new_client"]
