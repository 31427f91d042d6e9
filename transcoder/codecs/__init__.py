"""Codecs: format detection by magic bytes, gzip decoding (ISA-L), zstd.

The zstd names load ``zstandard`` on first use (PEP 562), so that decoding a
gzip source can start before it is loaded (``transcoder.decode``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import lazy
from .detect import Format, detect
from .gzip import GzipDecoder, iter_gzip

if TYPE_CHECKING:
    from .zstd import ZstdParams, iter_zstd, libzstd_version

_LAZY = {"ZstdParams": ".zstd", "iter_zstd": ".zstd", "libzstd_version": ".zstd"}


def __getattr__(name: str) -> Any:
    return lazy.attribute(__name__, _LAZY, name)


__all__ = ["Format", "GzipDecoder", "ZstdParams", "detect", "iter_gzip", "iter_zstd", "libzstd_version"]
