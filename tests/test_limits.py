"""Resource bounds: bombs, huge documents and large layers are stopped or
streamed with bounded memory, and say which bound was hit."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import socket
import subprocess
import sys
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.imagegen import make_tar, write_layout
from tests.trickleproxy import TrickleProxy

MiB = 1 << 20
# VmHWM (peak RSS of this address space), not ru_maxrss: Linux carries
# ru_maxrss across exec, so a child of a big test process would inherit it.
RSS_PROBE = (
    "import re, sys\n"
    "from transcoder.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
    "print('maxrss', hwm, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def run_measured(*args: str) -> tuple[int, int, str]:
    """Run the CLI in a child; return (exit code, peak RSS in KiB, stderr)."""
    r = subprocess.run([sys.executable, "-c", RSS_PROBE, *args], capture_output=True, text=True, timeout=600)
    rss = next(int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("maxrss"))
    return r.returncode, rss, r.stderr


@pytest.fixture(scope="module")
def zeros_gz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 2 MiB gzip that decodes to 512 MiB: a layer or a bomb, depending on the bound."""
    path = tmp_path_factory.mktemp("zeros") / "zeros.gz"
    block = b"\0" * (8 * MiB)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as comp:
        for _ in range(64):
            comp.write(block)
    return path


def test_memory_does_not_grow_with_layer_size(zeros_gz: Path, tmp_path: Path) -> None:
    rc, rss_kib, err = run_measured("convert", str(zeros_gz), "-o", str(tmp_path / "z.zst"), "--no-table")
    assert rc == 0, err
    # 512 MiB decoded through a pipeline bounded by queue depth x chunk plus libzstd jobs.
    assert rss_kib < 200 * 1024, f"peak RSS {rss_kib} KiB for a 512 MiB layer"


def test_bomb_stopped_by_max_size_with_bounded_memory(zeros_gz: Path, tmp_path: Path) -> None:
    rc, rss_kib, err = run_measured("convert", str(zeros_gz), "-o", str(tmp_path / "z.zst"), "--max-size", "64MiB")
    assert rc == 1 and "exceeds --max-size 67108864" in err and str(zeros_gz) in err
    assert not (tmp_path / "z.zst").exists()
    assert rss_kib < 200 * 1024


def test_image_layer_bomb_stopped(zeros_gz: Path, tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "src", {"app": [make_tar(1, 100_000, 3)]})
    manifest_entry = json.loads((layout / "index.json").read_text())["manifests"][0]
    mpath = layout / "blobs" / "sha256" / manifest_entry["digest"].split(":")[1]
    manifest = json.loads(mpath.read_text())
    bomb = zeros_gz.read_bytes()
    digest = hashlib.sha256(bomb).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(bomb)
    manifest["layers"][0].update(digest=f"sha256:{digest}", size=len(bomb))
    data = json.dumps(manifest).encode()
    mdigest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / mdigest).write_bytes(data)
    manifest_entry.update(digest=f"sha256:{mdigest}", size=len(data))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_entry]}))
    rc, _, err = run_measured("convert", f"oci:{layout}:app", "--to", f"type=local,dest={tmp_path / 'out'}",
                              "--max-size", "32MiB")
    assert rc == 1 and "exceeds --max-size" in err and digest[:12] in err


def _big_json(size: int) -> bytes:
    return json.dumps({"schemaVersion": 2, "manifests": [], "annotations": {"pad": "x" * size}}).encode()


def test_huge_manifest_refused(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "src", {"app": [make_tar(2, 50_000, 2)]})
    data = _big_json(5 * MiB)
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{digest}", "size": len(data),
        "annotations": {"org.opencontainers.image.ref.name": "app"}}]}))
    rc, rss_kib, err = run_measured("convert", f"oci:{layout}:app", "--to", f"type=local,dest={tmp_path / 'out'}")
    assert rc == 1 and "over the 4194304 byte limit" in err and digest[:12] in err
    assert rss_kib < 200 * 1024  # refused before reading it whole


