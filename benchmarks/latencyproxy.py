"""A TCP proxy on 127.0.0.1 that adds one-way latency and nothing else.

Each byte leaves the proxy ``delay`` seconds after it arrived, in both
directions, with no bandwidth limit: a request waits one round trip (two
delays) for its answer, while a long body streams at loopback speed once its
first byte is through. That is a long link as a client sees it, unlike a
proxy that sleeps before every chunk (which also throttles big bodies).

A client's ``connect()`` to the proxy returns at once, on loopback, where a
long link takes a round trip (SYN, then SYN-ACK) before the client can send.
So the first bytes of a new connection leave the proxy no earlier than two
delays after it was accepted, plus the delay itself: opening a connection
costs its round trip, as over a real link (``handshake=False`` drops this).

    with LatencyProxy(("127.0.0.1", 5000), delay=0.010) as proxy:   # 20 ms round trips
        ... talk to proxy.host ...
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
from types import TracebackType

CHUNK = 256 << 10


class _Connection:
    """Both sockets of one proxied connection, closed once both directions have ended."""

    def __init__(self, client: socket.socket, server: socket.socket, delay: float, handshake: bool) -> None:
        self._sockets = (client, server)
        self._open = 2
        self._lock = threading.Lock()
        for s in self._sockets:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # When the client could first send over a real link: after the SYN and the SYN-ACK.
        sendable = time.monotonic() + (2 * delay if handshake else 0.0)
        _Pipe(client, server, delay, self, sendable)
        _Pipe(server, client, delay, self, 0.0)

    def ended(self) -> None:
        with self._lock:
            self._open -= 1
            if self._open:
                return
        for s in self._sockets:
            s.close()


class _Pipe:
    """One direction of one connection: bytes read now, written ``delay`` later."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay: float, conn: _Connection,
                 sendable: float) -> None:
        self._src, self._dst, self._delay, self._conn = src, dst, delay, conn
        self._sendable = sendable
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._ready = threading.Condition()
        self._ended = False
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self._src.recv(CHUNK)
            except OSError:
                data = b""
            with self._ready:
                if data:
                    self._queue.append((max(time.monotonic(), self._sendable) + self._delay, data))
                else:
                    self._ended = True
                self._ready.notify()
            if not data:
                return

    def _write(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._queue or self._ended)
                if not self._queue:
                    break
                due, data = self._queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                self._dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            self._dst.shutdown(socket.SHUT_WR)  # the end, passed on after the bytes before it
        self._conn.ended()


class LatencyProxy:
    def __init__(self, target: tuple[str, int], delay: float, handshake: bool = True,
                 listen: str = "127.0.0.1") -> None:
        self._target = target
        self._delay = delay
        self._handshake = handshake
        self._listener = socket.create_server((listen, 0))
        self.host = f"{listen}:{self._listener.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            _Connection(client, socket.create_connection(self._target), self._delay, self._handshake)

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def __enter__(self) -> LatencyProxy:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


__all__ = ["LatencyProxy"]
