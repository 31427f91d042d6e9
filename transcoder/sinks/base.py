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

In detail (each point is a test in tests/sink_contract.py):

* Methods that take a digest also accept its string form and pass it through
  :func:`as_digest` before any I/O, so a malformed one raises InputError.
* ``stat_blob`` of a missing blob is None; ``open_blob`` of one raises
  NotFound. ``open_blob(d, offset, length)`` yields bytes
  ``[offset, offset + length)`` clipped to the blob's end (an offset at the
  end gives ``b""``).
* A writer's ``commit`` with the wrong size or digest raises SizeMismatch or
  DigestMismatch and nothing becomes visible; ``abort`` (or leaving the
  writer's ``with`` block without a commit) leaves nothing visible either.
  Two writers committing the same digest both succeed.
* ``put_variant`` of an existing record succeeds; ``find_variants`` returns
  the records whose source is the digest (records with different params are
  all kept).
* ``images`` merges every record written, by any writer, with
  :func:`~transcoder.records.merge_images`: a name's newest record wins,
  whatever the order of the writes.
* All of the above holds with writers in several threads and processes at
  once: nothing is lost, no half-written blob is ever visible.
"""

from __future__ import annotations

import io
from typing import BinaryIO, Protocol, runtime_checkable

from ..descriptor import MAX_MANIFEST_BYTES, Descriptor, read_checked
from ..digest import Digest
from ..errors import InputError
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
        upload up front may use it, and must still publish under the digest.
        A hint that is itself a digest is a promise: a sink may upload straight
        to that digest's final name and refuse (DigestMismatch) a commit under
        any other digest."""
        ...


@runtime_checkable
class BlobMounter(Protocol):
    """Optional: link a blob from a source the sink can reach (a registry's
    cross-repository mount) instead of copying its bytes. ``can_mount`` is
    also true for a source whose blobs the sink holds already (the same
    repository): either way the sink needs none of the source's bytes."""

    def can_mount(self, source: object) -> bool: ...

    def mount_blob(self, desc: Descriptor, source: object) -> bool: ...


@runtime_checkable
class RecordStager(Protocol):
    """Optional: start storing what a record needs ahead of the record, which
    stays invisible until ``put_variant`` or ``put_image``. A remote sink whose
    record is a blob plus a pointer to it pushes the blob in the background
    as soon as the record's content is known; the put waits for that push (or
    pushes again if it failed) and writes the pointer. So neither a layer's
    end nor the image's manifests wait for a record's blob."""

    def stage_variant(self, rec: VariantRecord) -> None: ...

    def stage_image(self, rec: ImageRecord) -> None: ...

    def drop_staged(self) -> None:
        """Wait for what was staged and not put (an image that failed) to end;
        it stays invisible."""


@runtime_checkable
class LookupWarmer(Protocol):
    """Optional: start, in the background, what the first variant lookup
    would wait for (a registry's tag listing, and with it the connection and
    any token), so that its round trips overlap the reading of the source."""

    def warm_lookups(self) -> None: ...


@runtime_checkable
class StatAhead(Protocol):
    """Optional: start asking whether a blob is there (a registry's HEAD)
    before the answer is needed; the next ``stat_blob`` of that digest takes
    the answer instead of asking again, so the round trip overlaps others."""

    def stat_ahead(self, digest: Digest) -> None: ...


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


def as_digest(value: Digest | str) -> Digest:
    """A sink method's digest argument, validated: a Digest, or a string that parses as one."""
    if isinstance(value, Digest):
        return value
    if isinstance(value, str):
        return Digest.parse(value)
    raise InputError(f"invalid digest {value!r:.80}: expected sha256:<64 hex>")


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
    with provider.open_blob(desc.digest) as f:
        return read_checked(f, desc, f"{what} {desc.digest}", limit)


class BlobManifests:
    """Mixin: manifests stored as ordinary blobs (every sink but a registry)."""

    def put_manifest(self, data: bytes, media_type: str) -> Descriptor:
        return put_bytes(self, data, media_type)  # type: ignore[arg-type]

    def get_manifest(self, desc: Descriptor) -> bytes:
        return read_verified(self, desc, what="manifest")  # type: ignore[arg-type]


def bytes_reader(data: bytes, offset: int = 0, length: int | None = None) -> BinaryIO:
    end = len(data) if length is None else offset + length
    return io.BytesIO(data[offset:end])
