"""Manifests and indexes: parsed strictly, rewritten faithfully.

Parsing keeps the raw JSON object so that unknown fields and annotations
survive a rewrite; only the fields we change are touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..descriptor import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    json_object,
)
from ..errors import ManifestError


def canonical_json(obj: dict[str, Any]) -> bytes:
    """Stable bytes for the documents we write (same input, same digest)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _media_type(obj: dict[str, Any], desc: Descriptor) -> str:
    # The descriptor is what the parent said; the document may repeat it.
    inner = obj.get("mediaType")
    if inner is not None and inner != desc.media_type:
        raise ManifestError(f"{desc.digest}: document says mediaType {inner!r}, descriptor says {desc.media_type!r}")
    return desc.media_type


@dataclass(frozen=True)
class Manifest:
    desc: Descriptor
    raw: dict[str, Any]
    config: Descriptor
    layers: tuple[Descriptor, ...]

    def with_layers(self, layers: list[Descriptor], media_type: str, config: Descriptor) -> dict[str, Any]:
        obj = dict(self.raw)
        obj["mediaType"] = media_type
        obj["schemaVersion"] = 2
        obj["config"] = config.to_json()
        obj["layers"] = [d.to_json() for d in layers]
        return obj


@dataclass(frozen=True)
class Index:
    desc: Descriptor
    raw: dict[str, Any]
    manifests: tuple[Descriptor, ...]


def parse(data: bytes, desc: Descriptor, image: str) -> Manifest | Index:
    what = f"{image}: {desc.media_type} {desc.digest}"
    obj = json_object(data, what)
    mt = _media_type(obj, desc)
    if obj.get("schemaVersion") != 2:
        raise ManifestError(f"{what}: schemaVersion is {obj.get('schemaVersion')!r}, expected 2")
    if mt in MANIFEST_TYPES:
        if not isinstance(obj.get("layers"), list):
            raise ManifestError(f"{what}: manifest has no layers list")
        config = Descriptor.from_json(obj.get("config"), f"{what} config")
        layers = tuple(Descriptor.from_json(d, f"{what} layer {i}") for i, d in enumerate(obj["layers"]))
        return Manifest(desc, obj, config, layers)
    if mt in INDEX_TYPES:
        if not isinstance(obj.get("manifests"), list):
            raise ManifestError(f"{what}: index has no manifests list")
        children = tuple(Descriptor.from_json(d, f"{what} manifest {i}") for i, d in enumerate(obj["manifests"]))
        return Index(desc, obj, children)
    raise ManifestError(f"{what}: not a manifest or index media type")


def oci_config_type(media_type: str) -> str:
    return OCI_CONFIG if media_type == DOCKER_CONFIG else media_type


def zstd_manifest_type(media_type: str) -> str:
    # Docker schema 2 has no zstd layer type, so a zstd manifest is always OCI.
    return OCI_MANIFEST if media_type in (DOCKER_MANIFEST, OCI_MANIFEST) else media_type


def build_index(manifests: list[Descriptor], base: Index | None) -> dict[str, Any]:
    obj: dict[str, Any] = dict(base.raw) if base is not None else {}
    obj["schemaVersion"] = 2
    obj["mediaType"] = OCI_INDEX
    obj["manifests"] = [d.to_json() for d in manifests]
    return obj


def platform_of_config(data: bytes, what: str) -> dict[str, Any]:
    obj = json_object(data, what)
    plat: dict[str, Any] = {}
    for key in ("architecture", "os", "variant", "os.version"):
        if isinstance(obj.get(key), str) and obj[key]:
            plat[key] = obj[key]
    return plat


def matches_platform(platform: dict[str, Any] | None, wanted: list[str] | None) -> bool:
    if not wanted:
        return True
    if not platform:
        return False
    for w in wanted:
        parts = w.split("/")
        same_os_arch = len(parts) > 1 and parts[0] == platform.get("os") and parts[1] == platform.get("architecture")
        if same_os_arch and (len(parts) < 3 or parts[2] == platform.get("variant")):
            return True
    return False
