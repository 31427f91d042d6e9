"""Bodies read from the connection itself (``httpclient.heads_apart`` and
``direct_body``), against a server on a real socket that sends its answer in
the pieces each test chooses, with pauses between them so that each arrives
in a read of its own."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from transcoder.httpclient import direct_body, heads_apart, new_client

BODY = hashlib.sha256(b"seed").digest() * 40_000  # 1.28 MB


@contextmanager
def server(pieces: list[bytes]) -> Iterator[str]:
    """Answers one request per connection with ``pieces``, 50 ms apart, then keeps the connection open."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                for piece in pieces:
                    conn.sendall(piece)
                    time.sleep(0.05)
                stop.wait(5)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/blob"
    finally:
        stop.set()
        listener.close()


def head(*fields: str) -> bytes:
    return ("HTTP/1.1 200 OK\r\n" + "".join(f"{f}\r\n" for f in fields) + "\r\n").encode()


@pytest.mark.parametrize("split", [1, 2, 3], ids=["cr", "crlf", "crlfcr"])
def test_a_head_end_split_across_reads_leaves_no_body_byte_to_h11(split: int) -> None:
    """The blank line that ends the head arrives in two reads: the body after
    it must still all come from the socket, none of it left inside h11."""
    whole = head(f"Content-Length: {len(BODY)}")
    cut = len(whole) - 4 + split
    with server([whole[:cut], whole[cut:] + BODY[:1000], BODY[1000:]]) as url, \
            new_client(verify=False, timeout=3.0) as client:
        with heads_apart():
            resp = client.send(client.build_request("GET", url), stream=True)
        body = direct_body(resp)
        assert body is not None
        assert b"".join(body) == BODY
        resp.close()


def test_a_short_body_read_from_the_socket_is_an_error() -> None:
    with server([head(f"Content-Length: {len(BODY) + 10}") + BODY]) as url, \
            new_client(verify=False, timeout=1.0) as client:
        with heads_apart():
            resp = client.send(client.build_request("GET", url), stream=True)
        body = direct_body(resp)
        assert body is not None
        with pytest.raises(httpx.ReadTimeout):
            b"".join(body)
        resp.close()


@pytest.mark.parametrize("fields", [("Transfer-Encoding: chunked",), ("Content-Length: 20", "Content-Encoding: gzip")],
                         ids=["chunked", "encoded"])
def test_bodies_that_are_not_plain_bytes_stay_with_httpx(fields: tuple[str, ...]) -> None:
    payload = b"14\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n" if "chunked" in fields[0] else b"y" * 20
    with server([head(*fields) + payload]) as url, new_client(verify=False, timeout=3.0) as client:
        with heads_apart():
            resp = client.send(client.build_request("GET", url), stream=True)
        assert direct_body(resp) is None
        assert len(b"".join(resp.iter_raw())) == 20
        resp.close()
