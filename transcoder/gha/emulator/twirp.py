"""The v2 surface: Twirp JSON ``github.actions.results.api.v1.CacheService``.

Requests are accepted in snake_case (the toolkit, Go clients) or
lowerCamelCase (protobuf JSON), with int64 as a string or a number and
default-valued fields omitted. Responses are snake_case with int64 as
strings, which every known client parses. Errors are always Twirp JSON
``{"code", "msg"}``: the toolkit retries anything that is not JSON.
"""

from __future__ import annotations

import re
from typing import Any

from . import jwt
from .service import (
    AlreadyExists,
    CacheService,
    Invalid,
    RateLimited,
    Refused,
    WriteDenied,
    check_key,
    check_version,
    lookup_keys,
)
from .wire import BadBody, Request, Response, json_response, parse_json_object

SERVICE = "github.actions.results.api.v1.CacheService"
PREFIX = f"/twirp/{SERVICE}/"
METHODS = ("CreateCacheEntry", "FinalizeCacheEntryUpload", "GetCacheEntryDownloadURL")
BODY_LIMIT = 1 << 20
ALREADY_EXISTS = "cache entry with the same key, version, and scope already exists"
INSUFFICIENT_USAGE = "insufficient usage to create cache entry"

_STATUS = {"invalid_argument": 400, "malformed": 400, "out_of_range": 400, "unauthenticated": 401,
           "permission_denied": 403, "not_found": 404, "bad_route": 404, "already_exists": 409, "aborted": 409,
           "failed_precondition": 412, "resource_exhausted": 429, "unimplemented": 501, "internal": 500,
           "unknown": 500, "dataloss": 500, "unavailable": 503, "canceled": 408, "deadline_exceeded": 408}
_CODE_FOR_STATUS = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
                    408: "deadline_exceeded", 409: "already_exists", 412: "failed_precondition",
                    429: "resource_exhausted", 501: "unimplemented", 503: "unavailable"}


def error(code: str, msg: str, status: int | None = None, headers: dict[str, str] | None = None) -> Response:
    return json_response(status or _STATUS[code], {"code": code, "msg": msg}, headers)


def error_for_status(status: int, msg: str, headers: dict[str, str] | None = None) -> Response:
    """A Twirp error body for an injected HTTP status (502/504 have no Twirp code: 'unavailable')."""
    return error(_CODE_FOR_STATUS.get(status, "internal" if status == 500 else "unavailable"), msg, status, headers)


def operation(req: Request) -> str:
    method = req.path[len(PREFIX):] if req.path.startswith(PREFIX) else ""
    return method if req.method == "POST" and method in METHODS else "twirp.BadRoute"


def handle(service: CacheService, req: Request) -> Response:
    op = operation(req)
    if op == "twirp.BadRoute":
        return error("bad_route", f"no handler for path {req.path!r} ({req.method})")
    content_type = (req.header("Content-Type") or "application/json").split(";")[0].strip().lower()
    if content_type != "application/json":
        return error("bad_route", f"unexpected Content-Type: {content_type!r} (this server speaks JSON only)")
    try:
        grant = service.authorize(req.header("Authorization"))
    except jwt.TokenError as exc:
        return error("unauthenticated", str(exc))
    try:
        body = parse_json_object(req.body.read(BODY_LIMIT))
    except (ValueError, BadBody) as exc:
        return error("malformed", f"the json request could not be decoded: {exc}")
    try:
        return _METHODS[op](service, grant, body)
    except Invalid as exc:
        return error("invalid_argument", str(exc))
    except WriteDenied as exc:
        if service.config.write_denied == "permission_denied":
            return error("permission_denied", str(exc))
        return json_response(200, {"ok": False, "message": str(exc)})
    except RateLimited as exc:
        return error("resource_exhausted", str(exc), headers={"Retry-After": f"{exc.retry_after:.0f}"})


def field(body: dict[str, Any], name: str) -> Any:
    """A proto field by its snake_case name or its lowerCamelCase JSON name."""
    if name in body:
        return body[name]
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)
    return body.get(camel)


def int64(value: Any, name: str) -> int:
    """Protobuf JSON int64: a number or a decimal string; absent means 0."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Invalid(f"{name} must be an int64 (number or decimal string)")
    try:
        number = int(value)
    except ValueError as exc:
        raise Invalid(f"{name} must be an int64 (number or decimal string)") from exc
    if number < 0:
        raise Invalid(f"{name} must not be negative")
    return number


def _create(service: CacheService, grant: jwt.Grant, body: dict[str, Any]) -> Response:
    key, version = check_key(field(body, "key")), check_version(field(body, "version"))
    try:
        entry = service.reserve(grant, key, version)
    except AlreadyExists:
        return error("already_exists", ALREADY_EXISTS)
    return json_response(200, {"ok": True, "signed_upload_url": service.upload_url(entry)})


def _finalize(service: CacheService, grant: jwt.Grant, body: dict[str, Any]) -> Response:
    key, version = check_key(field(body, "key")), check_version(field(body, "version"))
    size = int64(field(body, "size_bytes"), "size_bytes")
    try:
        entry = service.finalize(grant, key, version, size)
    except Refused as exc:
        return json_response(200, {"ok": False, "message": str(exc)})
    return json_response(200, {"ok": True, "entry_id": str(entry.id)})


def _download_url(service: CacheService, grant: jwt.Grant, body: dict[str, Any]) -> Response:
    restore = field(body, "restore_keys") or []
    if not isinstance(restore, list):
        raise Invalid("restore_keys must be a list of strings")
    keys = lookup_keys(field(body, "key"), restore)
    entry = service.lookup(grant, keys, check_version(field(body, "version")))
    if entry is None:
        return json_response(200, {"ok": False})
    return json_response(200, {"ok": True, "signed_download_url": service.download_url(entry), "matched_key": entry.key})


_METHODS = {"CreateCacheEntry": _create, "FinalizeCacheEntryUpload": _finalize, "GetCacheEntryDownloadURL": _download_url}
