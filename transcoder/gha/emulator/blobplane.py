"""The built-in Azure Block Blob data plane, served by the emulator itself.

URLs look like Azurite's path-style ones,
``<emulator>/devstoreaccount1/actions-cache/<blob>?sv=..&sp=..&se=..&sig=..``.
Implemented: Put Blob, Put Block, Put Block List, Get Blob Properties (HEAD)
and Get Blob (with ``Range`` or ``x-ms-range``), with the status codes,
headers and XML error bodies of Azure Storage.
"""

from __future__ import annotations

import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote

from .blockstore import BlobInfo, BlobStoreError, BlockStore
from .sas import SasError, SasSigner
from .wire import BadBody, Request, Response

CONTAINER_PATH = "/devstoreaccount1/actions-cache/"
API_VERSION = "2025-05-05"
BLOCK_LIST_LIMIT = 8 << 20
_AUTH_MESSAGE = ("Server failed to authenticate the request. Make sure the value of Authorization header is formed "
                 "correctly including the signature.")


class BlobPlane(Protocol):
    """Where archive bytes live; the cache service only hands out URLs to it."""

    name: str

    def upload_url(self, blob: str, ttl: float) -> str: ...
    def download_url(self, blob: str, ttl: float) -> str: ...
    def committed_size(self, blob: str) -> int | None: ...
    def store_file(self, blob: str, path: Path) -> None: ...
    def seal(self, blob: str) -> None: ...
    def delete(self, blob: str) -> None: ...
    def read_all(self, blob: str) -> bytes: ...
    def close(self) -> None: ...


def azure_error(status: int, code: str, message: str, detail: str | None = None, version: str = API_VERSION) -> Response:
    request_id = str(uuid.uuid4())
    when = time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime())
    extra = f"<AuthenticationErrorDetail>{_xml_escape(detail)}</AuthenticationErrorDetail>" if detail else ""
    body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{_xml_escape(message)}\n'
            f"RequestId:{request_id}\nTime:{when}</Message>{extra}</Error>").encode()
    return Response(status, body, {"Content-Type": "application/xml", "x-ms-error-code": code,
                                   **_common_headers(version, request_id)})


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _common_headers(version: str, request_id: str | None = None) -> dict[str, str]:
    return {"x-ms-request-id": request_id or str(uuid.uuid4()), "x-ms-version": version,
            "Date": formatdate(usegmt=True), "Server": "Windows-Azure-Blob/1.0 Microsoft-HTTPAPI/2.0"}


def operation(req: Request) -> str:
    """The Azure operation name of a data-plane request (for counters and faults)."""
    comp = req.param("comp")
    if req.method == "PUT":
        return {"block": "PutBlock", "blocklist": "PutBlockList"}.get(comp or "", "PutBlob")
    return {"GET": "GetBlob", "HEAD": "GetBlobProperties"}.get(req.method, "blob.Unsupported")


