"""``transcoder bench``: compare gzip and zstd on your own layers.

Layers are loaded into memory (``layers``), each codec and level is timed on
them (``measure``), a pull-time model turns sizes and decode times into
download-plus-decode estimates (``model``), and the result is written as a
table, JSON, CSV (``report``) or a plot (``plot``).
"""

from __future__ import annotations

from .codecs import CODECS, Codec, parse_codecs, parse_levels, tuned_zstd
from .layers import Layer, load_layers
from .machine import load_average, machine_info
from .measure import Case, Row, Tick, measure, published_cases
from .model import break_even, parse_bandwidth, pull_seconds
from .result import BenchResult

__all__ = [
    "CODECS",
    "BenchResult",
    "Case",
    "Codec",
    "Layer",
    "Row",
    "break_even",
    "load_layers",
    "parse_bandwidth",
    "parse_codecs",
    "parse_levels",
    "pull_seconds",
    "run_bench",
    "tuned_zstd",
]


def cases_for(layers: list[Layer], codecs: list[Codec], levels: dict[str, list[int]]) -> list[Case]:
    """The published blobs first (as a reference), then every codec at its levels."""
    return [*published_cases(layers), *[Case(c, level) for c in codecs for level in levels.get(c.name, [])]]


def run_bench(
    layers: list[Layer],
    codecs: list[Codec],
    levels: dict[str, list[int]],
    *,
    repeat: int = 3,
    workers: int = 1,
    bandwidths: list[float] | None = None,
    model: str = "serial",
    tick: Tick | None = None,
) -> BenchResult:
    # Other work on the machine slows every codec; the load average says how much there was.
    load_before = load_average()
    rows = measure(layers, cases_for(layers, codecs, levels), repeat=repeat, workers=workers, tick=tick)
    info = machine_info() | {"load_average_1min": [load_before, load_average()]}
    return BenchResult(info, layers, rows, repeat, workers, list(bandwidths or []), model)
