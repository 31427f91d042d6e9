"""Cache keys and versions: the naming scheme of everything the sink stores.

===================================  ==========  =========================================
key                                  version     content
===================================  ==========  =========================================
``buildkit-blob-1-<digest>``         BuildKit's  a blob whose digest was known up front
``buildkit-blob-1-<digest>-t<hex>``  BuildKit's  same, when the plain key was taken by a
                                                 reservation that never finished
``transcoder-blob-1-<hint>[-t<hex>]`` ours       a blob streamed before its digest was
                                                 known (``<hint>`` = source digest and
                                                 codec parameters)
``transcoder-alias-1-<digest>[-t…]``  ours       JSON: which entry holds that digest
``transcoder-variants-1-<src>#<n>``  ours       variant records of one source blob
``transcoder-images-1-<scope>#<n>``  ours       image records of one scope
===================================  ==========  =========================================

Blob keys and their version are BuildKit's (``type=gha``), so a layer that
``docker/build-push-action`` already cached is found and not uploaded again,
and BuildKit finds ours: both are content-addressed, so sharing is safe. A
lookup of ``buildkit-blob-1-<digest>`` matches the exact key first, then the
newest ``-t<hex>`` fallback (the service's prefix rule). The ``#<n>`` chains
are append-only logs merged on read (see :mod:`transcoder.gha.chain`).
"""

from __future__ import annotations

import hashlib
import re
import secrets

from ..digest import Digest

BUILDKIT_VERSION = hashlib.sha256(b"|go-actionscache-1.0").hexdigest()
VERSION = hashlib.sha256(b"|transcoder-cache-1").hexdigest()

BLOB_PREFIX = "buildkit-blob-1-"
_FALLBACK = re.compile(r"-t[0-9a-f]{8}")
_SAFE_HINT = re.compile(r"[A-Za-z0-9:._-]{1,200}")
SCOPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")


def fallback(key: str) -> str:
    """A fresh key beside ``key`` for when ``key`` is reserved by an upload that may never finish."""
    return f"{key}-t{secrets.token_hex(4)}"


def is_key_for(matched: str, key: str) -> bool:
    """Is ``matched`` (a lookup's answer) ``key`` itself or one of its fallbacks?"""
    return matched == key or (matched.startswith(key) and bool(_FALLBACK.fullmatch(matched[len(key):])))


def blob_key(digest: Digest) -> str:
    return f"{BLOB_PREFIX}{digest}"


def alias_key(digest: Digest) -> str:
    return f"transcoder-alias-1-{digest}"


def stream_key(hint: str | None) -> str:
    """Where a blob goes while its digest is unknown; unsafe or long hints are hashed."""
    if not hint:
        return fallback("transcoder-blob-1-anonymous")
    if not _SAFE_HINT.fullmatch(hint):
        hint = "h" + hashlib.sha256(hint.encode()).hexdigest()
    return f"transcoder-blob-1-{hint}"


def variants_chain(source: Digest) -> str:
    return f"transcoder-variants-1-{source}"


def images_chain(scope: str) -> str:
    return f"transcoder-images-1-{scope}"
