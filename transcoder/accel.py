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
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Protocol

from .errors import FormatError

NO_NATIVE_ENV = "TRANSCODER_NO_NATIVE"


class FrameWalker(Protocol):
    def feed(self, data: bytes | memoryview) -> None: ...

    def finish(self) -> None: ...


def _import_native() -> ModuleType | None:
    try:
        from . import _native  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _native  # type: ignore[no-any-return]


# Importable at all (tests and benchmarks use it even when forced off) ...
_native = _import_native()
# ... and chosen for the product's hot paths.
NATIVE = _native is not None and os.environ.get(NO_NATIVE_ENV, "") in ("", "0")
IMPLEMENTATION = "native" if NATIVE else "python"


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
