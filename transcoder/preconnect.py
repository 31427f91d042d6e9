"""Connections opened while the program is still loading.

A conversion from or to a registry spends its first 0.1 s importing the HTTP
stack and the pipeline, and only then opens its first connection: on a long
link each new connection then costs a round trip (the TCP handshake), and
over TLS another one or two, before its request can leave, and the first
requests of a conversion (the manifest, the configs, the blobs, the upload
sessions) go out on several connections at once. :func:`open_ahead`, called
as soon as the hosts are known, starts those handshakes (and the name lookup
before them) on one thread per host; the connection pools of
:mod:`transcoder.httpclient` then take these sockets (:func:`take`) instead
of connecting, waiting for one still on its way rather than starting
another.

Only the standard library is imported here (and :mod:`transcoder.tls`, which
imports no more), so the handshakes start before httpx has loaded. Nothing is sent on a socket before a pool takes it (but
the TLS handshake, when asked for). A socket not taken within ``MAX_AGE``
seconds, or closed by its server meanwhile, is never handed out; sockets
never taken close when the process exits. Nothing is opened ahead when a
proxy variable is set, since the connections would then go to the proxy.

A registry that may be plain HTTP (on loopback, or insecure) is first asked
whether it speaks TLS at all, which costs its client a round trip before its
first request: :func:`probe_ahead` asks during the imports instead, on a
connection of its own, and :func:`speaks_tls` gives the answer.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable

from . import tls
from .eyeballs import Race, connect, seconds_until

# Servers close a connection that sends nothing for a while (tens of seconds
# in common front ends); a socket older than this is not trusted to be open.
MAX_AGE = 5.0
CONNECT_TIMEOUT = 10.0
# A server that neither ends a TLS handshake nor fails it within this is taken
# for plain HTTP, as the registry client's own probe, bounded by this too, takes it.
PROBE_TIMEOUT = 5.0
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")

_Key = tuple[str, int]


def _key(host: str, port: int) -> _Key:
    return host.strip("[]"), port  # an IPv6 literal as a URL writes it, as socket wants it


class _Pending:
    """One connection, made by the connecting thread of its host."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._guard = threading.Lock()
        self._sock: socket.socket | None = None
        self._made = 0.0
        self._dropped = False

    def finish(self, sock: socket.socket | None) -> None:
        with self._guard:
            if (self._dropped or self._done.is_set()) and sock is not None:
                sock.close()
                sock = None
            if not self._done.is_set():
                self._sock, self._made = sock, time.monotonic()
                self._done.set()

    def wait(self, timeout: float | None) -> socket.socket | None:
        """The socket once connected, if it is still fit for a first request,
        else None; TimeoutError if its handshakes have not ended in ``timeout``."""
        if not self._done.wait(timeout):
            self.drop()
            raise TimeoutError(f"connection opened ahead: not connected within {timeout} s")
        sock = self._sock
        # A TLS 1.3 server sends its session tickets unasked, so only a plain socket is checked for bytes.
        if sock is not None and (time.monotonic() - self._made > MAX_AGE
                                 or not (isinstance(sock, ssl.SSLSocket) or _quiet(sock))):
            sock.close()
            return None
        return sock

    def drop(self) -> None:
        """Close the socket, now or once its handshake ends."""
        with self._guard:
            self._dropped = True
            if self._sock is not None:
                self._sock.close()


class _Connector:
    """Makes a host's connections side by side, on one thread: a thread per
    connection would cost the importing main thread a GIL hand-over at each
    start, and a handshake needs no thread of its own. Each connection is a
    :class:`~transcoder.eyeballs.Race` over the name's addresses, as the
    pools' own connects are: an address that refuses, or has not answered
    within the attempt delay, gives way to the next. With ``secure``, each
    connection also makes its TLS handshake, with the context that function
    returns (called on this thread, once the TCP handshakes are under way)."""

    def __init__(self, key: _Key, pending: list[_Pending], secure: Callable[[], ssl.SSLContext] | None) -> None:
        self._key, self._pending, self._secure = key, pending, secure
        self._context: ssl.SSLContext | None = None
        self._selector = selectors.DefaultSelector()
        self._races: dict[_Pending, Race] = {}

    def run(self) -> None:
        try:
            with contextlib.suppress(OSError):  # else the pool looks the name up itself, and reports what fails
                addresses = socket.getaddrinfo(*self._key, type=socket.SOCK_STREAM)
                self._races = {p: Race(addresses) for p in self._pending}
            with self._selector:
                self._loop()
        finally:
            for race in self._races.values():
                race.close()
            for p in self._pending:  # whatever went wrong here, no taker waits for it
                p.finish(None)

    def _advance(self, now: float) -> None:
        """Start the attempts that are due; a connection whose every address failed is done."""
        for pending, race in list(self._races.items()):
            for sock in race.advance(now):
                self._selector.register(sock, selectors.EVENT_WRITE, pending)
            if race.lost:
                del self._races[pending]
                pending.finish(None)

    def _loop(self) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while (now := time.monotonic()) < deadline:
            self._advance(now)
            if not self._selector.get_map():
                return
            wakes = (r.wake_at() for r in self._races.values())
            for ready, _ in self._selector.select(seconds_until(now, deadline, *wakes)):
                self._selector.unregister(ready.fileobj)
                self._step(ready.fileobj, ready.data)  # type: ignore[arg-type]
        for left_over in list(self._selector.get_map().values()):  # not connected in time
            self._selector.unregister(left_over.fileobj)
            left_over.fileobj.close()  # type: ignore[union-attr]

    def _step(self, sock: socket.socket, pending: _Pending) -> None:
        """Go on with ``sock`` now that it is ready: an attempt has connected
        or failed, or its TLS handshake can go on."""
        if not isinstance(sock, ssl.SSLSocket):
            race = self._races[pending]
            if race.ready(sock) is None:
                return  # failed: the race's next attempt starts in the loop, or the race is lost
            for loser in race.live:
                self._selector.unregister(loser)
            race.close()
            del self._races[pending]
            if self._secure is None:
                sock.setblocking(True)
                pending.finish(sock)
                return
            try:
                sock = self._wrap(sock)
            except (OSError, ValueError):  # no context (a bad CA file, say): the pool's attempt reports it
                sock.close()
                pending.finish(None)
                return
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.register(sock, selectors.EVENT_READ, pending)
        except ssl.SSLWantWriteError:
            self._selector.register(sock, selectors.EVENT_WRITE, pending)
        except (OSError, ValueError):  # not TLS, or not trusted: the pool's own attempt reports it
            sock.close()
            pending.finish(None)
        else:
            sock.setblocking(True)
            pending.finish(sock)

    def _wrap(self, sock: socket.socket) -> ssl.SSLSocket:
        if self._context is None:
            assert self._secure is not None
            self._context = self._secure()
            self._context.set_alpn_protocols(["http/1.1"])  # what httpcore sets before its own handshake
        return self._context.wrap_socket(sock, server_hostname=self._key[0], do_handshake_on_connect=False)


