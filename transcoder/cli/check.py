"""``transcoder check``: is a local store consistent?"""

from __future__ import annotations

import argparse
import sys

from ..check import check_store
from .output import emit_json


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("check", help="check a local store: no image points to a missing blob, records are sound",
                       description="Read-only consistency check of a local store. --deep re-hashes blobs and "
                       "re-decodes every recorded variant to its diffID. Exit 1 if a problem is found.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--deep", action="store_true", help="re-hash blobs and re-decode variants")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = check_store(args.dir, deep=args.deep)
    if args.json:
        emit_json(report.to_json())
    else:
        for problem in report.problems:
            print(problem)
        print(f"{report.images} image(s), {report.blobs} blob(s), {report.variants} variant record(s): "
              f"{'ok' if report.ok else f'{len(report.problems)} problem(s)'}", file=sys.stderr)
    return 0 if report.ok else 1
