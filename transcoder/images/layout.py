"""OCI image layout on disk: safe paths, safe reads, ``index.json``.

Every blob path is built from a validated :class:`Digest`, and every open
refuses symlinks that leave the layout, so a hostile layout cannot make us
read or write outside its directory.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from typing import Any, BinaryIO

from ..descriptor import ANNOTATION_REF_NAME, MAX_MANIFEST_BYTES, OCI_INDEX, OCI_LAYOUT_VERSION, Descriptor, read_checked
from ..digest import Digest
from ..errors import InputError, ManifestError, NotFound
from ..faults import crashpoint
from .model import canonical_json


class Layout:
    """Paths and careful I/O inside one OCI layout directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def _inside(self, path: Path, digest: Digest) -> Path:
        real = path.resolve()
        if not real.is_relative_to(self.root.resolve()):
            raise ManifestError(f"oci:{self.root}: blob {digest} is a link out of the layout")
        return real

    def open_blob(self, digest: Digest) -> BinaryIO:
        path = self.blob_path(digest)
        if not os.path.lexists(path):
            raise NotFound(f"{self.root}: blob {digest} is missing")
        real = self._inside(path, digest)
        try:
            return open(real, "rb")
        except OSError as exc:
            raise InputError(f"{self.root}: blob {digest}: {exc.strerror or exc}") from exc

    def blob_size(self, digest: Digest) -> int | None:
        path = self.blob_path(digest)
        if not os.path.lexists(path):
            return None
        return self._inside(path, digest).stat().st_size

    def read_blob(self, desc: Descriptor, what: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        if desc.size > limit:  # before opening: a hostile size never costs a read
            raise ManifestError(f"{what}: {desc.size} bytes is over the {limit} byte limit")
        with self.open_blob(desc.digest) as f:
            return read_checked(f, desc, what, limit)

    def _not_a_layout(self) -> NotFound:
        return NotFound(f"{self.root}: not an OCI layout (no index.json)")

    def require(self) -> None:
        """Raise :class:`NotFound` unless the directory is a layout already."""
        if not (self.root / "index.json").is_file():
            raise self._not_a_layout()

    def read_index(self) -> dict[str, Any]:
        path = self.root / "index.json"
        try:
            raw = path.read_bytes() if not path.is_symlink() else b""
        except FileNotFoundError as exc:
            raise self._not_a_layout() from exc
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{self.root}/index.json: over the {MAX_MANIFEST_BYTES} byte limit")
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise ManifestError(f"{self.root}/index.json: malformed JSON ({exc})") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("manifests"), list):
            raise ManifestError(f"{self.root}/index.json: not an image index")
        return obj

    def index_entries(self) -> list[Descriptor]:
        obj = self.read_index()
        return [Descriptor.from_json(d, f"{self.root}/index.json entry {i}") for i, d in enumerate(obj["manifests"])]

    def write_index(self, entries: list[Descriptor], base: dict[str, Any] | None = None) -> None:
        """Replace index.json atomically (caller holds the layout lock)."""
        self._atomic_write(self.root / "index.json", _index_bytes(entries, base))

    def init(self) -> None:
        """Make the directory a layout; what another process already wrote stays."""
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        self._create_once(self.root / "oci-layout", json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode())
        self._create_once(self.root / "index.json", _index_bytes([]))

    def _create_once(self, path: Path, data: bytes) -> None:
        """Write ``path`` whole unless it exists: a link fails if the name is taken, so a
        converter creating the store can never replace the index another one just wrote."""
        if path.exists():
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
        try:
            _write_synced(tmp, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                if not path.exists():  # no hard links here: the small window of a check
                    os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _atomic_write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        _write_synced(tmp, data)
        if path.name == "index.json":
            crashpoint("index-write")
        os.replace(tmp, path)


def _write_synced(path: Path, data: bytes) -> None:
    """``data`` as the whole of a new file ``path``, on disk before it is renamed or linked into place."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _index_bytes(entries: list[Descriptor], base: dict[str, Any] | None = None) -> bytes:
    obj = dict(base or {})
    obj.update(schemaVersion=2, mediaType=OCI_INDEX, manifests=[d.to_json() for d in entries])
    return canonical_json(obj)


class LayoutSource:
    """An image in an OCI layout, chosen by its ref name annotation."""

    def __init__(self, root: str, ref: str | None) -> None:
        self.layout = Layout(root)
        self.ref = ref

    @classmethod
    def from_ref(cls, text: str) -> LayoutSource:
        # oci:DIR[:REF]; a DIR may itself contain ':' only if REF is given.
        root, sep, ref = text.rpartition(":")
        if not sep or "/" in ref:
            return cls(text, None)
        return cls(root, ref or None)

    @property
    def name(self) -> str:
        return f"oci:{self.layout.root}" + (f":{self.ref}" if self.ref else "")

    def resolve(self) -> tuple[Descriptor, str | None]:
        entries = self.layout.index_entries()
        if self.ref is None:
            if len(entries) != 1:
                names = sorted({e.annotations.get(ANNOTATION_REF_NAME, "") for e in entries} - {""})
                raise ManifestError(f"{self.name}: {len(entries)} images in index.json; name one of {names}")
            return entries[0], entries[0].annotations.get(ANNOTATION_REF_NAME)
        found = [e for e in entries if e.annotations.get(ANNOTATION_REF_NAME) == self.ref]
        if not found:
            raise NotFound(f"{self.name}: no image named {self.ref!r} in index.json")
        return found[-1], self.ref

    def get_manifest(self, desc: Descriptor) -> bytes:
        return self.layout.read_blob(desc, f"{self.name}: manifest {desc.digest}")

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self.layout.open_blob(desc.digest)

    def blob_size(self, desc: Descriptor) -> int | None:
        return self.layout.blob_size(desc.digest)

    def close(self) -> None:
        pass