def _quiet(sock: socket.socket) -> bool:
    """True when the server has neither closed the connection nor sent anything on it."""
    sock.setblocking(False)  # a socket with a timeout would wait for bytes, MSG_DONTWAIT or not
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
    return False  # end of stream, or bytes no request asked for


_lock = threading.Lock()
_pending: dict[_Key, list[_Pending]] = {}


def proxied() -> bool:
    """True when the environment names a proxy, which httpx would connect to instead."""
    return any(os.environ.get(name) or os.environ.get(name.upper()) for name in PROXY_VARIABLES)


def open_ahead(host: str, port: int, count: int, secure: Callable[[], ssl.SSLContext] | None = None) -> None:
    """Start ``count`` connections to ``host``:``port`` for the pools to take;
    with ``secure``, TLS connections made with the context it returns (which
    must be the one the pools use: see :class:`transcoder.httpclient.Secured`)."""
    if count <= 0 or proxied():
        return
    key = _key(host, port)
    made = [_Pending() for _ in range(count)]
    with _lock:
        _pending.setdefault(key, []).extend(made)
    threading.Thread(target=_Connector(key, made, secure).run, name="preconnect", daemon=True).start()


def take(host: str, port: int, timeout: float | None) -> socket.socket | None:
    """A connection opened ahead to ``host``:``port``, waiting up to ``timeout``
    for one still being made; None when there is none (connect as usual).

    TimeoutError when the one waited for has not connected in ``timeout``: a
    connection started now would wait longer still, so the caller's connect
    fails as its own would have (and a retry connects anew)."""
    key = _key(host, port)
    while True:
        with _lock:
            queue = _pending.get(key)
            if not queue:
                return None
            pending = queue.pop(0)
        sock = pending.wait(timeout)
        if sock is not None:
            return sock


class _Probe:
    """Whether one server answered a TLS handshake: True, False, or None (undecided)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.tls: bool | None = None
        self.made = 0.0

    def run(self, key: _Key) -> None:
        try:
            sock = connect(*key, CONNECT_TIMEOUT)
        except OSError:  # not even TCP: undecided, the client's own probe reports it
            sock = None
        if sock is not None:
            with sock:
                self.tls = _speaks_tls(sock, key[0])
        self.made = time.monotonic()
        self.done.set()


def _speaks_tls(sock: socket.socket, name: str) -> bool:
    """Make a TLS handshake on ``sock``, trusting anything: only whether the
    server speaks TLS is asked (whether to trust it is the client's question).
    A plain HTTP server answers the client's hello with an HTTP error, or
    closes: False. No answer in time is False too, as for the registry
    client's own probe (:mod:`transcoder.registry.transport`)."""
    sock.settimeout(PROBE_TIMEOUT)
    try:
        with tls.context(verify=False).wrap_socket(sock, server_hostname=name, do_handshake_on_connect=False) as conn:
            conn.do_handshake()
    except (ssl.SSLError, OSError):  # TimeoutError included
        return False
    return True


_probes: dict[_Key, _Probe] = {}


def probe_ahead(host: str, port: int) -> None:
    """Start finding out whether ``host``:``port`` speaks TLS, for :func:`speaks_tls`."""
    if proxied():
        return
    key = _key(host, port)
    with _lock:
        if key in _probes:
            return
        probe = _probes[key] = _Probe()
    threading.Thread(target=probe.run, args=(key,), name="tls-probe", daemon=True).start()


def speaks_tls(host: str, port: int, timeout: float | None) -> bool | None:
    """What :func:`probe_ahead` found for ``host``:``port``, waiting up to
    ``timeout`` for it: True or False, or None when it was not asked, has not
    answered in time, could not connect, or answered more than ``MAX_AGE``
    seconds ago (another server may listen there by now)."""
    with _lock:
        probe = _probes.get(_key(host, port))
    if probe is None or not probe.done.wait(timeout) or time.monotonic() - probe.made > MAX_AGE:
        return None
    return probe.tls


def forget() -> None:
    """Close every connection not yet taken, and forget what was probed (tests;
    a process that changes its mind)."""
    with _lock:
        queues = list(_pending.values())
        _pending.clear()
        _probes.clear()
    for queue in queues:
        for pending in queue:
            pending.drop()


__all__ = ["MAX_AGE", "forget", "open_ahead", "probe_ahead", "proxied", "speaks_tls", "take"]
