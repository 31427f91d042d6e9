"""Digest value type and hashing stream helpers.

A digest is parsed and validated once, at the edge: ``Digest.parse`` accepts
only ``sha256:<64 lowercase hex>``, so a value of this type is always safe to
use as a path component or a URL segment.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO

from .errors import DigestMismatch, InputError

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, order=True)
class Digest:
    """A validated ``sha256:<hex>`` content digest."""

    value: str

    def __post_init__(self) -> None:
        if not _SHA256.fullmatch(self.value):
            raise InputError(f"invalid digest {self.value[:80]!r}: expected sha256:<64 hex>")

    @classmethod
    def parse(cls, text: str) -> Digest:
        return cls(text.strip())

    @classmethod
    def of(cls, data: bytes | memoryview) -> Digest:
        return cls("sha256:" + hashlib.sha256(data).hexdigest())

    @classmethod
    def from_hasher(cls, hasher: hashlib._Hash) -> Digest:
        return cls("sha256:" + hasher.hexdigest())

    @property
    def algorithm(self) -> str:
        return "sha256"

    @property
    def hex(self) -> str:
        return self.value[7:]

    @property
    def short(self) -> str:
        return self.value[:19]

    def __str__(self) -> str:
        return self.value


def is_digest(text: str) -> bool:
    return bool(_SHA256.fullmatch(text))


def check_digest(data: bytes, expected: Digest, what: str) -> None:
    """Raise DigestMismatch naming ``what`` unless ``data`` hashes to ``expected``."""
    actual = Digest.of(data)
    if actual != expected:
        raise DigestMismatch(f"{what}: content is {actual}, expected {expected}")


def sha256_stream(stream: BinaryIO, chunk: int = 1 << 20) -> tuple[Digest, int]:
    """Hash a stream to its end; returns (digest, size)."""
    h = hashlib.sha256()
    size = 0
    while block := stream.read(chunk):
        h.update(block)
        size += len(block)
    return Digest.from_hasher(h), size
