"""Fuzz targets: each takes untrusted bytes and must either succeed or raise
a TranscoderError, never anything else (no crash, no hang, no other
exception). Shared by the hypothesis tests (bounded, in CI) and the atheris
driver (coverage-guided, long runs)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import zstandard

from transcoder.descriptor import OCI_INDEX, OCI_MANIFEST, Descriptor
from transcoder.digest import Digest
from transcoder.errors import TranscoderError
from transcoder.images.archive import ArchiveSource
from transcoder.images.model import parse
from transcoder.records import ImageRecord, VariantRecord
from transcoder.transcode import transcode_stream
from transcoder.writers import NullWriter

LIMIT = 8 << 20  # decoded-size bound, so a fuzzed bomb ends quickly


def _reference_gzip(data: bytes) -> bytes | None:
    try:
        return gzip.decompress(data)
    except Exception:
        return None


def _reference_zstd(data: bytes) -> bytes | None:
    try:
        return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(data)
    except Exception:
        return None


def layer_stream(data: bytes) -> None:
    """The pipeline on arbitrary bytes; when it succeeds, its diffID must agree
    with an independent decoder (gzip module, zstandard) where one applies."""
    try:
        res = transcode_stream(io.BytesIO(data), NullWriter("fuzz"), max_size=LIMIT, workers=1, name="fuzz")
    except TranscoderError:
        return
    ref = _reference_gzip(data) if data[:2] == b"\x1f\x8b" else _reference_zstd(data) if data[:4] == b"\x28\xb5\x2f\xfd" else data
    if ref is not None:
        assert res.diff_id == Digest.of(ref), "decoded bytes differ from the reference decoder"


def manifest_doc(data: bytes) -> None:
    for mt in (OCI_MANIFEST, OCI_INDEX):
        desc = Descriptor(mt, Digest.of(data), len(data))
        with contextlib.suppress(TranscoderError):
            parse(data, desc, "fuzz")


def records(data: bytes) -> None:
    for cls in (VariantRecord, ImageRecord):
        with contextlib.suppress(TranscoderError):
            cls.from_bytes(data)  # type: ignore[attr-defined]


def docker_archive(data: bytes) -> None:
    """An archive whose manifest.json is the fuzzed bytes, plus a few members."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.tar"
        with tarfile.open(path, "w") as tar:
            for name, body in (("manifest.json", data), ("config.json", b"{}"), ("l/layer.tar", b"\0" * 1024)):
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
        try:
            src = ArchiveSource(str(path))
            root, _ = src.resolve()
            src.get_manifest(root)
        except TranscoderError:
            pass


def json_manifest(obj: object) -> None:
    manifest_doc(json.dumps(obj).encode())


TARGETS: dict[str, Callable[[bytes], None]] = {
    "layer": layer_stream,
    "manifest": manifest_doc,
    "records": records,
    "docker-archive": docker_archive,
}
