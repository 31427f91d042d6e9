"""Time each (codec, level) on in-memory layers: warm-up, K interleaved
repeats, wall and CPU time, and a round-trip check.

Repeats are interleaved (repeat 1 of every case, then repeat 2, ...) so a
slow spell on a shared machine hits every case alike instead of one. CPU time
is the whole process's (all threads), so a multi-threaded encoder shows more
CPU than wall time. The garbage collector is paused while a call is timed.
"""

from __future__ import annotations

import gc
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..errors import FormatError
from .codecs import DECODERS, Codec
from .layers import Layer

T = TypeVar("T")
WARMUP_BYTES = 4 << 20
Tick = Callable[[int], None]


@dataclass(frozen=True)
class Case:
    """What to measure: a codec at a level, or decoding the blobs as published."""

    codec: Codec
    level: int | None = None  # None: the published blobs, decode only

    @property
    def published(self) -> bool:
        return self.level is None

    @property
    def label(self) -> str:
        return f"as published ({self.codec.library})" if self.level is None else self.codec.label(self.level)


@dataclass
class Timing:
    """Seconds per repeat, each summed over all layers."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def stats(self, nbytes: int) -> dict[str, Any]:
        """Median and spread of the speed in MB/s (10^6 bytes of tar per second)."""
        wall, cpu = np.array(self.wall), np.array(self.cpu)
        speed = nbytes / wall / 1e6
        median = float(np.median(speed))
        return {
            "mb_per_s": median,
            "mb_per_s_min": float(speed.min()),
            "mb_per_s_max": float(speed.max()),
            "spread_pct": float(np.ptp(speed) / median * 100) if median else 0.0,
            "wall_s": float(np.median(wall)),
            "cpu_s": float(np.median(cpu)),
            "samples_wall_s": [round(w, 6) for w in self.wall],
            "samples_cpu_s": [round(c, 6) for c in self.cpu],
        }


@dataclass
class Row:
    """The result for one case over all layers."""

    case: Case
    workers: int | None
    tar_bytes: int
    size: int = 0  # compressed bytes, all layers
    compress: Timing | None = None
    decode: Timing = field(default_factory=Timing)

    @property
    def ratio(self) -> float:
        return self.tar_bytes / self.size if self.size else 0.0


def _timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    gc.disable()
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        out = fn()
        return out, time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        gc.enable()


def _drain(pieces: Iterator[bytes]) -> int:
    return sum(len(p) for p in pieces)


def _check_round_trip(case: Case, layer: Layer, blob: bytes) -> None:
    """Decode again, untimed, and compare with the tar's digest."""
    h = hashlib.sha256()
    for piece in case.codec.decode(blob):
        h.update(piece)
    if h.hexdigest() != layer.tar_sha256:
        raise FormatError(f"{layer.name}: {case.label} does not round-trip (decoded bytes differ from the tar)")


def _warm_up(case: Case, layers: list[Layer], workers: int) -> None:
    """Load code, fault in allocator pages and ramp the clock before timing."""
    if case.published:
        for _piece, _ in zip(case.codec.decode(layers[0].blob), range(4), strict=False):
            pass
        return
    assert case.level is not None
    blob = case.codec.compress(layers[0].tar[:WARMUP_BYTES], case.level, workers)
    _drain(case.codec.decode(blob))


def _run_once(row: Row, layers: list[Layer], workers: int, first: bool, tick: Tick | None) -> None:
    case, size = row.case, 0
    cw = cc = dw = dc = 0.0
    for layer in layers:
        if case.published:
            blob = layer.blob
        else:
            assert case.level is not None and row.compress is not None
            level = case.level
            blob, w, c = _timed(lambda: case.codec.compress(layer.tar, level, workers))  # noqa: B023
            cw, cc = cw + w, cc + c
        n, w, c = _timed(lambda: _drain(case.codec.decode(blob)))  # noqa: B023
        dw, dc, size = dw + w, dc + c, size + len(blob)
        if n != len(layer.tar) or first:
            _check_round_trip(case, layer, blob)
        if tick:
            tick(len(layer.tar))
    if row.compress is not None:
        row.compress.wall.append(cw)
        row.compress.cpu.append(cc)
    row.decode.wall.append(dw)
    row.decode.cpu.append(dc)
    row.size = size


def published_cases(layers: list[Layer]) -> list[Case]:
    """Decoding the blobs as published, once per decoder of their format
    (only when every layer has the same compressed format)."""
    formats = {layer.format.value for layer in layers}
    if len(formats) != 1:
        return []
    return [Case(codec) for codec in DECODERS.get(formats.pop(), ())]


def measure(layers: list[Layer], cases: list[Case], *, repeat: int, workers: int, tick: Tick | None = None) -> list[Row]:
    """Warm up every case, then run ``repeat`` interleaved rounds; rows in ``cases`` order."""
    tar_bytes = sum(len(layer.tar) for layer in layers)
    rows = [Row(c, None if c.published or c.codec.format != "zstd" else workers, tar_bytes) for c in cases]
    for row in rows:
        if not row.case.published:
            row.compress = Timing()
        _warm_up(row.case, layers, workers)
    for i in range(repeat):
        for row in rows:
            _run_once(row, layers, workers, i == 0, tick)
    return rows
