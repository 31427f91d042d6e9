"""The sink contract (transcoder/sinks/base.py) as one test suite every sink passes.

A sink joins by subclassing :class:`SinkContract` in a ``Test*`` class:

    class TestS3Sink(SinkContract):
        def make_sink(self, tmp_path, request):
            return open_sink(self.sink_spec(tmp_path, request))
        def sink_spec(self, tmp_path, request):            # optional: enables the multi-process test
            return f"type=s3,bucket=...,prefix={tmp_path.name}"

Optional hooks: ``leftovers(sink)`` lists upload debris a failed write might
leave (staging objects, open multipart uploads), which must be empty;
``secrets()`` lists strings that must never show in reprs or errors;
``large`` is the size of a blob that takes several parts in that sink.

Each test gets a fresh, empty sink namespace. Run as a script, this module is
the child process of the multi-process tests.
"""

from __future__ import annotations

import json
import random
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.imagegen import gz, make_tar
from transcoder.codecs import ZstdParams
from transcoder.descriptor import OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST, Descriptor
from transcoder.digest import Digest
from transcoder.errors import DigestMismatch, FormatError, InputError, ManifestError, NotFound, SizeMismatch
from transcoder.records import ImageRecord, VariantRecord
from transcoder.sinks import open_sink
from transcoder.sinks.base import Sink, put_bytes
from transcoder.transcode import transcode_stream

REPO = Path(__file__).resolve().parent.parent
BAD_DIGESTS = ["sha256:../../../../../../tmp/escape", "sha256:" + "A" * 64, "md5:0123", "", "sha256:" + "0" * 63 + "/"]


def randbytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def write_blob(sink: Sink, data: bytes, *, chunk: int = 256 << 10, hint: str | None = None) -> Digest:
    """Stream ``data`` into the sink in ``chunk``-sized writes and commit it."""
    digest = Digest.of(data)
    writer = sink.blob_writer(OCI_LAYER_ZSTD, key_hint=hint)
    try:
        for i in range(0, len(data), chunk):
            writer.write(data[i:i + chunk])
        writer.commit(len(data), digest)
    except BaseException:
        writer.abort()
        raise
    return digest


def read_all(sink: Sink, digest: Digest | str, offset: int = 0, length: int | None = None) -> bytes:
    with sink.open_blob(digest, offset, length) as f:  # type: ignore[arg-type]
        return f.read()


def push_image(sink: Sink, seed: int) -> Descriptor:
    """A real one-layer image (config, gzip layer, manifest) stored in the sink; its manifest descriptor."""
    tar = make_tar(seed, size=20_000, files=3)
    layer = put_bytes(sink, gz(tar), OCI_LAYER_GZIP)
    config = put_bytes(sink, json.dumps({"architecture": "amd64", "os": "linux",
                                         "rootfs": {"type": "layers", "diff_ids": [str(Digest.of(tar))]}}).encode(), OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(), "layers": [layer.to_json()]}
    return sink.put_manifest(json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST)


def transcode_into(sink: Sink, layer: bytes, level: int) -> VariantRecord:
    """Transcode a gzip layer into the sink and record the variant, as ``convert`` does."""
    import io

    result = transcode_stream(io.BytesIO(layer), sink.blob_writer(OCI_LAYER_ZSTD), params=ZstdParams(level), workers=1)
    rec = VariantRecord(result.source, result.diff_id, result.target, result.params)
    sink.put_variant(rec)
    return rec


