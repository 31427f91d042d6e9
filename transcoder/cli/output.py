"""Output helpers shared by the commands: JSON, sizes, progress bars."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from ..errors import TranscoderError, UsageError

T = TypeVar("T")

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def with_sink(sink: Any, work: Callable[[], T]) -> T | None:
    """Run ``work`` against ``sink`` and always close it. With the sink's
    ``ignore-error=true``, a failure becomes a warning and None (exit 0)."""
    try:
        return work()
    except TranscoderError as exc:
        if getattr(sink, "ignore_errors", False):
            print(f"transcoder: warning: {exc} (ignore-error=true)", file=sys.stderr)
            return None
        raise
    finally:
        sink.close()


def emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def parse_size(text: str, option: str) -> int:
    """'500M', '2GiB', '1024' -> bytes; errors name the option."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text.lower())
    if not m:
        raise UsageError(f"{option} {text!r}: expected a size such as 500M, 2GiB or 1048576")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


@contextmanager
def progress(total: int | None, desc: str, enabled: bool | None = None) -> Iterator[Callable[[int], None] | None]:
    """A byte progress bar on stderr when it is a terminal; silence otherwise."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False, file=sys.stderr) as bar:
        def tick(n: int) -> None:
            bar.update(n)

        yield tick
