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
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from . import tls
from .deadline import current

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
# Bytes asked of the socket per read. httpcore asks for 64 KiB; a layer
# download then passes through h11, httpx and the blob reader 16 times per
# MiB. A read returns what has arrived, at most this, so small answers are
# unchanged. Measured on a loopback registry conversion of 245 MB of gzip:
# 0.05 s less client CPU (4.81 -> 4.77 s).
READ_SIZE = 1 << 20


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads end by the calling thread's current deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        max_bytes = max(max_bytes, READ_SIZE)
        deadline = current()
        if deadline is None:
            return self._inner.read(max_bytes, timeout)
        left = deadline.left()
        if left <= 0:
            raise deadline.error()
        capped = timeout is None or left < timeout
        try:
            data = self._inner.read(max_bytes, left if capped else timeout)
        except httpcore.ReadTimeout as exc:
            if capped:
                raise deadline.error() from exc
            raise
        deadline.feed(len(data))
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


class DeadlineBackend(httpcore.NetworkBackend):
    """Wraps httpcore's backend: its streams are :class:`DeadlineStream`, with ``socket_options`` added."""

    def __init__(self, inner: httpcore.NetworkBackend, socket_options: Iterable[Any] = ()) -> None:
        self._inner = inner
        self._options = list(socket_options)

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        options = [*(socket_options or ()), *self._options]
        return DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


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


__all__ = ["DeadlineBackend", "DeadlineStream", "new_client"]
