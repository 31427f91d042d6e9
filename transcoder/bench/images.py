"""Layer blobs of an image (``oci:``, ``docker-archive:``, ``docker://``), read
whole into memory and checked against their descriptors.

One platform is benchmarked: the one named, else the host's, else the only
one; layers of several platforms would count the same kind of data twice.
"""

from __future__ import annotations

import hashlib
import platform as host
from collections.abc import Iterator

from ..descriptor import LAYER_TYPES, Descriptor, platform_string
from ..errors import DigestMismatch, InputError, ManifestError, SizeMismatch
from ..images.model import Index, Manifest, matches_platform, parse
from ..images.source import ImageSource, open_source

IMAGE_PREFIXES = ("oci:", "docker-archive:", "docker://")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def host_platform() -> str:
    machine = host.machine().lower()
    return f"linux/{_ARCH.get(machine, machine)}"


def _pick(index: Index, wanted: str | None, image: str) -> Descriptor:
    names = [platform_string(d.platform) for d in index.manifests]
    for choice in [wanted] if wanted else [host_platform()]:
        for desc in index.manifests:
            if matches_platform(desc.platform, [choice]):
                return desc
    if not wanted and len(index.manifests) == 1:
        return index.manifests[0]
    asked = wanted or f"the host's {host_platform()}"
    raise ManifestError(f"{image}: no manifest for {asked} in the index (has {', '.join(names) or 'none'}); use --platform")


def _manifest(source: ImageSource, wanted: str | None) -> Manifest:
    desc, _tag = source.resolve()
    for _depth in range(4):  # an index of indexes is legal; a deep chain is not
        node = parse(source.get_manifest(desc), desc, source.name)
        if isinstance(node, Manifest):
            return node
        desc = _pick(node, wanted, source.name)
    raise ManifestError(f"{source.name}: indexes nested too deeply")


def _read_blob(source: ImageSource, desc: Descriptor) -> bytes:
    what = f"{source.name}: layer {desc.digest}"
    buf = bytearray()
    with source.open_blob(desc) as f:
        # Streams may return short reads; stop one byte past the claimed size.
        while len(buf) <= desc.size and (piece := f.read(min(1 << 20, desc.size + 1 - len(buf)))):
            buf += piece
    data = bytes(buf)
    if len(data) != desc.size:
        got = f"{len(data)}{'+' if len(data) > desc.size else ''}"
        raise SizeMismatch(f"{what}: blob is {got} bytes, descriptor says {desc.size}")
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != str(desc.digest):
        raise DigestMismatch(f"{what}: blob hashes to {actual}")
    return data


def image_blobs(ref: str, platform: str | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, blob) for every layer of the image, verified, in manifest order."""
    source = open_source(ref)
    try:
        manifest = _manifest(source, platform)
        for desc in manifest.layers:
            if desc.media_type not in LAYER_TYPES:
                raise InputError(f"{source.name}: layer {desc.digest} has media type {desc.media_type!r}, not a tar layer")
            yield f"{source.name}@{desc.digest}", _read_blob(source, desc)
    finally:
        source.close()
