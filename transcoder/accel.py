"""Hot loops with a C implementation and a pure-Python twin.

The C extension ``transcoder._native`` is optional: it is built by
``pip install`` when a compiler is present and skipped otherwise. Each loop
here picks the C function when the extension imports and the Python twin when
it does not; both behave identically (same inputs accepted, same errors), and
tests run against both. ``TRANSCODER_NO_NATIVE=1`` forces the Python twins.

Only loops where the benchmark shows C ahead live here (benchmarks/README.md):

- ``frame_walker``: the zstd block-header walk that tells a complete stream
  from a truncated one. Python pays microseconds per block, so a stream of
  tiny blocks makes it the slowest stage; C pays nanoseconds.
- ``gzip_frames``: gzip inflated into the pipeline's frames. The Python twin
  joins python-isal's output pieces into each frame (python-isal has already
  copied them once from its own blocks); the C one, ``transcoder._isal``,
  has ISA-L write into the frame itself. It is a separate extension because
  it links the system's ISA-L (Debian: libisal-dev), which may be absent
  where ``_native`` builds.
- ``sha256``: SHA-256 with the x86 SHA extensions (``transcoder._sha256``).
  One stream runs at hashlib's speed; ``update_pair`` hashes two streams in
  nearly the time of one (hashing.py says where the pipeline uses it). Used
  only on a CPU that has the extensions; hashlib otherwise.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol

from .errors import FormatError

NO_NATIVE_ENV = "TRANSCODER_NO_NATIVE"


class FrameWalker(Protocol):
    def feed(self, data: bytes | memoryview) -> None: ...

    def finish(self) -> None: ...


class GzipFrames(Protocol):
    def feed(self, data: bytes | memoryview) -> None: ...

    def next(self) -> bytes | None: ...

    def finish(self) -> bytes: ...

    @property
    def members(self) -> int: ...


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None


# Importable at all (tests and benchmarks use them even when forced off) ...
_native = _import("_native")
_isal = _import("_isal")
_sha256 = _import("_sha256")
# ... and chosen for the product's hot paths.
_ALLOWED = os.environ.get(NO_NATIVE_ENV, "") in ("", "0")
NATIVE = _native is not None and _ALLOWED
NATIVE_GZIP = _isal is not None and _ALLOWED
NATIVE_SHA256 = _sha256 is not None and bool(_sha256.available) and _ALLOWED
IMPLEMENTATION = "+".join(n for n, on in (("native", NATIVE), ("isal", NATIVE_GZIP), ("sha", NATIVE_SHA256))
                          if on) or "python"


def sha256_impls() -> dict[str, Callable[[], Any]]:
    """Every SHA-256 usable here, by name, whatever the environment forces; for tests and benchmarks."""
    impls: dict[str, Callable[[], Any]] = {"hashlib": hashlib.sha256}
    if _sha256 is not None and _sha256.available:
        impls["native"] = _sha256.Sha256
    return impls


def native_sha256() -> ModuleType | None:
    """``transcoder._sha256`` when the product uses it (built, the CPU has the extensions, not forced off)."""
    return _sha256 if NATIVE_SHA256 else None


def python_frame_walker(name: str) -> FrameWalker:
    from .codecs.zstd import FrameWalker as PyFrameWalker

    return PyFrameWalker(name)


def native_frame_walker(name: str) -> FrameWalker:
    if _native is None:
        raise ImportError("transcoder._native is not available")
    return _native.FrameWalker(name, FormatError)  # type: ignore[no-any-return]


def frame_walker(name: str) -> FrameWalker:
    """A zstd frame walker for the stream called ``name`` (errors name it)."""
    return native_frame_walker(name) if NATIVE else python_frame_walker(name)


def frame_walkers() -> dict[str, Callable[[str], FrameWalker]]:
    """Every implementation importable here, by name, whatever the environment
    forces for the product; for tests and benchmarks."""
    impls: dict[str, Callable[[str], FrameWalker]] = {"python": python_frame_walker}
    if _native is not None:
        impls["native"] = native_frame_walker
    return impls


def python_gzip_frames(name: str, frame_size: int) -> GzipFrames:
    from .codecs.gzip import GzipFrames as PyGzipFrames

    return PyGzipFrames(name, frame_size)


def native_gzip_frames(name: str, frame_size: int) -> GzipFrames:
    if _isal is None:
        raise ImportError("transcoder._isal is not available")
    return _isal.GzipFrames(name, frame_size, FormatError)  # type: ignore[no-any-return]


def gzip_frames(name: str, frame_size: int) -> GzipFrames:
    """A gzip inflater into frames of ``frame_size`` bytes for the stream called ``name``."""
    return native_gzip_frames(name, frame_size) if NATIVE_GZIP else python_gzip_frames(name, frame_size)


def gzip_frame_impls() -> dict[str, Callable[[str, int], GzipFrames]]:
    """Every gzip-frames implementation importable here, by name; for tests and benchmarks."""
    impls: dict[str, Callable[[str, int], GzipFrames]] = {"python": python_gzip_frames}
    if _isal is not None:
        impls["native"] = native_gzip_frames
    return impls
