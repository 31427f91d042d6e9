"""Ratio against speed, per codec and level, as PNG or SVG (matplotlib, the
optional ``plot`` extra). Two panels: compression speed (what a CI job pays
once) and decode speed (what every pull pays)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import StoreError, UsageError

FORMATS = (".png", ".svg")
INSTALL_HINT = "pip install 'transcoder[plot]' (or: pip install matplotlib)"
_STYLE = {"isal": ("tab:green", "s"), "zlib": ("tab:blue", "o"), "libzstd": ("tab:red", "^")}
_MORE = (("tab:orange", "v"), ("tab:purple", "D"), ("tab:brown", "P"), ("tab:gray", "X"))  # tuned zstd


def check_target(path: str) -> None:
    """Refuse a bad target before any measuring: wrong suffix, missing matplotlib, no directory."""
    if Path(path).suffix.lower() not in FORMATS:
        raise UsageError(f"--plot {path}: the file name must end in .png or .svg")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    parent = Path(path).parent
    if not parent.is_dir():
        raise UsageError(f"--plot {path}: directory {str(parent)!r} does not exist")


def _series(rows: list[dict[str, Any]], library: str, key: str) -> tuple[list[float], list[float], list[str]]:
    picked = [r for r in rows if r["library"] == library and not r["published"] and r[key]]
    return [r[key]["mb_per_s"] for r in picked], [r["ratio"] for r in picked], [str(r["level"]) for r in picked]


def _styles(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Each library's colour and marker: the known ones', then one of ``_MORE`` per tuned zstd."""
    styles, more = dict(_STYLE), iter(_MORE)
    for library in dict.fromkeys(r["library"] for r in rows if not r["published"]):
        if library not in styles:
            styles[library] = next(more, ("black", "."))
    return styles


def _panel(ax: Any, rows: list[dict[str, Any]], key: str, title: str) -> None:
    from matplotlib.ticker import FuncFormatter

    for library, (color, marker) in _styles(rows).items():
        xs, ys, levels = _series(rows, library, key)
        if not xs:
            continue
        name = "zstd" if library == "libzstd" else f"zstd {library[8:]}" if library.startswith("libzstd ") \
            else f"gzip ({library})"
        # Levels trade ratio for compression speed along a line; decode speed has no such order.
        style = "-" if key == "compress" else "none"
        ax.plot(xs, ys, marker=marker, color=color, linestyle=style, linewidth=0.8, markersize=5, label=name)
        for x, y, level in zip(xs, ys, levels, strict=True):
            ax.annotate(level, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=color)
    if key == "decode":
        for r in (r for r in rows if r["published"]):
            ax.plot([r["decode"]["mb_per_s"]], [r["ratio"]], marker="*", markersize=11, linestyle="none",
                    color="black", alpha=0.8 if r["library"] == "isal" else 0.4, label=f"as published ({r['library']} decode)")
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:g}"[0] in "235" else ""))
    ax.set_xlabel(f"{title} speed, MB/s of tar (log scale)")
    ax.set_ylabel("ratio (tar / compressed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def save_plot(doc: dict[str, Any], path: str) -> None:
    """Draw and write atomically: a temporary file in the same directory, then rename."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    _panel(left, doc["rows"], "compress", "compression")
    _panel(right, doc["rows"], "decode", "decode")
    m = doc["machine"]
    tar_mb = sum(la["tar_bytes"] for la in doc["layers"]) / 1e6
    fig.suptitle(f"{tar_mb:.1f} MB of tar; {m['cpu']}, {m['usable_cores']} cores; "
                 f"zstd workers {doc['settings']['workers']}; median of {doc['settings']['repeat']}", fontsize=9)
    fig.tight_layout()
    suffix = Path(path).suffix.lower()
    tmp = Path(path).with_name(f".bench-{os.getpid()}-{Path(path).name}")
    try:
        # os.open with 0o666 so the file gets the user's umask, as any other output would.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            fig.savefig(f, format=suffix[1:], dpi=90, metadata={"Software": None} if suffix == ".png" else None)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"--plot {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
