"""A client for the OCI distribution API on httpx: manifests, indexes, tags and
blobs (HEAD, ranged GET, cross-repository mount, chunked and monolithic
uploads), behind anonymous, Basic or bearer-token auth.

Transport: HTTPS with verification by default. Plain HTTP is tried only for a
loopback host or with ``insecure=True`` (which also turns verification off),
and only after HTTPS failed, as Docker does for insecure registries.

Retries (tenacity): a request whose bytes never left (connect error), and any
idempotent request that met a reset, a timeout, 429 or 5xx, is retried with
backoff, honouring ``Retry-After``. Uploads restart or resume in
:mod:`.upload`, which knows what the registry already holds.

Every repository name reaching a URL was validated by :mod:`.reference`, and
every digest is a :class:`Digest`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote, urljoin

import httpx
import tenacity

from .. import __version__
from ..descriptor import DOCKER_LIST, DOCKER_MANIFEST, MAX_MANIFEST_BYTES, OCI_INDEX, OCI_MANIFEST, Descriptor
from ..digest import Digest, is_digest
from ..errors import AuthError, DigestMismatch, ManifestError, NotFound, SinkError, TransientError
from .auth import Credentials, RegistryAuth, load_docker_credentials
from .reference import check_host, check_tag, is_loopback
from .stream import open_reader

MANIFEST_ACCEPT = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
ATTEMPTS = 4
BACKOFF_BASE = 0.25
BACKOFF_MAX = 4.0
RETRY_AFTER_MAX = 30.0
MAX_TAG_PAGES = 1000
T = TypeVar("T")


class Retryable(TransientError):
    """A transient failure, and whether sending the request again is safe."""

    def __init__(self, message: str, retry_after: float | None = None, *, safe: bool) -> None:
        super().__init__(message, retry_after)
        self.safe = safe


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: Digest

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.data))


@functools.cache
def _tls_context(verify: bool) -> ssl.SSLContext:
    """One context per process: loading the CA bundle costs ~0.5 s, per client otherwise."""
    context = httpx.create_ssl_context(verify=verify)
    return context


def _ref_segment(ref: str | Digest) -> str:
    return str(ref) if isinstance(ref, Digest) else check_tag(ref)


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return min(float(resp.headers.get("retry-after", "")), RETRY_AFTER_MAX)
    except ValueError:
        return None


def _error_detail(resp: httpx.Response) -> str:
    """`` (CODE: message)`` from a distribution error body, if it has one."""
    try:
        if resp.is_stream_consumed:
            body = resp.content
        else:
            buf = bytearray()
            for chunk in resp.iter_bytes():
                buf += chunk
                if len(buf) > 65536:
                    break
            body = bytes(buf)
        first = (json.loads(body).get("errors") or [])[0]
        return f" ({str(first.get('code'))[:40]}: {str(first.get('message'))[:160]})"
    except Exception:
        return ""


def _wait(state: tenacity.RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    hint = getattr(exc, "retry_after", None)
    if hint:
        return float(hint)
    backoff: float = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (state.attempt_number - 1))
    return backoff * random.uniform(0.5, 1.0)


def _media_type_of(data: bytes, header: str) -> str:
    """The document's own ``mediaType`` if it states one, else the header's."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        obj = None
    inner = obj.get("mediaType") if isinstance(obj, dict) else None
    if isinstance(inner, str) and inner:
        return inner
    header = header.split(";")[0].strip()
    if header in MANIFEST_ACCEPT:
        return header
    return OCI_INDEX if isinstance(obj, dict) and "manifests" in obj else OCI_MANIFEST


