"""Command line: argument parsing and output only; the work is in the library.

Every command module has ``register(subparsers)``, which adds its parser and
sets ``func(args) -> int``. Errors the library raises on purpose are printed as
one line (``transcoder: <message>``) with the error's exit code; nothing else
is caught, so a bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import sys
import threading
from typing import NoReturn

from ..errors import TranscoderError

COMMANDS = ["convert", "restore", "variants", "gc", "check", "bench", "emulator"]
# Modules that httpx and httpcore import whenever they are installed, which
# the command line never uses: trio (httpcore's async locks, 45 ms) and
# httpx's own command line (click, pygments, rich: 12 ms). A registry
# conversion pays its start-up on one core while the other waits. Marked
# absent for this process only; the library leaves them alone.
UNUSED_IMPORTS = ("trio", "httpx._main")
# Commands whose threads share glibc's arenas (transcoder.allocator.one_arena):
# several layers at once otherwise keep one arena's worth of freed frames each.
ONE_ARENA_COMMANDS = frozenset({"convert", "bench"})


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``only`` just that command (start-up pays for one command's imports),
    or none for ``--version``."""
    parser = argparse.ArgumentParser(
        prog="transcoder",
        description="Give container-image layers zstd variants beside their gzip originals, "
        "and move them through caches and registries.",
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # "--version" needs no command at all (the bench command alone imports numpy: 50 ms).
    for name in [only] if only in COMMANDS else [] if only == "--version" else COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # command not built into this copy
            raise
        module.register(sub)
    return parser


class _Version(argparse.Action):
    """Like argparse's version action, but reads the package metadata only when asked."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from .. import __version__

        print(f"transcoder {__version__}")
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for name in UNUSED_IMPORTS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "import" raises ImportError
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if args.command in ONE_ARENA_COMMANDS:
        from ..allocator import one_arena

        one_arena()  # before the command starts a thread: this process is ours
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


def run() -> NoReturn:
    """The console script and ``python -m transcoder``: :func:`main`, then :func:`exit_now`."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` once the work is done, skipping the interpreter's teardown.

    After a conversion, Python's own shutdown (a last garbage collection, then
    every module and object taken apart one by one) takes 15-40 ms on one
    core, with both digests long written and nothing left to release that
    the kernel does not take back at once. ``atexit`` handlers still run
    (logging flushes, weakref finalizers), then the standard streams are
    flushed; a reader that closed the pipe early gets exit code 141, as from
    :func:`main`. While any other non-daemon thread is still running, the
    interpreter shuts down as usual and waits for it. An error that escapes
    :func:`main` never gets here: it unwinds as usual too.
    """
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = 141
    except (OSError, ValueError) as exc:  # stdout full or closed
        print(f"transcoder: cannot write the output: {exc}", file=sys.stderr)
        code = code or 1
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