class SinkContract:
    """Mixin of contract tests; see the module docstring for the hooks."""

    large = 3 * (1 << 20) + 12345

    def make_sink(self, tmp_path: Path, request: pytest.FixtureRequest) -> Sink:
        raise NotImplementedError

    def sink_spec(self, tmp_path: Path, request: pytest.FixtureRequest) -> str | None:
        """A spec that another process can open for the same store as make_sink, or None."""
        return None

    def leftovers(self, sink: Sink) -> list[str]:
        return []

    def secrets(self) -> list[str]:
        return []

    @pytest.fixture
    def sink(self, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Sink]:
        sink = self.make_sink(tmp_path, request)
        yield sink
        sink.close()

    # -- blobs -----------------------------------------------------------------

    def test_blob_visible_only_after_commit(self, sink: Sink) -> None:
        data = randbytes(1, self.large)
        digest = Digest.of(data)
        writer = sink.blob_writer(OCI_LAYER_ZSTD)
        for i in range(0, len(data), 1 << 20):
            writer.write(data[i:i + (1 << 20)])
            assert sink.stat_blob(digest) is None
        with pytest.raises(NotFound):
            read_all(sink, digest)
        writer.commit(len(data), digest)
        assert sink.stat_blob(digest) == len(data)
        assert read_all(sink, digest) == data
        assert self.leftovers(sink) == []

    def test_small_and_empty_blobs_round_trip(self, sink: Sink) -> None:
        for data in (b"", b"x", randbytes(2, 1000)):
            desc = put_bytes(sink, data, OCI_CONFIG)
            assert sink.stat_blob(desc.digest) == len(data)
            assert read_all(sink, desc.digest) == data

    def test_abort_leaves_nothing(self, sink: Sink) -> None:
        data = randbytes(3, self.large)
        for hint in (None, str(Digest.of(data))):
            writer = sink.blob_writer(OCI_LAYER_ZSTD, key_hint=hint)
            writer.write(data)
            writer.abort()
            assert sink.stat_blob(Digest.of(data)) is None
        assert self.leftovers(sink) == []

    def test_failed_transcode_leaves_nothing(self, sink: Sink) -> None:
        import io

        # Incompressible, so the output spans several parts before the corruption is met.
        corrupt = bytearray(gz(randbytes(4, 2 * self.large), level=1))
        corrupt[-len(corrupt) // 4:] = randbytes(5, len(corrupt) // 4)
        with pytest.raises(FormatError):
            transcode_stream(io.BytesIO(bytes(corrupt)), sink.blob_writer(OCI_LAYER_ZSTD), workers=1)
        assert self.leftovers(sink) == []

    @pytest.mark.parametrize("wrong", ["digest", "size"])
    def test_wrong_digest_or_size_is_refused(self, sink: Sink, wrong: str) -> None:
        data = randbytes(5, self.large)
        claimed = Digest.of(data + b"!") if wrong == "digest" else Digest.of(data)
        size = len(data) + (1 if wrong == "size" else 0)
        writer = sink.blob_writer(OCI_LAYER_ZSTD)
        writer.write(data)
        with pytest.raises(DigestMismatch if wrong == "digest" else SizeMismatch):
            writer.commit(size, claimed)
        writer.abort()  # harmless after a refused commit
        assert sink.stat_blob(claimed) is None
        assert sink.stat_blob(Digest.of(data)) is None
        assert self.leftovers(sink) == []

    def test_already_exists_is_success(self, sink: Sink) -> None:
        for data in (randbytes(6, 100), randbytes(7, self.large)):
            first = write_blob(sink, data)
            assert write_blob(sink, data) == first
            assert write_blob(sink, data, hint=str(first)) == first
            assert read_all(sink, first) == data
        assert self.leftovers(sink) == []

    def test_ranged_reads(self, sink: Sink) -> None:
        data = randbytes(8, self.large)
        digest = write_blob(sink, data)
        n = len(data)
        for offset, length in [(0, None), (0, 1), (7, 10), (n - 10, None), (n - 10, 100), (n // 3 - 5, n // 3),
                               (n - 1, 1), (n, None), (n, 5), (3, 0)]:
            end = n if length is None else offset + length
            assert read_all(sink, digest, offset, length) == data[offset:end], (offset, length)

    def test_missing_blob(self, sink: Sink) -> None:
        missing = Digest.of(b"never stored")
        assert sink.stat_blob(missing) is None
        with pytest.raises(NotFound):
            read_all(sink, missing)
        with pytest.raises(NotFound):
            read_all(sink, missing, 5, 10)

    def test_bad_digest_never_reaches_a_path_or_url(self, sink: Sink) -> None:
        for bad in BAD_DIGESTS:
            with pytest.raises(InputError):
                sink.stat_blob(bad)  # type: ignore[arg-type]
            with pytest.raises(InputError):
                read_all(sink, bad)
            with pytest.raises(InputError):
                sink.find_variants(bad)  # type: ignore[arg-type]
            writer = sink.blob_writer(OCI_LAYER_ZSTD)
            writer.write(b"data")
            with pytest.raises(InputError):
                writer.commit(4, bad)  # type: ignore[arg-type]
            writer.abort()
        assert self.leftovers(sink) == []
        assert sink.images() == {}

    def test_manifest_round_trip(self, sink: Sink) -> None:
        desc = push_image(sink, 9)
        raw = sink.get_manifest(desc)
        assert Digest.of(raw) == desc.digest
        assert json.loads(raw)["mediaType"] == OCI_MANIFEST
        with pytest.raises(ManifestError):
            sink.get_manifest(desc.replace(size=desc.size + 1))

    # -- records ---------------------------------------------------------------

    def test_variant_records_round_trip(self, sink: Sink) -> None:
        layer = gz(make_tar(10, size=60_000))
        rec = transcode_into(sink, layer, 3)
        sink.put_variant(rec)  # the same record again: success
        found = sink.find_variants(rec.source.digest)
        assert found == [rec]
        assert found[0].created == pytest.approx(rec.created)
        assert read_all(sink, rec.target.digest)[:4] == b"\x28\xb5\x2f\xfd"
        assert sink.find_variants(rec.target.digest) == []
        assert sink.find_variants(str(rec.source.digest)) == [rec]  # type: ignore[arg-type]

    def test_two_variants_of_one_source_both_found(self, sink: Sink) -> None:
        layer = gz(make_tar(11, size=60_000))
        a, b = transcode_into(sink, layer, 1), transcode_into(sink, layer, 9)
        assert a.target.digest != b.target.digest
        found = sink.find_variants(a.source.digest)
        assert sorted(r.params.level for r in found) == [1, 9]
        assert {r.target.digest for r in found} == {a.target.digest, b.target.digest}

    def test_images_merge_newest_wins(self, sink: Sink) -> None:
        old, new, other = push_image(sink, 12), push_image(sink, 13), push_image(sink, 14)
        sink.put_image(ImageRecord("app", new, created=2000.0))
        sink.put_image(ImageRecord("app", old, created=1000.0))  # written later, but older
        sink.put_image(ImageRecord("tools", other, created=1500.0))
        merged = sink.images()
        assert set(merged) == {"app", "tools"}
        assert merged["app"].root.digest == new.digest
        assert merged["tools"].root.digest == other.digest
        assert merged["app"].created == 2000.0

    def test_image_names_with_separators(self, sink: Sink) -> None:
        root = push_image(sink, 15)
        names = ["registry.example:5000/team/app:v1.2", "..", "a/../b", "x y"]
        for name in names:
            sink.put_image(ImageRecord(name, root, created=1.0))
        assert set(sink.images()) == set(names)

    # -- concurrency -----------------------------------------------------------

    def test_threads_writing_the_same_blob(self, sink: Sink) -> None:
        data = randbytes(16, self.large)
        with ThreadPoolExecutor(6) as pool:
            digests = list(pool.map(lambda _: write_blob(sink, data), range(6)))
        assert set(digests) == {Digest.of(data)}
        assert read_all(sink, digests[0]) == data
        assert self.leftovers(sink) == []

    def test_threads_writing_images_lose_nothing(self, sink: Sink) -> None:
        roots = [push_image(sink, 100 + i) for i in range(8)]
        start = threading.Barrier(8)

        def writer(i: int) -> None:
            start.wait()
            sink.put_image(ImageRecord(f"own-{i}", roots[i], created=10.0 + i))
            sink.put_image(ImageRecord("shared", roots[i], created=100.0 + i))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(writer, range(8)))
        merged = sink.images()
        assert set(merged) == {f"own-{i}" for i in range(8)} | {"shared"}
        assert all(merged[f"own-{i}"].root.digest == roots[i].digest for i in range(8))
        assert merged["shared"].root.digest == roots[7].digest

    def test_processes_writing_lose_nothing(self, sink: Sink, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        spec = self.sink_spec(tmp_path, request)
        if spec is None:
            pytest.skip("this sink cannot be opened from another process")
        workers = 4
        results = run_children(spec, [{"index": i, "shared_seed": 17, "size": self.large} for i in range(workers)])
        merged = sink.images()
        assert set(merged) == {f"proc-{i}" for i in range(workers)} | {"shared"}
        for i, res in enumerate(results):
            assert merged[f"proc-{i}"].root.digest == Digest.parse(res["root"])
            assert sink.get_manifest(merged[f"proc-{i}"].root)
        assert merged["shared"].root.digest == Digest.parse(results[-1]["root"])
        shared = randbytes(17, self.large)
        assert read_all(sink, Digest.of(shared)) == shared
        assert self.leftovers(sink) == []

    # -- secrets ---------------------------------------------------------------

    def test_secrets_never_shown(self, sink: Sink) -> None:
        shown = [repr(sink), str(sink), sink.location]
        with pytest.raises(NotFound) as missing_blob:
            read_all(sink, Digest.of(b"absent"))
        with pytest.raises(NotFound) as missing_manifest:
            sink.get_manifest(Descriptor(OCI_MANIFEST, Digest.of(b"absent"), 6))
        for info in (missing_blob, missing_manifest):
            shown += [str(info.value), repr(info.value)]
        for secret in self.secrets():
            assert secret
            for text in shown:
                assert secret not in text


# -- object-store peers: a fresh bucket or container, and what a failed upload may leave ----------

S3_REGION = "us-east-1"
S3_KEY_ID = "contract-key-id"


def check_object_layout(sink: Sink, prefix: str, list_keys: Callable[[str], list[str]]) -> None:
    """An object-store sink puts blobs, variant records and image records under ``prefix`` with the
    documented names, and nothing else; ``list_keys(prefix)`` lists the store directly."""
    rec = transcode_into(sink, gz(make_tar(30)), 3)
    root = push_image(sink, 31)
    sink.put_image(ImageRecord("team/app:1.0", root, created=1234.5))
    keys, p = sorted(list_keys(prefix)), prefix
    assert f"{p}blobs/sha256/{rec.target.digest.hex}" in keys
    assert f"{p}blobs/sha256/{root.digest.hex}" in keys
    assert f"{p}variants/{rec.source.digest.hex}/{ZstdParams(3).key}/{rec.target.digest.hex}.json" in keys
    (image_key,) = [k for k in keys if k.startswith(f"{p}images/")]
    assert image_key.startswith(f"{p}images/team%2Fapp%3A1%2E0/0000000001234.500000-")
    assert all(k.startswith((f"{p}blobs/", f"{p}variants/", f"{p}images/")) for k in keys)


def s3_client(endpoint_url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=S3_REGION, aws_access_key_id=S3_KEY_ID,
                        aws_secret_access_key="unused", config=Config(s3={"addressing_style": "path"}))


def new_bucket(endpoint_url: str) -> str:
    name = f"tc-{secrets.token_hex(6)}"
    s3_client(endpoint_url).create_bucket(Bucket=name)
    return name


def s3_leftovers(endpoint_url: str, bucket: str, prefix: str) -> list[str]:
    """Open multipart uploads and ingest objects under ``prefix``."""
    client = s3_client(endpoint_url)
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    staged = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}ingest/").get("Contents", [])
    return [f"upload {u['Key']}" for u in uploads] + [o["Key"] for o in staged]


def azure_container(connection_string: str, name: str | None = None) -> Any:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(connection_string)
    return service.get_container_client(name or f"tc-{secrets.token_hex(6)}")


def new_container(connection_string: str) -> str:
    container = azure_container(connection_string)
    container.create_container()
    return str(container.container_name)


def azure_leftovers(connection_string: str, container: str, prefix: str) -> list[str]:
    """Ingest blobs under ``prefix``, committed or holding uncommitted blocks."""
    client = azure_container(connection_string, container)
    return [b.name for b in client.list_blobs(name_starts_with=f"{prefix}ingest/", include=["uncommittedblobs"])]


def run_children(spec: str, jobs: list[dict[str, Any]], timeout: float = 300.0) -> list[dict[str, Any]]:
    """Run one child process per job at once; their JSON results, in job order."""
    procs = [subprocess.Popen([sys.executable, "-m", "tests.sink_contract", spec, json.dumps(job)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for job in jobs]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _child(spec: str, job: dict[str, Any]) -> dict[str, Any]:
    """Write one shared blob, one own blob, one own image and the shared image name."""
    sink = open_sink(spec)
    try:
        i = int(job["index"])
        write_blob(sink, randbytes(int(job["shared_seed"]), int(job["size"])))
        write_blob(sink, randbytes(1000 + i, int(job["size"]) // 2))
        root = push_image(sink, 200 + i)
        sink.put_image(ImageRecord(f"proc-{i}", root, created=50.0 + i))
        sink.put_image(ImageRecord("shared", root, created=500.0 + i))
        return {"root": str(root.digest)}
    finally:
        sink.close()


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], json.loads(sys.argv[2]))))
