"""Whole-request deadlines: a server that trickles bytes must not hold a client forever.

Per-read timeouts bound how long one read waits, not how long a response
takes: a server sending one byte every few seconds passes every per-read
timeout. A :class:`Deadline` bounds the whole response: a fixed number of
seconds for small documents (manifests, records, JSON answers), or, for
big downloads, an allowance plus one second per ``min_rate`` bytes received,
so that a healthy download of any size passes and a trickle fails.

It is enforced twice, because some HTTP libraries read a whole chunk before
they return: the reader checks after every piece (:meth:`Deadline.feed`),
and a watcher thread shuts down the connection's socket once the deadline
has passed (:meth:`Deadline.attach`), which ends a read blocked inside a
library with an error the caller turns into :meth:`Deadline.error`. The
error is one line naming what was read and the cause.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable

import httpx

from .errors import ManifestError, SinkError

TICK = 0.1  # how often the watcher looks at the clock


class Deadline:
    """The bound of one response; ``what`` names it in the error (e.g. ``s3:b/p: record K``)."""

    def __init__(self, what: str, seconds: float, *, min_rate: float | None = None) -> None:
        self.what = what
        self.seconds = seconds
        self.min_rate = min_rate
        self.start = time.monotonic()
        self.received = 0
        self.fired = False  # the watcher shut the socket down
        self._sock: socket.socket | None = None

    def limit(self) -> float:
        earned = self.received / self.min_rate if self.min_rate else 0.0
        return self.start + self.seconds + earned

    def expired(self) -> bool:
        return self.fired or time.monotonic() > self.limit()

    def error(self) -> SinkError:
        took = time.monotonic() - self.start
        rule = f"{self.seconds:g} s" + (f" plus 1 s per {self.min_rate:.0f} bytes" if self.min_rate else "")
        return SinkError(f"{self.what}: {self.received} bytes in {took:.1f} s, over the deadline of {rule}; "
                         "the server is too slow")

    def feed(self, n: int) -> None:
        """Count ``n`` bytes received; raise the deadline error if time is up."""
        self.received += n
        if self.expired():
            raise self.error()

    def attach(self, sock: socket.socket | None) -> None:
        """Shut ``sock`` down when the deadline passes (until :meth:`detach`); None is ignored."""
        if sock is not None:
            self._sock = sock
            _WATCHER.add(self)

    def detach(self) -> None:
        _WATCHER.remove(self)
        self._sock = None

    def _fire(self) -> None:
        self.fired = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)


class _Watcher:
    """One daemon thread per process, alive only while something is watched."""

    def __init__(self) -> None:
        self._watched: set[Deadline] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._lock:
            self._watched.add(deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deadline-watcher", daemon=True)
                self._thread.start()

    def remove(self, deadline: Deadline) -> None:
        with self._lock:
            self._watched.discard(deadline)

    def _run(self) -> None:
        while True:
            time.sleep(TICK)
            with self._lock:
                due = [d for d in self._watched if time.monotonic() > d.limit()]
                self._watched.difference_update(due)
                if not self._watched and not due:
                    self._thread = None
                    return
            for deadline in due:
                deadline._fire()


_WATCHER = _Watcher()


def socket_of(response: object) -> socket.socket | None:
    """The socket under an httpx, requests, urllib3 or botocore response, if it can be found."""
    extensions = getattr(response, "extensions", None)
    if isinstance(extensions, dict) and "network_stream" in extensions:
        sock = extensions["network_stream"].get_extra_info("socket")
        return sock if isinstance(sock, socket.socket) else None
    for inner in ("_raw_stream", "raw"):  # botocore's StreamingBody, requests' Response
        if hasattr(response, inner):
            return socket_of(getattr(response, inner))
    # urllib3's HTTPResponse: its connection's socket, or (when the connection handed the
    # socket over to the response, as http.client does for "Connection: close") the one
    # under http.client's response file.
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if not isinstance(sock, socket.socket):
        sock = getattr(getattr(getattr(getattr(response, "_fp", None), "fp", None), "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def read_bounded(chunks: Iterable[bytes], limit: int, deadline: Deadline) -> bytes:
    """A small document whole: refused over ``limit`` bytes, or when ``deadline`` passes."""
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise ManifestError(f"{deadline.what}: over the {limit} byte limit")
        deadline.feed(len(chunk))
    return bytes(data)


def read_response(response: httpx.Response, limit: int, deadline: Deadline) -> bytes:
    """An httpx streamed response's body whole, within ``limit`` bytes and ``deadline``.

    The deadline shuts the socket when it passes, so the read that was blocked
    fails; that failure is reported as the deadline, not as a network error.
    """
    deadline.attach(socket_of(response))
    try:
        return read_bounded(response.iter_bytes(), limit, deadline)
    except httpx.TransportError as exc:
        if deadline.expired():
            raise deadline.error() from exc
        raise
    finally:
        deadline.detach()


__all__ = ["Deadline", "read_bounded", "read_response", "socket_of"]