def test_huge_index_json_refused(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "src", {"app": [make_tar(3, 50_000, 2)]})
    (layout / "index.json").write_bytes(_big_json(5 * MiB))
    rc, _, err = run_measured("convert", f"oci:{layout}:app", "--to", f"type=local,dest={tmp_path / 'out'}")
    assert rc == 1 and "index.json: over the 4194304 byte limit" in err


def test_huge_docker_archive_manifest_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.tar"
    data = b"[" + b" " * (5 * MiB) + b"]"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    rc, _, err = run_measured("convert", f"docker-archive:{path}", "--to", f"type=local,dest={tmp_path / 'out'}")
    assert rc == 1 and "manifest.json is over the 4194304 byte limit" in err


class _Hostile(threading.Thread):
    """A tiny registry that answers /v2/ and then misbehaves on manifests:
    an endless chunked body, or one byte every half second (slow-loris)."""

    def __init__(self, mode: str) -> None:
        super().__init__(daemon=True)
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            request = conn.recv(65536).decode("latin-1")
            if " /v2/ " in request:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDocker-Distribution-Api-Version: registry/2.0\r\n"
                             b"Connection: close\r\n\r\n{}")
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            while not self.stop.is_set():
                if self.mode == "endless":
                    conn.sendall(b"10000\r\n" + b" " * 0x10000 + b"\r\n")
                else:
                    conn.sendall(b"1\r\n \r\n")
                    time.sleep(0.5)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize("mode", ["endless", "slow-loris"])
