"""Codecs: format detection by magic bytes, gzip decoding (ISA-L), zstd.

The zstd names load ``zstandard`` on first use (PEP 562), so that decoding a
gzip source can start before it is loaded (``transcoder.decode``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .detect import Format, detect
from .gzip import GzipDecoder, iter_gzip

if TYPE_CHECKING:
    from .zstd import ZstdParams, iter_zstd, libzstd_version

_LAZY = ("ZstdParams", "iter_zstd", "libzstd_version")


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".zstd", __name__), name)
    globals()[name] = value
    return value


__all__ = ["Format", "GzipDecoder", "ZstdParams", "detect", "iter_gzip", "iter_zstd", "libzstd_version"]
