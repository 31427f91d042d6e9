"""``type=local,dest=DIR``: a local OCI image layout used as a cache store.

The directory is a valid OCI layout (skopeo and containerd read it). Our own
state lives beside the blobs in ``DIR/.transcoder/``: the ingest area for
uncommitted writes, variant records, and per-image use times for ``gc``.
Blob commits are atomic renames after size and digest checks; ``index.json``
is rewritten under an exclusive lock, so concurrent converters both land.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ..descriptor import ANNOTATION_REF_NAME
from ..digest import Digest
from ..errors import NotFound, StoreError, UsageError
from ..images.layout import Layout
from ..records import ImageRecord, VariantRecord
from ..writers import FileWriter
from .base import BlobManifests, as_digest


class _IngestWriter(FileWriter):
    """A FileWriter whose temp file sits in the ingest area, renamed into blobs/."""

    def __init__(self, sink: LocalSink) -> None:
        self._sink = sink
        # The final name is unknown until commit; write into ingest/ first.
        super().__init__(sink.state / "ingest" / "blob")

    def commit(self, size: int, digest: Digest | str) -> None:
        digest = as_digest(digest)
        self.path = self._sink.layout.blob_path(digest)
        super().commit(size, digest)


class LocalSink(BlobManifests):
    def __init__(self, dest: str | os.PathLike[str]) -> None:
        """Checks DEST now; a store that does not exist yet is created by the
        first write, so a command that fails before writing leaves no trace."""
        self.layout = Layout(dest)
        self.state = self.layout.root / ".transcoder"
        self._ready = False
        self._creating = threading.Lock()  # layers' threads may all write first at once
        if self.layout.root.exists():
            self._ensure()
        else:
            _check_creatable(self.layout.root)

    def _ensure(self) -> None:
        """Make DEST an OCI layout with our state beside it (idempotent)."""
        if self._ready:
            return
        with self._creating:
            if self._ready:
                return
            try:
                self.layout.init()
                for sub in ("ingest", "variants", "images"):
                    (self.state / sub).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"type=local,dest={self.layout.root}: {exc.strerror or exc}") from exc
            self._ready = True

    @classmethod
    def from_options(cls, opts: dict[str, str]) -> LocalSink:
        unknown = set(opts) - {"dest"}
        if unknown:
            raise UsageError(f"type=local: unknown option {sorted(unknown)[0]!r} (known: dest)")
        if not opts.get("dest"):
            raise UsageError("type=local requires dest=DIR")
        return cls(opts["dest"])

    @property
    def location(self) -> str:
        return f"local:{self.layout.root.resolve()}"

    def __repr__(self) -> str:
        return f"LocalSink({str(self.layout.root)!r})"

    def close(self) -> None:
        pass

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock over index.json and image metadata, across processes."""
        self._ensure()
        with open(self.state / "lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- blobs --------------------------------------------------------------

    def stat_blob(self, digest: Digest | str) -> int | None:
        return self.layout.blob_size(as_digest(digest))

    def open_blob(self, digest: Digest | str, offset: int = 0, length: int | None = None) -> BinaryIO:
        f = self.layout.open_blob(as_digest(digest))
        if offset or length is not None:
            import io

            f.seek(offset)
            data = f.read(-1 if length is None else length)
            f.close()
            return io.BytesIO(data)
        return f

    def blob_writer(self, media_type: str, *, key_hint: str | None = None, size_hint: int | None = None) -> FileWriter:
        self._ensure()
        return _IngestWriter(self)

    # -- records ------------------------------------------------------------

    def _variant_path(self, source: Digest, params_key: str) -> Path:
        return self.state / "variants" / source.hex / f"{params_key}.json"

    def put_variant(self, rec: VariantRecord) -> None:
        path = self._variant_path(rec.source.digest, rec.params.key)
        if path.exists():
            return  # immutable: same source and parameters give the same variant
        self._ensure()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.layout._atomic_write(path, rec.to_bytes())

    def find_variants(self, source: Digest | str) -> list[VariantRecord]:
        folder = self.state / "variants" / as_digest(source).hex
        out = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            out.append(VariantRecord.from_bytes(path.read_bytes(), f"{path}"))
        return out

    def all_variants(self) -> list[VariantRecord]:
        return [VariantRecord.from_bytes(p.read_bytes(), str(p)) for p in sorted((self.state / "variants").glob("*/*.json"))]

    def _meta_path(self, name: str) -> Path:
        return self.state / "images" / (hashlib.sha256(name.encode()).hexdigest()[:32] + ".json")

    def put_image(self, rec: ImageRecord) -> None:
        """Bind a name in index.json unless a newer binding is already there:
        the merge rule of every sink (newest wins), whatever the write order."""
        root = rec.root.replace(annotations={**rec.root.annotations, ANNOTATION_REF_NAME: rec.name})
        with self.lock():
            old = self.image_meta(rec.name)
            if "created" in old and (float(old["created"]), str(old.get("root", ""))) > rec.sort_key():
                return
            base = self.layout.read_index()
            entries = [e for e in self.layout.index_entries() if e.annotations.get(ANNOTATION_REF_NAME) != rec.name]
            entries.append(root)
            meta = {"name": rec.name, "created": rec.created, "root": str(rec.root.digest), "last_used": time.time()}
            self.layout._atomic_write(self._meta_path(rec.name), json.dumps(meta).encode())
            self.layout.write_index(entries, base)

    def images(self) -> dict[str, ImageRecord]:
        out: dict[str, ImageRecord] = {}
        if not self._ready and not (self.layout.root / "index.json").exists():
            return out  # not created yet (by us or by another converter): no images
        for entry in self.layout.index_entries():
            name = entry.annotations.get(ANNOTATION_REF_NAME)
            if name:
                meta = self.image_meta(name)
                out[name] = ImageRecord(name, entry, float(meta.get("created", 0.0)))
        return out

    def image_meta(self, name: str) -> dict[str, Any]:
        try:
            obj = json.loads(self._meta_path(name).read_bytes())
            return obj if isinstance(obj, dict) else {}
        except (OSError, ValueError):
            return {}

    def touch_image(self, name: str) -> None:
        """Mark an image used now (for least-recently-used eviction)."""
        with self.lock():
            meta = self.image_meta(name) or {"name": name, "created": time.time()}
            meta["last_used"] = time.time()
            self.layout._atomic_write(self._meta_path(name), json.dumps(meta).encode())

    def get_image(self, name: str) -> ImageRecord:
        rec = self.images().get(name)
        if rec is None:
            raise NotFound(f"{self.location}: no image named {name!r}")
        return rec


def _check_creatable(root: Path) -> None:
    """Fail now, not after a transcode, when DEST could never be created:
    its nearest existing ancestor must be a directory we may write into."""
    parent = root.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise StoreError(f"type=local,dest={root}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"type=local,dest={root}: {parent} is not writable")
