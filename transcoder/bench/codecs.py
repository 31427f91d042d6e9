"""The encoders and decoders a benchmark compares, and the ``--codecs`` /
``--levels`` grammar that selects them.

Each codec is fed an in-memory tar in 1 MiB pieces, as the transcode pipeline
feeds it (so a zstd size here is the size ``convert`` produces), and decodes
piece by piece, discarding the output, as a puller streaming into an unpacker
would. Memory, not disk, holds every input, so the numbers are the codec's.
gzip is made by two libraries: ISA-L (levels 0-3, what this project decodes
with) and zlib (levels 1-9, what ``gzip -N`` and most clients use).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import zstandard
from isal import isal_zlib

from ..codecs import ZstdParams
from ..codecs.framepool import compress_frames
from ..codecs.zstd import spell_tuning
from ..errors import UsageError

OUT_PIECE = 1 << 20
IN_PIECE = 1 << 20


class _Compressobj(Protocol):
    def compress(self, data: memoryview, /) -> bytes: ...

    def flush(self) -> bytes: ...


class _Decompressobj(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes | memoryview, /) -> bytes: ...


def _feed(cobj: _Compressobj, data: bytes) -> bytes:
    view = memoryview(data)
    parts = [cobj.compress(view[i : i + IN_PIECE]) for i in range(0, len(view), IN_PIECE)]
    parts.append(cobj.flush())
    return b"".join(parts)


@dataclass(frozen=True)
class Codec:
    """One (format, library) pair; ``name`` is what ``--codecs`` accepts."""

    name: str
    format: str  # "gzip" or "zstd": the layer media type it produces
    library: str  # short library name shown in tables
    levels: range
    default_levels: tuple[int, ...]
    compress: Callable[[bytes, int, int], bytes]  # (data, level, workers) -> blob
    decode: Callable[[bytes], Iterator[bytes]]  # blob -> decoded pieces
    tuning: str = ""  # zstd's --zstd parameters over each level, as ``hlog=17,clog=13``

    def label(self, level: int) -> str:
        if self.format == "gzip":
            return f"{self.format}/{self.library}-{level}"
        return f"{self.format}-{level}" + (f" {self.tuning}" if self.tuning else "")


def _inflate(blob: bytes, new: Callable[[], _Decompressobj]) -> Iterator[bytes]:
    """Decode every gzip member in ``blob`` (pigz and ``cat`` make several).

    Input goes in 1 MiB pieces, as it arrives from a network stream; bounding
    the output instead would copy the whole remaining input on every call.
    """
    view = memoryview(blob)
    d, fed = new(), False
    for pos in range(0, len(view), IN_PIECE):
        data: bytes | memoryview = view[pos : pos + IN_PIECE]
        while data:
            out, fed = d.decompress(data), True
            if out:
                yield out
            if not d.eof:
                break
            data, d, fed = d.unused_data, new(), False
    if fed and not d.eof:
        raise zlib.error("truncated gzip stream")


def _zstd_decode(blob: bytes) -> Iterator[bytes]:
    reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)
    while piece := reader.read(OUT_PIECE):
        yield piece


def _zstd_compress(data: bytes, level: int, workers: int) -> bytes:
    # The pipeline's own layout: independent frames, one worker each.
    return compress_frames(data, ZstdParams(level), workers)


ISAL = Codec(
    "isal", "gzip", "isal", range(0, 4), (1, 2, 3),
    lambda data, level, _w: _feed(isal_zlib.compressobj(level, isal_zlib.DEFLATED, 31), data),
    lambda blob: _inflate(blob, lambda: isal_zlib.decompressobj(31)),
)
ZLIB = Codec(
    "zlib", "gzip", "zlib", range(1, 10), (1, 6, 9),
    lambda data, level, _w: _feed(zlib.compressobj(level, zlib.DEFLATED, 31), data),
    lambda blob: _inflate(blob, lambda: zlib.decompressobj(31)),
)
ZSTD = Codec("zstd", "zstd", "libzstd", range(1, 20), (1, 3, 6, 9, 12, 15, 19), _zstd_compress, _zstd_decode)


def tuned_zstd(text: str) -> Codec:
    """zstd with ``--zstd`` parameters over each level (as ``convert --zstd``
    takes them): a codec of its own, measured at zstd's levels."""
    tuning = ZstdParams.parse_tuning(text)
    if not tuning:
        raise UsageError(f"--zstd {text!r}: no parameters given (e.g. clog=13)")
    spelled = spell_tuning(tuning)

    def compress(data: bytes, level: int, workers: int) -> bytes:
        return compress_frames(data, ZstdParams(level, tuning=tuning), workers)

    return Codec(f"zstd {spelled}", "zstd", f"libzstd {spelled}", ZSTD.levels, ZSTD.default_levels, compress,
                 _zstd_decode, spelled)


