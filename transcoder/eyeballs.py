"""Connecting to a name with several addresses without waiting on a dead one.

``socket.create_connection`` tries a name's addresses one after the other,
each for the whole timeout: where the first one (often IPv6) is routed
nowhere, every connection waits out its connect timeout before the address
that works is tried. As in RFC 8305 ("Happy Eyeballs"), a :class:`Race`
starts with the first address, starts the next whenever ``ATTEMPT_DELAY``
passes without a connection or the attempt in flight fails, alternating
address families, and keeps the first connection made; the timeout bounds
the whole race. A name with one address connects as ``create_connection``
would.

Only the standard library is used: :mod:`transcoder.preconnect` runs races
while the HTTP stack is still loading, several on one selector; :func:`connect`
runs one on the calling thread.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any

# RFC 8305's recommended "Connection Attempt Delay".
ATTEMPT_DELAY = 0.25

AddrInfo = tuple[Any, ...]  # one getaddrinfo entry: family, type, proto, canonname, sockaddr


def interleave(addresses: Sequence[AddrInfo]) -> list[AddrInfo]:
    """The resolver's order, with families taking turns from the first one
    it gives (RFC 8305, section 4): v6, v4, v6, v4, ..."""
    by_family: dict[int, list[AddrInfo]] = {}
    for info in addresses:
        by_family.setdefault(info[0], []).append(info)
    queues = list(by_family.values())
    order = []
    while queues:
        order += [q.pop(0) for q in queues]
        queues = [q for q in queues if q]
    return order


class Race:
    """One connection raced over a name's addresses, driven by a selector
    loop: :meth:`advance` starts the attempts that are due (register each
    returned socket for ``EVENT_WRITE``), :meth:`ready` takes one that turned
    writable, :meth:`wake_at` says when the next attempt is due. Once one
    has won, the caller unregisters the attempts still ``live`` and calls
    :meth:`close`. Sockets are non-blocking until one wins."""

    def __init__(self, addresses: Iterable[AddrInfo], delay: float = ATTEMPT_DELAY) -> None:
        self._queue = interleave(list(addresses))
        self._delay = delay
        self._live: dict[socket.socket, Any] = {}  # attempts in flight, and where each goes
        self._due = 0.0  # when the next attempt may start while one is live
        self.error: OSError | None = None  # the last attempt's failure

    @property
    def live(self) -> list[socket.socket]:
        """The attempts in flight."""
        return list(self._live)

    @property
    def lost(self) -> bool:
        """Every address was tried and failed."""
        return not self._queue and not self._live

    def wake_at(self) -> float | None:
        """When :meth:`advance` will start the next attempt, if one waits."""
        return self._due if self._queue and self._live else None

    def advance(self, now: float) -> list[socket.socket]:
        """Start the next attempt if it is due (or none is in flight); the sockets started."""
        started: list[socket.socket] = []
        while self._queue and not started and (not self._live or now >= self._due):
            info = self._queue.pop(0)
            sock = self._start(info)
            if sock is not None:
                self._live[sock] = info[4]
                self._due = now + self._delay
                started.append(sock)
        return started

    def _start(self, info: AddrInfo) -> socket.socket | None:
        family, kind, proto, _, address = info
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as exc:  # a family this host cannot open at all
            self.error = exc
            return None
        sock.setblocking(False)
        try:
            code = sock.connect_ex(address)
        except OSError as exc:  # an address the family cannot take (a bad scope, say)
            code = exc.errno or errno.EINVAL
        if code in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            return sock
        sock.close()
        self.error = OSError(code, f"{os.strerror(code)} ({_spell(address)})")
        return None

    def ready(self, sock: socket.socket) -> socket.socket | None:
        """``sock`` turned writable: it is the connection, or it failed
        (closed; the next attempt is due now)."""
        address = self._live.pop(sock)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            sock.close()
            self.error = OSError(code, f"{os.strerror(code)} ({_spell(address)})")
            self._due = 0.0
            return None
        return sock

    def close(self) -> None:
        """Close the attempts still in flight."""
        for sock in self._live:
            sock.close()
        self._live.clear()


def _spell(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect(host: str, port: int, timeout: float | None) -> socket.socket:
    """A connected, blocking socket to ``host``:``port``, raced over its
    addresses; ``timeout`` bounds the whole race (TimeoutError). When every
    address fails, the last failure is raised (an OSError), as
    ``socket.create_connection`` does."""
    race = Race(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as selector:
            while True:
                now = time.monotonic()
                for sock in race.advance(now):
                    selector.register(sock, selectors.EVENT_WRITE)
                if race.lost:
                    raise race.error or OSError(errno.EHOSTUNREACH, f"{host}: no address to connect to")
                if deadline is not None and now >= deadline:
                    raise TimeoutError(f"{host}:{port}: not connected within {timeout} s")
                for key, _ in selector.select(seconds_until(now, deadline, race.wake_at())):
                    selector.unregister(key.fileobj)
                    won = race.ready(key.fileobj)  # type: ignore[arg-type]
                    if won is not None:
                        won.setblocking(True)
                        return won
    finally:
        race.close()


def seconds_until(now: float, *moments: float | None) -> float | None:
    """Seconds until the earliest of ``moments`` (None: wait without end), for a selector's timeout."""
    due = [m for m in moments if m is not None]
    return max(0.0, min(due) - now) if due else None


__all__ = ["ATTEMPT_DELAY", "Race", "connect", "interleave", "seconds_until"]
