"""OCI registries: references, auth, the distribution API client, blob
uploads, the ``docker://`` image source and variant records in a repository.

The names below load on first use, so that :mod:`.reference` can be imported
without the HTTP stack (the command line reads references before it loads).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {"Credentials": ".auth", "RegistryClient": ".client", "Reference": ".reference",
         "parse_reference": ".reference", "RegistrySource": ".source"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name], __name__), name)


__all__ = ["Credentials", "Reference", "RegistryClient", "RegistrySource", "parse_reference"]
