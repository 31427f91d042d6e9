"""Bad answers and broken connections between the client and a real registry:
each fault is injected (httpx transport injection, or a TCP proxy that cuts a
request short) while everything else is the real registry."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.imagegen import make_tar, write_layout
from tests.registry_support import BreakingStream, ChunkStream, CutProxy, FaultTransport, replaced, repo_name
from transcoder.descriptor import MAX_MANIFEST_BYTES, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor
from transcoder.digest import Digest
from transcoder.errors import DigestMismatch, ManifestError, SinkError, TransientError
from transcoder.images.convert import ConvertOptions, convert_image
from transcoder.images.source import open_source
from transcoder.records import ImageRecord
from transcoder.registry.source import RegistrySource
from transcoder.registry.upload import CHUNK
from transcoder.sinks.base import put_bytes
from transcoder.sinks.registry import RegistrySink

pytestmark = pytest.mark.peers
Send = Callable[[httpx.Request], httpx.Response]
TARS = [make_tar(i, size=200_000, files=8) for i in (31, 32)]


@pytest.fixture
def pushed(registry: Any) -> tuple[str, Descriptor, list[Descriptor]]:
    """An image in a fresh repository: (repo, manifest descriptor, layer descriptors)."""
    repo = repo_name()
    sink = RegistrySink(registry.host, repo)
    layers = [put_bytes(sink, gzip.compress(t, mtime=0), OCI_LAYER_GZIP) for t in TARS]
    config = put_bytes(sink, json.dumps({"rootfs": {"type": "layers", "diff_ids": [
        str(Digest.of(t)) for t in TARS]}, "architecture": "amd64", "os": "linux"}).encode(), OCI_CONFIG)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(),
                           "layers": [d.to_json() for d in layers]}).encode()
    desc = sink.put_manifest(manifest, OCI_MANIFEST)
    sink.put_image(ImageRecord("v1", desc))
    sink.close()
    return repo, desc, layers


def source(registry: Any, repo: str, hook: Any, tag: str = "v1") -> tuple[RegistrySource, FaultTransport]:
    transport = FaultTransport(hook)
    return RegistrySource.from_ref(f"{registry.host}/{repo}:{tag}", transport=transport), transport


# -- content that is not what was asked for ------------------------------------------------


def test_manifest_whose_digest_does_not_match(registry: Any, pushed: Any) -> None:
    repo, desc, _ = pushed

    def tamper(request: httpx.Request, send: Send) -> httpx.Response:
        response = send(request)
        if "/manifests/" in request.url.path and request.method == "GET":
            body = response.read() + b"\n"  # still the same JSON, another digest
            return replaced(response, body)
        return response

    src, _ = source(registry, repo, tamper)
    with pytest.raises(DigestMismatch) as by_tag:  # the registry's Docker-Content-Digest claim
        src.resolve()
    with pytest.raises(DigestMismatch) as by_digest:
        src.get_manifest(desc)
    for err in (by_tag, by_digest):
        assert repo in str(err.value) and "manifest" in str(err.value)
    assert str(desc.digest) in str(by_digest.value)
    src.close()


def test_blob_whose_digest_does_not_match_never_reaches_the_sink(registry: Any, pushed: Any) -> None:
    repo, _desc, layers = pushed

    def tamper(request: httpx.Request, send: Send) -> httpx.Response:
        response = send(request)
        if request.method == "GET" and request.url.path.endswith(str(layers[1].digest)):
            body = bytearray(response.read())
            body[4:8] = b"\x01\x02\x03\x04"  # gzip MTIME: still valid gzip, same size, other digest
            return replaced(response, bytes(body))
        return response

    src, _ = source(registry, repo, tamper)
    out_repo = repo_name()
    sink = RegistrySink(registry.host, out_repo, tag="v1")
    with pytest.raises(DigestMismatch, match=str(layers[1].digest)):
        convert_image(src, sink, ConvertOptions(tag="v1", jobs=1))
    assert sink.client.list_tags(out_repo) == []  # no image, no variant record
    assert sink.stat_blob(layers[1].digest) is None
    sink.close()
    src.close()


def test_manifest_over_4_mib_is_refused(registry: Any, pushed: Any) -> None:
    repo, desc, _ = pushed
    huge = b"{" + b" " * MAX_MANIFEST_BYTES + b"}"

    def inflate(request: httpx.Request, send: Send) -> httpx.Response:
        response = send(request)
        if "/manifests/" in request.url.path:
            return replaced(response, huge)
        return response

    src, _ = source(registry, repo, inflate)
    with pytest.raises(ManifestError, match="over the 4194304 byte limit"):
        src.resolve()
    src.close()

    def stream_it(request: httpx.Request, send: Send) -> httpx.Response:  # no Content-Length: caught while reading
        response = send(request)
        if "/manifests/" in request.url.path:
            response.read()
            return httpx.Response(200, headers={"Content-Type": OCI_MANIFEST},
                                  stream=ChunkStream(huge))
        return response

    src, _ = source(registry, repo, stream_it)
    with pytest.raises(ManifestError, match="over the 4194304 byte limit"):
        src.get_manifest(desc)
    src.close()
    sink = RegistrySink(registry.host, repo)
    before = sink.client.requests
    with pytest.raises(ManifestError, match="over the"):
        sink.put_manifest(huge, OCI_MANIFEST)
    assert sink.client.requests == before  # refused before sending
    sink.close()


# -- transient failures --------------------------------------------------------------------


def test_5xx_and_refused_connections_are_retried(registry: Any, pushed: Any) -> None:
    repo, desc, layers = pushed
    faults = {"manifest": 2, "blob": 1}

    def flaky(request: httpx.Request, send: Send) -> httpx.Response:
        if "/manifests/" in request.url.path and faults["manifest"]:
            faults["manifest"] -= 1
            return httpx.Response(503, headers={"Retry-After": "0"}, content=b'{"errors":[{"code":"UNAVAILABLE"}]}')
        if "/blobs/sha256" in request.url.path and faults["blob"]:
            faults["blob"] -= 1
            raise httpx.ConnectError("connection refused (injected)")
        return send(request)

    src, _transport = source(registry, repo, flaky)
    assert src.resolve()[0] == desc
    with src.open_blob(layers[0]) as f:
        assert Digest.of(f.read()) == layers[0].digest
    assert faults == {"manifest": 0, "blob": 0}
    src.close()


def test_the_retry_library_loads_only_for_a_retry(registry: Any, pushed: Any) -> None:
    """Requests that succeed at once never import tenacity (its imports were
    5 ms of every run's start-up); the first failure brings it in."""
    repo, _, _ = pushed
    code = ("import sys; from transcoder.registry.client import RegistryClient; "
            f"c = RegistryClient({registry.host!r}); c.list_tags({repo!r}); "
            "print('tenacity' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]


def test_persistent_5xx_gives_up_with_a_transient_error(registry: Any, pushed: Any) -> None:
    repo, _, _ = pushed

    def down(request: httpx.Request, send: Send) -> httpx.Response:
        if "/manifests/" in request.url.path:
            return httpx.Response(502, headers={"Retry-After": "0"})
        return send(request)

    src, transport = source(registry, repo, down)
    with pytest.raises(TransientError, match="HTTP 502") as err:
        src.resolve()
    assert repo in str(err.value)
    assert transport.methods("/manifests/").count("GET") == src.client.attempts
    src.close()


def test_a_plain_http_blob_body_is_read_from_the_connection_itself(registry: Any, pushed: Any) -> None:
    """Under heads_apart, reads stop at the end of the answer's head, so h11
    holds no body bytes and the body is read from the socket itself, without
    h11's copies; the connection is then closed, and the next request opens
    another. Without heads_apart, the body stays httpx's."""
    from transcoder.httpclient import direct_body, heads_apart, new_client

    repo, _, layers = pushed
    url = f"http://{registry.host}/v2/{repo}/blobs/{layers[0].digest}"
    with new_client(verify=False) as client:
        with heads_apart():
            resp = client.send(client.build_request("GET", url), stream=True)
        body = direct_body(resp)
        assert body is not None
        assert Digest.of(b"".join(body)) == layers[0].digest
        resp.close()
        resp = client.send(client.build_request("GET", url), stream=True)
        assert direct_body(resp) is None
        assert Digest.of(resp.read()) == layers[0].digest
        resp.close()
    src = RegistrySource.from_ref(f"{registry.host}/{repo}:v1")
    with src.open_blob(layers[1]) as f:
        assert f._chunks.gi_code.co_name == "_body_chunks"  # type: ignore[attr-defined]
        assert Digest.of(f.read()) == layers[1].digest
    src.close()


def test_a_plain_http_download_cut_midway_resumes_with_range(registry: Any, pushed: Any) -> None:
    """A connection that drops in the middle of a body read from the socket
    itself: the reader asks again from the byte where it stopped."""
    repo, _, layers = pushed
    blob = layers[0]
    proxy = CutProxy(registry.host, marker=f"GET /v2/{repo}/blobs/{blob.digest}".encode(), after=blob.size // 2,
                     answer=True)
    src = RegistrySource.from_ref(f"{proxy.host}/{repo}:v1")
    with src.open_blob(blob) as f:
        assert Digest.of(f.read()) == blob.digest
    assert proxy.cut_done == 1
    src.close()
    proxy.close()


def test_a_download_reset_midway_resumes_with_range(registry: Any, pushed: Any) -> None:
    repo, _, layers = pushed
    broken = []

    def reset_once(request: httpx.Request, send: Send) -> httpx.Response:
        response = send(request)
        if request.url.path.endswith(str(layers[0].digest)) and request.method == "GET" and not broken:
            broken.append(True)
            return httpx.Response(response.status_code, headers=response.headers,
                                  stream=BreakingStream(response, layers[0].size // 2))
        return response

    src, transport = source(registry, repo, reset_once)
    with src.open_blob(layers[0]) as f:
        data = f.read()
    assert Digest.of(data) == layers[0].digest
    ranges = [h.get("range") for m, p, h in transport.log if p.endswith(str(layers[0].digest))]
    assert ranges == [None, f"bytes={layers[0].size // 2}-"]
    src.close()


# -- uploads that break ---------------------------------------------------------------------


def _write(sink: RegistrySink, data: bytes) -> Digest:
    digest = Digest.of(data)
    with sink.blob_writer("application/octet-stream") as w:
        for i in range(0, len(data), 1 << 20):
            w.write(data[i : i + (1 << 20)])
        w.commit(len(data), digest)
    return digest


def test_connection_cut_before_the_body_got_through_is_resumed(registry: Any) -> None:
    proxy = CutProxy(registry.host, marker=b"PATCH ", after=40)  # cut inside the request line
    sink = RegistrySink(proxy.host, repo_name())
    data = os.urandom(3 * CHUNK)
    digest = _write(sink, data)
    assert proxy.cut_done == 1
    with sink.open_blob(digest) as f:
        assert f.read() == data
    sink.close()
    proxy.close()


def test_connection_cut_midway_through_a_chunk_fails_cleanly(registry: Any, tmp_path: Path) -> None:
    """distribution cancels a session whose PATCH broke off part-way (its
    offset no longer matches the upload's state), so the writer cannot resume:
    it must fail, publish nothing, and let a second attempt succeed."""
    proxy = CutProxy(registry.host, marker=b"PATCH ", after=CHUNK // 2)
    repo = repo_name()
    sink = RegistrySink(proxy.host, repo, tag="v1")
    data = os.urandom(3 * CHUNK)
    with pytest.raises(TransientError, match=r"broke off.*nothing was published"):
        _write(sink, data)
    assert sink.stat_blob(Digest.of(data)) is None
    assert _write(sink, data) == Digest.of(data)  # the retry succeeds
    sink.close()
    proxy.close()


def test_a_push_cut_midway_leaves_no_image(registry: Any, tmp_path: Path) -> None:
    big = [os.urandom(3 * CHUNK)]  # incompressible: the zstd output is chunked too
    layout = write_layout(tmp_path / "src", {"app": [_tar_of(big[0])]})
    proxy = CutProxy(registry.host, marker=b"PATCH ", after=CHUNK // 2, cuts=10)
    repo = repo_name()
    sink = RegistrySink(proxy.host, repo, tag="v1")
    with pytest.raises(TransientError):
        convert_image(open_source(f"oci:{layout}:app"), sink, ConvertOptions(tag="v1"))
    direct = RegistrySink(registry.host, repo)
    assert direct.client.list_tags(repo) == []  # no image tag, no variant record
    sink.close()
    direct.close()
    proxy.close()


def _tar_of(data: bytes) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("random.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_lost_commit_answer_is_checked_with_head(registry: Any) -> None:
    lost = []

    def lose_answer(request: httpx.Request, send: Send) -> httpx.Response:
        response = send(request)
        if request.method == "PUT" and "digest=" in str(request.url) and not lost:
            lost.append(response.status_code)
            response.close()
            raise httpx.ReadError("connection reset after the request was sent (injected)")
        return response

    transport = FaultTransport(lose_answer)
    sink = RegistrySink(registry.host, repo_name(), transport=transport)
    data = os.urandom(CHUNK + 10)
    digest = _write(sink, data)
    assert lost == [201]
    assert sink.stat_blob(digest) == len(data)
    assert transport.methods().count("PUT") == 1  # not sent again: the HEAD found it
    sink.close()


def test_patch_refused_by_5xx_then_accepted(registry: Any) -> None:
    refused = []

    def refuse_once(request: httpx.Request, send: Send) -> httpx.Response:
        if request.method == "PATCH" and not refused:
            refused.append(True)
            return httpx.Response(503, headers={"Retry-After": "0"})
        return send(request)

    sink = RegistrySink(registry.host, repo_name(), transport=FaultTransport(refuse_once))
    data = os.urandom(2 * CHUNK + 1)
    digest = _write(sink, data)
    with sink.open_blob(digest) as f:
        assert f.read() == data
    sink.close()


def test_upload_errors_name_the_sink_not_secrets(registry: Any) -> None:
    def deny(request: httpx.Request, send: Send) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(400, content=b'{"errors":[{"code":"NAME_INVALID","message":"bad name"}]}')
        return send(request)

    sink = RegistrySink(registry.host, repo_name(), transport=FaultTransport(deny))
    with pytest.raises(SinkError) as err:
        put_bytes(sink, b"x", OCI_CONFIG)
    assert "NAME_INVALID" in str(err.value) and sink.repository in str(err.value)
    sink.close()
