"""Routing, counters and fault injection in front of the three surfaces.

Every request is named by its operation (see :mod:`.faults`), counted, then
either handled or replaced by a pending fault. Routing:

    POST /twirp/github.actions.results.api.v1.CacheService/<Method>   v2
    <any prefix>/_apis/artifactcache/...                               v1
    /devstoreaccount1/actions-cache/<blob>?<sas>                       built-in blob plane
    GET /_emulator/state                                               counters and entries (JSON)
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from . import blobplane, rest, twirp
from .blobplane import BuiltinPlane, azure_error
from .faults import Fault, FaultPlan
from .service import CacheService
from .wire import Request, Response, json_response

_HTML = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
_AZURE_CODES = {500: "InternalError", 503: "ServerBusy", 429: "ServerBusy", 504: "OperationTimedOut"}


@dataclass(frozen=True)
class RequestRecord:
    operation: str
    method: str
    path: str  # without the query string, which may hold a SAS signature
    status: int  # 0 when the connection was dropped


STATE_PATH = "/_emulator/state"


def surface(req: Request) -> str:
    if req.path == STATE_PATH and req.method == "GET":
        return "admin"
    if req.path.startswith("/twirp/"):
        return "v2"
    if rest.MARKER in req.path:
        return "v1"
    if req.path.startswith(blobplane.CONTAINER_PATH):
        return "blob"
    return "none"


def operation(req: Request) -> str:
    kind = surface(req)
    if kind == "v2":
        return twirp.operation(req)
    if kind == "v1":
        return rest.operation(req)
    if kind == "blob":
        return blobplane.operation(req)
    return "admin.State" if kind == "admin" else "NotFound"


class App:
    """The request handler behind the HTTP server; thread-safe."""

    def __init__(self, service: CacheService, uploads: rest.V1Uploads, faults: FaultPlan,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.service = service
        self.uploads = uploads
        self.faults = faults
        self._sleep = sleep
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.records: deque[RequestRecord] = deque(maxlen=100_000)

    def __call__(self, req: Request) -> Response:
        op = operation(req)
        if op == "admin.State":  # introspection is neither counted nor subject to faults
            return self._state()
        with self._lock:
            self.counts[op] += 1
        fault = self.faults.take(op)
        response = self._handle(req) if fault is None else self._inject(fault, req)
        response.operation = op
        with self._lock:
            self.records.append(RequestRecord(op, req.method, req.path, 0 if response.drop else response.status))
        return response

    def _handle(self, req: Request) -> Response:
        kind = surface(req)
        if kind == "v2":
            return twirp.handle(self.service, req)
        if kind == "v1":
            return rest.handle(self.service, self.uploads, req)
        plane = self.service.plane
        if kind == "blob" and isinstance(plane, BuiltinPlane):
            return plane.handle(req)
        return json_response(404, {"code": "bad_route", "msg": f"no handler for path {req.path!r}"})

    def _state(self) -> Response:
        """What the Python API shows, for users of the command line (no secrets: no URLs, no tokens)."""
        with self._lock:
            counts = dict(self.counts)
        entries = [asdict(e) for e in sorted(self.service.store.snapshot(), key=lambda e: e.id)]
        return json_response(200, {"counts": counts, "entries": entries, "faults": [asdict(f) for f in self.faults.pending()]})

    def _inject(self, fault: Fault, req: Request) -> Response:
        if fault.kind in ("delay", "drop"):
            if fault.kind == "drop":
                return Response(0, drop=True)
            self._sleep(fault.delay)
            return self._handle(req)
        if fault.kind in ("delay_after", "drop_after"):
            response = self._handle(req)
            if fault.kind == "drop_after":
                return Response(0, drop=True)
            self._sleep(fault.delay)
            return response
        return self._fault_response(fault, req)

    @staticmethod
    def _fault_response(fault: Fault, req: Request) -> Response:
        headers = {"Retry-After": f"{fault.retry_after:.0f}"} if fault.retry_after is not None else {}
        if fault.kind == "non_json":
            return Response(fault.status, _HTML, {"Content-Type": "text/html", **headers})
        kind = surface(req)
        if fault.kind == "quota":
            return twirp.error("resource_exhausted", f"{twirp.INSUFFICIENT_USAGE}: {fault.message}", fault.status, headers)
        if kind == "v1":
            if fault.status == 429:
                return rest.devops_error(429, "Request was blocked due to exceeding usage of resource 'Count' in "
                                         "namespace ''.", "RequestBlockedException", bom=True, headers=headers)
            return rest.devops_error(fault.status, fault.message, "InvalidOperationException", headers=headers)
        if kind == "blob":
            response = azure_error(fault.status, _AZURE_CODES.get(fault.status, "InternalError"), fault.message)
            response.headers.update(headers)
            return response
        return twirp.error_for_status(fault.status, fault.message, headers)
