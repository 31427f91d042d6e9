"""A slow-loris in front of a real server: a TCP proxy on 127.0.0.1 that
passes requests through and trickles chosen responses.

    with TrickleProxy("http://127.0.0.1:5001", match=b"GET /bucket/key", interval=0.5) as proxy:
        client = make_client(proxy.url)   # requests whose bytes contain `match` are answered
        ...                               # with the server's headers at once, then its body
        assert proxy.trickled             # one byte every `interval` seconds

Connections are kept alive by clients, so the proxy looks at every request
going up; once one matches, the rest of that connection's answer stream is
trickled after the end of the next header block, or, with ``headers=True``,
from its first byte (status line and headers trickled too).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit


class TrickleProxy:
    def __init__(self, target: str, *, match: bytes, interval: float = 0.5, headers: bool = False) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._match = match
        self.interval = interval
        self.headers = headers
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self.trickled = 0  # responses trickled
        self.trickled_bytes = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TrickleProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self._target, timeout=10)
            except OSError:
                return
            server.settimeout(None)
            armed = threading.Event()
            threading.Thread(target=self._up, args=(client, server, armed), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, armed), daemon=True).start()

    def _up(self, src: socket.socket, dst: socket.socket, armed: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if self._match in data:
                    armed.set()  # before the request goes on, so before its answer can come back
                dst.sendall(data)
        self._close(src, dst)

    def _down(self, src: socket.socket, dst: socket.socket, armed: threading.Event) -> None:
        pending = b""
        with contextlib.suppress(OSError):
            while not self._stop.is_set() and (data := src.recv(65536)):
                if not armed.is_set():
                    dst.sendall(data)
                    continue
                pending += data
                end = pending.find(b"\r\n\r\n")
                if end < 0 and not self.headers:
                    continue
                start = 0 if self.headers else end + 4  # where trickling begins
                dst.sendall(pending[:start])
                self.trickled += 1
                self._trickle(src, dst, pending[start:])
                return
        self._close(src, dst)

    def _trickle(self, src: socket.socket, dst: socket.socket, body: bytes) -> None:
        """One byte every interval, reading more from the server only when all is sent (so the
        proxy holds at most 64 KiB, and a test measuring memory measures the client's), until
        either side goes."""
        src.settimeout(0.01)
        while not self._stop.is_set():
            if not body:
                with contextlib.suppress(TimeoutError):
                    body = src.recv(65536)
            if body:
                dst.sendall(body[:1])
                body = body[1:]
                self.trickled_bytes += 1
            if self._stop.wait(self.interval):
                break
        self._close(src, dst)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
