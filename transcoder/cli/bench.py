"""``transcoder bench``: gzip and zstd measured on your own layers."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..codecs.constants import DEFAULT_LEVEL
from ..errors import UsageError
from ..transcode import default_workers
from .output import emit_json, parse_size, progress

if TYPE_CHECKING:
    from ..bench import Codec

# transcoder.bench is imported when the command runs, not when the parser is
# built: it brings numpy (50 ms), which `transcoder --help` does not need.
DEFAULT_REPEAT = 3


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bench",
        help="measure gzip and zstd (ratio, compress and decode speed, pull time) on your own layers",
        description="Compress and decode the layers of SRC with each codec and level, in memory, K times, and "
        "report ratio, compression and decode speed (median and spread, wall and CPU time), the blobs as "
        "published, and with --bandwidth the estimated pull time. SRC is a layer blob file, oci:DIR[:REF], "
        "docker-archive:FILE or docker://HOST/REPO:TAG.",
        epilog="Levels: --levels 1,3,9 applies to every codec (each takes the levels it has); "
        "--levels zstd=1-19 --levels gzip=6 set one codec (gzip: isal and zlib); 'all' is every level. "
        "Codecs: gzip (= isal + zlib), isal (gzip levels 0-3), zlib (gzip levels 1-9), "
        "zstd (levels 1-19).",
    )
    p.add_argument("src", metavar="SRC", nargs="+", help="layer blob file or image reference")
    p.add_argument("--codecs", default="gzip,zstd", help="comma-separated: gzip, isal, zlib, zstd (default %(default)s)")
    p.add_argument("--levels", action="append", default=[], metavar="[CODEC=]LIST",
                   help="levels to measure, e.g. 1,3,9 or zstd=1-19 or gzip=all (repeatable; default isal 1,2,3, "
                   "zlib 1,6,9, zstd 1,3,6,9,12,15,19)")
    p.add_argument("--zstd", action="append", default=[], metavar="NAME=N,...",
                   help="also measure zstd with these libzstd parameters over each level, as convert --zstd takes "
                   "them (e.g. clog=13), at zstd's levels, or 3 without zstd among --codecs (repeatable)")
    p.add_argument("--workers", type=int, default=None, help="zstd worker threads (default: number of cores)")
    p.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, metavar="K", help="timed runs per case (default %(default)s)")
    p.add_argument("--bandwidth", action="append", default=[], metavar="RATE",
                   help="estimate pull time at this rate, e.g. 100Mbit, 1Gbit, 50MB/s (repeatable or comma-separated)")
    p.add_argument("--pull-model", choices=["serial", "streamed"], default="serial",
                   help="serial: download then decode; streamed: decode overlaps the download (default %(default)s)")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="which image of a multi-platform index (default: the host's)")
    p.add_argument("--max-size", metavar="SIZE", help="refuse layers that decode to more than SIZE (they are held in memory)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    fmt.add_argument("--csv", action="store_true", help="print the rows as CSV instead of a table")
    p.add_argument("--plot", metavar="FILE", help="also draw ratio against speed to FILE.png or FILE.svg (needs matplotlib)")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class _Plan:
    codecs: list[Codec]
    levels: dict[str, list[int]]
    workers: int
    rates: list[float]
    max_size: int | None

    @property
    def cases(self) -> int:
        return sum(len(v) for v in self.levels.values()) + 2  # + the published blobs (at most two decoders)


def _plan(args: argparse.Namespace) -> _Plan:
    """Check every option before loading or measuring anything."""
    from ..bench import parse_bandwidth, parse_codecs, parse_levels, tuned_zstd
    from ..bench.plot import check_target

    codecs = parse_codecs(args.codecs)
    levels = parse_levels(args.levels, codecs)
    for tuned in {c.name: c for c in map(tuned_zstd, args.zstd)}.values():  # each tuning once
        codecs.append(tuned)
        levels[tuned.name] = levels.get("zstd", [DEFAULT_LEVEL])
    if args.repeat < 1:
        raise UsageError(f"--repeat {args.repeat}: must be at least 1")
    workers = default_workers() if args.workers is None else args.workers
    if workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    rates = [parse_bandwidth(part) for spec in args.bandwidth for part in spec.split(",") if part.strip()]
    if args.plot:
        check_target(args.plot)
    max_size = parse_size(args.max_size, "--max-size") if args.max_size else None
    return _Plan(codecs, levels, workers, rates, max_size)


def run(args: argparse.Namespace) -> int:
    from . import ahead

    # The registries' handshakes go while the rest loads (a docker:// SRC is read with TLS verified).
    refs = [src.removeprefix("docker://") for src in args.src if src.startswith("docker://")]
    ahead.start([e for ref in refs for e in ahead.registry(ref, False)])
    from ..bench import load_layers, run_bench
    from ..bench.plot import save_plot
    from ..bench.report import table, to_csv

    plan = _plan(args)
    layers = load_layers(args.src, max_size=plan.max_size, platform=args.platform)
    total = args.repeat * plan.cases * sum(len(la.tar) for la in layers)
    with progress(total, "bench") as tick:
        result = run_bench(
            layers, plan.codecs, plan.levels, repeat=args.repeat, workers=plan.workers,
            bandwidths=plan.rates, model=args.pull_model, tick=tick,
        )
    doc = result.to_json()
    if args.plot:
        save_plot(doc, args.plot)
    if args.json:
        emit_json(doc)
    elif args.csv:
        sys.stdout.write(to_csv(doc))
    else:
        sys.stdout.write(table(doc))
    return 0