CODECS = {c.name: c for c in (ISAL, ZLIB, ZSTD)}
ALIASES = {"gzip": ("isal", "zlib")}
# Decoders for a blob as published, by detected format.
DECODERS: dict[str, tuple[Codec, ...]] = {"gzip": (ISAL, ZLIB), "zstd": (ZSTD,)}


def parse_codecs(text: str) -> list[Codec]:
    """'gzip,zstd' -> [isal, zlib, zstd]; unknown names are a usage error."""
    names: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if name not in CODECS and name not in ALIASES:
            known = ", ".join([*ALIASES, *CODECS])
            raise UsageError(f"--codecs {raw.strip()!r}: unknown codec (known: {known})")
        for n in ALIASES.get(name, (name,)):
            if n not in names:
                names.append(n)
    return [CODECS[n] for n in names]


def _parse_list(text: str, option: str) -> list[int] | None:
    """'1,3,9' or '1-19' -> levels in order, once each; 'all' -> None."""
    if text.strip().lower() == "all":
        return None
    levels: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            span = range(int(lo), int(hi) + 1) if sep else range(int(lo), int(lo) + 1)
        except ValueError:
            raise UsageError(f"{option}: {part.strip()!r} is not a level, a range A-B or 'all'") from None
        levels += [level for level in span if level not in levels]
    if not levels:
        raise UsageError(f"{option}: no levels given")
    return levels


def _ranges(codecs: list[Codec]) -> str:
    return ", ".join(f"{c.name} {c.levels[0]}-{c.levels[-1]}" for c in codecs)


def _assign(levels: list[int] | None, targets: list[Codec], strict: bool, option: str) -> dict[str, list[int]]:
    """Each target codec takes the levels it has. Naming one codec, every level
    must be its; naming several (gzip, or no codec), every level must be someone's."""
    if levels is None:
        return {c.name: list(c.levels) for c in targets}
    for level in levels:
        owners = [c for c in targets if level in c.levels]
        if not owners or (strict and len(owners) < len(targets)):
            what = targets[0].name if strict else "any of " + ", ".join(c.name for c in targets)
            raise UsageError(f"{option}: level {level} is out of range for {what} ({_ranges(targets)})")
    return {c.name: [level for level in levels if level in c.levels] for c in targets}


def parse_levels(specs: list[str], codecs: list[Codec]) -> dict[str, list[int]]:
    """Each spec is ``LIST`` (every selected codec) or ``CODEC=LIST``; later specs win.

    LIST is ``3``, ``1,3,9``, ``1-19`` or ``all``. ``gzip=6`` and a bare ``6``
    give each codec the levels it has (zlib 6; isal, with levels 0-3, none);
    a codec left without levels is not measured.
    """
    chosen = {c.name: list(c.default_levels) for c in codecs}
    for spec in specs:
        target, sep, rest = spec.partition("=")
        option = f"--levels {spec!r}"
        if not sep:
            chosen.update(_assign(_parse_list(spec, option), codecs, False, option))
            continue
        name = target.strip().lower()
        names = ALIASES.get(name, (name,))
        missing = [n for n in names if n not in chosen]
        if missing:
            raise UsageError(f"{option}: codec {target.strip()!r} is not among --codecs ({', '.join(chosen)})")
        chosen.update(_assign(_parse_list(rest, option), [CODECS[n] for n in names], name not in ALIASES, option))
    return chosen
