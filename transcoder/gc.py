"""Garbage collection: the fix for caches that only grow, and for what crashes leave.

A local store: reachability starts at ``index.json`` and follows indexes and manifests to
configs and layers; a variant record is kept only while its variant blob is
reachable. Without ``max_size`` only unreachable blobs and stale ingest files
go. With it, whole images are evicted least recently used first until the
reachable blobs fit the budget. Orphans younger than ``grace`` seconds are kept: a
converter may have committed them and not yet written the index.

An S3 or Azure sink (:func:`gc_sink`): only what interrupted exports left
(ingest objects, unfinished multipart uploads, uncommitted blocks) goes, once
older than ``grace`` seconds by the service's clock; published blobs and
records are never touched, since another machine may be reading them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .descriptor import ANNOTATION_REF_NAME, Descriptor
from .digest import Digest, is_digest
from .errors import TranscoderError
from .images.layout import Layout
from .images.model import Index, parse
from .records import VariantRecord
from .sinks.local import LocalSink
from .sinks.objectstore import ObjectSink

DEFAULT_GRACE = 3600.0


@dataclass
class GcReport:
    """``removed_bytes`` counts blobs, ingest files and aborted uploads alike."""

    removed_blobs: list[str] = field(default_factory=list)
    removed_bytes: int = 0
    removed_ingest: int = 0
    removed_records: int = 0
    aborted_uploads: int = 0
    evicted_images: list[str] = field(default_factory=list)
    kept_bytes: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _reachable(store: LocalSink, roots: list[Descriptor]) -> set[Digest]:
    seen: set[Digest] = set()
    todo = list(roots)
    while todo:
        desc = todo.pop()
        if desc.digest in seen:
            continue
        seen.add(desc.digest)
        if store.stat_blob(desc.digest) is None:
            continue
        if desc.media_type.endswith(("manifest.v1+json", "manifest.v2+json", "manifest.list.v2+json", "index.v1+json")):
            doc = parse(store.get_manifest(desc), desc, store.location)
            todo += list(doc.manifests) if isinstance(doc, Index) else [doc.config, *doc.layers]
    return seen


def _blob_sizes(store: LocalSink) -> dict[Digest, tuple[int, float]]:
    out = {}
    for path in (store.layout.root / "blobs" / "sha256").iterdir():
        if is_digest("sha256:" + path.name) and path.is_file() and not path.is_symlink():
            st = path.stat()
            out[Digest("sha256:" + path.name)] = (st.st_size, st.st_mtime)
    return out


def _evict(store: LocalSink, entries: list[Descriptor], sizes: dict[Digest, tuple[int, float]], budget: int,
           report: GcReport) -> list[Descriptor]:
    """Drop least recently used named images until the reachable set fits."""
    def used(e: Descriptor) -> float:
        return float(store.image_meta(e.annotations.get(ANNOTATION_REF_NAME, "")).get("last_used", 0.0))

    kept = sorted(entries, key=used)
    while kept and sum(sizes.get(d, (0, 0))[0] for d in _reachable(store, kept)) > budget:
        gone = kept.pop(0)
        report.evicted_images.append(gone.annotations.get(ANNOTATION_REF_NAME, str(gone.digest)))
    return [e for e in entries if e in kept]


def gc(dest: str | os.PathLike[str], *, dry_run: bool = False, max_size: int | None = None,
       grace: float = DEFAULT_GRACE) -> GcReport:
    Layout(dest).require()  # never make a store just to collect nothing
    store = LocalSink(dest)
    report = GcReport(dry_run=dry_run)
    now = time.time()
    with store.lock():
        entries = store.layout.index_entries()
        sizes = _blob_sizes(store)
        was_live = _reachable(store, entries)
        if max_size is not None:
            kept = _evict(store, entries, sizes, max_size, report)
            if not dry_run and len(kept) != len(entries):
                store.layout.write_index(kept, store.layout.read_index())
            entries = kept
        live = _reachable(store, entries)
        for digest, (size, mtime) in sizes.items():
            if digest in live:
                report.kept_bytes += size
                continue
            if digest not in was_live and now - mtime < grace:
                continue  # a fresh orphan may belong to a conversion still running
            report.removed_blobs.append(str(digest))
            report.removed_bytes += size
            if not dry_run:
                store.layout.blob_path(digest).unlink(missing_ok=True)
        report.removed_records = _prune_records(store, live, dry_run)
        report.removed_ingest, ingest_bytes = _prune_ingest(store.state / "ingest", now, grace, dry_run)
        report.removed_bytes += ingest_bytes
    return report


def gc_sink(sink: ObjectSink, *, dry_run: bool = False, grace: float = DEFAULT_GRACE) -> GcReport:
    """Remove an object-store sink's leftovers older than ``grace`` seconds."""
    report = GcReport(dry_run=dry_run)
    now = time.time()
    for item in list(sink.leftovers()):
        if now - item.modified < grace:
            continue  # an export may still be writing it
        if item.kind == "multipart upload":
            report.aborted_uploads += 1
        else:
            report.removed_ingest += 1
        report.removed_bytes += item.size
        if not dry_run:
            item.remove()
    return report


def _prune_records(store: LocalSink, live: set[Digest], dry_run: bool) -> int:
    removed = 0
    for path in sorted((store.state / "variants").glob("*/*.json")):
        try:
            rec = VariantRecord.from_bytes(path.read_bytes(), str(path))
            dead = rec.target.digest not in live
        except TranscoderError:
            dead = True  # an unreadable record is garbage too
        if dead:
            removed += 1
            if not dry_run:
                path.unlink(missing_ok=True)
    return removed


def _prune_ingest(folder: Path, now: float, grace: float, dry_run: bool) -> tuple[int, int]:
    removed = size = 0
    for path in folder.iterdir() if folder.is_dir() else []:
        st = path.stat()
        if now - st.st_mtime >= grace:
            removed += 1
            size += st.st_size
            if not dry_run:
                path.unlink(missing_ok=True)
    return removed, size
