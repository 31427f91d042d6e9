"""Cache service v2 (github.com): Twirp JSON at the root of ``ACTIONS_RESULTS_URL``.

``POST /twirp/github.actions.results.api.v1.CacheService/<Method>`` with
snake_case fields and int64 as a JSON string, as the toolkit sends them.
Entries are written by CreateCacheEntry (returns a signed Azure upload URL),
the upload (:class:`~transcoder.gha.blobplane.BlockUpload`), then
FinalizeCacheEntryUpload; read by GetCacheEntryDownloadURL.

CreateCacheEntry is not idempotent: if an attempt fails in a way the server
may have acted on (a 5xx, a reset or a timeout), the retry is expected to see
409, and that Conflict is reported as such (callers move to another key)
rather than mistaken for someone else's finished entry.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from ..errors import AuthError, Conflict, SinkError, TransientError
from ..redact import Secret, scrub
from .blobplane import BlockUpload
from .client import CacheClient, CacheEntry, EntryUpload
from .retry import answer, is_retryable_status, retry_after, send_tracked

SERVICE = "github.actions.results.api.v1.CacheService"


class TwirpClient(CacheClient):
    protocol = 2

    def _rpc(self, method: str, body: dict[str, Any], what: str, state: dict[str, bool] | None = None) -> dict[str, Any]:
        url = f"{self.config.api_root}twirp/{SERVICE}/{method}"

        def attempt() -> dict[str, Any]:
            self.count(method)
            request = self.http.build_request("POST", url, json=body, headers=self.auth)
            resp = send_tracked(lambda: answer(self.http, request, what, self.policy.deadlines.answer), what, state)
            return self._decode(resp, what)

        return self.policy.call(attempt, what)

    def _decode(self, resp: httpx.Response, what: str) -> dict[str, Any]:
        try:
            obj = json.loads(resp.content)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            # The toolkit retries a non-JSON answer on any status; so do we.
            raise TransientError(f"{what}: HTTP {resp.status_code} with a non-JSON body")
        if resp.status_code == 200:
            return obj
        raise self._error(resp, obj, what)

    def _error(self, resp: httpx.Response, obj: dict[str, Any], what: str) -> SinkError:
        code = str(obj.get("code", ""))
        msg = scrub(str(obj.get("msg") or obj.get("message") or code), self.config.token)
        detail = f"{what}: HTTP {resp.status_code} {code}: {msg}".rstrip(": ")
        status = resp.status_code
        if status == 409 or code == "already_exists":
            return Conflict(detail)
        if "insufficient usage" in msg:
            return SinkError(f"{what}: cache storage quota reached: {msg}")
        if is_retryable_status(status):
            return TransientError(detail, retry_after(resp) if status == 429 else None)
        if status in (401, 403) or code in ("unauthenticated", "permission_denied"):
            return AuthError(detail)
        return SinkError(detail)

    def _lookup(self, key: str, version: str, restore_keys: list[str]) -> CacheEntry | None:
        body: dict[str, Any] = {"key": key, "version": version}
        if restore_keys:
            body["restore_keys"] = restore_keys
        obj = self._rpc("GetCacheEntryDownloadURL", body, f"lookup {key}")
        if not obj.get("ok"):
            return None
        url = obj.get("signed_download_url") or obj.get("signedDownloadUrl")
        matched = obj.get("matched_key") or obj.get("matchedKey") or key
        if not isinstance(url, str) or not url:
            raise SinkError(f"lookup {key}: hit without a download URL")
        return CacheEntry(str(matched), version, Secret(url))

    def _reserve(self, key: str, version: str, size_hint: int | None) -> EntryUpload:
        state = {"ambiguous": False}
        what = f"create cache entry {key}"
        try:
            obj = self._rpc("CreateCacheEntry", {"key": key, "version": version}, what, state)
        except Conflict as exc:
            if state["ambiguous"]:
                raise Conflict(f"{exc} (an earlier attempt may have reserved it)") from exc
            raise
        if not obj.get("ok"):
            msg = scrub(str(obj.get("message") or "refused"), self.config.token)
            if "already exists" in msg:
                raise Conflict(f"{what}: {msg}")
            if "denied" in msg or "writable" in msg:
                raise AuthError(f"{what}: {msg}")
            raise SinkError(f"{what}: {msg}")
        url = obj.get("signed_upload_url") or obj.get("signedUploadUrl")
        if not isinstance(url, str) or not url:
            raise SinkError(f"{what}: no upload URL in the answer")
        blocks = BlockUpload(self.http, self.policy, Secret(url), name=key, block_size=self.block_size,
                             in_flight=self.in_flight)
        return _TwirpUpload(self, key, version, blocks)

    def finalize(self, key: str, version: str, size: int) -> str:
        state = {"ambiguous": False}
        what = f"finalize cache entry {key}"
        body = {"key": key, "version": version, "size_bytes": str(size)}
        try:
            obj = self._rpc("FinalizeCacheEntryUpload", body, what, state)
        except (Conflict, SinkError) as exc:
            if isinstance(exc, TransientError) or not state["ambiguous"] or not self.wait_visible(key, version):
                raise
            return ""  # our first attempt went through
        if not obj.get("ok"):
            if state["ambiguous"] and self.wait_visible(key, version):
                return ""
            msg = scrub(str(obj.get("message") or "refused"), self.config.token)
            raise SinkError(f"{what}: {msg}")
        return str(obj.get("entry_id") or obj.get("entryId") or "")


class _TwirpUpload:
    def __init__(self, client: TwirpClient, key: str, version: str, blocks: BlockUpload) -> None:
        self.key = key
        self._client = client
        self._version = version
        self._blocks = blocks

    def write(self, data: bytes | memoryview) -> None:
        self._blocks.write(data)

    def finish(self, size: int) -> None:
        try:
            self._blocks.finish()
        finally:
            self._client.count("blob_put", self._blocks.requests)
        self._client.finalize(self.key, self._version, size)

    def abort(self) -> None:
        # The service has no way to drop a reservation; it expires on its own.
        self._blocks.abort()

    def __repr__(self) -> str:
        return f"<upload {self.key}>"
