"""Format detection by magic bytes."""

from __future__ import annotations

import enum

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Format(enum.Enum):
    GZIP = "gzip"
    ZSTD = "zstd"
    TAR = "tar"
    UNKNOWN = "unknown"


def _looks_like_tar(head: bytes) -> bool:
    # ustar/gnu magic at offset 257; an all-zero first block is an empty tar.
    if len(head) >= 263 and head[257:262] == b"ustar":
        return True
    return len(head) >= 512 and not any(head[:512])


def detect(head: bytes) -> Format:
    """Classify the first bytes of a stream (at least 512 are needed for tar)."""
    if head.startswith(GZIP_MAGIC):
        return Format.GZIP
    if head.startswith(ZSTD_MAGIC):
        return Format.ZSTD
    if _looks_like_tar(head):
        return Format.TAR
    return Format.UNKNOWN
