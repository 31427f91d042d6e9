"""zstd parameters, encoder and decoder (the ``zstandard`` package).

Output layout: the tar is cut into independent frames of ``FRAME_SIZE``
bytes (the last one shorter), each compressed in one call by a
single-threaded libzstd context. The cut points depend on the tar alone and
one-shot compression of the same bytes at the same parameters gives the same
bytes, so the output is identical for any worker count and on any machine
with the same libzstd; the libzstd version is part of a variant's identity.

Why frames and not libzstd's own multi-threaded mode: on the benchmark
corpus a one-shot frame costs 15-25 % less CPU than streaming the same bytes
through a context (no copy into the window buffer, no job overlap), and 8 MiB
frames come out within 1 % of one streamed frame's size. Every zstd reader
decodes concatenated frames, and the frame headers carry each frame's size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import zstandard

from .. import accel
from ..errors import FormatError, UsageError
from .constants import DEFAULT_LEVEL, MAX_LEVEL, MIN_LEVEL, STRATEGY
from .detect import ZSTD_MAGIC

READ_SIZE = 1 << 20


def libzstd_version() -> str:
    return ".".join(str(p) for p in zstandard.ZSTD_VERSION)


# libzstd's advanced parameters a variant may set over its level's own, by
# the names of the zstd command's --zstd= option, with the keyword each has
# in zstandard.ZstdCompressionParameters and its bounds.
TUNABLES: dict[str, tuple[str, int, int]] = {
    "wlog": ("window_log", zstandard.WINDOWLOG_MIN, zstandard.WINDOWLOG_MAX),
    "hlog": ("hash_log", zstandard.HASHLOG_MIN, zstandard.HASHLOG_MAX),
    "clog": ("chain_log", zstandard.CHAINLOG_MIN, zstandard.CHAINLOG_MAX),
    "slog": ("search_log", zstandard.SEARCHLOG_MIN, zstandard.SEARCHLOG_MAX),
    "mml": ("min_match", zstandard.MINMATCH_MIN, zstandard.MINMATCH_MAX),
    "tlen": ("target_length", zstandard.TARGETLENGTH_MIN, zstandard.TARGETLENGTH_MAX),
    "strat": ("strategy", zstandard.STRATEGY_FAST, zstandard.STRATEGY_BTULTRA2),
}

Tuning = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class ZstdParams:
    """Everything that decides the output bytes; the variant's identity.

    ``tuning``: libzstd parameters set over the level's own, as (name,
    value) pairs in ``TUNABLES`` order; each one left out keeps the level's
    value. Without any, the identity is the level's alone.
    """

    level: int = DEFAULT_LEVEL
    strategy: str = STRATEGY
    library: str = ""
    tuning: Tuning = ()

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int) or not MIN_LEVEL <= self.level <= MAX_LEVEL:
            raise UsageError(f"--level {self.level!r}: zstd level must be {MIN_LEVEL} to {MAX_LEVEL}")
        object.__setattr__(self, "tuning", _checked_tuning(self.tuning))
        if not self.library:
            object.__setattr__(self, "library", "libzstd " + libzstd_version())

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"codec": "zstd", "level": self.level, "strategy": self.strategy, "library": self.library}
        if self.tuning:
            obj["tuning"] = dict(self.tuning)
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ZstdParams:
        if not isinstance(obj, dict) or obj.get("codec") != "zstd":
            raise FormatError(f"unknown codec in variant parameters: {obj!r:.80}")
        tuning = obj.get("tuning", {})
        if not isinstance(tuning, dict):
            raise FormatError(f"variant parameters: tuning is not an object: {tuning!r:.80}")
        return cls(level=int(obj["level"]), strategy=str(obj["strategy"]), library=str(obj["library"]),
                   tuning=tuple(tuning.items()))

    @staticmethod
    def parse_tuning(text: str) -> Tuning:
        """``hlog=17,clog=13`` (the zstd command's --zstd= form) as tuning pairs."""
        pairs = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            if not sep or not value.strip().isdigit():
                raise UsageError(f"--zstd {text!r}: {item!r} is not NAME=NUMBER (names: {', '.join(TUNABLES)})")
            pairs.append((name.strip(), int(value)))
        return _checked_tuning(tuple(pairs))

    @property
    def key(self) -> str:
        """Stable short identity, usable in cache keys and file names."""
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return f"zstd-{self.level}-" + hashlib.sha256(blob).hexdigest()[:12]

    @property
    def label(self) -> str:
        """``zstd-3``, or ``zstd-3 hlog=17,clog=13`` with tuning."""
        return f"zstd-{self.level}" + (f" {spell_tuning(self.tuning)}" if self.tuning else "")

    @property
    def producible(self) -> bool:
        """True when this process's libzstd makes exactly these bytes."""
        return self.strategy == STRATEGY and self.library == "libzstd " + libzstd_version()

    def frame_compressor(self) -> zstandard.ZstdCompressor:
        """A single-threaded context for whole frames (one per thread: contexts are not thread-safe)."""
        if not self.tuning:
            return zstandard.ZstdCompressor(level=self.level)
        # Only the named parameters are set; libzstd takes the rest from the
        # level, for each frame's size, as it does with no tuning.
        chosen = {TUNABLES[name][0]: value for name, value in self.tuning}
        return zstandard.ZstdCompressor(
            compression_params=zstandard.ZstdCompressionParameters(compression_level=self.level, **chosen))


def spell_tuning(tuning: Tuning) -> str:
    """Tuning pairs as ``--zstd`` takes them: ``hlog=17,clog=13``."""
    return ",".join(f"{name}={value}" for name, value in tuning)


def _checked_tuning(tuning: Tuning) -> Tuning:
    """Known names within their bounds, each once, in ``TUNABLES`` order."""
    seen: dict[str, int] = {}
    for name, value in tuning:
        if name not in TUNABLES:
            raise UsageError(f"--zstd {name}={value}: unknown parameter (known: {', '.join(TUNABLES)})")
        _, low, high = TUNABLES[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise UsageError(f"--zstd {name}={value!r}: {name} must be {low} to {high}")
        if name in seen:
            raise UsageError(f"--zstd {name}: given twice")
        seen[name] = value
    return tuple((name, seen[name]) for name in TUNABLES if name in seen)


class FrameWalker:
    """Tracks zstd frame structure from block headers, to tell a complete
    stream from a truncated one (libzstd's streaming reader does not).

    Cost is one small parse per block; bytes are not copied. This is the
    pure-Python twin of ``transcoder._native.FrameWalker``; the pipeline gets
    whichever ``accel.frame_walker`` picks.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._buf = bytearray()
        self._skip = 0  # payload bytes still to pass over
        self._state = "magic"
        self._checksum = False

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                continue
            need = self._need()
            take = min(need - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self._need():
                self._step()

    def _need(self) -> int:
        if self._state == "magic":
            return 4
        if self._state == "fhd":
            return 1
        if self._state == "header":
            return self._header_len
        if self._state == "skippable":
            return 4
        return 3  # block header

    def _step(self) -> None:
        buf = bytes(self._buf)
        self._buf.clear()
        if self._state == "magic":
            self._on_magic(buf)
        elif self._state == "fhd":
            self._on_fhd(buf[0])
        elif self._state == "header":
            self._state = "block"
        elif self._state == "skippable":
            self._skip = int.from_bytes(buf, "little")
            self._state = "magic"
        else:
            self._on_block(buf)

    def _on_magic(self, buf: bytes) -> None:
        if buf == ZSTD_MAGIC:
            self._state = "fhd"
        elif buf[1:] == b"\x2a\x4d\x18" and (buf[0] & 0xF0) == 0x50:
            self._state = "skippable"
        else:
            raise FormatError(f"{self._name}: garbage after zstd frame")

    def _on_fhd(self, fhd: int) -> None:
        fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
        self._checksum = bool(fhd & 4)
        fcs = (1 if single else 0, 2, 4, 8)[fcs_flag]
        self._header_len = (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + fcs
        self._state = "header" if self._header_len else "block"

    def _on_block(self, buf: bytes) -> None:
        header = int.from_bytes(buf, "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3:
            raise FormatError(f"{self._name}: corrupt zstd block header")
        self._skip = 1 if kind == 1 else size
        if last:
            self._skip += 4 if self._checksum else 0
            self._state = "magic"

    def finish(self) -> None:
        if self._state != "magic" or self._buf or self._skip:
            raise FormatError(f"{self._name}: truncated zstd stream")


class _WalkedReader:
    """File-like view of a read function that feeds a FrameWalker."""

    def __init__(self, read: Callable[[int], bytes], walker: accel.FrameWalker) -> None:
        self._read = read
        self._walker = walker

    def read(self, n: int = -1) -> bytes:
        data = self._read(n if n > 0 else READ_SIZE)
        self._walker.feed(data)
        return data


def iter_zstd(read: Callable[[int], bytes], name: str) -> Iterator[bytes]:
    """Decode concatenated zstd frames; output is bounded per chunk."""
    walker = accel.frame_walker(name)
    reader = zstandard.ZstdDecompressor().stream_reader(
        _WalkedReader(read, walker),  # type: ignore[arg-type]
        read_size=READ_SIZE,
        read_across_frames=True,
        closefd=False,
    )
    try:
        while chunk := reader.read(READ_SIZE):
            yield chunk
    except zstandard.ZstdError as exc:
        raise FormatError(f"{name}: corrupt zstd data: {exc}") from exc
    walker.finish()
