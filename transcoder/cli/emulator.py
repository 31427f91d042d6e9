"""``transcoder emulator serve``: a local GitHub Actions cache service.

Prints the variables a runner would export (``export K=V`` lines, for
``eval``), then serves until interrupted. Example:

    transcoder emulator serve --port 8088 > /tmp/gha.env &
    sleep 1; . /tmp/gha.env; docker buildx build --cache-to type=gha ...
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from ..errors import UsageError
from .output import parse_size


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("emulator", help="run a local GitHub Actions cache service (v2 Twirp, v1 REST, blob plane)",
                       description="A local emulator of the GitHub Actions cache service for tests and CI dry runs.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    serve = actions.add_parser("serve", help="print the environment to export, then serve until killed")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    plane = serve.add_mutually_exclusive_group()
    plane.add_argument("--azurite", metavar="CONNECTION_STRING", nargs="?", const="",
                       help="store bytes in this Azure Blob endpoint (Azurite) and hand out its SAS URLs; "
                       "without a value, read $AZURE_STORAGE_CONNECTION_STRING (keeps the key out of `ps`)")
    plane.add_argument("--blob-plane", choices=["builtin"], default="builtin",
                       help="serve the Azure block-blob data plane from this process (default)")
    serve.add_argument("--visibility-delay", type=float, default=0.0, metavar="S",
                       help="seconds before a finalized entry is visible to lookups (GitHub: about 1-3)")
    serve.add_argument("--size-cap", metavar="BYTES", help="per-repository size cap with LRU eviction, e.g. 10GiB")
    serve.add_argument("--uploads-per-minute", type=int, metavar="N", help="per-repository budget; excess gets 429")
    serve.add_argument("--url-ttl", type=float, metavar="S", help="lifetime of signed blob URLs (default 3600 up, 600 down)")
    serve.add_argument("--reservation-ttl", type=float, default=86400.0, metavar="S",
                       help="an unfinalized reservation blocks its key this long (default 86400)")
    serve.add_argument("--fault", action="append", default=[], metavar="OP=KIND[,count=N][,retry_after=S][,delay=S]",
                       help="inject a fault, e.g. CreateCacheEntry=503,count=2 or CreateCacheEntry=drop_after")
    serve.add_argument("--scope", action="append", default=[], metavar="REF[=PERM]",
                       help="scope of the printed token, in lookup order (default refs/heads/main=3)")
    serve.add_argument("--token-ttl", type=float, default=6 * 3600.0, metavar="S",
                       help="lifetime of the printed ACTIONS_RUNTIME_TOKEN (default 6 h)")
    serve.add_argument("--v1", action="store_true", help="print the v1 (GHES) environment: no ACTIONS_CACHE_SERVICE_V2")
    serve.add_argument("--env-file", type=Path, metavar="FILE", help="also write the export lines to FILE once listening")
    serve.add_argument("-v", "--verbose", action="store_true", help="log each request (paths only) to stderr")
    serve.set_defaults(func=run_serve)


def _scopes(specs: list[str]) -> list[tuple[str, int]] | None:
    scopes = []
    for spec in specs:
        ref, _, perm = spec.partition("=")
        if not ref or (perm and perm not in ("1", "2", "3")):
            raise UsageError(f"--scope {spec!r}: expected REF or REF=PERM with PERM 1 (read), 2 (write) or 3")
        scopes.append((ref, int(perm or 3)))
    return scopes or None


def _config(args: argparse.Namespace) -> dict[str, object]:
    config: dict[str, object] = {"visibility_delay": args.visibility_delay, "reservation_ttl": args.reservation_ttl,
                                 "uploads_per_minute": args.uploads_per_minute}
    if args.size_cap:
        config["size_cap"] = parse_size(args.size_cap, "--size-cap")
    if args.url_ttl is not None:
        config["upload_url_ttl"] = config["download_url_ttl"] = args.url_ttl
    return config


def run_serve(args: argparse.Namespace) -> int:
    from ..gha.emulator import Emulator, parse_fault

    faults = [parse_fault(spec) for spec in args.fault]
    scopes = _scopes(args.scope)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(message)s", stream=sys.stderr)
    azurite = args.azurite
    if azurite == "":
        azurite = os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or None
        if azurite is None:
            raise UsageError("--azurite without a value needs $AZURE_STORAGE_CONNECTION_STRING")
    try:
        emulator = Emulator(args.host, args.port, azurite=azurite, **_config(args))  # type: ignore[arg-type]
    except OSError as exc:
        raise UsageError(f"--host/--port {args.host}:{args.port}: cannot listen ({exc.strerror})") from exc
    for fault in faults:
        emulator.faults.add(fault)
    token = emulator.mint_token(scopes, ttl=args.token_ttl)
    lines = [f"export {k}={shlex.quote(v)}" for k, v in emulator.env(token=token, v2=not args.v1).items()]
    if args.env_file:
        tmp = args.env_file.with_name(args.env_file.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, args.env_file)  # readers never see a partial file
    print("\n".join(lines), flush=True)
    print(f"transcoder: GitHub Actions cache emulator on {emulator.url} ({emulator.plane.name} blob plane)",
          file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _terminate)  # so a plain `kill` still deletes the emulator's data
    emulator.serve_forever()
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(0)
