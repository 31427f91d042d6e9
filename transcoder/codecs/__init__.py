"""Codecs: format detection by magic bytes, gzip decoding (ISA-L), zstd."""

from .detect import Format, detect
from .gzip import GzipDecoder, iter_gzip
from .zstd import ZstdParams, iter_zstd, libzstd_version

__all__ = ["Format", "GzipDecoder", "ZstdParams", "detect", "iter_gzip", "iter_zstd", "libzstd_version"]