def test_endless_and_trickling_manifests_are_stopped(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from transcoder.errors import TranscoderError
    from transcoder.registry.client import RegistryClient

    server = _Hostile(mode)
    server.start()
    monkeypatch.setattr(RegistryClient, "read_deadline", 3.0)
    client = RegistryClient(f"127.0.0.1:{server.port}")
    started = time.monotonic()
    try:
        with pytest.raises(TranscoderError) as info:
            client.get_manifest("hostile/app", "latest")
    finally:
        server.close()
    message = str(info.value)
    assert "\n" not in message and f"127.0.0.1:{server.port}" in message
    assert ("over the 4194304 byte limit" in message) if mode == "endless" else ("too slow" in message)
    assert time.monotonic() - started < 30


# --- slow-loris in front of every client's real peer: whole-response deadlines ---------------------------------

TRICKLE = 0.5  # seconds between bytes
BOUND = 2.0  # the deadline the clients are given here


def _stopped_in_time(call: Callable[[], object], *names: str, peak_limit: int = 8 * MiB) -> tuple[float, int]:
    """``call`` must fail with one line naming ``names`` and the cause, soon after BOUND;
    returns (seconds taken, peak bytes allocated by Python meanwhile)."""
    from transcoder.errors import TranscoderError

    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(TranscoderError) as info:
            call()
    finally:
        took = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message and "over the deadline" in message and "too slow" in message, message
    assert all(name in message for name in names), message
    assert BOUND <= took < BOUND + 3 * TRICKLE + 1.0, f"{took:.1f} s: {message}"
    assert peak < peak_limit, f"peak {peak} bytes"  # by default: a 4 MiB document limit and a 1 MiB read buffer
    print(f"\nslow-loris stopped after {took:.2f} s, peak Python memory {peak / 1024:.0f} KiB: {message}")
    return took, peak


@pytest.fixture
def gha_emulator() -> Iterator[Any]:
    from transcoder.gha.emulator import Emulator

    with Emulator(visibility_delay=0) as emu:
        yield emu


def _gha_client(emu: Any, protocol: int, base: str | None = None, **deadlines: float) -> Any:
    from transcoder.gha import config_from, open_client
    from transcoder.gha.retry import Deadlines, RetryPolicy, UploadRateLimiter

    env = emu.env(v2=protocol == 2)
    if base is not None:
        env = {k: v.replace(emu.results_url.rstrip("/"), base) if k.endswith("_URL") else v for k, v in env.items()}
    policy = RetryPolicy(30.0, initial=0.05, max_wait=0.5, deadlines=Deadlines(**deadlines))
    return open_client(config_from({"timeout": "30"}, env), policy=policy, limiter=UploadRateLimiter(10_000))


def _gha_save(client: Any, key: str, data: bytes) -> None:
    upload = client.reserve(key, "v-limits")
    upload.write(data)
    upload.finish(len(data))


@pytest.mark.parametrize("protocol", [2, 1], ids=["twirp", "rest"])
def test_gha_trickling_answer_is_stopped(protocol: int, gha_emulator: Any) -> None:
    direct = _gha_client(gha_emulator, protocol)
    _gha_save(direct, "slow-answer", b"x" * 1000)
    assert direct.wait_visible("slow-answer", "v-limits")
    match = b"GetCacheEntryDownloadURL" if protocol == 2 else b"/_apis/artifactcache/cache?"
    with TrickleProxy(gha_emulator.results_url, match=match, interval=TRICKLE) as proxy:
        client = _gha_client(gha_emulator, protocol, proxy.url, answer=BOUND)
        try:
            _stopped_in_time(lambda: client.lookup("slow-answer", "v-limits"), "lookup slow-answer")
        finally:
            client.close()
    assert proxy.trickled


@pytest.mark.parametrize("protocol", [2, 1], ids=["twirp", "rest"])
def test_gha_trickling_headers_are_stopped(protocol: int, gha_emulator: Any) -> None:
    """The status line and headers a byte at a time: httpx's per-read timeout never fires, the deadline does."""
    direct = _gha_client(gha_emulator, protocol)
    _gha_save(direct, "slow-headers", b"x" * 1000)
    assert direct.wait_visible("slow-headers", "v-limits")
    direct.close()
    match = b"GetCacheEntryDownloadURL" if protocol == 2 else b"/_apis/artifactcache/cache?"
    with TrickleProxy(gha_emulator.results_url, match=match, interval=TRICKLE, headers=True) as proxy:
        client = _gha_client(gha_emulator, protocol, proxy.url, answer=BOUND)
        try:
            _stopped_in_time(lambda: client.lookup("slow-headers", "v-limits"), "lookup slow-headers", "answer")
        finally:
            client.close()
    assert proxy.trickled and proxy.trickled_bytes < 12  # still in the status line


@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_gha_trickling_download_is_stopped(headers: bool, gha_emulator: Any) -> None:
    from transcoder.gha import Secret

    direct = _gha_client(gha_emulator, 2)
    _gha_save(direct, "slow-blob", bytes(range(256)) * 1024)
    entry = direct.lookup("slow-blob", "v-limits", exact=True)
    netloc = urlsplit(entry.url.reveal()).netloc
    with TrickleProxy(f"http://{netloc}", match=urlsplit(entry.url.reveal()).path.encode(), interval=TRICKLE,
                      headers=headers) as proxy:
        client = _gha_client(gha_emulator, 2, allowance=BOUND, min_rate=64 << 10)
        slow = type(entry)(entry.key, entry.version, Secret(entry.url.reveal().replace(netloc, proxy.url[7:])))
        try:
            _stopped_in_time(lambda: client.open(slow, 0, 256 * 1024).read(), "cache entry slow-blob")
        finally:
            client.close()


def test_gha_slow_but_healthy_download_passes(gha_emulator: Any) -> None:
    """The download deadline grows with the bytes received: 8 MiB at about 3 MiB/s take
    longer than the allowance and still pass; a fixed total would have failed them."""
    from tests.faultproxy import Fault, FaultProxy
    from transcoder.gha import Secret

    data = hashlib.sha256(b"seed").digest() * (8 * MiB // 32)
    direct = _gha_client(gha_emulator, 2)
    _gha_save(direct, "slow-healthy", data)
    entry = direct.lookup("slow-healthy", "v-limits", exact=True)
    netloc = urlsplit(entry.url.reveal()).netloc
    with FaultProxy(f"http://{netloc}") as proxy:
        proxy.schedule(Fault.delay(0.02, direction="down"), connections=None)
        client = _gha_client(gha_emulator, 2, allowance=1.0, min_rate=1 * MiB)
        slow = type(entry)(entry.key, entry.version, Secret(entry.url.reveal().replace(netloc, proxy.url[7:].rstrip("/"))))
        started = time.monotonic()
        try:
            with client.open(slow, 0, len(data)) as f:
                assert f.read() == data
        finally:
            client.close()
    took = time.monotonic() - started
    print(f"\n8 MiB through a slowed link in {took:.1f} s with a 1 s allowance plus 1 s per MiB")
    assert took > 1.0


def _object_sink_reads(spec_for: Callable[[str], str], upstream: str, prefix: str, what: str, headers: bool) -> None:
    """Through a slow-loris (trickling the body, or from the status line on), a record and a
    manifest read from the sink each fail in time."""
    from transcoder.codecs import ZstdParams
    from transcoder.descriptor import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor
    from transcoder.digest import Digest
    from transcoder.records import VariantRecord
    from transcoder.sinks import open_sink

    direct = open_sink(spec_for(upstream))
    try:
        manifest = direct.put_manifest(b'{"schemaVersion":2,"layers":[]}' + b" " * 50_000,
                                       "application/vnd.oci.image.manifest.v1+json")
        source = Descriptor(OCI_LAYER_GZIP, Digest.of(prefix.encode()), 10)
        target = Descriptor(OCI_LAYER_ZSTD, Digest.of(b"target"), 6)
        direct.put_variant(VariantRecord(source, Digest.of(b"tar"), target, ZstdParams(3)))
    finally:
        direct.close()
    reads: list[tuple[bytes, Callable[[Any], object], str]] = [
        (f"{prefix}/blobs/sha256/{manifest.digest.hex}".encode(), lambda s: s.get_manifest(manifest),
         f"manifest {manifest.digest}"),
        (f"{prefix}/variants/".encode(), lambda s: s.find_variants(source.digest), f"record {prefix}/variants/"),
    ]
    for match, read, named in reads:
        with TrickleProxy(upstream, match=match, interval=TRICKLE, headers=headers) as proxy:
            sink = open_sink(spec_for(proxy.url))
            sink.read_deadline = BOUND  # type: ignore[attr-defined]
            try:
                _stopped_in_time(lambda: read(sink), named, what)  # noqa: B023
            finally:
                sink.close()
        assert proxy.trickled


@pytest.mark.peers
@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_s3_trickling_reads_are_stopped(headers: bool, moto_s3: Any) -> None:
    from tests.sink_contract import S3_KEY_ID, S3_REGION, new_bucket

    bucket = new_bucket(moto_s3.endpoint_url)
    _object_sink_reads(lambda url: (f"type=s3,bucket={bucket},region={S3_REGION},endpoint_url={url},prefix=slow,"
                                    f"access_key_id={S3_KEY_ID},secret_access_key=slow-test"),
                       moto_s3.endpoint_url, "slow", f"s3:{bucket}/slow", headers)


@pytest.mark.peers
@pytest.mark.parametrize("headers", [False, True], ids=["body", "headers"])
def test_azblob_trickling_reads_are_stopped(headers: bool, azurite: Any) -> None:
    from tests.sink_contract import new_container

    container = new_container(azurite.connection_string)
    upstream = "http://" + urlsplit(azurite.blob_endpoint).netloc
    _object_sink_reads(lambda url: (f"type=azblob,account_url={url}/{azurite.account},name={container},prefix=slow,"
                                    f"account_key={azurite.key}"), upstream, "slow", f"/{container}/slow", headers)


# --- trickled headers in front of the registry; trickled and slowed blob reads from object stores ------------

INDEX = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'


@pytest.mark.peers
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_registry_trickling_headers_are_stopped(method: str, registry: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from transcoder.descriptor import OCI_INDEX
    from transcoder.registry.client import RegistryClient

    direct = RegistryClient(registry.host)
    try:
        direct.put_manifest("limits/slow", "v1", INDEX, OCI_INDEX)
    finally:
        direct.close()
    monkeypatch.setattr(RegistryClient, "read_deadline", BOUND)
    with TrickleProxy(registry.url, match=f"{method} /v2/limits/slow/manifests/".encode(), interval=TRICKLE,
                      headers=True) as proxy:
        client = RegistryClient(f"127.0.0.1:{proxy.port}")
        read = client.get_manifest if method == "GET" else client.head_manifest
        try:
            _stopped_in_time(lambda: read("limits/slow", "v1"), f"registry 127.0.0.1:{proxy.port}", "limits/slow",
                             "manifest v1")
        finally:
            client.close()
    assert proxy.trickled


@pytest.mark.peers
def test_registry_trickling_blob_read_is_stopped(registry: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer download from a registry that trickles its body fails in time with one clear line;
    the same blob read directly passes."""
    from transcoder.digest import Digest
    from transcoder.registry import stream
    from transcoder.registry.client import RegistryClient
    from transcoder.registry.upload import push_blob

    data = hashlib.sha256(b"registry-blob").digest() * (4 * MiB // 32)
    digest = Digest.of(data)
    direct = RegistryClient(registry.host)
    try:
        push_blob(direct, "limits/blob", data, digest)
        assert _drain(direct.open_blob("limits/blob", digest)) == digest.hex
    finally:
        direct.close()
    monkeypatch.setattr(stream, "DOWNLOAD_ALLOWANCE", BOUND)
    with TrickleProxy(registry.url, match=f"GET /v2/limits/blob/blobs/{digest}".encode(), interval=TRICKLE) as proxy:
        client = RegistryClient(f"127.0.0.1:{proxy.port}")
        try:
            _stopped_in_time(lambda: _drain(client.open_blob("limits/blob", digest)),
                             f"registry 127.0.0.1:{proxy.port}", "limits/blob", f"blob {digest}")
        finally:
            client.close()
    assert proxy.trickled


def _drain(f: Any) -> str:
    """Read a blob in 1 MiB pieces, as the pipeline does; its sha256."""
    digest = hashlib.sha256()
    with f:
        while piece := f.read(MiB):
            digest.update(piece)
    return digest.hexdigest()


def _object_blob_reads(spec_for: Callable[[str], str], upstream: str, where: str, peak_limit: int) -> None:
    """A blob read through a slow-loris fails in time; through a slowed link (about 3 MiB/s) it passes,
    taking longer than the allowance: the deadline grows with the bytes received."""
    from tests.faultproxy import Fault, FaultProxy
    from tests.sink_contract import write_blob
    from transcoder.digest import Digest
    from transcoder.sinks import open_sink

    data = hashlib.sha256(where.encode()).digest() * (8 * MiB // 32)
    direct = open_sink(spec_for(upstream))
    try:
        digest = write_blob(direct, data, chunk=MiB, hint=str(Digest.of(data)))
    finally:
        direct.close()
    with TrickleProxy(upstream, match=f"blobs/sha256/{digest.hex}".encode(), interval=TRICKLE) as proxy:
        sink = open_sink(spec_for(proxy.url))
        sink.download_allowance, sink.download_min_rate = BOUND, 64 << 10  # type: ignore[attr-defined]
        try:
            _stopped_in_time(lambda: _drain(sink.open_blob(digest)), f"blob {digest}", where, peak_limit=peak_limit)
        finally:
            sink.close()
    assert proxy.trickled
    with FaultProxy(upstream) as slow:
        slow.schedule(Fault.delay(0.02, direction="down"), connections=None)
        sink = open_sink(spec_for(slow.url.rstrip("/")))
        sink.download_allowance, sink.download_min_rate = 2.0, MiB  # type: ignore[attr-defined]
        tracemalloc.start()
        started = time.monotonic()
        try:
            assert _drain(sink.open_blob(digest)) == digest.hex
        finally:
            took = time.monotonic() - started
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            sink.close()
    print(f"\n{where}: 8 MiB through a slowed link in {took:.1f} s (2 s allowance plus 1 s per MiB), "
          f"peak Python memory {peak / MiB:.1f} MiB")
    assert took > 2.0, "the link was not slow enough to show the deadline growing"
    assert peak < peak_limit, f"peak {peak} bytes"


@pytest.mark.peers
def test_s3_blob_reads_trickling_stopped_slow_passes(moto_s3: Any) -> None:
    from tests.sink_contract import S3_KEY_ID, S3_REGION, new_bucket

    bucket = new_bucket(moto_s3.endpoint_url)
    _object_blob_reads(lambda url: (f"type=s3,bucket={bucket},region={S3_REGION},endpoint_url={url},prefix=big,"
                                    f"access_key_id={S3_KEY_ID},secret_access_key=slow-test"),
                       moto_s3.endpoint_url, f"s3:{bucket}/big", 8 * MiB)


@pytest.mark.peers
def test_azblob_blob_reads_trickling_stopped_slow_passes(azurite: Any) -> None:
    from tests.sink_contract import new_container

    container = new_container(azurite.connection_string)
    upstream = "http://" + urlsplit(azurite.blob_endpoint).netloc
    _object_blob_reads(lambda url: (f"type=azblob,account_url={url}/{azurite.account},name={container},prefix=big,"
                                    f"account_key={azurite.key}"), upstream, f"/{container}/big",
                       # The SDK reads a 4 MiB chunk with list() of a stream whose len() is its byte count:
                       # a list presized to one pointer per byte (32 MiB, allocated but never written).
                       56 * MiB)


def test_project_http_clients_come_from_one_factory() -> None:
    """Every httpx client is made by transcoder.httpclient, so every read honours deadline scopes."""
    import re

    import transcoder

    root = Path(transcoder.__file__).parent
    made = [p.relative_to(root) for p in root.rglob("*.py")
            if re.search(r"(?<!`)httpx\.Client\(", p.read_text()) and p.name != "httpclient.py"]
    assert made == []


def test_factory_bounds_reads_with_and_without_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from transcoder.httpclient import DeadlineBackend, new_client

    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    client = new_client(nodelay=True)
    try:
        transports = [client._transport, *(t for t in client._mounts.values() if t is not None)]
        assert len(transports) >= 2
        assert all(isinstance(t._pool._network_backend, DeadlineBackend) for t in transports)  # type: ignore[attr-defined]
    finally:
        client.close()


def test_factory_clients_read_up_to_read_size_per_socket_read() -> None:
    """A big body arrives in reads of up to READ_SIZE, not httpcore's 64 KiB (16x fewer passes per MiB
    through h11, httpx and the blob reader), and a short answer is unchanged."""
    import http.server

    from transcoder.httpclient import READ_SIZE, new_client

    body = hashlib.sha256(b"read size").digest() * (8 * MiB // 32)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body if self.path == "/big" else b"short"
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = new_client()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with client.stream("GET", f"{url}/big") as resp:
            time.sleep(0.2)  # let the socket buffer fill past 64 KiB
            sizes = [len(chunk) for chunk in resp.iter_raw()]
        assert sum(sizes) == len(body)
        assert max(sizes) <= READ_SIZE
        assert max(sizes) > 64 << 10, sizes[:20]
        assert client.get(f"{url}/short").content == b"short"
    finally:
        client.close()
        server.shutdown()
        server.server_close()
