"""The sink contract: small role protocols every cache sink implements.

A sink is where blobs and records go (and, for ``restore``, where they come
from). Roles, after containerd's content store:

* ``BlobProvider``: ``stat_blob`` (size or None) and ``open_blob`` (ranged read).
* ``BlobIngester``: ``blob_writer`` returns a :class:`~transcoder.writers.BlobWriter`;
  ``commit(size, digest)`` publishes the blob under its digest only if the
  bytes match, atomically; "already exists" is success (content addressing).
* ``ManifestStore``: manifests and indexes (a registry keeps them apart from
  blobs; every other sink stores them as blobs).
* ``RecordStore``: variant records (immutable, keyed by source digest and
  parameters) and image records (name -> root descriptor). Image records are
  never replaced in place: each write adds an immutable record and readers
  merge them (newest binding of a name wins), so parallel writers lose nothing.

Rules every sink follows (and the contract suite in tests/ checks):
digests are validated before they reach a path or URL; a blob is invisible
until committed; a failed or aborted write leaves nothing visible; secrets
never appear in ``str``/``repr``/errors; options are validated up front with
an error naming the bad option.
"""

from __future__ import annotations

import io
from typing import BinaryIO, Protocol, runtime_checkable

from ..descriptor import MAX_MANIFEST_BYTES, Descriptor
from ..digest import Digest, check_digest
from ..errors import ManifestError
from ..records import ImageRecord, VariantRecord
from ..writers import BlobWriter


@runtime_checkable
class BlobProvider(Protocol):
    def stat_blob(self, digest: Digest) -> int | None: ...

    def open_blob(self, digest: Digest, offset: int = 0, length: int | None = None) -> BinaryIO: ...


@runtime_checkable
class BlobIngester(Protocol):
    def blob_writer(self, media_type: str, *, key_hint: str | None = None, size_hint: int | None = None) -> BlobWriter:
        """``key_hint`` names the content before its digest is known (for
        example ``<source digest>-<params key>``); sinks that must name an
        upload up front may use it, and must still publish under the digest."""
        ...


@runtime_checkable
class ManifestStore(Protocol):
    def put_manifest(self, data: bytes, media_type: str) -> Descriptor: ...

    def get_manifest(self, desc: Descriptor) -> bytes: ...


@runtime_checkable
class RecordStore(Protocol):
    def put_variant(self, rec: VariantRecord) -> None: ...

    def find_variants(self, source: Digest) -> list[VariantRecord]: ...

    def put_image(self, rec: ImageRecord) -> None: ...

    def images(self) -> dict[str, ImageRecord]: ...


@runtime_checkable
class Sink(BlobProvider, BlobIngester, ManifestStore, RecordStore, Protocol):
    """Everything ``convert --to`` and ``restore`` need from a sink."""

    @property
    def location(self) -> str:
        """A short, secret-free name for records and messages (``gha:scope``)."""
        ...

    def close(self) -> None: ...


def put_bytes(sink: BlobIngester, data: bytes, media_type: str) -> Descriptor:
    """Store a small blob (config, manifest) through the sink's writer."""
    digest = Digest.of(data)
    writer = sink.blob_writer(media_type, key_hint=str(digest), size_hint=len(data))
    try:
        writer.write(data)
        writer.commit(len(data), digest)
    except BaseException:
        writer.abort()
        raise
    return Descriptor(media_type, digest, len(data))


def read_verified(provider: BlobProvider, desc: Descriptor, limit: int = MAX_MANIFEST_BYTES, what: str = "blob") -> bytes:
    """Read a small blob whole, refusing one over ``limit`` or not matching ``desc``."""
    if desc.size > limit:
        raise ManifestError(f"{what} {desc.digest}: {desc.size} bytes is over the {limit} byte limit")
    with provider.open_blob(desc.digest) as f:
        data = f.read(limit + 1)
    if len(data) != desc.size:
        raise ManifestError(f"{what} {desc.digest}: {len(data)} bytes, descriptor says {desc.size}")
    check_digest(data, desc.digest, f"{what} {desc.digest}")
    return data


class BlobManifests:
    """Mixin: manifests stored as ordinary blobs (every sink but a registry)."""

    def put_manifest(self, data: bytes, media_type: str) -> Descriptor:
        return put_bytes(self, data, media_type)  # type: ignore[arg-type]

    def get_manifest(self, desc: Descriptor) -> bytes:
        return read_verified(self, desc, what="manifest")  # type: ignore[arg-type]


def bytes_reader(data: bytes, offset: int = 0, length: int | None = None) -> BinaryIO:
    end = len(data) if length is None else offset + length
    return io.BytesIO(data[offset:end])
