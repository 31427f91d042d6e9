"""Fault injection: "the next N calls to X fail with Y", and an upload budget.

Operations are named as the counters name them: the Twirp method
(``CreateCacheEntry``, ``FinalizeCacheEntryUpload``,
``GetCacheEntryDownloadURL``), the v1 REST calls (``v1.GetCache``,
``v1.ListCaches``, ``v1.ReserveCache``, ``v1.UploadChunk``, ``v1.CommitCache``)
and the blob plane (``PutBlob``, ``PutBlock``, ``PutBlockList``, ``GetBlob``,
``GetBlobProperties``); ``*`` matches every operation.

Kinds:
  ``error``        answer ``status`` with the surface's error body (JSON or XML)
  ``non_json``     answer ``status`` (default 502) with an HTML body
  ``quota``        a Twirp error whose message says "insufficient usage"
  ``delay``        sleep ``delay`` s, then handle the call normally
  ``delay_after``  handle the call (state is committed), then sleep before answering
  ``drop``         close the connection without handling the call
  ``drop_after``   handle the call, then close without answering (the ambiguous timeout)
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import UsageError

KINDS = ("error", "non_json", "quota", "delay", "delay_after", "drop", "drop_after")
UPLOAD_OPERATIONS = ("CreateCacheEntry", "v1.ReserveCache")


@dataclass
class Fault:
    operation: str
    kind: str = "error"
    status: int = 0  # 0: the kind's default (error 500, non_json 502, quota 429)
    count: int | None = 1  # None: every call from now on
    retry_after: float | None = None
    delay: float = 0.0
    message: str = "injected fault"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"fault kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if not self.status:
            self.status = {"non_json": 502, "quota": 429}.get(self.kind, 500)


class FaultPlan:
    """Pending faults, consumed first-in first-out per operation; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.fired: list[tuple[str, str]] = []  # (operation, kind) of every fault that fired

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, operation: str) -> Fault | None:
        """The fault that applies to this call, if any (consuming one of its count)."""
        with self._lock:
            for fault in self._faults:
                if fault.operation in (operation, "*"):
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count <= 0:
                            self._faults.remove(fault)
                    self.fired.append((operation, fault.kind))
                    return fault
        return None


class UploadBudget:
    """At most ``per_minute`` entry uploads per repository in any 60 s window (GitHub, 2026)."""

    def __init__(self, per_minute: Callable[[], int | None], clock: Callable[[], float]) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: dict[str, deque[float]] = defaultdict(deque)

    def admit(self, repository: str) -> float | None:
        """None if the call may proceed, else the seconds to wait (for Retry-After)."""
        limit = self.per_minute()
        if limit is None:
            return None
        now = self._clock()
        with self._lock:
            calls = self._calls[repository]
            while calls and calls[0] <= now - 60:
                calls.popleft()
            if len(calls) >= limit:
                return max(1.0, math.ceil(calls[0] + 60 - now))
            calls.append(now)
            return None


def parse_fault(spec: str) -> Fault:
    """``OPERATION=KIND_OR_STATUS[,count=N|*][,retry_after=S][,delay=S][,status=N]`` (CLI form).

    Examples: ``CreateCacheEntry=503,count=2``; ``*=429,retry_after=5``;
    ``CreateCacheEntry=drop_after``; ``GetCacheEntryDownloadURL=non_json``.
    """
    operation, sep, rest = spec.partition("=")
    if not sep or not operation or not rest:
        raise UsageError(f"--fault {spec!r}: expected OPERATION=KIND[,count=N][,retry_after=S][,delay=S]")
    head, *options = rest.split(",")
    fault = Fault(operation, "error", int(head)) if head.isdigit() else Fault(operation, head)
    for option in options:
        name, _, value = option.partition("=")
        try:
            _apply(fault, name.strip(), value.strip())
        except ValueError as exc:
            raise UsageError(f"--fault {spec!r}: bad value for {name!r}") from exc
    return fault


def _apply(fault: Fault, name: str, value: str) -> None:
    if name == "count":
        fault.count = None if value in ("*", "inf") else int(value)
    elif name == "retry_after":
        fault.retry_after = float(value)
    elif name == "delay":
        fault.delay = float(value)
    elif name == "status":
        fault.status = int(value)
    elif name == "message":
        fault.message = value
    else:
        raise UsageError(f"--fault option {name!r}: expected count, retry_after, delay, status or message")
