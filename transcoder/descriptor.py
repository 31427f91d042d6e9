"""OCI content descriptors and the media types this project speaks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from .digest import Digest, check_digest
from .errors import ManifestError

OCI_LAYOUT_VERSION = "1.0.0"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
GZIP_LAYER_TYPES = frozenset({OCI_LAYER_GZIP, DOCKER_LAYER_GZIP, OCI_LAYER_NONDIST_GZIP, DOCKER_LAYER_FOREIGN})
TAR_LAYER_TYPES = frozenset({OCI_LAYER_TAR, DOCKER_LAYER_TAR})
ZSTD_LAYER_TYPES = frozenset({OCI_LAYER_ZSTD})
LAYER_TYPES = GZIP_LAYER_TYPES | TAR_LAYER_TYPES | ZSTD_LAYER_TYPES

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_ZSTD = "io.github.containers.compression.zstd"

# Manifests and indexes are read into memory; anything larger is hostile.
MAX_MANIFEST_BYTES = 4 << 20


@dataclass(frozen=True)
class Descriptor:
    """An OCI descriptor. ``extra`` keeps unknown fields so they round-trip."""

    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(mediaType=self.media_type, digest=str(self.digest), size=self.size)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str = "descriptor") -> Descriptor:
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: descriptor is not a JSON object")
        try:
            media_type = obj["mediaType"]
            digest = Digest.parse(obj["digest"])
            size = obj["size"]
        except KeyError as exc:
            raise ManifestError(f"{where}: descriptor lacks {exc.args[0]!r}") from exc
        except Exception as exc:
            raise ManifestError(f"{where}: {exc}") from exc
        if not isinstance(media_type, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{where}: descriptor has a bad mediaType or size")
        annotations = obj.get("annotations") or {}
        platform = obj.get("platform")
        if not isinstance(annotations, dict) or (platform is not None and not isinstance(platform, dict)):
            raise ManifestError(f"{where}: descriptor has bad annotations or platform")
        extra = {k: v for k, v in obj.items() if k not in {"mediaType", "digest", "size", "annotations", "platform"}}
        return cls(media_type, digest, size, dict(annotations), platform, extra)

    def replace(self, **changes: Any) -> Descriptor:
        from dataclasses import replace

        return replace(self, **changes)

    def __str__(self) -> str:
        return f"{self.digest} ({self.media_type}, {self.size} bytes)"


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse an untrusted JSON document that must be an object."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{what}: malformed JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise ManifestError(f"{what}: not a JSON object")
    return obj


def read_checked(f: BinaryIO, desc: Descriptor, what: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
    """Read a small blob whole from ``f``: refuse one over ``limit`` bytes, or
    one whose size or digest is not what ``desc`` says."""
    if desc.size > limit:
        raise ManifestError(f"{what}: {desc.size} bytes is over the {limit} byte limit")
    data = f.read(limit + 1)
    if len(data) != desc.size:
        raise ManifestError(f"{what}: blob is {len(data)} bytes, descriptor says {desc.size}")
    check_digest(data, desc.digest, what)
    return data


def platform_string(platform: dict[str, Any] | None) -> str:
    if not platform:
        return "unknown"
    parts = [str(platform.get("os", "")), str(platform.get("architecture", ""))]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)
