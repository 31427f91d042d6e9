"""``transcoder variants``: inspect, carry and verify the variant table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..blobs import FILE_SCHEME, verify_variant
from ..digest import Digest
from ..errors import InputError, ManifestError, TranscoderError, UsageError
from ..variants import VariantTable
from .output import emit_json, human


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("variants", help="list, show, export, import or verify recorded variants",
                       description="The variant table records which blobs are zstd variants of which canonical "
                       "blobs ($TRANSCODER_HOME/variants.db, default ~/.cache/transcoder).")
    vs = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = vs.add_parser("list", help="every recorded variant")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)
    show = vs.add_parser("show", help="everything known about one digest (canonical, variant or diffID peers)")
    show.add_argument("digest", metavar="DIGEST")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=run_show)
    ex = vs.add_parser("export", help="write the table as JSON (to stdout, or -o FILE)")
    ex.add_argument("-o", "--output", metavar="FILE")
    ex.set_defaults(func=run_export)
    im = vs.add_parser("import", help="merge a JSON export into this table")
    im.add_argument("file", metavar="FILE", help="export file, or - for stdin")
    im.set_defaults(func=run_import)
    ve = vs.add_parser("verify", help="re-decode stored variants and check digests and diffIDs")
    ve.add_argument("--json", action="store_true")
    ve.set_defaults(func=run_verify)


def _digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except InputError as exc:
        raise UsageError(f"DIGEST {text!r}: not a sha256:<64 hex> digest") from exc


def run_list(args: argparse.Namespace) -> int:
    recs = VariantTable().variants()
    if args.json:
        emit_json([r.to_json() for r in recs])
        return 0
    for r in recs:
        print(f"{r.source.digest.short} {human(r.source.size):>10} -> {r.target.digest.short} "
              f"{human(r.target.size):>10}  {r.params.label} {r.params.library}")
    print(f"{len(recs)} variant(s)", file=sys.stderr)
    return 0


def run_show(args: argparse.Namespace) -> int:
    table = VariantTable()
    digest = _digest(args.digest)
    recs = table.related(digest)
    if not recs:
        raise TranscoderError(f"{digest}: not in the variant table")
    out = []
    for r in recs:
        obj = r.to_json()
        obj["locations"] = {str(d): table.locations(d) for d in (r.source.digest, r.target.digest)}
        out.append(obj)
    if args.json:
        emit_json(out)
    else:
        for obj in out:
            print(json.dumps(obj, indent=2, sort_keys=True))
    return 0


def run_export(args: argparse.Namespace) -> int:
    doc = VariantTable().export()
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def run_import(args: argparse.Namespace) -> int:
    try:
        raw = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        doc = json.loads(raw)
    except OSError as exc:
        raise InputError(f"{args.file}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ManifestError(f"{args.file}: malformed JSON: {exc}") from exc
    n = VariantTable().import_(doc)
    print(f"imported {n} variant(s)", file=sys.stderr)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    table = VariantTable()
    report = []
    for rec in table.variants():
        files = [loc[len(FILE_SCHEME):] for loc in table.locations(rec.target.digest) if loc.startswith(FILE_SCHEME)]
        status, detail = "unchecked", "no local copy"
        for path in files:
            try:
                with open(path, "rb") as f:
                    verify_variant(rec, f)
                status, detail = "ok", path
                break
            except OSError as exc:
                status, detail = "missing", f"{path}: {exc.strerror}"
            except TranscoderError as exc:
                status, detail = "bad", str(exc)
                break
        report.append({"target": str(rec.target.digest), "diff_id": str(rec.diff_id), "status": status, "detail": detail})
    if args.json:
        emit_json(report)
    else:
        for r in report:
            print(f"{r['status']:9} {r['target']}  {r['detail']}")
    bad = [r for r in report if r["status"] == "bad"]
    if bad:
        print(f"transcoder: {len(bad)} variant(s) failed verification", file=sys.stderr)
        return 1
    return 0
