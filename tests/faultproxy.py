"""A TCP proxy on 127.0.0.1 that forwards to a real server and injects faults.

    with FaultProxy("http://127.0.0.1:5001") as proxy:
        proxy.schedule(Fault.reset(after=1 << 20))             # next connection: RST after 1 MiB sent
        proxy.schedule(Fault.truncate(after=100, direction="down"), connections=None)  # every later one
        client = make_client(proxy.url)                         # same path and query, another port
        ...
        assert proxy.fired                                      # what happened, in order

A fault acts on one connection once ``after`` bytes have passed in its
direction (``"up"``: client to server; ``"down"``: server to client):

* ``reset``: both sockets closed with an RST (SO_LINGER 0): a cut cable.
* ``truncate``: both sides closed cleanly (FIN) mid-stream: a response that
  ends early, or a request body cut short.
* ``stall``: nothing more is forwarded for ``seconds`` (0: until the proxy
  closes), while the sockets stay open: a hung peer, for timeouts.
* ``delay``: ``seconds`` of latency before each later chunk.

``schedule(*faults, connections=k)`` gives those faults to each of the next
``k`` connections accepted (``None``: every connection until ``clear()``);
connections without a plan pass bytes through untouched. Bytes up to the
threshold are always forwarded, so ``after`` is exact.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

CHUNK = 64 << 10
ACTIONS = ("reset", "truncate", "stall", "delay")


@dataclass(frozen=True)
class Fault:
    action: str
    after: int = 0
    direction: str = "up"
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS or self.direction not in ("up", "down") or self.after < 0:
            raise ValueError(f"bad fault {self}")

    @classmethod
    def reset(cls, after: int = 0, direction: str = "up") -> Fault:
        return cls("reset", after, direction)

    @classmethod
    def truncate(cls, after: int = 0, direction: str = "down") -> Fault:
        return cls("truncate", after, direction)

    @classmethod
    def stall(cls, after: int = 0, seconds: float = 0.0, direction: str = "down") -> Fault:
        return cls("stall", after, direction, seconds)

    @classmethod
    def delay(cls, seconds: float, after: int = 0, direction: str = "down") -> Fault:
        return cls("delay", after, direction, seconds)


@dataclass
class _Plan:
    faults: tuple[Fault, ...]
    remaining: int | None


@dataclass
class _Conn:
    number: int
    client: socket.socket
    server: socket.socket
    faults: tuple[Fault, ...]
    closed: threading.Event = field(default_factory=threading.Event)
    pumps_done: int = 0

    def close(self, rst: bool) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                if rst:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # Wakes a pump blocked in recv() (close alone would not); SHUT_RD sends nothing,
                # so a reset still goes out as an RST when the socket closes.
                sock.shutdown(socket.SHUT_RD if rst else socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``target`` (``host:port`` or an http URL)."""

    def __init__(self, target: str, port: int = 0) -> None:
        parts = urlsplit(target if "//" in target else f"//{target}")
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._target_url = parts
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._plans: list[_Plan] = []
        self._conns: list[_Conn] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.connections = 0
        self.bytes = {"up": 0, "down": 0}
        self.fired: list[tuple[int, str, str, int]] = []  # (connection, action, direction, byte offset)

    @property
    def url(self) -> str:
        """The target URL with this proxy's host and port (path and query kept)."""
        return urlunsplit(("http", f"127.0.0.1:{self.port}", *self._target_url[2:]))

    def schedule(self, *faults: Fault, connections: int | None = 1) -> None:
        with self._lock:
            self._plans.append(_Plan(tuple(faults), connections))

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()

    def cut_all(self) -> None:
        """Reset every live connection now."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close(rst=True)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._spawn(self._accept_loop)
        return self

    def close(self) -> None:
        """Stops accepting, closes every connection and joins every thread."""
        self._stopping.set()
        self.cut_all()
        for thread in list(self._threads):
            thread.join(timeout=10)
        self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- forwarding ------------------------------------------------------------

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _take_faults(self) -> tuple[Fault, ...]:
        with self._lock:
            while self._plans:
                plan = self._plans[0]
                if plan.remaining is None:
                    return plan.faults
                if plan.remaining > 0:
                    plan.remaining -= 1
                    if plan.remaining == 0:
                        self._plans.pop(0)
                    return plan.faults
                self._plans.pop(0)
            return ()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            client.settimeout(None)
            faults = self._take_faults()
            with self._lock:
                self.connections += 1
                conn = _Conn(self.connections, client, server, faults)
                self._conns.append(conn)
            self._spawn(self._pump, conn, "up")
            self._spawn(self._pump, conn, "down")

    def _pump(self, conn: _Conn, direction: str) -> None:
        src, dst = (conn.client, conn.server) if direction == "up" else (conn.server, conn.client)
        pending = sorted((f for f in conn.faults if f.direction == direction), key=lambda f: f.after)
        passed, delay = 0, 0.0
        try:
            while not conn.closed.is_set():
                data = src.recv(CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                while data:
                    due = pending[0] if pending and pending[0].after < passed + len(data) else None
                    head = data if due is None else data[: max(0, due.after - passed)]
                    if head:
                        if delay:
                            time.sleep(delay)
                        dst.sendall(head)
                        passed += len(head)
                        with self._lock:
                            self.bytes[direction] += len(head)
                    data = data[len(head):]
                    if due is not None:
                        pending.pop(0)
                        delay = self._act(conn, due, passed, delay)
                        if conn.closed.is_set():
                            return
        except OSError:
            conn.close(rst=True)  # one side went away: make the other side see it too
        finally:
            self._pump_done(conn)

    def _pump_done(self, conn: _Conn) -> None:
        """The second pump to end closes the sockets: every connection is released."""
        with self._lock:
            conn.pumps_done += 1
            last = conn.pumps_done == 2
            if last:
                self._conns.remove(conn)
        if last:
            conn.close(rst=False)

    def _act(self, conn: _Conn, fault: Fault, offset: int, delay: float) -> float:
        with self._lock:
            self.fired.append((conn.number, fault.action, fault.direction, offset))
        if fault.action in ("reset", "truncate"):
            conn.close(rst=fault.action == "reset")
        elif fault.action == "stall" and fault.seconds:
            conn.closed.wait(fault.seconds)
        elif fault.action == "stall":
            self._stopping.wait()
        elif fault.action == "delay":
            return fault.seconds
        return delay
