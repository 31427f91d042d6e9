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
from pathlib import Path

import pytest

from tests.imagegen import make_tar, write_layout

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
