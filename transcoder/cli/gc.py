"""``transcoder gc``: keep a store from growing without end, and clear what crashes left."""

from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from ..gc import DEFAULT_GRACE, GcReport, gc, gc_sink
from ..sinks import open_sink
from ..sinks.local import LocalSink
from ..sinks.objectstore import ObjectSink
from .output import emit_json, human, parse_size, with_sink

NO_GC = {
    "gha": "the Actions cache service lets clients neither list nor delete entries: reservations that were never "
           "finished expire on their own, and entries nobody reads are evicted by the service",
    "registry": "a registry collects unreferenced blobs and abandoned uploads itself (docker-registry "
                "garbage-collect)",
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "gc", help="remove unreferenced blobs, stale ingest files and unfinished uploads",
        description="DIR (a local store): remove blobs that nothing in DIR/index.json references, dead variant "
        "records and stale ingest files; with --max-size, evict least recently used images until the store fits. "
        "SINK (type=s3,... or type=azblob,...): remove what interrupted exports left under the sink's prefix "
        "(ingest objects, unfinished multipart uploads, uncommitted blocks); published blobs and records stay.",
    )
    p.add_argument("dir", metavar="DIR|SINK", help="a local store directory, or a sink spec (type=s3,bucket=B,...)")
    p.add_argument("--dry-run", action="store_true", help="report what would go; change nothing")
    p.add_argument("--max-size", metavar="SIZE", help="local stores: evict least recently used images until under "
                   "SIZE (e.g. 10GiB)")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE,
                   help="keep leftovers younger than this many seconds (conversions in flight; default %(default)s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    budget = parse_size(args.max_size, "--max-size") if args.max_size else None
    if args.grace < 0:
        raise UsageError("--grace: must be 0 or more seconds")
    if not args.dir.startswith("type="):
        report = gc(args.dir, dry_run=args.dry_run, max_size=budget, grace=args.grace)
    else:
        sink = open_sink(args.dir)
        collected = with_sink(sink, lambda: _gc_sink(sink, args.dir, args, budget))
        if collected is None:
            return 0
        report = collected
    if args.json:
        emit_json(report.to_json())
        return 0
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(report.removed_blobs)} blob(s), {report.removed_ingest} ingest file(s), "
          f"{report.removed_records} record(s), {report.aborted_uploads} unfinished upload(s) "
          f"({human(report.removed_bytes)}); evicted {len(report.evicted_images)} image(s); "
          f"kept {human(report.kept_bytes)}", file=sys.stderr)
    return 0


def _gc_sink(sink: object, spec: str, args: argparse.Namespace, budget: int | None) -> GcReport:
    if isinstance(sink, LocalSink):
        return gc(sink.layout.root, dry_run=args.dry_run, max_size=budget, grace=args.grace)
    kind = spec.split(",")[0].partition("=")[2]
    if not isinstance(sink, ObjectSink):
        raise UsageError(f"gc type={kind}: nothing to collect: {NO_GC.get(kind, 'not supported for this sink')}")
    if budget is not None:
        raise UsageError(f"gc type={kind}: --max-size applies to local stores only")
    return gc_sink(sink, dry_run=args.dry_run, grace=args.grace)
