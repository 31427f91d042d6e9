"""``type=registry,ref=HOST/REPO[:TAG][,mode=add|replace][,insecure=true][,username=U,password=P][,authfile=F]``:
an OCI registry repository as a cache sink. Without username and password (or
credentials given by the caller, such as the CLI's ``--dest-creds``),
credentials come from ``authfile`` or the default auth files and credential
helpers (:mod:`transcoder.registry.credentials`), repo-scoped keys included.

Blobs are registry blobs (streamed in by PATCH as they are produced), and
manifests go to the manifests endpoint by digest. An image's name is its tag:
``put_image`` tags the root (and keeps an immutable record, so the newest
binding wins whatever the order of concurrent writes), ``images`` lists the
tags. Variant records are tagged artifact manifests; how concurrent writers
lose nothing is told in :mod:`transcoder.registry.variants` and
:mod:`transcoder.registry.images`.

A manifest is pushed only after every blob or manifest it points to is known
to be in the repository (written, mounted or seen by this sink, else checked
with a HEAD), so the registry never holds a manifest with a missing blob,
whatever the registry itself checks.
"""

from __future__ import annotations

import json
import threading
from typing import BinaryIO

import httpx

from ..descriptor import INDEX_TYPES, MAX_MANIFEST_BYTES, Descriptor
from ..digest import Digest, is_digest
from ..errors import ManifestError, SinkError, TranscoderError, UsageError
from ..parallel import Ahead
from ..records import ImageRecord, VariantRecord
from ..registry.client import RegistryClient
from ..registry.credentials import Credentials
from ..registry.records import RepositoryRecords
from ..registry.reference import parse_reference
from ..registry.upload import RegistryBlobWriter
from . import REGISTRY_FALSE, REGISTRY_TRUE
from .base import as_digest

OPTIONS = ("ref", "mode", "insecure", "username", "password", "authfile")


def _flag(opts: dict[str, str], key: str) -> bool:
    value = opts.get(key, "").lower()
    if value not in REGISTRY_TRUE + REGISTRY_FALSE:
        raise UsageError(f"type=registry: option {key}={value[:20]!r} must be true or false")
    return value in REGISTRY_TRUE


