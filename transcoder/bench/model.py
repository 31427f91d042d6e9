"""Pull-time model: how long a client takes to download and decode the layers.

Two models, both from the measured size and single-threaded decode time:

- ``serial``: download, then decode: ``t = size / bandwidth + decode``.
- ``streamed``: decoding overlaps the download (containerd and Docker stream
  the blob into the decompressor): ``t = max(size / bandwidth, decode)``.

Unpacking the tar to disk costs the same for every codec and is left out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

from ..errors import UsageError

MODELS = ("serial", "streamed")
_PREFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
# Lower-case b is a bit, upper-case B a byte, as on network gear.
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?)?(bit/s|bit|bps|b/s|B/s|Bps|B)")
_BIT_UNITS = ("bit/s", "bit", "bps", "b/s")
# The search range for break-even points, in bytes per second (8 kbit/s to 8 Tbit/s).
_LOW, _HIGH = 1e3, 1e12


def parse_bandwidth(text: str) -> float:
    """'100Mbit', '1Gbps', '50MB/s', '12.5MiB/s' -> bytes per second."""
    m = _RATE.fullmatch(text.strip())
    if not m:
        raise UsageError(f"--bandwidth {text!r}: expected a rate such as 100Mbit, 1Gbit or 50MB/s")
    number, prefix, unit = float(m.group(1)), (m.group(2) or "").lower(), m.group(3)
    value = number * _PREFIX[prefix] / (8 if unit in _BIT_UNITS else 1)
    if value <= 0:
        raise UsageError(f"--bandwidth {text!r}: must be more than zero")
    return value


def format_bandwidth(rate: float) -> str:
    """Bytes per second -> '100Mbit' style (decimal bits, as links are sold)."""
    bits = rate * 8
    for unit, scale in (("Tbit", 1e12), ("Gbit", 1e9), ("Mbit", 1e6), ("kbit", 1e3)):
        if bits >= scale:
            return f"{bits / scale:.3g}{unit}"
    return f"{bits:.3g}bit"


def pull_seconds(size: float, decode_s: float, rate: float, model: str = "serial") -> float:
    download = size / rate
    return download + decode_s if model == "serial" else max(download, decode_s)


PullCost = tuple[float, float]  # (compressed bytes, decode seconds)


def fastest(costs: dict[str, PullCost], rate: float, model: str = "serial") -> str:
    """The label with the shortest pull time at ``rate`` (first wins a tie)."""
    return min(costs, key=lambda k: pull_seconds(*costs[k], rate, model))


def _bisect(f: Callable[[float], float], lo: float, hi: float) -> float:
    # On a log scale: the answer spans decades.
    a, b = math.log(lo), math.log(hi)
    fa = f(lo)
    for _ in range(100):
        mid = (a + b) / 2
        fm = f(math.exp(mid))
        if (fm < 0) == (fa < 0):
            a, fa = mid, fm
        else:
            b = mid
    return math.exp((a + b) / 2)


def break_even(a: PullCost, b: PullCost, model: str = "serial") -> list[float]:
    """Bandwidths (bytes/s) at which ``a`` and ``b`` take equally long to pull.

    Empty when one is at least as fast at every bandwidth in 8 kbit/s-8 Tbit/s.
    Pull times are piecewise linear in 1/bandwidth, so a fine log grid finds
    every crossing and bisection refines it.
    """
    def diff(rate: float) -> float:
        return pull_seconds(*a, rate, model) - pull_seconds(*b, rate, model)

    grid = np.geomspace(_LOW, _HIGH, 400)
    values = [diff(float(r)) for r in grid]
    points: list[float] = []
    for i in range(len(grid) - 1):
        lo, hi = values[i], values[i + 1]
        if lo == 0 and (i == 0 or values[i - 1] != 0):
            points.append(float(grid[i]))
        elif lo * hi < 0:
            points.append(_bisect(diff, float(grid[i]), float(grid[i + 1])))
    return points
