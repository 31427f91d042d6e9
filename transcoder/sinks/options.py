"""Option parsing shared by the sink types: sizes, bounded integers, key
prefixes and upload tuning, each error naming the sink type and the option."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class Tuning:
    """Uploads go in parts of ``part_size``, up to ``concurrency`` in flight:
    a writer holds at most ``(concurrency + 1) x part_size`` bytes."""

    part_size: int = 8 << 20
    concurrency: int = 4


_SIZE = re.compile(r"(\d+)\s*(k|m|g|ki|mi|gi)?b?", re.IGNORECASE)
_UNIT = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


def size_option(kind: str, name: str, text: str, low: int, high: int) -> int:
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise UsageError(f"type={kind}: option {name}={text!r} is not a size (such as 8MiB)")
    value = int(m.group(1)) * _UNIT[(m.group(2) or "").lower()]
    if not low <= value <= high:
        raise UsageError(f"type={kind}: option {name}={text!r} must be between {low} and {high} bytes")
    return value


def int_option(kind: str, name: str, text: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise UsageError(f"type={kind}: option {name}={text!r} must be a whole number from {low} to {high}")
    return int(text)


def prefix_option(kind: str, text: str) -> str:
    """A key prefix ending in "/" (or empty); no empty, "." or ".." segments."""
    text = text.strip("/")
    if not text:
        return ""
    parts = text.split("/")
    if any(p in ("", ".", "..") or not p.isprintable() for p in parts):
        raise UsageError(f"type={kind}: option prefix={text!r} has an empty, '.' or '..' segment")
    return text + "/"


def tuning_options(kind: str, opts: dict[str, str], min_part: int, max_part: int) -> Tuning:
    part = size_option(kind, "part_size", opts["part_size"], min_part, max_part) if "part_size" in opts else Tuning.part_size
    conc = int_option(kind, "upload_concurrency", opts["upload_concurrency"], 1, 64) if "upload_concurrency" in opts else 4
    return Tuning(max(part, min_part), conc)


def check_known(kind: str, opts: dict[str, str], known: set[str], required: tuple[str, ...]) -> None:
    unknown = sorted(set(opts) - known)
    if unknown:
        raise UsageError(f"type={kind}: unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for name in required:
        if not opts.get(name):
            raise UsageError(f"type={kind} requires {name}=")
