"""Small immutable records that travel between machines: variant records
(which blob is which encoding of which diffID) and image records (which root
manifest or index a name points at). Sinks store them as JSON; the SQLite
variant table holds the same facts locally.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .codecs import ZstdParams
from .descriptor import Descriptor, json_object
from .digest import Digest
from .errors import ManifestError

RECORD_VERSION = 1


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class VariantRecord:
    """``target`` is ``source`` re-encoded with ``params``; both decode to ``diff_id``."""

    source: Descriptor
    diff_id: Digest
    target: Descriptor
    params: ZstdParams
    created: float = field(default_factory=time.time, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "recordVersion": RECORD_VERSION,
            "source": self.source.to_json(),
            "diffID": str(self.diff_id),
            "target": self.target.to_json(),
            "params": self.params.to_json(),
            "created": self.created,
        }

    def to_bytes(self) -> bytes:
        return _dumps(self.to_json())

    @classmethod
    def from_json(cls, obj: dict[str, Any], what: str = "variant record") -> VariantRecord:
        try:
            return cls(
                source=Descriptor.from_json(obj["source"], what),
                diff_id=Digest.parse(obj["diffID"]),
                target=Descriptor.from_json(obj["target"], what),
                params=ZstdParams.from_json(obj["params"]),
                created=float(obj.get("created", 0.0)),
            )
        except ManifestError:
            raise
        except Exception as exc:
            raise ManifestError(f"{what}: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "variant record") -> VariantRecord:
        return cls.from_json(json_object(data, what), what)


@dataclass(frozen=True)
class ImageRecord:
    """A name (tag) bound to a root manifest or index, at a point in time.

    Several writers may bind the same name; readers merge all records and the
    newest binding of each name wins (ties broken by digest, so every reader
    picks the same one).
    """

    name: str
    root: Descriptor
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"recordVersion": RECORD_VERSION, "name": self.name, "root": self.root.to_json(), "created": self.created}

    def to_bytes(self) -> bytes:
        return _dumps(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "image record") -> ImageRecord:
        obj = json_object(data, what)
        try:
            return cls(str(obj["name"]), Descriptor.from_json(obj["root"], what), float(obj["created"]))
        except ManifestError:
            raise
        except Exception as exc:
            raise ManifestError(f"{what}: {type(exc).__name__}: {exc}") from exc

    def sort_key(self) -> tuple[float, str]:
        return (self.created, str(self.root.digest))


def merge_images(records: list[ImageRecord]) -> dict[str, ImageRecord]:
    """Union of image records: for each name, the newest record wins."""
    merged: dict[str, ImageRecord] = {}
    for rec in records:
        old = merged.get(rec.name)
        if old is None or rec.sort_key() > old.sort_key():
            merged[rec.name] = rec
    return merged
