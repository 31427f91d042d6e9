"""Whole-response deadlines: a server that trickles bytes must not hold a client forever.

Per-read timeouts bound how long one read waits, not how long a response
takes: a server sending one byte every few seconds passes every per-read
timeout. A :class:`Deadline` bounds the whole response: a fixed number of
seconds for small documents (manifests, records, JSON answers), or, for
big downloads, an allowance plus one second per ``min_rate`` bytes received,
so that a healthy download of any size passes and a trickle fails. Only time
spent waiting on the server counts: a deadline is paused while the caller
is busy elsewhere (a slow consumer is not a slow server).

It is enforced where the bytes are read:

* the project's httpx clients (:mod:`transcoder.httpclient`) bound every
  socket read, headers included, by the deadline of the calling thread's
  :func:`scope`, whose clock starts when the request has been sent;
* for libraries that read a whole chunk inside one call (botocore, the Azure
  SDK), a watcher thread shuts the response's socket down once the deadline
  has passed (:meth:`Deadline.attach`), which ends the blocked read with an
  error the caller turns into :meth:`Deadline.error`; their request, whose
  socket cannot be reached before the headers arrive, runs on a daemon
  thread waited for at most the deadline (:func:`call_within`).

The error is one line naming what was read and the cause.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from .errors import ManifestError, SinkError

T = TypeVar("T")
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
        self._paused_at: float | None = None
        self._sock: socket.socket | None = None

    def limit(self) -> float:
        earned = self.received / self.min_rate if self.min_rate else 0.0
        return self.start + self.seconds + earned

    def left(self) -> float:
        """Seconds until the deadline (negative once past); constant while paused."""
        return self.limit() - (self._paused_at or time.monotonic())

    def expired(self) -> bool:
        return self.fired or self.left() < 0

    def error(self) -> SinkError:
        took = (self._paused_at or time.monotonic()) - self.start
        rule = f"{self.seconds:g} s" + (f" plus 1 s per {self.min_rate:.0f} bytes" if self.min_rate else "")
        return SinkError(f"{self.what}: {self.received} bytes in {took:.1f} s, over the deadline of {rule}; "
                         "the server is too slow")

    def check(self) -> None:
        """Raise the deadline error if time is up."""
        if self.expired():
            raise self.error()

    def feed(self, n: int) -> None:
        """Count ``n`` bytes received; raise the deadline error if time is up."""
        self.received += n
        self.check()

    def restart(self) -> None:
        """A request was just sent: the time to its answer counts from now."""
        self.start, self._paused_at = time.monotonic(), None

    def pause(self) -> None:
        """Stop the clock: the caller is busy with something other than this response."""
        if self._paused_at is None:
            self._paused_at = time.monotonic()

    def resume(self) -> None:
        if self._paused_at is not None:
            self.start += time.monotonic() - self._paused_at
            self._paused_at = None

    def due(self) -> bool:
        """Past the deadline while running: the watcher may cut the socket."""
        return self._paused_at is None and time.monotonic() > self.limit()

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


_CURRENT = threading.local()


def call_within(deadline: Deadline, call: Callable[[], T]) -> T:
    """``call()`` (an SDK request whose socket cannot be reached before its
    response headers arrive) on a daemon thread, waited for at most the time
    left of ``deadline``. Past it the deadline error is raised here and the
    thread is left to end with its connection; it holds nothing else."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="bounded-call", daemon=True).start()
    if not done.wait(max(0.0, deadline.left())):
        deadline.fired = True
        raise deadline.error()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def current() -> Deadline | None:
    """The deadline of the innermost :func:`scope` on this thread, if any."""
    found: Deadline | None = getattr(_CURRENT, "deadline", None)
    return found


@contextlib.contextmanager
def scope(deadline: Deadline) -> Iterator[Deadline]:
    """Within, every read of the project's httpx clients on this thread ends by
    ``deadline`` (sync httpx reads in the calling thread). The deadline runs
    only inside its scopes; re-entering the current one changes nothing."""
    outer = current()
    if outer is deadline:
        yield deadline
        return
    _CURRENT.deadline = deadline
    deadline.resume()
    try:
        yield deadline
    finally:
        deadline.pause()
        _CURRENT.deadline = outer


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
                due = [d for d in self._watched if d.due()]
                self._watched.difference_update(due)
                if not self._watched and not due:
                    self._thread = None
                    return
            for deadline in due:
                deadline._fire()


_WATCHER = _Watcher()


def socket_of(response: object) -> socket.socket | None:
    """The socket under a requests, urllib3 or botocore response, if it can be found."""
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


def read_bounded(chunks: Iterable[bytes], limit: int, what: str) -> bytes:
    """A small document whole, refused over ``limit`` bytes; time is bounded by the
    caller's :func:`scope` (or by the reader of ``chunks``)."""
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise ManifestError(f"{what}: over the {limit} byte limit")
    return bytes(data)


__all__ = ["Deadline", "current", "read_bounded", "scope", "socket_of"]
