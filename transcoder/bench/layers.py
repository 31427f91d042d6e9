"""Load the layers to benchmark into memory: each blob as published and its tar.

Holding both in memory keeps disk and network speed out of codec speed. Blobs
from images are checked against their descriptors (size and digest) before use.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

from ..codecs import Format, detect, iter_gzip, iter_zstd
from ..decode import CHUNK
from ..errors import FormatError, InputError, SizeLimitExceeded
from .images import IMAGE_PREFIXES, image_blobs


@dataclass(frozen=True)
class Layer:
    """One layer: ``blob`` as published (gzip, zstd or plain tar) and its ``tar``."""

    name: str
    blob: bytes
    format: Format
    tar: bytes
    tar_sha256: str = field(default="")

    @property
    def published(self) -> str:
        return self.format.value


def decode_blob(blob: bytes, name: str, max_size: int | None = None) -> tuple[Format, bytes]:
    """Detect the blob's format and decode it to the tar it holds."""
    fmt = detect(blob[:512])
    if fmt is Format.UNKNOWN:
        raise FormatError(f"{name}: not gzip, zstd or tar (starts with {blob[:4].hex()})")
    if fmt is Format.TAR:
        _check_bound(len(blob), name, max_size)
        return fmt, blob
    read = io.BytesIO(blob).read
    pieces = iter_gzip(read, name, CHUNK) if fmt is Format.GZIP else iter_zstd(read, name)
    out = bytearray()
    for piece in pieces:
        out += piece
        _check_bound(len(out), name, max_size)
    return fmt, bytes(out)


def _check_bound(size: int, name: str, max_size: int | None) -> None:
    if max_size is not None and size > max_size:
        raise SizeLimitExceeded(f"{name}: decoded size exceeds --max-size {max_size} bytes")


def make_layer(name: str, blob: bytes, max_size: int | None = None) -> Layer:
    fmt, tar = decode_blob(blob, name, max_size)
    return Layer(name, blob, fmt, tar, hashlib.sha256(tar).hexdigest())


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from exc


def load_layers(sources: list[str], *, max_size: int | None = None, platform: str | None = None) -> list[Layer]:
    """Every layer of every source, in order; a source is a blob file or an image reference."""
    layers: list[Layer] = []
    for src in sources:
        if src.startswith(IMAGE_PREFIXES):
            for name, blob in image_blobs(src, platform):
                layers.append(make_layer(name, blob, max_size))
        else:
            layers.append(make_layer(src, read_file(src), max_size))
    if not layers:
        raise InputError(f"{' '.join(sources)}: no layers to benchmark")
    return layers
