"""Image mode of ``transcoder convert``: IMAGE --to SINK."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ..codecs import ZstdParams
from ..descriptor import Descriptor
from ..errors import UsageError
from ..images.convert import ConvertOptions, convert_image, describe
from ..images.source import open_source
from ..sinks import open_sink
from ..transcode import Progress
from ..variants import VariantTable
from .output import emit_json, progress, with_sink


@contextmanager
def _layer_bar(desc: Descriptor) -> Iterator[Progress | None]:
    with progress(desc.size, desc.digest.short) as tick:
        yield tick


def run_image(args: argparse.Namespace, params: ZstdParams, max_size: int | None) -> int:
    if args.output:
        raise UsageError("convert: -o is for blobs; an image goes to a sink with --to type=local,dest=DIR")
    if not args.to:
        raise UsageError("convert: an image needs --to SINK (e.g. --to type=local,dest=DIR)")
    sink = open_sink(args.to)
    source = open_source(args.src)
    mode = args.mode if args.mode != "add" else getattr(sink, "mode", "add")
    opts = ConvertOptions(
        params=params, mode=mode, tag=args.tag or getattr(sink, "tag", None), platforms=args.platform,
        jobs=args.jobs, workers=args.workers, max_size=max_size, table=None if args.no_table else VariantTable(),
        progress=_layer_bar if sys.stderr.isatty() else None,
    )
    try:
        result = with_sink(sink, lambda: convert_image(source, sink, opts))
    finally:
        source.close()
    if result is None:
        return 0
    if args.json:
        emit_json(result.to_json())
    else:
        print("\n".join(describe(result)))
    return 0