class RegistryClient:
    """One registry host; thread-safe (uploads run on their own threads)."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool = False,
        credentials: Credentials | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 60.0,
        attempts: int = ATTEMPTS,
    ) -> None:
        self.host = check_host(host)
        self.insecure = insecure
        self.plain_allowed = insecure or is_loopback(host)
        self.credentials = credentials if credentials is not None else load_docker_credentials(host)
        self.attempts = attempts
        self.requests = 0  # every request sent, retries and auth round trips included
        self._auth = RegistryAuth(host, self.credentials, self._token_request)
        self._http = httpx.Client(
            transport=transport, verify=_tls_context(not insecure), auth=self._auth, timeout=httpx.Timeout(timeout, connect=10.0),
            headers={"User-Agent": f"transcoder/{__version__}"}, event_hooks={"request": [self._count]},
        )
        self._base: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RegistryClient(host={self.host!r}, credentials={self.credentials!r})"

    def close(self) -> None:
        self._http.close()

    def _count(self, request: httpx.Request) -> None:
        self.requests += 1

    def _token_request(self, realm: str, params: dict[str, Any], creds: Credentials | None) -> httpx.Response:
        auth = httpx.BasicAuth(creds.username, creds.password) if creds else None
        return self._http.get(realm, params=params, auth=auth)

    # -- transport ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        with self._lock:
            if self._base is None:
                self._base = self._probe()
            return self._base

    def _probe(self) -> str:
        secure = f"https://{self.host}"
        if not self.plain_allowed:
            return secure
        try:
            self._http.get(secure + "/v2/", auth=None, timeout=5.0).close()
            return secure
        except httpx.TransportError:
            return f"http://{self.host}"

    def url(self, path_or_url: str) -> str:
        return urljoin(self.base_url + "/", path_or_url)

    def where(self, repo: str | None) -> str:
        return f"registry {self.host}" + (f", repository {repo}" if repo else "")

    def request(
        self, method: str, path_or_url: str, *, what: str, repo: str | None, ok: Iterable[int] = (200,),
        idempotent: bool = True, stream: bool = False, redirects: bool = False, replayable: bool = True, **kwargs: Any,
    ) -> httpx.Response:
        """Send with retries; return a response whose status is in ``ok``, else raise.

        ``replayable=False``: the body is a stream the first attempt may have
        consumed, so only a request that never left is sent again."""
        expected = frozenset(ok)
        url = self.url(path_or_url)

        def attempt() -> httpx.Response:
            try:
                request = self._http.build_request(method, url, **kwargs)
                response = self._http.send(request, stream=stream, follow_redirects=redirects)
            except httpx.TransportError as exc:
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                raise Retryable(f"{self.where(repo)}: {what}: {type(exc).__name__}: {str(exc)[:160]}",
                                 safe=idempotent or unsent) from exc
            if response.status_code in expected:
                return response
            try:
                self.raise_for(response, what, repo, idempotent, replayable)
            finally:
                response.close()
            raise AssertionError("unreachable")

        return self.retrying(attempt)

    def retrying(self, fn: Callable[[], T]) -> T:
        retryer = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts), wait=_wait, reraise=True,
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, Retryable) and e.safe),
        )
        return retryer(fn)

    def raise_for(
        self, resp: httpx.Response, what: str, repo: str | None, idempotent: bool = True, replayable: bool = True,
    ) -> None:
        code = resp.status_code
        detail = _error_detail(resp)
        where = f"{self.where(repo)}: {what}"
        if code == 401:
            who = ("the credentials given were rejected" if self.credentials
                   else "no credentials given (pass username/password or log in with docker login)")
            raise AuthError(f"{where}: 401 Unauthorized, {who}{detail}")
        if code == 403:
            raise AuthError(f"{where}: 403 Forbidden, access denied{detail}")
        if code == 404:
            raise NotFound(f"{where}: not found{detail}")
        if code == 429 or code >= 500:
            # A refusal (429, 503) means the request was not acted upon.
            refused = replayable and code in (429, 503)
            raise Retryable(f"{where}: HTTP {code}{detail}", _retry_after(resp), safe=idempotent or refused)
        raise SinkError(f"{where}: HTTP {code}{detail}")

    # -- manifests and tags --------------------------------------------------

    def get_manifest(
        self, repo: str, ref: str | Digest, accept: Iterable[str] = MANIFEST_ACCEPT, limit: int = MAX_MANIFEST_BYTES,
    ) -> FetchedManifest:
        """A manifest or index, bounded and checked against the digest asked for
        (or, by tag, against the digest the registry claims)."""
        what = f"manifest {ref}"
        resp = self.request("GET", f"/v2/{repo}/manifests/{_ref_segment(ref)}", what=what, repo=repo, stream=True,
                            headers={"Accept": ", ".join(dict.fromkeys([*accept, *MANIFEST_ACCEPT]))})
        try:
            data = self._read_bounded(resp, limit, f"{self.where(repo)}: {what}")
        finally:
            resp.close()
        digest = Digest.of(data)
        claimed = resp.headers.get("docker-content-digest", "")
        expected = ref if isinstance(ref, Digest) else (Digest(claimed) if is_digest(claimed) else None)
        if expected is not None and digest != expected:
            raise DigestMismatch(f"{self.where(repo)}: {what}: content is {digest}, expected {expected}")
        return FetchedManifest(data, _media_type_of(data, resp.headers.get("content-type", "")), digest)

    @staticmethod
    def _read_bounded(resp: httpx.Response, limit: int, what: str) -> bytes:
        length = resp.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise ManifestError(f"{what}: {length} bytes is over the {limit} byte limit")
        data = bytearray()
        for chunk in resp.iter_bytes():
            data += chunk
            if len(data) > limit:
                raise ManifestError(f"{what}: over the {limit} byte limit")
        return bytes(data)

    def head_manifest(self, repo: str, ref: str | Digest) -> Descriptor | None:
        try:
            resp = self.request("HEAD", f"/v2/{repo}/manifests/{_ref_segment(ref)}", what=f"manifest {ref}", repo=repo,
                                headers={"Accept": ", ".join(MANIFEST_ACCEPT)})
        except NotFound:
            return None
        digest, size = resp.headers.get("docker-content-digest", ""), resp.headers.get("content-length", "")
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        if not is_digest(digest) or not size.isdigit() or media_type not in MANIFEST_ACCEPT:
            return self.get_manifest(repo, ref).descriptor()
        return Descriptor(media_type, Digest(digest), int(size))

    def put_manifest(self, repo: str, ref: str | Digest, data: bytes, media_type: str) -> Digest:
        digest = Digest.of(data)
        what = f"manifest {ref}"
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{self.where(repo)}: {what}: {len(data)} bytes is over the {MAX_MANIFEST_BYTES} byte limit")
        if isinstance(ref, Digest) and ref != digest:
            raise DigestMismatch(f"{self.where(repo)}: {what}: content is {digest}")
        resp = self.request("PUT", f"/v2/{repo}/manifests/{_ref_segment(ref)}", what=f"push {what}", repo=repo,
                            ok=(200, 201, 202, 204), content=data, headers={"Content-Type": media_type})
        claimed = resp.headers.get("docker-content-digest", "")
        if claimed and claimed != str(digest):
            raise DigestMismatch(f"{self.where(repo)}: push {what}: registry stored {claimed[:80]}, expected {digest}")
        return digest

    def delete_manifest(self, repo: str, digest: Digest) -> None:
        """Delete a manifest (and every tag on it); a missing one is no error."""
        with contextlib.suppress(NotFound):
            self.request("DELETE", f"/v2/{repo}/manifests/{digest}", what=f"delete manifest {digest}", repo=repo,
                         ok=(200, 202, 204))

    def list_tags(self, repo: str) -> list[str]:
        """Every tag, following ``Link`` pagination; an unknown repository has none."""
        tags: list[str] = []
        url = f"/v2/{repo}/tags/list?n=1000"
        for _ in range(MAX_TAG_PAGES):
            try:
                resp = self.request("GET", url, what="tag list", repo=repo)
            except NotFound:
                return tags
            try:
                page = json.loads(resp.content).get("tags") or []
            except (ValueError, AttributeError) as exc:
                raise SinkError(f"{self.where(repo)}: tag list: malformed answer") from exc
            tags += [t for t in page if isinstance(t, str)]
            url = self._next_page(resp, repo)
            if not url:
                return tags
        raise SinkError(f"{self.where(repo)}: tag list: more than {MAX_TAG_PAGES} pages")

    def _next_page(self, resp: httpx.Response, repo: str) -> str:
        link = resp.links.get("next", {}).get("url", "")
        if not link:
            return ""
        target = httpx.URL(self.url(link))
        if target.netloc.decode() != self.host or target.path != f"/v2/{repo}/tags/list":
            raise SinkError(f"{self.where(repo)}: tag list: refusing a next-page link elsewhere")
        return str(target)

    # -- blobs ---------------------------------------------------------------

    def head_blob(self, repo: str, digest: Digest) -> int | None:
        try:
            resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", what=f"blob {digest}", repo=repo, redirects=True)
        except NotFound:
            return None
        size = resp.headers.get("content-length", "")
        return int(size) if size.isdigit() else None

    def open_blob(self, repo: str, digest: Digest, offset: int = 0, length: int | None = None) -> BinaryIO:
        what = f"blob {digest}"

        def opener(first: int, last: int | None) -> httpx.Response:
            headers = {} if not first and last is None else {"Range": f"bytes={first}-{'' if last is None else last}"}
            # 416: the range starts at or past the end, which reads as empty.
            resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", what=what, repo=repo, ok=(200, 206, 416),
                                stream=True, redirects=True, headers=headers)
            if resp.status_code == 206 and not resp.headers.get("content-range", "").startswith(f"bytes {first}-"):
                resp.close()
                raise SinkError(f"{self.where(repo)}: {what}: the server answered a different range than asked")
            return resp

        return open_reader(opener, f"{self.where(repo)}: {what}", offset, length)

    def mount_blob(self, repo: str, digest: Digest, from_repo: str) -> bool:
        """Cross-repository mount; False when the registry started an upload instead."""
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={quote(from_repo, safe='/')}",
                            what=f"mount blob {digest} from {from_repo}", repo=repo, ok=(201, 202))
        if resp.status_code == 201:
            return True
        if resp.headers.get("location"):
            self.cancel_upload(repo, resp.headers["location"])
        return False

    def start_upload(self, repo: str) -> str:
        # A session opened twice by a retry is only garbage the registry expires.
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", what="start blob upload", repo=repo, ok=(202,),
                            content=b"")
        return self._location(resp, repo)

    def patch_upload(self, repo: str, location: str, body: Iterable[bytes], offset: int) -> str:
        """Stream ``body`` into an upload session in one PATCH (chunked transfer
        encoding, as docker and containerd push); returns the next Location."""
        resp = self.request("PATCH", location, what=f"upload from byte {offset}", repo=repo, ok=(202, 204),
                            idempotent=False, replayable=False, content=iter(body),
                            headers={"Content-Type": "application/octet-stream"})
        return self._location(resp, repo)

    def upload_status(self, repo: str, location: str, offset_hint: int = 0) -> int | None:
        """Bytes the registry holds for an upload session; None if it is gone."""
        try:
            resp = self.request("GET", location, what="upload status", repo=repo, ok=(200, 204))
        except (TransientError, AuthError):
            raise
        except (NotFound, SinkError):
            return None
        _, _, end = resp.headers.get("range", "0-0").partition("-")
        if not end.isdigit():
            return None
        # Distribution writes "0-0" both for an empty session and for one byte.
        return 0 if end == "0" and offset_hint == 0 else int(end) + 1

    def complete_upload(self, repo: str, location: str, digest: Digest, data: bytes = b"") -> None:
        sep = "&" if "?" in location else "?"
        what = f"commit blob {digest}"
        resp = self.request("PUT", f"{location}{sep}digest={quote(str(digest))}", what=what,
                            repo=repo, ok=(201, 204, 400), idempotent=False, content=data,
                            headers={"Content-Type": "application/octet-stream"})
        if resp.status_code == 400:
            detail = _error_detail(resp)
            if "DIGEST_INVALID" in detail:  # the registry hashed what it received: not this digest
                raise DigestMismatch(f"{self.where(repo)}: {what}: the uploaded bytes do not match{detail}")
            raise SinkError(f"{self.where(repo)}: {what}: HTTP 400{detail}")
        claimed = resp.headers.get("docker-content-digest", "")
        if claimed and claimed != str(digest):
            raise DigestMismatch(f"{self.where(repo)}: blob {digest}: registry stored {claimed[:80]}")

    def cancel_upload(self, repo: str, location: str) -> None:
        """Best effort: an upload the registry cannot cancel expires on its own."""
        with contextlib.suppress(httpx.HTTPError):
            self._http.delete(self.url(location), timeout=10.0).close()

    def _location(self, resp: httpx.Response, repo: str) -> str:
        location = resp.headers.get("location")
        if not location:
            raise SinkError(f"{self.where(repo)}: blob upload: the registry sent no Location")
        return self.url(location)


__all__ = ["MANIFEST_ACCEPT", "FetchedManifest", "RegistryClient", "Retryable"]
