"""Variant records in a registry repository, one tag per record.

A record says "blob T is blob S re-encoded with parameters P; both decode to
diffID D". In a registry it is an OCI artifact manifest:

* ``artifactType`` and ``config.mediaType``: ``application/vnd.transcoder.variant.v1+json``;
  the config blob *is* the record (the same JSON every other sink stores);
* ``layers``: the variant blob T, so the registry's garbage collector keeps it
  alive as long as the record is tagged;
* tag ``sha256-<hex of S>.variant-<P.key>`` (the suffix-tag convention cosign
  uses for signatures, e.g. ``sha256-<hex>.sig``).

Lookup lists the repository's tags once per sink and reads the records whose
tag starts with ``sha256-<hex of S>.``.

Why not the referrers tag-schema fallback (one index tagged ``sha256-<hex>``
listing every record of S): that index is a shared mutable object, and
distribution 2.8 has no conditional manifest PUT (no ``If-Match``), so two
writers that read-union-push at the same time can lose a record whatever
re-read they do afterwards: the re-read can come before the other writer's
push lands. Its ``subject`` would also have to name a manifest, and S is a
layer blob.

Concurrency guarantee of this scheme: no writer ever replaces another's data
except with an equivalent record. Records with different parameters have
different tags, so two writers adding variants of the same source both land,
without locks or compare-and-swap. Two writers of the same (S, P) write the same
tag; P pins codec, level, frame strategy and library version, and the encoder
is deterministic for those, so both records name the same T and either one is
correct (last writer wins, nothing is lost). A reader sees every record whose
tag was pushed before it listed the tags.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..descriptor import OCI_MANIFEST, Descriptor
from ..digest import Digest
from ..errors import ManifestError
from ..records import VariantRecord

VARIANT_TYPE = "application/vnd.transcoder.variant.v1+json"
ANNOTATION_SOURCE = "io.github.transcoder.variant.source"
ANNOTATION_PARAMS = "io.github.transcoder.variant.params"
MAX_RECORD_BYTES = 64 << 10
_ATTACHMENT_TAG = re.compile(r"sha256-[0-9a-f]{64}(?:\..*)?")


def variant_tag(source: Digest, params_key: str) -> str:
    return f"sha256-{source.hex}.variant-{params_key}"


def tag_prefix(source: Digest) -> str:
    return f"sha256-{source.hex}.variant-"


def is_attachment_tag(tag: str) -> bool:
    """Tags of the ``sha256-<hex>[.suffix]`` conventions (ours, cosign's,
    the referrers fallback) name attachments, never images."""
    return bool(_ATTACHMENT_TAG.fullmatch(tag))


def record_manifest(rec: VariantRecord, record_blob: Descriptor) -> bytes:
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": VARIANT_TYPE,
        "config": record_blob.to_json(),
        "layers": [rec.target.to_json()],
        "annotations": {ANNOTATION_SOURCE: str(rec.source.digest), ANNOTATION_PARAMS: rec.params.key},
    }
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def record_blob_of(manifest: bytes, source: Digest, where: str) -> tuple[Descriptor, Descriptor]:
    """The (record blob, variant blob) descriptors of a record manifest, checked
    to be ours and about ``source``."""
    try:
        obj = json.loads(manifest)
        if obj.get("artifactType") != VARIANT_TYPE or obj.get("annotations", {}).get(ANNOTATION_SOURCE) != str(source):
            raise ManifestError(f"{where}: not a variant record of {source}")
        config = Descriptor.from_json(obj.get("config"), where)
        layers = obj.get("layers")
        if not isinstance(layers, list) or len(layers) != 1:
            raise ManifestError(f"{where}: a variant record has exactly one layer")
        target = Descriptor.from_json(layers[0], where)
    except ManifestError:
        raise
    except (ValueError, AttributeError, TypeError) as exc:
        raise ManifestError(f"{where}: malformed variant record manifest") from exc
    if config.media_type != VARIANT_TYPE or config.size > MAX_RECORD_BYTES:
        raise ManifestError(f"{where}: variant record config is not a record")
    return config, target


def check_record(rec: VariantRecord, source: Digest, target: Descriptor, params_key: str, where: str) -> None:
    """The record must agree with the manifest and the tag that carry it."""
    if rec.source.digest != source or rec.target.digest != target.digest or rec.target.size != target.size:
        raise ManifestError(f"{where}: record does not match its manifest")
    if rec.params.key != params_key:
        raise ManifestError(f"{where}: record parameters {rec.params.key} do not match the tag")


__all__ = [
    "VARIANT_TYPE", "check_record", "is_attachment_tag", "record_blob_of", "record_manifest", "tag_prefix", "variant_tag",
]
