"""Package names imported on first use (PEP 562).

A package whose public names live in heavy modules (the HTTP stack,
``zstandard``) lists each name with its home, relative to the package, and
has its ``__getattr__`` call :func:`attribute`: a command that never uses a
name never pays for its import. The value is kept in the package once
loaded, so later uses are plain attribute reads.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any


def attribute(package: str, homes: Mapping[str, str], name: str) -> Any:
    """``name`` from its module in ``homes`` (``.zstd``, ``..redact``), kept in ``package``."""
    if name not in homes:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(homes[name], package), name)
    setattr(sys.modules[package], name, value)
    return value


__all__ = ["attribute"]
