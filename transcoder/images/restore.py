"""Rebuild an image from a sink into a local OCI layout.

The sink is read as an image source: its image record names the root; the
manifests for the asked compression are chosen per platform (zstd ones carry
the ``io.github.containers.compression.zstd`` annotation, or have zstd
layers), and every blob is copied with its digest checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from ..descriptor import ANNOTATION_ZSTD, INDEX_TYPES, OCI_INDEX, ZSTD_LAYER_TYPES, Descriptor, platform_string
from ..errors import NotFound, UsageError
from ..records import ImageRecord
from ..sinks.base import Sink
from ..sinks.local import LocalSink
from .layers import copy_blob
from .model import Index, Manifest, build_index, canonical_json, parse


class SinkSource:
    """Any sink, seen as an ImageSource for one of its images."""

    def __init__(self, sink: Sink, image: str) -> None:
        self.sink = sink
        self.image = image

    @property
    def name(self) -> str:
        return f"{self.sink.location} image {self.image}"

    def resolve(self) -> tuple[Descriptor, str | None]:
        rec = self.sink.images().get(self.image)
        if rec is None:
            raise NotFound(f"{self.sink.location}: no image named {self.image!r}")
        return rec.root, rec.name

    def get_manifest(self, desc: Descriptor) -> bytes:
        return self.sink.get_manifest(desc)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self.sink.open_blob(desc.digest)

    def close(self) -> None:
        pass


def _is_zstd(desc: Descriptor, manifest: Manifest) -> bool:
    if desc.annotations.get(ANNOTATION_ZSTD) == "true":
        return True
    return any(layer.media_type in ZSTD_LAYER_TYPES for layer in manifest.layers)


@dataclass
class RestoreResult:
    name: str
    root: Descriptor
    manifests: list[Descriptor]
    blobs: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "root": self.root.to_json(), "manifests": [m.to_json() for m in self.manifests],
                "blobs": self.blobs, "seconds": round(self.seconds, 6)}


def _choose(source: SinkSource, root: Descriptor, compression: str) -> list[tuple[Descriptor, bytes, Manifest]]:
    raw = source.get_manifest(root)
    doc = parse(raw, root, source.name)
    if isinstance(doc, Manifest):
        return [(root, raw, doc)]
    assert isinstance(doc, Index)
    by_platform: dict[str, list[tuple[Descriptor, bytes, Manifest]]] = {}
    for child in doc.manifests:
        if child.media_type in INDEX_TYPES:
            continue
        data = source.get_manifest(child)
        m = parse(data, child, source.name)
        assert isinstance(m, Manifest)
        by_platform.setdefault(platform_string(child.platform), []).append((child, data, m))
    chosen = []
    for plat, cands in by_platform.items():
        want = [c for c in cands if _is_zstd(c[0], c[2]) == (compression == "zstd")]
        if not want:
            raise NotFound(f"{source.name}: no {compression} manifest for platform {plat}")
        chosen.append(want[0])
    return chosen


def restore(sink: Sink, image: str, dest: str, compression: str = "zstd", tag: str | None = None) -> RestoreResult:
    if compression not in ("zstd", "gzip"):
        raise UsageError(f"--compression {compression!r}: expected zstd or gzip")
    started = time.perf_counter()
    source = SinkSource(sink, image)
    root, _ = source.resolve()
    chosen = _choose(source, root, compression)
    out = LocalSink(dest)
    blobs = 0
    for desc, data, m in chosen:
        for blob in (m.config, *m.layers):
            copy_blob(source, out, blob)
            blobs += 1
        out.put_manifest(data, desc.media_type)
    if len(chosen) == 1 and not chosen[0][0].platform:
        new_root = chosen[0][0]
    else:
        new_root = out.put_manifest(canonical_json(build_index([c[0] for c in chosen], None)), OCI_INDEX)
    name = tag or image
    out.put_image(ImageRecord(name, new_root))
    return RestoreResult(name, new_root, [c[0] for c in chosen], blobs, time.perf_counter() - started)
