"""OCI registries: references, auth, the distribution API client, blob
uploads, the ``docker://`` image source and variant records in a repository.

The names below load on first use, so that :mod:`.reference` can be imported
without the HTTP stack (the command line reads references before it loads).
"""

from __future__ import annotations

from typing import Any

from .. import lazy

_HOME = {"Credentials": ".auth", "RegistryClient": ".client", "Reference": ".reference",
         "parse_reference": ".reference", "RegistrySource": ".source"}


def __getattr__(name: str) -> Any:
    return lazy.attribute(__name__, _HOME, name)


__all__ = ["Credentials", "Reference", "RegistryClient", "RegistrySource", "parse_reference"]
