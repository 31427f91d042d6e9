"""``transcoder gc``: keep a local store from growing without end."""

from __future__ import annotations

import argparse
import sys

from ..gc import DEFAULT_GRACE, gc
from .output import emit_json, human, parse_size


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "gc", help="remove unreferenced blobs and stale ingest files from a local store",
        description="Remove blobs that nothing in DIR/index.json references, dead variant records and stale ingest "
        "files. With --max-size, evict least recently used images until the store fits.",
    )
    p.add_argument("dir", metavar="DIR", help="a local store (type=local,dest=DIR)")
    p.add_argument("--dry-run", action="store_true", help="report what would go; change nothing")
    p.add_argument("--max-size", metavar="SIZE", help="evict least recently used images until under SIZE (e.g. 10GiB)")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE,
                   help="keep orphans younger than this many seconds (conversions in flight; default %(default)s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    budget = parse_size(args.max_size, "--max-size") if args.max_size else None
    report = gc(args.dir, dry_run=args.dry_run, max_size=budget, grace=args.grace)
    if args.json:
        emit_json(report.to_json())
        return 0
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(report.removed_blobs)} blob(s) ({human(report.removed_bytes)}), {report.removed_ingest} "
          f"ingest file(s), {report.removed_records} record(s); evicted {len(report.evicted_images)} image(s); "
          f"kept {human(report.kept_bytes)}", file=sys.stderr)
    return 0
