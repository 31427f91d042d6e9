"""What the numbers were measured on: CPU, cores, OS and codec library versions."""

from __future__ import annotations

import os
import platform
import zlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import isal
import numpy
import zstandard

from ..codecs import libzstd_version


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not available
        return None


def machine_info() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 1,
        "usable_cores": _usable_cores(),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "transcoder": _package("transcoder"),
        "libraries": {
            "libzstd": libzstd_version(),
            "zstandard": zstandard.__version__,
            "isa-l": isal.ISAL_VERSION,
            "isal": isal.__version__,
            "zlib": zlib.ZLIB_RUNTIME_VERSION,
            "numpy": numpy.__version__,
        },
    }


def describe(info: dict[str, Any]) -> list[str]:
    """Two lines for the top of a report."""
    libs = info["libraries"]
    load = info.get("load_average_1min") or []
    busy = f", load average {load[0]} before / {load[1]} after" if len(load) == 2 and None not in load else ""
    return [
        f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), {info['os']}, "
        f"Python {info['python']}{busy}",
        f"libraries: libzstd {libs['libzstd']} (zstandard {libs['zstandard']}), ISA-L {libs['isa-l']} "
        f"(isal {libs['isal']}), zlib {libs['zlib']}, numpy {libs['numpy']}",
    ]
