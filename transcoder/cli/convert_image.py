"""Image mode of ``transcoder convert``: IMAGE --to SINK."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..images.source import ImageSource, ResolvesAhead, open_source
from ..sinks.base import LookupWarmer, Sink
from .convert import source_flags
from .output import emit_json, progress, with_sink
from .registry_flags import RegistryFlags, open_cli_sink

if TYPE_CHECKING:
    from ..codecs import ZstdParams
    from ..descriptor import Descriptor
    from ..images.convert import ImageResult
    from ..transcode import Progress

# The conversion machinery (images.convert, the variant table) loads only once
# the source and the sink have started their first round trips (_start_ahead).


@contextmanager
def _layer_bar(desc: Descriptor) -> Iterator[Progress | None]:
    with progress(desc.size, desc.digest.short) as tick:
        yield tick


def _open_source(args: argparse.Namespace) -> ImageSource:
    """SRC with the --src-* flags; a password never appears in a message."""
    flags = source_flags(args)
    if not args.src.startswith("docker://"):
        flags.refuse("for a docker:// SRC")
    return open_source(args.src, credentials=flags.credentials(), insecure=flags.tls_verify is False,
                       authfile=args.authfile)


def _start_ahead(source: ImageSource, sink: Sink) -> None:
    """The first round trips of both sides (the source's manifest, the sink's
    tag listing), started before the rest of the conversion loads."""
    if isinstance(source, ResolvesAhead):
        source.resolve_ahead()
    if isinstance(sink, LookupWarmer):
        sink.warm_lookups()


def run_image(args: argparse.Namespace, params: ZstdParams, max_size: int | None) -> int:
    if args.output:
        raise UsageError("convert: -o is for blobs; an image goes to a sink with --to type=local,dest=DIR")
    if not args.to:
        raise UsageError("convert: an image needs --to SINK (e.g. --to type=local,dest=DIR)")
    sink = open_cli_sink(args.to, args.authfile, RegistryFlags.of(args, "dest"))
    try:
        source = _open_source(args)
    except BaseException:
        sink.close()
        raise
    try:
        result = _convert(args, params, max_size, source, sink)
    finally:
        source.close()
    if result is None:
        return 0
    if args.json:
        emit_json(result.to_json())
    else:
        from ..images.convert import describe

        print("\n".join(describe(result)))
    return 0


def _convert(args: argparse.Namespace, params: ZstdParams, max_size: int | None, source: ImageSource,
             sink: Sink) -> ImageResult | None:
    """The conversion; the sink is closed when this returns or raises."""
    try:
        _start_ahead(source, sink)
        from ..images.convert import ConvertOptions, convert_image
        from ..variants import VariantTable

        mode = args.mode if args.mode != "add" else getattr(sink, "mode", "add")
        opts = ConvertOptions(
            params=params, mode=mode, tag=args.tag or getattr(sink, "tag", None), platforms=args.platform,
            jobs=args.jobs, workers=args.workers, max_size=max_size,
            table=None if args.no_table else VariantTable(), progress=_layer_bar if sys.stderr.isatty() else None,
        )
    except BaseException:
        sink.close()
        raise
    return with_sink(sink, lambda: convert_image(source, sink, opts))
