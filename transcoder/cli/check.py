"""``transcoder check``: is a local store, or an S3 or Azure sink, consistent?"""

from __future__ import annotations

import argparse
import sys

from ..check import CheckReport, check_sink, check_store
from ..errors import UsageError
from ..sinks import open_sink
from ..sinks.local import LocalSink
from ..sinks.objectstore import ObjectSink
from .output import emit_json, with_sink


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("check", help="check a store: no image points to a missing blob, records are sound",
                       description="Read-only consistency check of a local store (DIR) or of an S3 or Azure sink "
                       "(a sink spec, type=s3,... or type=azblob,...). --deep re-hashes blobs and re-decodes every "
                       "recorded variant to its diffID. Exit 1 if a problem is found.")
    p.add_argument("dir", metavar="DIR|SINK")
    p.add_argument("--deep", action="store_true", help="re-hash blobs and re-decode variants")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.dir.startswith("type="):
        sink = open_sink(args.dir)
        report = with_sink(sink, lambda: _check(sink, args.dir, args.deep)) or CheckReport()
    else:
        report = check_store(args.dir, deep=args.deep)
    if args.json:
        emit_json(report.to_json())
    else:
        for problem in report.problems:
            print(problem)
        print(f"{report.images} image(s), {report.blobs} blob(s), {report.variants} variant record(s): "
              f"{'ok' if report.ok else f'{len(report.problems)} problem(s)'}", file=sys.stderr)
    return 0 if report.ok else 1


def _check(sink: object, spec: str, deep: bool) -> CheckReport:
    if isinstance(sink, LocalSink):
        return check_store(sink.layout.root, deep=deep)
    if not isinstance(sink, ObjectSink):
        raise UsageError(f"check {spec.split(',')[0]}: only local stores, S3 and Azure sinks can be checked")
    return check_sink(sink, deep=deep)
