"""``transcoder convert``: one blob to a zstd file, or a whole image to a sink."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ..codecs.constants import DEFAULT_LEVEL, FRAME_SIZE
from ..errors import InputError, UsageError
from .output import emit_json, human, parse_size, progress
from .registry_flags import RegistryFlags, add_registry_flags

if TYPE_CHECKING:
    from ..codecs import ZstdParams
    from ..decode import HeadStart
    from ..digest import Digest
    from .ahead import Endpoint

# This module loads nothing of the encoder side (zstandard, the variant
# table, data classes) at import: a blob's decode starts first (HeadStart).

IMAGE_PREFIXES = ("oci:", "docker-archive:", "docker://")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "convert",
        help="transcode a layer blob, or every layer of an image, to zstd",
        description="Transcode a gzip (or tar, or zstd) layer blob to zstd with -o OUT, or convert a whole image "
        "(oci:DIR[:REF], docker-archive:FILE, docker://HOST/REPO:TAG) into a sink with --to. "
        "Already-recorded variants are reused, not recomputed.",
    )
    p.add_argument("src", metavar="SRC", help="blob file, '-' for stdin, or an image reference")
    p.add_argument("-o", "--output", metavar="OUT", help="where to write the zstd blob (blob mode)")
    p.add_argument("--to", metavar="SINK", help="sink spec for image mode, e.g. type=local,dest=DIR")
    p.add_argument("--level", type=int, default=DEFAULT_LEVEL, help="zstd level 1-19 (default %(default)s)")
    p.add_argument("--zstd", metavar="NAME=N,...", default="",
                   help="libzstd parameters over the level's own, as zstd's --zstd= option names them: wlog, hlog, "
                   "clog, slog, mml, tlen, strat (e.g. clog=13: see the README); part of the variant's identity")
    p.add_argument("--workers", type=int, default=None,
                   help="threads that compress zstd frames, the decoding one included (default: number of cores)")
    p.add_argument("--expect", metavar="DIGEST", help="refuse the source unless it hashes to this sha256 digest")
    p.add_argument("--max-size", metavar="SIZE", help="refuse sources that decode to more than SIZE (e.g. 10GiB)")
    p.add_argument("--mode", choices=["add", "replace"], default="add",
                   help="image mode: keep gzip and add zstd (add, default) or zstd only (replace)")
    p.add_argument("--tag", help="image mode: name of the result (default: the source's tag)")
    p.add_argument("--platform", action="append", metavar="OS/ARCH[/VARIANT]",
                   help="image mode: only these platforms (repeatable; default all)")
    p.add_argument("--jobs", type=int, default=2,
                   help="image mode: layers transcoding at once; at most this many big ones in flight (default %(default)s)")
    p.add_argument("--no-table", action="store_true", help="do not consult or update the variant table")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    _registry_arguments(p)
    p.set_defaults(func=run)


def _registry_arguments(p: argparse.ArgumentParser) -> None:
    reg = p.add_argument_group(
        "registry access", "--src-* flags are for a docker:// SRC, --dest-* flags for a --to type=registry sink "
        "(they replace the sink's own username=, password=, insecure=; giving both is an error), as in skopeo copy; "
        "--authfile is for both. Without credentials, they come from the auth file and the credential helpers it "
        "names (credHelpers, credsStore), as docker and skopeo find them; an auths key may be HOST, HOST/NAMESPACE "
        "or HOST/NAMESPACE/REPO, and the most specific one matching the repository wins.")
    add_registry_flags(reg, "src", "the SRC registry")
    reg.add_argument("--src-insecure", action="store_true", help="the same as --src-tls-verify=false")
    add_registry_flags(reg, "dest", "the --to type=registry sink")
    reg.add_argument("--authfile", metavar="PATH",
                     help="auth file (docker config.json or containers auth.json format) for SRC and sink; default: "
                     "$REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json, "
                     "~/.config/containers/auth.json and $DOCKER_CONFIG/config.json (~/.docker/config.json)")


def source_flags(args: argparse.Namespace) -> RegistryFlags:
    """The --src-* flags, --src-insecure folded into --src-tls-verify=false."""
    flags = RegistryFlags.of(args, "src")
    if args.src_insecure:
        if flags.tls_verify:
            raise UsageError("--src-insecure: --src-tls-verify=true says the opposite; give one of them")
        return RegistryFlags("src", flags.creds, flags.token, False)
    return flags


def _common(args: argparse.Namespace) -> tuple[ZstdParams, Digest | None, int | None]:
    from ..codecs import ZstdParams
    from ..digest import Digest

    params = ZstdParams(level=args.level, tuning=ZstdParams.parse_tuning(args.zstd))
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    try:
        expect = Digest.parse(args.expect) if args.expect else None
    except Exception as exc:
        raise UsageError(f"--expect {args.expect!r}: not a sha256:<64 hex> digest") from exc
    max_size = parse_size(args.max_size, "--max-size") if args.max_size else None
    return params, expect, max_size


def _endpoints(args: argparse.Namespace) -> list[Endpoint]:
    """The registries and the Actions cache this conversion talks to."""
    from . import ahead

    found = []
    if args.src.startswith("docker://"):
        try:
            insecure = source_flags(args).tls_verify is False
        except UsageError:
            insecure = True  # in doubt: reported when the source opens
        found += ahead.registry(args.src[len("docker://"):], insecure)
    return found + ahead.sink(args.to, RegistryFlags.of(args, "dest").tls_verify is False)


def run(args: argparse.Namespace) -> int:
    head = _head_start(args)
    try:
        return _run(args, head)
    finally:
        if head is not None:
            head.close()


def _head_start(args: argparse.Namespace) -> HeadStart | None:
    """For a blob from a file or stdin, start decoding it now, while the encoder side loads."""
    if args.to or args.src.startswith(IMAGE_PREFIXES) or not args.output:
        return None
    if args.src != "-" and not os.path.isfile(args.src):
        return None  # a missing source is reported with the other checks, in order
    max_size = parse_size(args.max_size, "--max-size") if args.max_size else None
    from ..decode import HeadStart

    try:
        return HeadStart.begin(args.src, frame_size=FRAME_SIZE, max_size=max_size)
    except InputError:
        return None  # unreadable: a variant-table hit may still answer, else the usual path reports it


def _run(args: argparse.Namespace, head: HeadStart | None) -> int:
    params, expect, max_size = _common(args)
    if args.to or args.src.startswith(IMAGE_PREFIXES):
        from . import ahead

        ahead.start(_endpoints(args))  # the handshakes go while the rest loads
        from .convert_image import run_image

        return run_image(args, params, max_size)
    source_flags(args).refuse("for a docker:// SRC")
    RegistryFlags.of(args, "dest").refuse("for a --to type=registry sink")
    if not args.output:
        raise UsageError("convert: -o OUT is required for a blob (or use --to SINK with an image reference)")
    from ..blobs import convert_blob
    from ..variants import VariantTable

    table = None if args.no_table else VariantTable()
    total = os.path.getsize(args.src) if args.src != "-" and os.path.isfile(args.src) else None
    with progress(total, os.path.basename(args.src)) as tick:
        result = convert_blob(
            head or args.src, args.output, params=params, workers=args.workers, expect=expect, max_size=max_size,
            table=table, progress=tick,
        )
    if args.json:
        emit_json(result.to_json())
    else:
        _print_human(result)
    return 0


def _print_human(result: object) -> None:
    from ..transcode import TranscodeResult

    assert isinstance(result, TranscodeResult)
    src, tgt = result.source, result.target
    if result.noop:
        print(f"nothing to do: {src.digest} is already {result.params.label}", file=sys.stderr)
        return
    how = "variant table hit" if result.cached else f"{result.seconds:.2f}s"
    print(f"{src.digest} ({human(src.size)}) -> {tgt.digest} ({human(tgt.size)}), diffID {result.diff_id}, {how}")
