"""The OCI distribution API on top of :mod:`.transport`: manifests, indexes
and tags, and blobs (HEAD, ranged and resumed GET, cross-repository mount,
upload sessions).

Every repository name reaching a URL was validated by :mod:`.reference`, and
every digest is a :class:`Digest`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast
from urllib.parse import quote

import httpx

from ..deadline import read_bounded, scope
from ..descriptor import DOCKER_LIST, DOCKER_MANIFEST, MAX_MANIFEST_BYTES, OCI_INDEX, OCI_MANIFEST, Descriptor
from ..digest import Digest, is_digest
from ..errors import AuthError, DigestMismatch, ManifestError, NotFound, SinkError, TransientError
from .reference import check_tag
from .stream import open_reader
from .transport import RegistryHTTP, Retryable, error_detail

MANIFEST_ACCEPT = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
MAX_TAG_PAGES = 1000


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: Digest

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.data))


def _ref_segment(ref: str | Digest) -> str:
    return str(ref) if isinstance(ref, Digest) else check_tag(ref)


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


class RegistryClient(RegistryHTTP):
    """The distribution API of one registry host."""

    # -- manifests and tags --------------------------------------------------

    def get_manifest(
        self, repo: str, ref: str | Digest, accept: Iterable[str] = MANIFEST_ACCEPT, limit: int = MAX_MANIFEST_BYTES,
    ) -> FetchedManifest:
        """A manifest or index, bounded and checked against the digest asked for
        (or, by tag, against the digest the registry claims)."""
        what = f"manifest {ref}"
        with scope(self.deadline(repo, what)):  # the answer whole, headers and body
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

    def _read_bounded(self, resp: httpx.Response, limit: int, what: str) -> bytes:
        """The body within ``limit`` bytes; time is bounded by the caller's deadline scope."""
        length = resp.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise ManifestError(f"{what}: {length} bytes is over the {limit} byte limit")
        return read_bounded(resp.iter_bytes(), limit, what)

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

        # A buffered binary file in all but typeshed's class tree.
        return cast(BinaryIO, open_reader(opener, f"{self.where(repo)}: {what}", offset, length))

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

    def patch_upload(self, repo: str, location: str, body: Iterable[bytes | memoryview], offset: int) -> str:
        """Stream ``body`` into an upload session in one PATCH (chunked transfer
        encoding, as docker and containerd push); returns the next Location.
        Views are sent as they are (h11 joins each with its chunk header)."""
        content = cast(Iterator[bytes], iter(body))
        resp = self.request("PATCH", location, what=f"upload from byte {offset}", repo=repo, ok=(202, 204),
                            idempotent=False, replayable=False, content=content,
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
            detail = error_detail(resp)
            if "DIGEST_INVALID" in detail:  # the registry hashed what it received: not this digest
                raise DigestMismatch(f"{self.where(repo)}: {what}: the uploaded bytes do not match{detail}")
            raise SinkError(f"{self.where(repo)}: {what}: HTTP 400{detail}")
        claimed = resp.headers.get("docker-content-digest", "")
        if claimed and claimed != str(digest):
            raise DigestMismatch(f"{self.where(repo)}: blob {digest}: registry stored {claimed[:80]}")

    def cancel_upload(self, repo: str, location: str) -> None:
        """Best effort: an upload the registry cannot cancel expires on its own."""
        with contextlib.suppress(httpx.HTTPError, SinkError), scope(self.deadline(repo, "cancel upload")):
            self._http.delete(self.url(location), timeout=10.0).close()

    def _location(self, resp: httpx.Response, repo: str) -> str:
        location = resp.headers.get("location")
        if not location:
            raise SinkError(f"{self.where(repo)}: blob upload: the registry sent no Location")
        return self.url(location)


__all__ = ["MANIFEST_ACCEPT", "FetchedManifest", "RegistryClient", "Retryable"]
