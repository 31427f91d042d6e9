"""A real HTTP server on loopback for the connection tests, and an address
that never answers."""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WAIT = 10.0


class _Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection serves a client's requests in turn

    def do_GET(self) -> None:
        server: Counting = self.server  # type: ignore[assignment]
        server.served.append(self.client_address)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


class Counting(ThreadingHTTPServer):
    """A real HTTP server on loopback that keeps the address of every connection it accepts."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Hello)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)  # accept() makes the handshake
        self.accepted: list[tuple[str, int]] = []
        self.served: list[tuple[str, int]] = []
        self.changed = threading.Condition()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        with self.changed:
            self.accepted.append(address)
            self.changed.notify_all()
        return sock, address

    def __exit__(self, *exc: object) -> None:
        self.shutdown()  # the serving thread ends, then the socket closes
        self.server_close()

    def wait_accepted(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.accepted) >= count, WAIT), self.accepted


@contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port whose connects never complete: a listener with a full
    accept queue, so the kernel drops new SYNs as on a route to nowhere."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        with selectors.DefaultSelector() as selector:
            while len(fillers) < 8:  # the queue holds one or two; a connect that does not complete shows it full
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
                fillers.append(sock)
                selector.register(sock, selectors.EVENT_WRITE)
                if not selector.select(0.3):
                    break
                selector.unregister(sock)
            else:
                raise AssertionError("the accept queue never filled")
        yield port
    finally:
        for sock in fillers:
            sock.close()
        listener.close()
