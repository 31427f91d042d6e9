"""Cache service v1 (GitHub Enterprise Server): REST under ``<ACTIONS_CACHE_URL>_apis/artifactcache/``.

Reserve (``POST caches``), upload chunks (``PATCH caches/{id}`` with
``Content-Range: bytes a-b/*``, several in flight, streamed while the blob is
produced), commit (``POST caches/{id}`` with the size), lookup
(``GET cache?keys=...&version=...``: 204 is a miss). Errors are
Azure-DevOps-style JSON; a conflict is 409 or a ``typeKey`` naming
``AlreadyExists``. Reserve, like v2's create, is not idempotent: after an
ambiguous failure the 409 that follows is reported as a Conflict.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from ..errors import AuthError, Conflict, SinkError, TransientError
from ..redact import Secret, scrub
from .blobplane import pieces
from .chunks import Chunk, ChunkPipe
from .client import CacheClient, CacheEntry, EntryUpload
from .retry import answer, is_retryable_status, retry_after, send_tracked

ACCEPT = "application/json;api-version=6.0-preview.1"


class RestClient(CacheClient):
    protocol = 1

    @property
    def base(self) -> str:
        return f"{self.config.api_root}_apis/artifactcache/"

    def _call(self, method: str, path: str, what: str, *, state: dict[str, bool] | None = None,
              **kwargs: Any) -> httpx.Response:
        headers = {"accept": ACCEPT, **self.auth, **kwargs.pop("headers", {})}
        body: Chunk | None = kwargs.pop("body", None)

        def attempt() -> httpx.Response:
            self.count(f"{method} {path.split('/')[0].split('?')[0]}")
            if body is not None:  # a fresh iterator for every attempt
                kwargs["content"] = pieces(body)
            request = self.http.build_request(method, self.base + path, headers=headers, **kwargs)
            resp = send_tracked(lambda: answer(self.http, request, what, self.policy.deadlines.answer), what, state)
            if resp.status_code >= 300:
                raise self._error(resp, what)
            return resp

        return self.policy.call(attempt, what)

    def _error(self, resp: httpx.Response, what: str) -> SinkError:
        text = resp.content.decode("utf-8-sig", "replace")
        try:
            obj = json.loads(text)
        except ValueError:
            obj = {}
        obj = obj if isinstance(obj, dict) else {}
        msg = scrub(str(obj.get("message") or text[:200] or resp.reason_phrase), self.config.token)
        detail = f"{what}: HTTP {resp.status_code}: {msg}"
        status = resp.status_code
        if status == 409 or "AlreadyExists" in str(obj.get("typeKey", "")):
            return Conflict(detail)
        if is_retryable_status(status):
            return TransientError(detail, retry_after(resp) if status == 429 else None)
        if status in (401, 403):
            return AuthError(detail)
        return SinkError(detail)

    def _lookup(self, key: str, version: str, restore_keys: list[str]) -> CacheEntry | None:
        keys = ",".join([key, *restore_keys])
        resp = self._call("GET", "cache", f"lookup {key}", params={"keys": keys, "version": version})
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            obj = json.loads(resp.content)
        except ValueError as exc:
            raise SinkError(f"lookup {key}: malformed answer") from exc
        if not isinstance(obj, dict) or not obj.get("cacheKey") or not obj.get("archiveLocation"):
            return None
        return CacheEntry(str(obj["cacheKey"]), version, Secret(str(obj["archiveLocation"])))

    def _reserve(self, key: str, version: str, size_hint: int | None) -> EntryUpload:
        body: dict[str, Any] = {"key": key, "version": version}
        if size_hint is not None:
            body["cacheSize"] = size_hint
        state = {"ambiguous": False}
        try:
            resp = self._call("POST", "caches", f"reserve cache entry {key}", json=body, state=state)
        except Conflict as exc:
            if state["ambiguous"]:
                raise Conflict(f"{exc} (an earlier attempt may have reserved it)") from exc
            raise
        try:
            cache_id = int(json.loads(resp.content).get("cacheId") or json.loads(resp.content).get("cacheID"))
        except (ValueError, TypeError, AttributeError) as exc:
            raise SinkError(f"reserve cache entry {key}: no cacheId in the answer") from exc
        return _RestUpload(self, key, version, cache_id)

    def patch(self, cache_id: int, key: str, offset: int, data: Chunk) -> None:
        end = offset + len(data) - 1
        headers = {"content-type": "application/octet-stream", "content-range": f"bytes {offset}-{end}/*",
                   "content-length": str(len(data))}
        self._call("PATCH", f"caches/{cache_id}", f"upload {key} bytes {offset}-{end}", body=data, headers=headers)

    def commit(self, cache_id: int, key: str, version: str, size: int) -> None:
        state = {"ambiguous": False}
        try:
            self._call("POST", f"caches/{cache_id}", f"commit cache entry {key}", json={"size": size}, state=state)
        except SinkError as exc:
            if isinstance(exc, TransientError) or not state["ambiguous"] or not self.wait_visible(key, version):
                raise


class _RestUpload:
    def __init__(self, client: RestClient, key: str, version: str, cache_id: int) -> None:
        self.key = key
        self._client = client
        self._version = version
        self._id = cache_id
        self._pipe = ChunkPipe(self._send, self._single, chunk_size=client.block_size, in_flight=client.in_flight, name=key)

    def _send(self, index: int, offset: int, data: Chunk) -> None:
        self._client.patch(self._id, self.key, offset, data)

    def _single(self, data: Chunk) -> None:
        if data:
            self._client.patch(self._id, self.key, 0, data)

    def write(self, data: bytes | memoryview) -> None:
        self._pipe.write(data)

    def finish(self, size: int) -> None:
        self._pipe.finish()
        self._client.commit(self._id, self.key, self._version, size)

    def abort(self) -> None:
        self._pipe.close()

    def __repr__(self) -> str:
        return f"<upload {self.key} id={self._id}>"
