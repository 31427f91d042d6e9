"""Connections raced over a name's addresses (``transcoder.eyeballs``): an
address that never answers or refuses gives way to the next, for the pools'
own connects and for those opened ahead. Against real servers on loopback; a
name's addresses are injected into the lookup, and an address routed nowhere
is a listener whose accept queue is full."""

from __future__ import annotations

import errno
import re
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.http_support import WAIT, Counting, blackhole
from transcoder import eyeballs, preconnect
from transcoder.httpclient import new_client

V6 = socket.AF_INET6
V4 = socket.AF_INET


def v4(port: int) -> tuple[Any, ...]:
    return (V4, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))


def v6(port: int) -> tuple[Any, ...]:
    return (V6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))


@pytest.fixture
def server() -> Iterator[Counting]:
    with Counting() as s:
        yield s


@pytest.fixture
def dead() -> Iterator[int]:
    with blackhole() as port:
        yield port


@pytest.fixture
def name(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[tuple[Any, ...]]], str]:
    """``name(addresses)``: a host name the lookup answers with these addresses, in this order."""
    real = socket.getaddrinfo
    answers: list[tuple[Any, ...]] = []

    def lookup(host: str, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        return list(answers) if host == "dual.test" else real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)

    def give(addresses: list[tuple[Any, ...]]) -> str:
        answers[:] = addresses
        return "dual.test"

    return give


def finishes(call: Callable[[], Any]) -> Any:
    """``call()``'s result, or a failure if it has not returned in WAIT seconds:
    what would wait out a dead address (tens of seconds, or the kernel's two
    minutes of SYN retries) instead of moving on."""
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(call()), daemon=True)
    worker.start()
    worker.join(WAIT)
    assert out, "still waiting on the address that never answers"
    return out[0]


def test_families_take_turns_from_the_first_one_given() -> None:
    given = [v6(1), v6(2), v4(3), v4(4), v4(5)]
    assert [a[4][1] for a in eyeballs.interleave(given)] == [1, 3, 2, 4, 5]
    assert eyeballs.interleave([v4(1), v4(2)]) == [v4(1), v4(2)]


def test_an_address_that_never_answers_gives_way_to_the_next(server: Counting, dead: int, name: Any) -> None:
    host = name([v4(dead), v4(server.port)])
    sock = finishes(lambda: eyeballs.connect(host, 0, None))
    with sock:
        assert sock.getpeername() == ("127.0.0.1", server.port) and sock.getblocking()
    server.wait_accepted(1)


def test_a_refused_address_gives_way_at_once(server: Counting, name: Any) -> None:
    with socket.socket() as closed:  # a port nobody listens on: refused
        closed.bind(("127.0.0.1", 0))
        host = name([v4(closed.getsockname()[1]), v4(server.port)])
        with eyeballs.connect(host, 0, WAIT) as sock:
            assert sock.getpeername()[1] == server.port


def test_every_address_refused_raises_the_last_refusal(name: Any) -> None:
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        last = b.getsockname()[1]
        host = name([v4(a.getsockname()[1]), v4(last)])
        with pytest.raises(OSError) as caught:
            eyeballs.connect(host, 0, WAIT)
    assert caught.value.errno == errno.ECONNREFUSED and f"127.0.0.1:{last}" in str(caught.value)


def test_the_timeout_bounds_the_whole_race(dead: int, name: Any) -> None:
    host = name([v4(dead), v4(dead)])
    with pytest.raises(TimeoutError, match=re.escape("dual.test:0: not connected within 0.6 s")):
        eyeballs.connect(host, 0, 0.6)


def test_a_client_connects_past_a_dead_address(server: Counting, dead: int, name: Any) -> None:
    """The pools' own connects: with a 60 s connect timeout, a dead first address
    would hold the request for 60 s before the next one was tried."""
    host = name([v4(dead), v4(server.port)])
    with new_client(timeout=httpx.Timeout(WAIT * 6)) as client:
        answer = finishes(lambda: client.get(f"http://{host}:{server.port}/"))
    assert answer.text == "ok"


def test_a_client_reports_a_dead_name_as_a_connect_timeout(dead: int, name: Any) -> None:
    host = name([v4(dead)])
    with new_client(timeout=httpx.Timeout(WAIT, connect=0.3)) as client, pytest.raises(httpx.ConnectTimeout):
        client.get(f"http://{host}:{dead}/")


def test_connections_opened_ahead_pass_a_dead_address(server: Counting, dead: int, name: Any) -> None:
    host = name([v4(dead), v4(server.port)])
    before = set(threading.enumerate())
    preconnect.open_ahead(host, server.port, 2)
    connector = (set(threading.enumerate()) - before).pop()
    for _ in range(2):
        sock = preconnect.take(host, server.port, WAIT / 2)  # the pool's wait: well under the connector's own limit
        assert sock is not None and sock.getpeername()[1] == server.port
        sock.close()
    server.wait_accepted(2)
    # The attempts at the dead address were dropped with the race: the connector
    # has nothing left to wait for (not its 10 s limit).
    connector.join(WAIT / 2)
    assert not connector.is_alive()
