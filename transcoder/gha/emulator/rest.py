"""The v1 surface: the legacy ``_apis/artifactcache`` REST API (GHES, act).

Chunks arrive by ``PATCH caches/{id}`` with ``Content-Range: bytes a-b/*``,
concurrently, out of order and often ``Transfer-Encoding: chunked``; each is
written at its offset in one sparse file per entry. ``POST caches/{id}``
commits when the uploaded bytes are contiguous from 0 and as long as the
``size`` given; the file then becomes the entry's blob in the data plane.
Errors use the Azure DevOps JSON shape clients look at (``typeKey``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import jwt
from .service import (
    AlreadyExists,
    CacheService,
    Invalid,
    NotReserved,
    RateLimited,
    Refused,
    WriteDenied,
    check_key,
    check_version,
    lookup_keys,
)
from .store import Entry
from .twirp import int64
from .wire import BadBody, Request, Response, json_response, parse_json_object

MARKER = "/_apis/artifactcache/"
BODY_LIMIT = 1 << 20
MAX_OFFSET = 1 << 40  # refuse absurd offsets instead of making a sparse file of petabytes
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\*|\d+)")
_TYPES = {
    "ArtifactCacheItemAlreadyExistsException": "Microsoft.Azure.DevOps.ArtifactCache.WebApi",
    "RequestBlockedException": "Microsoft.TeamFoundation.Framework.Server",
    "ArgumentException": "System",
    "VssUnauthorizedException": "Microsoft.VisualStudio.Services.Common",
    "ArtifactCacheNotFoundException": "Microsoft.Azure.DevOps.ArtifactCache.WebApi",
    "InvalidOperationException": "System",
    "UnauthorizedAccessException": "System",
}


def devops_error(status: int, message: str, type_key: str = "ArgumentException", *, bom: bool = False,
                 headers: dict[str, str] | None = None) -> Response:
    """An Azure DevOps error body; ``bom`` prefixes the UTF-8 BOM the real 429 carried."""
    namespace = _TYPES.get(type_key, "System")
    body = {"$id": "1", "innerException": None, "message": message, "typeName": f"{namespace}.{type_key}, {namespace}",
            "typeKey": type_key, "errorCode": 0, "eventId": 3000}
    response = json_response(status, body, headers)
    if bom:
        response.body = b"\xef\xbb\xbf" + response.body
    return response


@dataclass
class _Upload:
    path: Path
    ranges: list[tuple[int, int]] = field(default_factory=list)  # inclusive (start, end)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def contiguous(self) -> int:
        """Length of the uploaded prefix starting at byte 0."""
        end = 0
        for start, last in sorted(self.ranges):
            if start > end:
                break
            end = max(end, last + 1)
        return end

    def covered(self) -> int:
        return max((last + 1 for _, last in self.ranges), default=0)


class V1Uploads:
    """Per-entry chunk files of v1 uploads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._uploads: dict[int, _Upload] = {}

    def get(self, entry_id: int) -> _Upload:
        with self._lock:
            upload = self._uploads.get(entry_id)
            if upload is None:
                upload = _Upload(self.root / f"v1-{entry_id}.part")
                upload.path.touch()
                self._uploads[entry_id] = upload
            return upload

    def pop(self, entry_id: int) -> _Upload | None:
        with self._lock:
            return self._uploads.pop(entry_id, None)

    def discard(self, entry: Entry) -> None:
        upload = self.pop(entry.id)
        if upload is not None:
            upload.path.unlink(missing_ok=True)


def operation(req: Request) -> str:
    resource = req.path.split(MARKER, 1)[1] if MARKER in req.path else ""
    if resource == "cache" and req.method == "GET":
        return "v1.GetCache"
    if resource == "caches":
        return {"GET": "v1.ListCaches", "POST": "v1.ReserveCache"}.get(req.method, "v1.BadRoute")
    if re.fullmatch(r"caches/\d+", resource):
        return {"PATCH": "v1.UploadChunk", "POST": "v1.CommitCache"}.get(req.method, "v1.BadRoute")
    return "v1.BadRoute"


def handle(service: CacheService, uploads: V1Uploads, req: Request) -> Response:
    op = operation(req)
    if op == "v1.BadRoute":
        return devops_error(404, f"No route for {req.method} {req.path}", "InvalidOperationException")
    try:
        grant = service.authorize(req.header("Authorization"))
    except jwt.TokenError as exc:
        return devops_error(401, str(exc), "VssUnauthorizedException")
    try:
        return _dispatch(op, service, uploads, grant, req)
    except (Invalid, BadBody, ValueError) as exc:
        return devops_error(400, str(exc))
    except WriteDenied as exc:
        return devops_error(403, str(exc), "UnauthorizedAccessException")
    except (NotReserved, Refused) as exc:
        return devops_error(400, str(exc), "ArtifactCacheNotFoundException")
    except RateLimited as exc:
        return devops_error(429, "Request was blocked due to exceeding usage of resource 'Count' in namespace ''.",
                            "RequestBlockedException", bom=True, headers={"Retry-After": f"{exc.retry_after:.0f}"})


