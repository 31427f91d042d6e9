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
from ..images.source import ImageSource, open_source
from ..transcode import Progress
from ..variants import VariantTable
from .output import emit_json, open_cli_sink, progress, with_sink


@contextmanager
def _layer_bar(desc: Descriptor) -> Iterator[Progress | None]:
    with progress(desc.size, desc.digest.short) as tick:
        yield tick


def _open_source(args: argparse.Namespace) -> ImageSource:
    """SRC with the registry flags; a password never appears in a message."""
    from ..registry.credentials import Credentials, parse_user_pass

    if args.src_creds and args.src_registry_token:
        raise UsageError("convert: give --src-creds or --src-registry-token, not both")
    insecure = args.src_insecure or not args.src_tls_verify
    flags = args.src_creds or args.src_registry_token or insecure
    if flags and not args.src.startswith("docker://"):
        raise UsageError("convert: --src-creds, --src-registry-token and --src-tls-verify are for a docker:// SRC")
    creds = None
    if args.src_creds:
        creds = parse_user_pass(args.src_creds, "--src-creds")
    elif args.src_registry_token:
        creds = Credentials(registry_token=args.src_registry_token)
    return open_source(args.src, credentials=creds, insecure=insecure, authfile=args.authfile)


def run_image(args: argparse.Namespace, params: ZstdParams, max_size: int | None) -> int:
    if args.output:
        raise UsageError("convert: -o is for blobs; an image goes to a sink with --to type=local,dest=DIR")
    if not args.to:
        raise UsageError("convert: an image needs --to SINK (e.g. --to type=local,dest=DIR)")
    sink = open_cli_sink(args.to, args.authfile)
    try:
        source = _open_source(args)
    except BaseException:
        sink.close()
        raise
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