class BuiltinPlane:
    """Signed URLs to, and the HTTP surface of, a :class:`BlockStore`."""

    name = "builtin"

    def __init__(self, root: Path, secret: bytes, clock: Callable[[], float]) -> None:
        self.store = BlockStore(root)
        self.signer = SasSigner(secret, clock)
        self.base_url = ""  # set once the server has bound its port

    def _url(self, blob: str, permissions: str, ttl: float) -> str:
        path = CONTAINER_PATH + quote(blob)
        return f"{self.base_url}{path}?{self.signer.query(path, permissions, ttl)}"

    def upload_url(self, blob: str, ttl: float) -> str:
        self.store.register(blob)
        return self._url(blob, "cw", ttl)

    def download_url(self, blob: str, ttl: float) -> str:
        return self._url(blob, "r", ttl)

    def committed_size(self, blob: str) -> int | None:
        info = self.store.info(blob)
        return None if info is None else info.size

    def store_file(self, blob: str, path: Path) -> None:
        self.store.adopt(blob, path)

    def seal(self, blob: str) -> None:
        self.store.seal(blob)

    def delete(self, blob: str) -> None:
        self.store.delete(blob)

    def read_all(self, blob: str) -> bytes:
        info = self.store.info(blob)
        if info is None:
            raise KeyError(blob)
        return b"".join(self.store.read(info, 0, info.size - 1))

    def close(self) -> None:
        pass

    # -- HTTP --------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        version = req.header("x-ms-version") or API_VERSION
        blob = unquote(req.path[len(CONTAINER_PATH):])
        need = "r" if req.method in ("GET", "HEAD") else "w"
        try:
            self.signer.check(req.path, req.query, need)
        except SasError as exc:
            if exc.code == "AuthenticationFailed":
                return azure_error(403, exc.code, _AUTH_MESSAGE, str(exc), version)
            return azure_error(403, exc.code, "This request is not authorized to perform this operation using "
                               "this permission.", version=version)
        try:
            return self._dispatch(req, blob, version)
        except BlobStoreError as exc:
            return azure_error(exc.status, exc.code, str(exc), version=version)
        except BadBody as exc:
            return azure_error(400, "InvalidInput", f"One of the request inputs is not valid: {exc}", version=version)

    def _dispatch(self, req: Request, blob: str, version: str) -> Response:
        op = operation(req)
        if op == "PutBlob":
            return self._put_blob(req, blob, version)
        if op == "PutBlock":
            self.store.put_block(blob, req.param("blockid") or "", req.body)
            return Response(201, headers={**_common_headers(version), "x-ms-request-server-encrypted": "true"})
        if op == "PutBlockList":
            info = self.store.put_block_list(blob, _parse_block_list(req.body.read(BLOCK_LIST_LIMIT)))
            return Response(201, headers=self._written(info, version))
        if op in ("GetBlob", "GetBlobProperties"):
            return self._get(req, blob, version)
        return azure_error(405, "UnsupportedHttpVerb", "The resource doesn't support specified Http Verb.", version=version)

    def _put_blob(self, req: Request, blob: str, version: str) -> Response:
        kind = req.header("x-ms-blob-type")
        if kind is None:
            return azure_error(400, "MissingRequiredHeader", "An HTTP header that's mandatory for this request is "
                               "not specified (x-ms-blob-type).", version=version)
        if kind != "BlockBlob":
            return azure_error(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the "
                               "correct format (x-ms-blob-type: only BlockBlob is supported).", version=version)
        return Response(201, headers=self._written(self.store.put_blob(blob, req.body), version))

    @staticmethod
    def _written(info: BlobInfo, version: str) -> dict[str, str]:
        return {**_common_headers(version), "ETag": info.etag, "Last-Modified": info.last_modified,
                "x-ms-request-server-encrypted": "true"}

    def _get(self, req: Request, blob: str, version: str) -> Response:
        info = self.store.info(blob)
        if info is None:
            return azure_error(404, "BlobNotFound", "The specified blob does not exist.", version=version)
        headers = {**_common_headers(version), "ETag": info.etag, "Last-Modified": info.last_modified,
                   "Accept-Ranges": "bytes", "x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream",
                   "x-ms-lease-status": "unlocked", "x-ms-lease-state": "available"}
        if req.method == "HEAD":
            return Response(200, headers={**headers, "Content-Length": str(info.size)})
        spec = req.header("x-ms-range") or req.header("Range")
        span = _parse_range(spec, strict=req.header("x-ms-range") is not None)
        if span is None:
            stream = self.store.read(info, 0, info.size - 1)
            return Response(200, headers={**headers, "Content-Length": str(info.size)}, stream=stream)
        start, end = span
        if start >= info.size:
            error = azure_error(416, "InvalidRange", "The range specified is invalid for the current size of the "
                                "resource.", version=version)
            error.headers["Content-Range"] = f"bytes */{info.size}"
            return error
        end = min(end if end is not None else info.size - 1, info.size - 1)
        headers.update({"Content-Length": str(end - start + 1), "Content-Range": f"bytes {start}-{end}/{info.size}"})
        return Response(206, headers=headers, stream=self.store.read(info, start, end))


def _parse_range(spec: str | None, strict: bool) -> tuple[int, int | None] | None:
    """``bytes=a-b`` or ``bytes=a-``; a malformed ``Range`` is ignored, a malformed ``x-ms-range`` refused."""
    if not spec:
        return None
    unit, _, span = spec.strip().partition("=")
    first, dash, last = span.partition("-")
    try:
        if unit.strip() != "bytes" or not dash or "," in span:
            raise ValueError(spec)
        start = int(first)
        end = int(last) if last.strip() else None
        if start < 0 or (end is not None and end < start):
            raise ValueError(spec)
    except ValueError:
        if strict:
            raise BlobStoreError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the "
                                 "correct format (x-ms-range).") from None
        return None
    return start, end


def _parse_block_list(raw: bytes) -> list[tuple[str, str]]:
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise BlobStoreError(400, "InvalidXmlDocument", "XML specified is not syntactically valid.") from exc
    if root.tag != "BlockList":
        raise BlobStoreError(400, "InvalidXmlDocument", "XML specified is not a BlockList.")
    wanted = []
    for child in root:
        if child.tag not in ("Latest", "Committed", "Uncommitted"):
            raise BlobStoreError(400, "InvalidXmlNodeValue", f"Unexpected element {child.tag!r} in the block list.")
        wanted.append((child.tag, (child.text or "").strip()))
    return wanted
