"""Object-store sinks (S3, Azure Blob): one layout, one writer, one reader,
over a small store protocol that each service implements in its own module.

Layout under the sink's prefix::

    blobs/sha256/<hex>                                     blobs, configs, manifests
    variants/<source hex>/<params key>/<target hex>.json   variant records
    images/<escaped name>/<created>-<random>.json          image records
    ingest/<random>                                        uploads whose digest is not known yet

Everything but ``ingest/`` is immutable and written with a create-only
conditional write, so concurrent writers never overwrite each other: the
second writer of a blob or record sees "already exists", which is success.
Image records are never replaced: each write adds one, and ``images()``
merges them (newest binding of a name wins), so parallel exporters lose
nothing. A crash leaves at most objects under ``ingest/`` (and, on S3,
incomplete multipart uploads; on Azure, uncommitted blocks), which no reader
ever looks at; :meth:`ObjectSink.leftovers` lists them for ``gc``. Blobs
are written in parts as they arrive (:mod:`transcoder.sinks.objectwrite`).
"""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, TypeVar
from urllib.parse import quote

from ..deadline import Deadline
from ..descriptor import MAX_MANIFEST_BYTES, Descriptor, read_checked
from ..digest import Digest, is_digest
from ..errors import InputError, ManifestError, NotFound, StoreError, TranscoderError
from ..records import ImageRecord, VariantRecord, merge_images
from .base import BlobManifests, as_digest
from .objectwrite import ObjectWriter
from .options import Tuning

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_RECORD_BYTES = 1 << 20
READ_BUFFER = 1 << 20


class Upload(Protocol):
    """Parts of one object, invisible until ``complete``."""

    def put_part(self, number: int, data: bytes) -> None:
        """Store part ``number`` (1-based); called from several threads at once."""
        ...

    def complete(self, parts: int, *, if_absent: bool) -> bool:
        """Publish parts 1..parts in order; False if ``if_absent`` and the key existed."""
        ...

    def abort(self) -> None:
        """Discard the parts; best effort, never raises for a missing upload."""
        ...


@dataclass(frozen=True)
class Leftover:
    """Something an interrupted export left under the sink's prefix, invisible to readers."""

    kind: str  # "ingest object", "multipart upload", "uncommitted blob"
    key: str
    size: int
    modified: float  # seconds since the epoch, by the service's clock: the last write to it
    remove: Callable[[], None] = field(compare=False, repr=False)