class RegistrySink:
    def __init__(
        self, host: str, repository: str, *, tag: str | None = None, mode: str = "add", insecure: bool = False,
        credentials: Credentials | None = None, transport: httpx.BaseTransport | None = None,
        authfile: str | None = None,
    ) -> None:
        if mode not in ("add", "replace"):
            raise UsageError(f"type=registry: option mode={mode[:20]!r} must be add or replace")
        self.repository = repository
        self.tag = tag
        self.mode = mode
        self.client = RegistryClient(host, insecure=insecure, credentials=credentials, transport=transport,
                                     authfile=authfile, repository=repository)
        self.host = self.client.host
        self._present: set[Digest] = set()  # blobs and manifests known to be in the repository
        # Blobs a HEAD found missing: a writer of one asks no second time (if
        # another writer pushes it meanwhile, pushing it again is harmless).
        self._absent: set[Digest] = set()
        self._pushed: dict[Digest, bytes] = {}  # manifests pushed by this sink, for put_image
        self._lock = threading.Lock()
        self._stats: Ahead[Digest, int | None] = Ahead("blob-stat", TranscoderError)  # HEADs asked ahead
        self.records = RepositoryRecords(self.client, repository, self.get_manifest, self.location,
                                         target_named=self.stat_ahead)

    @classmethod
    def from_options(
        cls, opts: dict[str, str], *, transport: httpx.BaseTransport | None = None,
        credentials: Credentials | None = None,
    ) -> RegistrySink:
        """``credentials`` come from outside the spec (a caller's flags) and
        cannot be given with username=/password=."""
        unknown = sorted(set(opts) - set(OPTIONS))
        if unknown:
            raise UsageError(f"type=registry: unknown option {unknown[0]!r} (known: {', '.join(OPTIONS)})")
        if not opts.get("ref"):
            raise UsageError("type=registry requires ref=HOST/REPO[:TAG]")
        ref = parse_reference(opts["ref"], allow_digest=False, default_tag=None)
        if ("username" in opts) != ("password" in opts):
            raise UsageError("type=registry: give both username and password, or neither")
        if "username" in opts and credentials is not None:
            raise UsageError("type=registry: username=/password= and other credentials given; give one")
        creds = credentials
        if "username" in opts:
            creds = Credentials(opts["username"], opts["password"], origin="the sink's username=/password=")
        return cls(ref.api_host, ref.repository, tag=ref.tag, mode=opts.get("mode", "add"),
                   insecure=_flag(opts, "insecure"), credentials=creds, transport=transport,
                   authfile=opts.get("authfile") or None)

    @property
    def location(self) -> str:
        return f"registry:{self.host}/{self.repository}"

    def __repr__(self) -> str:
        return f"RegistrySink({self.location!r}, tag={self.tag!r}, mode={self.mode!r})"

    def close(self) -> None:
        self.client.close()

    # -- blobs ---------------------------------------------------------------

    def stat_blob(self, digest: Digest | str) -> int | None:
        digest = as_digest(digest)
        return self._stats.take(digest, lambda: self._head(digest))

    def _head(self, digest: Digest) -> int | None:
        size = self.client.head_blob(self.repository, digest)
        with self._lock:
            (self._present if size is not None else self._absent).add(digest)
        return size

    def stat_ahead(self, digest: Digest) -> None:
        """Start the HEAD that :meth:`stat_blob` will want: a layer's own blob,
        asked for beside its variant lookup, or a variant's, asked for once a
        lookup has read the record naming it, while it reads the record's blob."""
        self._stats.start(digest, lambda: self._head(digest))

    def open_blob(self, digest: Digest | str, offset: int = 0, length: int | None = None) -> BinaryIO:
        return self.client.open_blob(self.repository, as_digest(digest), offset, length)

    def blob_writer(self, media_type: str, *, key_hint: str | None = None, size_hint: int | None = None) -> RegistryBlobWriter:
        # A caller that can name the digest up front is copying a blob that may
        # be here already; one that cannot is writing bytes it has just made.
        known = key_hint is not None and is_digest(key_hint)
        ask = known and as_digest(key_hint or "") not in self._absent
        return _Writer(self, f"{self.location}: blob {key_hint or media_type}", ask_first=ask)

    def can_mount(self, source: object) -> bool:
        """True for a registry source on the same host: a blob of another
        repository can be mounted, and one of this repository is here."""
        host, repo = getattr(source, "host", None), getattr(source, "repository", None)
        return host == self.host and isinstance(repo, str)

    def mount_blob(self, desc: Descriptor, source: object) -> bool:
        """Cross-repository mount from a registry source on the same host;
        False when that is not possible (the caller then copies the bytes)."""
        repo = getattr(source, "repository", None)
        if not self.can_mount(source) or not isinstance(repo, str) or repo == self.repository:
            return False
        if self.client.mount_blob(self.repository, desc.digest, repo):
            self._present.add(desc.digest)
            return True
        return False

    # -- manifests -------------------------------------------------------------

    def put_manifest(self, data: bytes, media_type: str) -> Descriptor:
        digest = Digest.of(data)
        self._check_children(data, media_type, digest)
        self.client.put_manifest(self.repository, digest, data, media_type)
        with self._lock:
            self._present.add(digest)
            self._pushed[digest] = data
        return Descriptor(media_type, digest, len(data))

    def get_manifest(self, desc: Descriptor) -> bytes:
        data = self._pushed.get(desc.digest)
        if data is None:
            data = self.client.get_manifest(self.repository, desc.digest, accept=(desc.media_type,)).data
        if len(data) != desc.size:
            raise ManifestError(f"{self.location}: manifest {desc.digest} is {len(data)} bytes, descriptor says {desc.size}")
        return data

    def _check_children(self, data: bytes, media_type: str, digest: Digest) -> None:
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{self.location}: manifest {digest}: {len(data)} bytes is over the limit")
        try:
            obj = json.loads(data)
            index = media_type in INDEX_TYPES
            children = obj["manifests"] if index else [obj["config"], *obj["layers"]]
            descs = [Descriptor.from_json(c, f"manifest {digest}") for c in children]
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"{self.location}: manifest {digest} ({media_type}) is malformed") from exc
        for d in descs:
            if d.digest in self._present:
                continue
            found = self.client.head_manifest(self.repository, d.digest) if index else self.stat_blob(d.digest)
            if found is None:
                kind = "manifest" if index else "blob"
                raise SinkError(f"{self.location}: manifest {digest} points to {kind} {d.digest}, which the "
                                "repository lacks; not pushing it")
            self._present.add(d.digest)

    # -- records (transcoder.registry.records) ------------------------------------------

    def put_image(self, rec: ImageRecord) -> None:
        """An immutable image record, and the tag ``rec.name`` when it is a valid one."""
        self.records.put_image(rec)

    def images(self) -> dict[str, ImageRecord]:
        return self.records.images()

    def stage_variant(self, rec: VariantRecord) -> None:
        self.records.stage_variant(rec)

    def stage_image(self, rec: ImageRecord) -> None:
        self.records.stage_image(rec)

    def drop_staged(self) -> None:
        self.records.drop_staged()

    def put_variant(self, rec: VariantRecord) -> None:
        self.records.put_variant(rec)

    def find_variants(self, source: Digest | str) -> list[VariantRecord]:
        return self.records.find_variants(as_digest(source))

    def warm_lookups(self) -> None:
        self.records.warm()


class _Writer(RegistryBlobWriter):
    """Marks committed blobs as present, so manifests need no HEAD for them."""

    def __init__(self, sink: RegistrySink, name: str, *, ask_first: bool) -> None:
        super().__init__(sink.client, sink.repository, name, ask_first=ask_first)
        self._sink = sink

    def commit(self, size: int, digest: Digest) -> None:
        super().commit(size, digest)
        self._sink._present.add(digest)


__all__ = ["RegistrySink"]
