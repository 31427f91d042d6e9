"""``type=gha``: the GitHub Actions cache service as a sink.

Spec: ``type=gha,scope=NAME[,ignore-error=true][,timeout=10m][,version=1|2]
[,url=...][,url_v2=...][,token=...]``; endpoints and token default to the
runner's environment (see :mod:`transcoder.gha.env`).

* Blobs: one cache entry per blob, keyed by digest with BuildKit's key scheme,
  existence checked before upload, streamed while the transcoder produces
  them (see :mod:`transcoder.gha.blobstore` for blobs whose digest is only
  known at the end).
* Variant records: an append-only chain per source digest, so any job finds
  every variant of a layer, whatever its parameters.
* Image records: an append-only chain per scope, merged on read; parallel jobs
  exporting into one scope never overwrite each other.

``ignore-error=true`` only sets :attr:`GhaSink.ignore_errors`; the command
line turns a cache failure into a warning and exit 0 when it is set, as
BuildKit's option does.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any, BinaryIO

import httpx

from ..digest import Digest
from ..errors import ManifestError, UsageError
from ..gha import keys
from ..gha.blobstore import BlobStore, GhaBlobWriter
from ..gha.chain import RecordChain
from ..gha.client import CacheClient, open_client
from ..gha.env import config_from
from ..records import ImageRecord, VariantRecord, merge_images
from .base import BlobManifests, as_digest

log = logging.getLogger("transcoder.gha")

OPTIONS = frozenset({"scope", "ignore-error", "timeout", "url", "url_v2", "token", "version"})
DEFAULT_SCOPE = "transcoder"
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}


def _parse_bool(opts: Mapping[str, str], name: str) -> bool:
    value = opts.get(name, "false")
    if value in _TRUE | _FALSE:
        return value in _TRUE
    raise UsageError(f"type=gha: {name}={value!r}: expected true or false")


def _merge_images(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    parsed = [_image(r) for r in records]
    merged = merge_images([r for r in parsed if r is not None])
    return [merged[name].to_json() for name in sorted(merged)]


def _image(obj: dict[str, Any]) -> ImageRecord | None:
    try:
        return ImageRecord.from_bytes(json.dumps(obj).encode())
    except ManifestError as exc:
        log.warning("skipping a malformed image record: %s", exc)
        return None


def _variant(obj: dict[str, Any]) -> VariantRecord | None:
    try:
        return VariantRecord.from_json(obj)
    except Exception as exc:  # a record from another version or a broken writer
        log.warning("skipping a malformed variant record: %s", exc)
        return None


def _variant_id(rec: VariantRecord) -> tuple[str, str, str]:
    return (str(rec.source.digest), str(rec.target.digest), rec.params.key)


def _merge_variants(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Union; one record per (source, target, parameters), the earliest kept."""
    seen: dict[tuple[str, str, str], VariantRecord] = {}
    for rec in sorted(filter(None, map(_variant, records)), key=lambda r: r.created):
        seen.setdefault(_variant_id(rec), rec)
    return [rec.to_json() for rec in seen.values()]


class GhaSink(BlobManifests):
    def __init__(self, client: CacheClient, scope: str = DEFAULT_SCOPE, *, ignore_errors: bool = False) -> None:
        if not keys.SCOPE.fullmatch(scope):
            raise UsageError(f"type=gha: scope={scope!r}: use 1-128 letters, digits and ._:/@+- (no ',' or '#')")
        self.client = client
        self.scope = scope
        self.ignore_errors = ignore_errors
        self.blobs = BlobStore(client)
        self._images = RecordChain(client, keys.images_chain(scope), keys.VERSION, _merge_images)
        self._own_images: list[ImageRecord] = []
        self._own_variants: dict[Digest, list[VariantRecord]] = {}

    @classmethod
    def from_options(cls, opts: dict[str, str], *, env: Mapping[str, str] | None = None,
                     transport: httpx.BaseTransport | None = None, **client_args: Any) -> GhaSink:
        unknown = sorted(set(opts) - OPTIONS)
        if unknown:
            raise UsageError(f"type=gha: unknown option {unknown[0]!r} (known: {', '.join(sorted(OPTIONS))})")
        scope = opts.get("scope", DEFAULT_SCOPE)
        ignore = _parse_bool(opts, "ignore-error")
        config = config_from(opts, os.environ if env is None else env)
        return cls(open_client(config, transport=transport, **client_args), scope, ignore_errors=ignore)

    @property
    def location(self) -> str:
        return f"gha:{self.scope}"

    def __repr__(self) -> str:
        return f"GhaSink(scope={self.scope!r}, client={self.client!r})"

    # --- blobs ---------------------------------------------------------------

    def blob_writer(self, media_type: str, *, key_hint: str | None = None, size_hint: int | None = None) -> GhaBlobWriter:
        return GhaBlobWriter(self.blobs, media_type, key_hint, size_hint)

    def stat_blob(self, digest: Digest | str) -> int | None:
        loc = self.blobs.locate(as_digest(digest))
        return None if loc is None else loc.size

    def open_blob(self, digest: Digest | str, offset: int = 0, length: int | None = None) -> BinaryIO:
        return self.blobs.open(as_digest(digest), offset, length)

    # --- records -------------------------------------------------------------

    def _variants(self, source: Digest) -> RecordChain:
        return RecordChain(self.client, keys.variants_chain(source), keys.VERSION, _merge_variants)

    def put_variant(self, rec: VariantRecord) -> None:
        ident = _variant_id(rec)

        def known(records: list[dict[str, Any]]) -> bool:
            return any(r is not None and _variant_id(r) == ident for r in map(_variant, records))

        self._variants(rec.source.digest).append([rec.to_json()], known=known)
        self._own_variants.setdefault(rec.source.digest, []).append(rec)

    def find_variants(self, source: Digest | str) -> list[VariantRecord]:
        source = as_digest(source)
        found = self._variants(source).read().records
        own = [r.to_json() for r in self._own_variants.get(source, [])]
        records = filter(None, map(_variant, _merge_variants(found + own)))
        return [r for r in records if r.source.digest == source]

    def put_image(self, rec: ImageRecord) -> None:
        def known(records: list[dict[str, Any]]) -> bool:
            # Re-binding a name to the root it already has changes nothing: no new entry.
            current = merge_images([r for r in map(_image, records) if r is not None]).get(rec.name)
            return current is not None and current.root.digest == rec.root.digest

        self._images.append([rec.to_json()], known=known)
        self._own_images.append(rec)

    def images(self) -> dict[str, ImageRecord]:
        found = [r for r in map(_image, self._images.read().records) if r is not None]
        return merge_images(found + self._own_images)

    def close(self) -> None:
        self.client.close()


__all__ = ["GhaSink"]
