"""``docker save`` archives as an image source.

Two forms exist: the classic one (``manifest.json`` naming ``<id>/layer.tar``
members and a config JSON, layers uncompressed) and the newer one (Docker 25+)
that also holds an OCI layout (``index.json``, ``blobs/sha256/...``). Member
names come from untrusted JSON, so they are only ever looked up in the tar's
own member table, never joined to a filesystem path.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from typing import Any, BinaryIO

from ..codecs import Format, detect
from ..descriptor import (
    ANNOTATION_REF_NAME,
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    MAX_MANIFEST_BYTES,
    Descriptor,
)
from ..digest import Digest, check_digest
from ..errors import InputError, ManifestError, NotFound
from .model import canonical_json

_MAX_LINK_DEPTH = 8


class _Bounded(io.RawIOBase):
    """Reads at most ``size`` bytes from ``f``, then EOF; closes ``f``."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


class ArchiveSource:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._tar = tarfile.open(path, "r:")  # noqa: SIM115 - open for the source's lifetime; close() ends it
        except (OSError, tarfile.TarError) as exc:
            raise InputError(f"docker-archive:{path}: cannot read archive ({exc})") from exc
        self._members = {posixpath.normpath(m.name): m for m in self._tar.getmembers()}
        self._synth: dict[Digest, bytes] = {}  # manifests we built for the classic form
        self._paths: dict[Digest, str] = {}  # blob digest -> member name (classic form)

    @property
    def name(self) -> str:
        return f"docker-archive:{self.path}"

    def close(self) -> None:
        self._tar.close()

    def _member(self, name: str, depth: int = 0) -> tarfile.TarInfo:
        m = self._members.get(posixpath.normpath(name))
        if m is None:
            raise NotFound(f"{self.name}: member {name!r} is missing")
        if m.issym() or m.islnk():
            if depth >= _MAX_LINK_DEPTH:
                raise ManifestError(f"{self.name}: member {name!r}: too many links")
            target = m.linkname if m.islnk() else posixpath.join(posixpath.dirname(m.name), m.linkname)
            return self._member(target, depth + 1)
        if not m.isfile():
            raise ManifestError(f"{self.name}: member {name!r} is not a regular file")
        return m

    def _open(self, name: str) -> BinaryIO:
        """A reader of one member on its own file handle: layers are read by
        several threads at once, and tarfile's shared handle is not safe for that."""
        member = self._member(name)
        if member.issparse():
            raise ManifestError(f"{self.name}: member {name!r} is a sparse file")
        f = open(self.path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
        f.seek(member.offset_data)
        return _Bounded(f, member.size)  # type: ignore[return-value]

    def _read_small(self, name: str) -> bytes:
        m = self._member(name)
        if m.size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{self.name}: {name} is over the {MAX_MANIFEST_BYTES} byte limit")
        return self._open(name).read()

    def _json(self, name: str) -> Any:
        try:
            return json.loads(self._read_small(name))
        except ValueError as exc:
            raise ManifestError(f"{self.name}: {name}: malformed JSON ({exc})") from exc

    # -- ImageSource --------------------------------------------------------

    def resolve(self) -> tuple[Descriptor, str | None]:
        if "index.json" in self._members and "oci-layout" in self._members:
            return self._resolve_oci()
        return self._resolve_classic()

    def _resolve_oci(self) -> tuple[Descriptor, str | None]:
        index = self._json("index.json")
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list) or not index["manifests"]:
            raise ManifestError(f"{self.name}: index.json lists no images")
        if len(index["manifests"]) != 1:
            raise ManifestError(f"{self.name}: holds {len(index['manifests'])} images; only one per archive is supported")
        desc = Descriptor.from_json(index["manifests"][0], f"{self.name}: index.json")
        tag = desc.annotations.get("io.containerd.image.name") or desc.annotations.get(ANNOTATION_REF_NAME)
        return desc, tag

    def _resolve_classic(self) -> tuple[Descriptor, str | None]:
        entries = self._json("manifest.json")
        if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
            raise ManifestError(f"{self.name}: manifest.json must list exactly one image")
        entry = entries[0]
        if not isinstance(entry.get("Config"), str) or not isinstance(entry.get("Layers"), list):
            raise ManifestError(f"{self.name}: manifest.json entry lacks Config or Layers")
        config = self._describe(entry["Config"], DOCKER_CONFIG)
        layers = [self._describe(str(name), None) for name in entry["Layers"]]
        manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config.to_json(),
                    "layers": [d.to_json() for d in layers]}
        data = canonical_json(manifest)
        digest = Digest.of(data)
        self._synth[digest] = data
        tags = entry.get("RepoTags") or []
        return Descriptor(DOCKER_MANIFEST, digest, len(data)), (tags[0] if tags and isinstance(tags[0], str) else None)

    def _describe(self, name: str, media_type: str | None) -> Descriptor:
        """Hash a member (the classic form names blobs by path, not digest)."""
        h = hashlib.sha256()
        size = 0
        head = b""
        with self._open(name) as f:
            while block := f.read(1 << 20):
                if not head:
                    head = block[:512]
                h.update(block)
                size += len(block)
        digest = Digest.from_hasher(h)
        self._paths[digest] = name
        if media_type is None:
            media_type = DOCKER_LAYER_GZIP if detect(head) is Format.GZIP else DOCKER_LAYER_TAR
        return Descriptor(media_type, digest, size)

    def _blob_member(self, digest: Digest) -> str:
        return self._paths.get(digest) or f"blobs/sha256/{digest.hex}"

    def get_manifest(self, desc: Descriptor) -> bytes:
        what = f"{self.name}: manifest {desc.digest}"
        data = self._synth.get(desc.digest)
        if data is None:
            if desc.size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"{what}: {desc.size} bytes is over the {MAX_MANIFEST_BYTES} byte limit")
            data = self._read_small(self._blob_member(desc.digest))
        if len(data) != desc.size:
            raise ManifestError(f"{what}: {len(data)} bytes, descriptor says {desc.size}")
        check_digest(data, desc.digest, what)
        return data

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self._open(self._blob_member(desc.digest))
