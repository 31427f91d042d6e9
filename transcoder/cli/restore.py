"""``transcoder restore``: rebuild an image from a sink into an OCI layout."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from . import ahead
from .output import emit_json, with_sink
from .registry_flags import RegistryFlags, add_registry_flags, open_cli_sink


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "restore", help="rebuild an image from a sink into a local OCI layout",
        description="Copy IMAGE from SINK into an OCI layout (usable as a buildx oci-layout:// context), "
        "choosing the zstd or gzip manifest of each platform; every blob's digest is checked.",
    )
    p.add_argument("sink", metavar="SINK", help="sink spec, e.g. type=gha,scope=main")
    p.add_argument("image", metavar="IMAGE", help="image name (tag) in the sink")
    p.add_argument("-o", "--output", required=True, metavar="oci:DIR", help="destination OCI layout")
    p.add_argument("--compression", choices=["zstd", "gzip"], default="zstd", help="which variant to restore")
    p.add_argument("--tag", help="name in the destination (default: IMAGE)")
    p.add_argument("--json", action="store_true")
    reg = p.add_argument_group(
        "registry access", "For a type=registry SINK. restore reads from SINK, so, as in skopeo copy, its flags are "
        "the --src-* ones; they replace the sink's own username=, password=, insecure= (giving both is an error). "
        "Without credentials, they come from the auth file and the credential helpers it names, as docker and skopeo "
        "find them; an auths key may be HOST, HOST/NAMESPACE or HOST/NAMESPACE/REPO, and the most specific one "
        "matching the repository wins.")
    add_registry_flags(reg, "src", "the type=registry SINK")
    reg.add_argument("--authfile", metavar="PATH",
                     help="auth file for a type=registry SINK (docker config.json or containers auth.json format)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.output.startswith("oci:"):
        raise UsageError(f"-o {args.output!r}: expected oci:DIR")
    dest = args.output[4:]
    flags = RegistryFlags.of(args, "src")
    ahead.start(ahead.sink(args.sink, flags.tls_verify is False))  # the handshakes go while the rest loads
    sink = open_cli_sink(args.sink, args.authfile, flags)
    from ..images.restore import restore

    result = with_sink(sink, lambda: restore(sink, args.image, dest, args.compression, args.tag))
    if result is None:
        return 0
    if args.json:
        emit_json(result.to_json())
    else:
        print(f"{result.name}: {result.root.digest}, {len(result.manifests)} manifest(s), {result.blobs} blob(s), "
              f"{result.seconds:.2f}s")
    return 0
