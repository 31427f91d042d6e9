"""Image records in a registry repository: immutable tagged records, plus the
plain tag users pull.

The sink contract asks that image records are never replaced in place and
that readers see, for each name, the newest binding whatever the order of
the writes. A registry tag is a mutable pointer that the last writer sets,
so each ``put_image`` also writes an immutable record:

* an OCI artifact manifest (``artifactType``
  ``application/vnd.transcoder.image.v1+json``) whose config blob is the
  record, whose ``subject`` is the root, and whose annotations repeat the
  name and time so one GET reads it;
* tagged ``sha256-<hex of sha256(name)>.image-<created, µs, 20 digits>-<root hex, 16>``,
  so the newest record of a name is found from the tag list alone.

When the name is also a valid tag, the tag is then made to point at the root
of the newest record: the writer lists the records (the first listing goes
out beside the write of its own record, which it counts in), pushes the
newest root it knows to the tag, and lists again until what it pushed is
still the newest. Of writers racing on one name, the tag settles on the root
of the newest record N: N's writer pushes it only once N is written, so a
writer whose last listing missed N made its last push before that, and a
writer whose listing saw N pushes N's root too. Readers take the records as
the truth; a tag whose manifest no record of that name knows was pushed by
something else (docker, skopeo) and wins.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from ..descriptor import OCI_MANIFEST, Descriptor
from ..errors import ManifestError
from ..records import ImageRecord

IMAGE_TYPE = "application/vnd.transcoder.image.v1+json"
ANNOTATION_NAME = "io.github.transcoder.image.name"
ANNOTATION_CREATED = "io.github.transcoder.image.created"
_RECORD_TAG = re.compile(r"sha256-([0-9a-f]{64})\.image-([0-9]{20})-([0-9a-f]{16})")


def name_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _micros(created: float) -> int:
    return max(0, round(created * 1_000_000))


def record_tag(rec: ImageRecord) -> str:
    return f"sha256-{name_hash(rec.name)}.image-{_micros(rec.created):020d}-{rec.root.digest.hex[:16]}"


@dataclass(frozen=True, order=True)
class RecordTag:
    """A parsed record tag; ordering is newest-last (time, then root digest)."""

    micros: int
    root_prefix: str
    name_hash: str
    tag: str


def parse_record_tag(tag: str) -> RecordTag | None:
    m = _RECORD_TAG.fullmatch(tag)
    return RecordTag(int(m.group(2)), m.group(3), m.group(1), tag) if m else None


def newest_by_name(tags: list[str]) -> dict[str, list[RecordTag]]:
    """Record tags grouped by name hash, oldest first."""
    groups: dict[str, list[RecordTag]] = {}
    for tag in tags:
        parsed = parse_record_tag(tag)
        if parsed is not None:
            groups.setdefault(parsed.name_hash, []).append(parsed)
    return {k: sorted(v) for k, v in groups.items()}


def record_manifest(rec: ImageRecord, record_blob: Descriptor) -> bytes:
    root = Descriptor(rec.root.media_type, rec.root.digest, rec.root.size)
    obj = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": IMAGE_TYPE,
        "config": record_blob.to_json(),
        "layers": [],
        "subject": root.to_json(),
        "annotations": {ANNOTATION_NAME: rec.name, ANNOTATION_CREATED: repr(float(rec.created))},
    }
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def parse_record(manifest: bytes, tag: RecordTag, where: str) -> ImageRecord:
    """The record a manifest carries, checked against the tag it was found under."""
    try:
        obj = json.loads(manifest)
        notes = obj["annotations"]
        name, created = notes[ANNOTATION_NAME], float(notes[ANNOTATION_CREATED])
        root = Descriptor.from_json(obj["subject"], where)
        ok = obj.get("artifactType") == IMAGE_TYPE and isinstance(name, str)
    except ManifestError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"{where}: malformed image record") from exc
    if not ok or name_hash(name) != tag.name_hash or _micros(created) != tag.micros \
            or not root.digest.hex.startswith(tag.root_prefix):
        raise ManifestError(f"{where}: image record does not match its tag")
    return ImageRecord(name, root, created)


__all__ = [
    "IMAGE_TYPE", "RecordTag", "newest_by_name", "parse_record", "parse_record_tag", "record_manifest", "record_tag",
]
