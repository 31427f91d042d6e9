"""Text forms of a result: the terminal table with its summary, and CSV.
Both are made from ``BenchResult.to_json()`` so every output says the same."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from .machine import describe

MB = 1e6


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _seconds(value: float) -> str:
    """Three significant digits without an exponent, for times from ms to minutes."""
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{max(0, 2 - math.floor(math.log10(value)))}f}" if value > 0 else "0"


def _row_cells(row: dict[str, Any], fastest: dict[str, str]) -> list[str]:
    comp, dec = row["compress"] or {}, row["decode"]
    level = "published" if row["published"] else str(row["level"])
    cells = [
        row["codec"], row["library"], level, _num(row["workers"], "d"),
        f"{row['size'] / MB:.2f}", f"{row['ratio']:.3f}",
        _num(comp.get("mb_per_s"), ".1f"), _num(comp.get("spread_pct"), ".0f"),
        _num(comp.get("wall_s"), ".3f"), _num(comp.get("cpu_s"), ".3f"),
        f"{dec['mb_per_s']:.1f}", f"{dec['spread_pct']:.0f}", f"{dec['wall_s']:.3f}", f"{dec['cpu_s']:.3f}",
    ]
    for rate, seconds in row["pull_s"].items():
        cells.append(_seconds(seconds) + ("*" if fastest.get(rate) == row["label"] else " "))
    return cells


def _header(bandwidths: list[str]) -> list[str]:
    return ["codec", "lib", "level", "wkr", "size MB", "ratio", "comp MB/s", "±%", "wall s", "CPU s",
            "dec MB/s", "±%", "wall s", "CPU s", *[f"pull {b} s" for b in bandwidths]]


def _grid(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    left = {0, 1, 2}  # text columns; numbers align right

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return [line(header), "  ".join("-" * w for w in widths), *[line(r) for r in body]]


def _input_line(doc: dict[str, Any]) -> str:
    layers = doc["layers"]
    tar = sum(la["tar_bytes"] for la in layers) / MB
    blob = sum(la["size"] for la in layers) / MB
    formats = "/".join(sorted({la["published"] for la in layers}))
    s = doc["settings"]
    return (f"input: {len(layers)} layer{'s' if len(layers) != 1 else ''}, {tar:.2f} MB of tar, published as {formats} "
            f"{blob:.2f} MB; {s['repeat']} repeats after a warm-up, zstd workers {s['workers']}")


def _comparison_line(comp: dict[str, Any]) -> str:
    more = "larger" if comp["smaller_pct"] < 0 else "smaller"
    if comp["gzip_published"]:
        line = (f"{comp['zstd']} is {abs(comp['smaller_pct']):.1f}% {more} than the gzip as published and decodes "
                f"{comp['decode_speedup']:.2f}x as fast as that gzip does with {comp['gzip_decoder']}")
    else:
        line = (f"{comp['zstd']} is {abs(comp['smaller_pct']):.1f}% {more} than {comp['gzip']} "
                f"and decodes {comp['decode_speedup']:.2f}x as fast")
    extra = [f"{speedup:.2f}x vs {lib}" for lib, speedup in (comp.get("decode_speedup_vs") or {}).items()]
    return line + (f" ({', '.join(extra)})" if extra else "") + "."


def busy_warning(machine: dict[str, Any]) -> str | None:
    """A warning when other work competed for the CPUs: wall times then include waiting."""
    load = machine.get("load_average_1min") or []
    if len(load) != 2 or None in load:
        return None
    # Before: anything else running. After: more than this run's own threads on top of its workers.
    if load[0] < 1 and load[1] < machine["usable_cores"] + 1:
        return None
    return (f"warning: the machine was busy (load average {load[0]} before, {load[1]} after, on {machine['usable_cores']} "
            "cores): wall times include waiting for a CPU; the CPU times are the steadier figures.")


def summary_lines(doc: dict[str, Any]) -> list[str]:
    lines: list[str] = [w] if (w := busy_warning(doc["machine"])) else []
    comp = doc.get("comparison")
    if comp:
        lines.append(_comparison_line(comp))
        if comp["break_even"]:
            points = ", ".join(comp["break_even"])
            small, large = (comp["zstd"], comp["gzip"]) if comp["zstd_faster_at_low_bandwidth"] else (comp["gzip"], comp["zstd"])
            lines.append(f"break-even bandwidth, {comp['gzip']} vs {comp['zstd']}: {points}; below it {small} pulls faster, "
                         f"above it {large} ({doc['pull']['model']} model).")
        else:
            winner = comp["zstd"] if comp["zstd_faster_at_low_bandwidth"] else comp["gzip"]
            lines.append(f"no break-even between {comp['gzip']} and {comp['zstd']}: {winner} pulls faster at every bandwidth "
                         f"from 8kbit to 8Tbit ({doc['pull']['model']} model).")
    for bw in doc["pull"]["bandwidths"]:
        if bw["fastest"]:
            lines.append(f"fastest to pull at {bw['rate']}: {bw['fastest']} ({bw['fastest_s']:.2f} s download + decode, "
                         f"{doc['pull']['model']} model).")
    return lines


def table(doc: dict[str, Any]) -> str:
    fastest = {bw["rate"]: bw["fastest"] for bw in doc["pull"]["bandwidths"]}
    bandwidths = [bw["rate"] for bw in doc["pull"]["bandwidths"]]
    body = [_row_cells(r, fastest) for r in doc["rows"]]
    lines = [*describe(doc["machine"]), _input_line(doc),
             "speeds: MB/s of tar (10^6 B/s), median of the repeats; ±% = (max-min)/median; "
             "wall and CPU s per pass over all layers" + ("; * = fastest pull" if bandwidths else ""),
             "", *_grid(_header(bandwidths), body), "", *summary_lines(doc)]
    return "\n".join(lines).rstrip() + "\n"


CSV_FIELDS = ["label", "codec", "library", "level", "published", "workers", "tar_bytes", "size", "ratio"]
_STAT_FIELDS = ["mb_per_s", "mb_per_s_min", "mb_per_s_max", "spread_pct", "wall_s", "cpu_s"]


def to_csv(doc: dict[str, Any]) -> str:
    rates = [bw["rate"] for bw in doc["pull"]["bandwidths"]]
    fields = [*CSV_FIELDS, *[f"compress_{f}" for f in _STAT_FIELDS], *[f"decode_{f}" for f in _STAT_FIELDS],
              *[f"pull_s_{r}" for r in rates]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in doc["rows"]:
        out = {k: row[k] for k in CSV_FIELDS}
        for part in ("compress", "decode"):
            out.update({f"{part}_{f}": (row[part] or {}).get(f, "") for f in _STAT_FIELDS})
        out.update({f"pull_s_{r}": row["pull_s"][r] for r in rates})
        writer.writerow(out)
    return buf.getvalue()