class ObjectStore(Protocol):
    """The few operations the layout needs; errors are converted to TranscoderError."""

    def head(self, key: str) -> int | None: ...

    def get(self, key: str, offset: int = 0, length: int | None = None, *,
            deadline: Deadline | None = None) -> BinaryIO:
        """Bytes ``[offset, offset+length)`` clipped to the end; NotFound if absent.
        With ``deadline``, the read fails with its error once it passes."""
        ...

    def put(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent; False if it already existed."""
        ...

    def keys(self, prefix: str) -> Iterator[str]: ...

    def upload(self, key: str) -> Upload: ...

    def copy(self, src: str, dst: str, size: int) -> bool:
        """Server-side copy, creating ``dst`` only if absent; False if it existed."""
        ...

    def delete(self, key: str) -> None: ...

    def leftovers(self, prefix: str) -> Iterator[Leftover]:
        """Everything under ``prefix + "ingest/"``, and unfinished uploads anywhere under
        ``prefix`` (including those on final keys, which only the service can see)."""
        ...

    def close(self) -> None: ...


def escape_name(name: str) -> str:
    """An image name as one key segment: "/" and ":" escaped, "." too so no segment is "." or ".."."""
    return quote(name, safe="").replace(".", "%2E")


class ObjectReader(io.RawIOBase):
    """A raw stream over a service's response body that notices truncation.

    ``read(n)`` returns up to ``n`` bytes, b"" at the end; ``errors`` converts
    the service library's exceptions. A body that ends before ``expected``
    bytes raises, so a cut connection is never taken for the end of a blob.
    With a ``deadline`` (whose socket the store attached), a read past it
    raises the deadline's error, whatever the library made of the cut socket.
    The deadline runs only inside reads (a slow consumer is not a slow
    server), and reads are at most READ_BUFFER bytes, so progress is counted
    while a big read is under way.
    """

    def __init__(self, read: Callable[[int], bytes], close: Callable[[], None], expected: int, what: str,
                 errors: Callable[[BaseException], TranscoderError], deadline: Deadline | None = None) -> None:
        super().__init__()
        self._read, self._close, self._left, self._what, self._errors = read, close, expected, what, errors
        self._deadline = deadline
        if deadline is not None:
            deadline.pause()  # the response has begun; the clock runs again in readinto

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        deadline = self._deadline
        if deadline is not None:
            deadline.resume()
        try:
            data = self._read(min(len(buffer), self._left, READ_BUFFER))
        except Exception as exc:
            if deadline is not None and deadline.expired():
                raise deadline.error() from exc
            if isinstance(exc, TranscoderError):
                raise
            raise self._errors(exc) from exc
        finally:
            if deadline is not None:
                deadline.pause()
        if deadline is not None:
            deadline.feed(len(data))
        if not data:
            raise StoreError(f"{self._what}: response ended {self._left} bytes early")
        n = len(data)
        buffer[:n] = data
        self._left -= n
        if self._left <= 0 and self._deadline is not None:
            self._deadline.detach()  # the connection may go back to the pool: never cut it later
        return n

    def close(self) -> None:
        if not self.closed:
            if self._deadline is not None:
                self._deadline.detach()
            try:
                self._close()
            finally:
                super().close()


def buffered(reader: ObjectReader) -> BinaryIO:
    return io.BufferedReader(reader, READ_BUFFER)  # type: ignore[return-value]


class ObjectSink(BlobManifests):
    """The sink contract over an :class:`ObjectStore`; subclasses only build the store."""

    def __init__(self, store: ObjectStore, location: str, prefix: str, tuning: Tuning) -> None:
        self.store = store
        self._location = location
        self.prefix = prefix
        self.tuning = tuning

    @property
    def location(self) -> str:
        return self._location

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._location!r})"

    def close(self) -> None:
        self.store.close()

    # -- keys ------------------------------------------------------------------

    def blob_key(self, digest: Digest) -> str:
        return f"{self.prefix}blobs/sha256/{as_digest(digest).hex}"

    def ingest_key(self) -> str:
        return f"{self.prefix}ingest/{secrets.token_hex(16)}"

    def leftovers(self) -> Iterator[Leftover]:
        """What interrupted exports left (see :class:`Leftover`); published blobs and records never."""
        return self.store.leftovers(self.prefix)

    def variant_key(self, rec: VariantRecord) -> str:
        return f"{self.prefix}variants/{rec.source.digest.hex}/{rec.params.key}/{rec.target.digest.hex}.json"

    def image_key(self, rec: ImageRecord) -> str:
        # Zero-padded so that key order is time order within a name.
        return f"{self.prefix}images/{escape_name(rec.name)}/{rec.created:020.6f}-{secrets.token_hex(8)}.json"

    # -- blobs -----------------------------------------------------------------

    def stat_blob(self, digest: Digest) -> int | None:
        return self.store.head(self.blob_key(digest))

    def open_blob(self, digest: Digest, offset: int = 0, length: int | None = None) -> BinaryIO:
        digest = as_digest(digest)
        if offset < 0 or (length is not None and length < 0):
            raise InputError(f"{self.location}: blob {digest}: bad range offset={offset} length={length}")
        deadline = Deadline(f"{self.location}: blob {digest}", self.download_allowance, min_rate=self.download_min_rate)
        return self.store.get(self.blob_key(digest), offset, length, deadline=deadline)

    def blob_writer(self, media_type: str, *, key_hint: str | None = None, size_hint: int | None = None) -> ObjectWriter:
        hint = Digest.parse(key_hint) if key_hint and is_digest(key_hint) else None
        return ObjectWriter(self, hint)

    def check_existing(self, key: str, size: int) -> None:
        """A create-only write found ``key``: fine if it holds ``size`` bytes (content addressing)."""
        found = self.store.head(key)
        if found != size:
            state = "is missing" if found is None else f"holds {found} bytes"
            raise StoreError(f"{self.location}: {key} already existed but now {state}, expected {size} bytes")

    # -- records ---------------------------------------------------------------

    # A server trickling bytes defeats per-read timeouts: a record or a
    # manifest must arrive whole within this many seconds; a blob within
    # download_allowance seconds plus one per download_min_rate bytes, so a
    # big healthy download passes. Only time spent waiting on the service counts.
    read_deadline = 60.0
    download_allowance = 60.0
    download_min_rate = 64 << 10

    def get_manifest(self, desc: Descriptor) -> bytes:
        what = f"manifest {desc.digest}"
        deadline = Deadline(f"{self.location}: {what}", self.read_deadline)
        with self.store.get(self.blob_key(desc.digest), 0, MAX_MANIFEST_BYTES + 1, deadline=deadline) as f:
            return read_checked(f, desc, f"{self.location}: {what}", MAX_MANIFEST_BYTES)

    def _read_small(self, key: str) -> bytes:
        deadline = Deadline(f"{self.location}: record {key}", self.read_deadline)
        with self.store.get(key, 0, MAX_RECORD_BYTES + 1, deadline=deadline) as f:
            data = f.read()
        if len(data) > MAX_RECORD_BYTES:
            raise ManifestError(f"{self.location}: record {key} is over {MAX_RECORD_BYTES} bytes")
        return data

    def put_variant(self, rec: VariantRecord) -> None:
        self.store.put(self.variant_key(rec), rec.to_bytes())

    def find_variants(self, source: Digest) -> list[VariantRecord]:
        source = as_digest(source)
        out = []
        for key in sorted(self.store.keys(f"{self.prefix}variants/{source.hex}/")):
            if key.endswith(".json") and (rec := self._record(key, VariantRecord.from_bytes)) is not None:
                if rec.source.digest == source:
                    out.append(rec)
                else:
                    log.warning("%s: ignoring %s: it records source %s", self.location, key, rec.source.digest)
        return out

    def _record(self, key: str, parse: Callable[[bytes, str], T]) -> T | None:
        """A record, or None if it vanished meanwhile (a prefix being cleared)."""
        try:
            return parse(self._read_small(key), f"{self.location}: {key}")
        except NotFound:
            return None

    def all_variants(self) -> list[VariantRecord]:
        base = f"{self.prefix}variants/"
        return [rec for key in sorted(self.store.keys(base))
                if key.endswith(".json") and (rec := self._record(key, VariantRecord.from_bytes)) is not None]

    def put_image(self, rec: ImageRecord) -> None:
        self.store.put(self.image_key(rec), rec.to_bytes())

    def images(self) -> dict[str, ImageRecord]:
        """Merged image records; per name only the newest keys are read (their names sort by time)."""
        stamped: dict[str, list[tuple[str, str]]] = {}
        base = f"{self.prefix}images/"
        for key in self.store.keys(base):
            folder, _, leaf = key[len(base):].rpartition("/")
            if folder and "/" not in folder and leaf.endswith(".json"):
                stamped.setdefault(folder, []).append((leaf.split("-", 1)[0], key))
        newest = {folder: max(entries)[0] for folder, entries in stamped.items()}
        keys = [k for folder, entries in stamped.items() for stamp, k in entries if stamp == newest[folder]]
        return merge_images([r for k in keys if (r := self._record(k, ImageRecord.from_bytes)) is not None])
