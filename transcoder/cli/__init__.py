"""Command line: argument parsing and output only; the work is in the library.

Every command module has ``register(subparsers)``, which adds its parser and
sets ``func(args) -> int``. Errors the library raises on purpose are printed as
one line (``transcoder: <message>``) with the error's exit code; nothing else
is caught, so a bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import TranscoderError

COMMANDS = ["convert", "restore", "variants", "gc", "check", "bench", "emulator"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transcoder",
        description="Give container-image layers zstd variants beside their gzip originals, "
        "and move them through caches and registries.",
    )
    parser.add_argument("--version", action="version", version=f"transcoder {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # command not built into this copy
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except TranscoderError as exc:
        print(f"transcoder: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("transcoder: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
