"""A benchmark's result: rows, the pull-time model applied to them, the
comparison the summary states, and the JSON form every output is made from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .layers import Layer
from .measure import Row
from .model import PullCost, break_even, fastest, format_bandwidth, pull_seconds

DEFAULT_ZSTD_LEVEL = 3


def row_label(row: Row) -> str:
    return row.case.label


def row_json(row: Row, bandwidths: list[float], model: str) -> dict[str, Any]:
    case = row.case
    decode = row.decode.stats(row.tar_bytes)
    return {
        "label": case.label,
        "codec": case.codec.format,
        "library": case.codec.library,
        "level": case.level,
        "tuning": case.codec.tuning or None,
        "published": case.published,
        "workers": row.workers,
        "tar_bytes": row.tar_bytes,
        "size": row.size,
        "ratio": row.ratio,
        "compress": row.compress.stats(row.tar_bytes) if row.compress else None,
        "decode": decode,
        "pull_s": {format_bandwidth(r): pull_seconds(row.size, decode["wall_s"], r, model) for r in bandwidths},
    }


def _cost(row: Row) -> PullCost:
    return row.size, float(row.decode.stats(row.tar_bytes)["wall_s"])


def gzip_reference(rows: list[Row]) -> Row | None:
    """What zstd is compared with: the gzip as published (ISA-L decode, the
    faster, so zstd's advantage is not overstated), else zlib level 6 (what
    ``gzip`` makes by default), else any gzip row."""
    gz = [r for r in rows if r.case.codec.format == "gzip"]
    for pick in (
        lambda r: r.case.published and r.case.codec.name == "isal",
        lambda r: r.case.published,
        lambda r: r.case.codec.name == "zlib" and r.case.level == 6,
        lambda r: True,
    ):
        found = [r for r in gz if pick(r)]
        if found:
            return found[0]
    return None


def zstd_focus(rows: list[Row]) -> Row | None:
    """The zstd row the summary talks about: level 3 (the default) untuned, else the lowest."""
    zs = sorted((r for r in rows if r.case.codec.format == "zstd" and not r.case.published),
                key=lambda r: (bool(r.case.codec.tuning), r.case.level or 0))
    return next((r for r in zs if r.case.level == DEFAULT_ZSTD_LEVEL), zs[0] if zs else None)


def _layer_json(layer: Layer) -> dict[str, Any]:
    return {"name": layer.name, "published": layer.published, "size": len(layer.blob), "tar_bytes": len(layer.tar),
            "tar_sha256": layer.tar_sha256}


@dataclass
class BenchResult:
    machine: dict[str, Any]
    layers: list[Layer]
    rows: list[Row]
    repeat: int
    workers: int
    bandwidths: list[float] = field(default_factory=list)
    model: str = "serial"

    def by_label(self, label: str) -> Row:
        return next(r for r in self.rows if r.case.label == label)

    def pull_json(self) -> dict[str, Any]:
        costs = {r.case.label: _cost(r) for r in self.rows}
        out: dict[str, Any] = {"model": self.model, "bandwidths": []}
        for rate in self.bandwidths:
            best = fastest(costs, rate, self.model) if costs else None
            out["bandwidths"].append({
                "rate": format_bandwidth(rate), "bytes_per_s": rate, "fastest": best,
                "fastest_s": pull_seconds(*costs[best], rate, self.model) if best else None,
            })
        ref, zs = gzip_reference(self.rows), [r for r in self.rows if r.case.codec.format == "zstd" and not r.case.published]
        if ref is not None:
            out["break_even"] = {
                "gzip": ref.case.label,
                "zstd": {z.case.label: [format_bandwidth(b) for b in break_even(_cost(ref), _cost(z), self.model)] for z in zs},
            }
        return out

    def comparison(self) -> dict[str, Any] | None:
        """zstd (level 3) against the gzip reference: size and decode-speed ratios."""
        ref, z = gzip_reference(self.rows), zstd_focus(self.rows)
        if ref is None or z is None:
            return None
        _size_ref, dec_ref = _cost(ref)
        _size_z, dec_z = _cost(z)
        out = {
            "gzip": ref.case.label,
            "gzip_published": ref.case.published,
            "gzip_decoder": ref.case.codec.library,
            "zstd": z.case.label,
            "smaller_pct": (1 - z.size / ref.size) * 100,
            "decode_speedup": dec_ref / dec_z if dec_z else 0.0,
            "break_even": [format_bandwidth(b) for b in break_even(_cost(ref), _cost(z), self.model)],
            "zstd_faster_at_low_bandwidth": z.size < ref.size,
        }
        others = [r for r in self.rows if r.case.published and r is not ref and r.case.codec.format == "gzip"]
        if others:
            out["decode_speedup_vs"] = {r.case.codec.library: _cost(r)[1] / dec_z for r in others}
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": {"repeat": self.repeat, "workers": self.workers, "speed_unit": "MB/s of tar (10^6 bytes per second)"},
            "layers": [_layer_json(la) for la in self.layers],
            "rows": [row_json(r, self.bandwidths, self.model) for r in self.rows],
            "pull": self.pull_json(),
            "comparison": self.comparison(),
        }
