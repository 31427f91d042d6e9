"""Consistency check of a local store, or of an S3 or Azure sink (read-only).

A store is consistent when every image named in ``index.json`` reaches only
blobs that exist, and every variant record's blobs exist; ``deep`` also
re-hashes every reachable blob and re-decodes every recorded variant to its
diffID. What a crash may leave (unreferenced blobs, ingest files) is not a
fault: ``gc`` removes it. A sink is checked through its own API, with its
image records as the roots (:func:`check_sink`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .blobs import verify_variant
from .descriptor import ANNOTATION_REF_NAME, INDEX_TYPES, MANIFEST_TYPES, Descriptor
from .digest import Digest, sha256_stream
from .errors import TranscoderError
from .images.model import Index, parse
from .records import VariantRecord
from .sinks.base import Sink
from .sinks.local import LocalSink
from .sinks.objectstore import ObjectSink


@dataclass
class CheckReport:
    images: int = 0
    blobs: int = 0
    variants: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "images": self.images, "blobs": self.blobs, "variants": self.variants,
                "problems": self.problems}


def _walk(store: Sink, name: str, root: Descriptor, report: CheckReport, seen: set[Digest], deep: bool) -> None:
    todo = [root]
    while todo:
        desc = todo.pop()
        if desc.digest in seen:
            continue
        seen.add(desc.digest)
        size = store.stat_blob(desc.digest)
        if size is None:
            report.problems.append(f"image {name}: {desc.media_type} {desc.digest} is missing")
            continue
        if size != desc.size:
            report.problems.append(f"image {name}: {desc.digest} is {size} bytes, descriptor says {desc.size}")
            continue
        report.blobs += 1
        if desc.media_type in MANIFEST_TYPES | INDEX_TYPES:
            doc = parse(store.get_manifest(desc), desc, name)
            todo += list(doc.manifests) if isinstance(doc, Index) else [doc.config, *doc.layers]
        elif deep:
            with store.open_blob(desc.digest) as f:
                if sha256_stream(f)[0] != desc.digest:
                    report.problems.append(f"image {name}: blob {desc.digest} does not match its digest")


def check_store(dest: str | os.PathLike[str], deep: bool = False) -> CheckReport:
    store = LocalSink(dest)
    report = CheckReport()
    seen: set[Digest] = set()
    for entry in store.layout.index_entries():
        report.images += 1
        name = entry.annotations.get(ANNOTATION_REF_NAME, str(entry.digest))
        try:
            _walk(store, name, entry, report, seen, deep)
        except TranscoderError as exc:
            report.problems.append(f"image {name}: {exc}")
    _check_variants(store, store.all_variants(), report, deep)
    return report


def check_sink(sink: ObjectSink, deep: bool = False) -> CheckReport:
    """The same check through a sink's API: every image record's root, and every variant record."""
    report = CheckReport()
    seen: set[Digest] = set()
    for name, rec in sorted(sink.images().items()):
        report.images += 1
        try:
            _walk(sink, name, rec.root, report, seen, deep)
        except TranscoderError as exc:
            report.problems.append(f"image {name}: {exc}")
    _check_variants(sink, sink.all_variants(), report, deep)
    return report


def _check_variants(store: Sink, records: list[VariantRecord], report: CheckReport, deep: bool) -> None:
    for rec in records:
        report.variants += 1
        if store.stat_blob(rec.target.digest) != rec.target.size:
            report.problems.append(f"variant {rec.target.digest} of {rec.source.digest} is missing")
        elif deep:
            try:
                with store.open_blob(rec.target.digest) as f:
                    verify_variant(rec, f)
            except TranscoderError as exc:
                report.problems.append(str(exc))
