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


def www_authenticate(data: bytes) -> None:
    """A registry's challenge header: parsed or ignored, never an exception."""
    from transcoder.registry.auth import parse_challenge

    challenge = parse_challenge(data.decode("latin-1"))
    assert challenge is None or challenge.scheme in ("basic", "bearer")


def registry_error_body(data: bytes) -> None:
    """A distribution error body becomes a short detail string or nothing."""
    import httpx

    from transcoder.registry.transport import error_detail

    detail = error_detail(httpx.Response(400, content=data))
    assert (len(detail) < 260 and "\n" not in detail) or detail == ""


def twirp_response(data: bytes) -> None:
    """Whatever the cache service answers (status from the first byte, body the
    rest), a lookup returns an entry or None, or raises a TranscoderError."""
    import httpx

    from transcoder.gha.client import open_client
    from transcoder.gha.env import config_from
    from transcoder.gha.retry import RetryPolicy

    status = (200, 200, 400, 401, 404, 409, 429, 412)[data[0] % 8] if data else 200
    body = data[1:]
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    config = config_from({"url_v2": "http://127.0.0.1:9/", "token": "fuzz", "version": "2", "timeout": "1s"}, {})
    policy = RetryPolicy(1.0, max_attempts=2, initial=0.0, max_wait=0.0, sleep=lambda _: None)
    with open_client(config, transport=transport, policy=policy) as client, contextlib.suppress(TranscoderError):
        client.lookup("transcoder-fuzz", "v")


TARGETS.update({"www-authenticate": www_authenticate, "registry-error": registry_error_body, "twirp": twirp_response})