def _dispatch(op: str, service: CacheService, uploads: V1Uploads, grant: jwt.Grant, req: Request) -> Response:
    if op == "v1.GetCache":
        return _get_cache(service, grant, req)
    if op == "v1.ListCaches":
        entries = service.store.listing(grant.repository, grant.readable, req.param("key") or "")
        return json_response(200, {"totalCount": len(entries), "artifactCaches": [_describe(e) for e in entries]})
    if op == "v1.ReserveCache":
        return _reserve(service, grant, parse_json_object(req.body.read(BODY_LIMIT)))
    entry_id = int(req.path.rsplit("/", 1)[1])
    if op == "v1.UploadChunk":
        return _upload_chunk(service, uploads, grant, entry_id, req)
    return _commit(service, uploads, grant, entry_id, parse_json_object(req.body.read(BODY_LIMIT)))


def _describe(entry: Entry) -> dict[str, Any]:
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(entry.created_at))
    return {"cacheKey": entry.key, "scope": entry.scope, "cacheVersion": entry.version, "creationTime": created}


def _get_cache(service: CacheService, grant: jwt.Grant, req: Request) -> Response:
    raw = req.param("keys")
    if not raw:
        raise Invalid("keys is required")
    keys = lookup_keys(*_split(raw), v1=True)
    entry = service.lookup(grant, keys, check_version(req.param("version")))
    if entry is None:
        return Response(204)
    return json_response(200, {**_describe(entry), "archiveLocation": service.download_url(entry)})


def _split(raw: str) -> tuple[str, list[str]]:
    first, *rest = raw.split(",")
    return first, rest


def _reserve(service: CacheService, grant: jwt.Grant, body: dict[str, Any]) -> Response:
    key, version = check_key(body.get("key"), v1=True), check_version(body.get("version"))
    size = int64(body.get("cacheSize"), "cacheSize") if body.get("cacheSize") is not None else None
    cap = service.config.max_entry_size
    if size is not None and cap is not None and size > cap:
        return devops_error(400, f"Cache size of ~{size >> 20} MB ({size} B) is over the data cap limit of "
                            f"{cap >> 20} MB, not saving cache.")
    try:
        entry = service.reserve(grant, key, version, size)
    except AlreadyExists:
        scope = grant.write_scope
        return devops_error(409, f"Cache already exists. Scope: {scope}, Key: {key}, Version: {version}",
                            "ArtifactCacheItemAlreadyExistsException")
    return json_response(201, {"cacheId": entry.id})


def _upload_chunk(service: CacheService, uploads: V1Uploads, grant: jwt.Grant, entry_id: int, req: Request) -> Response:
    match = _RANGE.fullmatch((req.header("Content-Range") or "").strip())
    if not match:
        raise Invalid("Content-Range must be 'bytes <start>-<end>/*'")
    start, end = int(match.group(1)), int(match.group(2))
    if end < start or end >= MAX_OFFSET:
        raise Invalid(f"Content-Range {start}-{end} is empty or beyond {MAX_OFFSET} bytes")
    service.store.reserved_by_id(grant.repository, entry_id)
    upload = uploads.get(entry_id)
    written = _write_at(upload.path, start, req)
    if written != end - start + 1:
        raise Invalid(f"body has {written} bytes but Content-Range {start}-{end} announces {end - start + 1}")
    with upload.lock:
        upload.ranges.append((start, end))
    return Response(204)


def _write_at(path: Path, offset: int, req: Request) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        written = 0
        for chunk in req.body.chunks():
            os.pwrite(fd, chunk, offset + written)  # pwrite: concurrent chunks never share a file position
            written += len(chunk)
        return written
    finally:
        os.close(fd)


def _commit(service: CacheService, uploads: V1Uploads, grant: jwt.Grant, entry_id: int, body: dict[str, Any]) -> Response:
    size = int64(body.get("size"), "size")
    service.store.reserved_by_id(grant.repository, entry_id)
    upload = uploads.get(entry_id)
    with upload.lock:
        contiguous, covered = upload.contiguous(), upload.covered()
    if contiguous != size or covered != size:
        raise Refused(f"Uploaded cache size {contiguous} (contiguous from 0; highest byte {covered}) does not match "
                      f"the expected size {size}.")
    uploads.pop(entry_id)
    os.truncate(upload.path, size)
    service.commit_v1(grant, entry_id, upload.path, size)
    return Response(204)
