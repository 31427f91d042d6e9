"""Transport against registries started here: blobs redirected to separate
storage (distribution's redirect middleware, the storage served by a plain
HTTP server that records what reaches it), and TLS with a self-signed
certificate (verification on by default)."""

from __future__ import annotations

import functools
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from tests import peers
from tests.peer_process import port_open
from tests.registry_support import repo_name, self_signed
from transcoder.descriptor import OCI_LAYER_GZIP
from transcoder.digest import Digest
from transcoder.errors import SinkError
from transcoder.registry.auth import Credentials
from transcoder.sinks.base import put_bytes
from transcoder.sinks.registry import RegistrySink

pytestmark = pytest.mark.peers
USER = Credentials("redirect-user", "redirect-pass-31d")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def registry_process(workdir: Path, config: str, port: int) -> Iterator[str]:
    """A docker-registry with ``config`` (YAML after the storage section), stopped by PID."""
    exe = peers.require_tool("docker-registry")
    (workdir / "config.yml").write_text(
        f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {workdir / 'data'}}}\n"
        f"http:\n  addr: '127.0.0.1:{port}'\n" + config)
    proc = peers.spawn("registry", [exe, "serve", str(workdir / "config.yml")], workdir / "registry.log", workdir)
    try:
        peers.wait_ready(proc, lambda: port_open(port))
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop()


# -- blobs redirected to storage ------------------------------------------------------------


@dataclass
class Redirecting:
    host: str
    seen: list[dict[str, str]] = field(default_factory=list)  # headers of requests that reached storage


@pytest.fixture(scope="module")
def redirecting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redirecting]:
    work = tmp_path_factory.mktemp("redirect")
    (work / "data").mkdir()
    htpasswd = subprocess.run(["htpasswd", "-niB", USER.username], input=USER.password.reveal(), capture_output=True,
                              text=True, check=True).stdout
    (work / "htpasswd").write_text(htpasswd)
    seen: list[dict[str, str]] = []

    class Storage(SimpleHTTPRequestHandler):  # no Range support: answers 200 with the whole blob
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    storage = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Storage, directory=str(work / "data")))
    Thread(target=storage.serve_forever, daemon=True).start()
    config = (f"auth:\n  htpasswd: {{realm: redirect-tests, path: {work / 'htpasswd'}}}\n"
              f"middleware:\n  storage:\n    - name: redirect\n      options:\n"
              f"        baseurl: http://127.0.0.1:{storage.server_address[1]}/\n")
    try:
        with registry_process(work, config, free_port()) as host:
            yield Redirecting(host, seen)
    finally:
        storage.shutdown()
        storage.server_close()


def test_blob_reads_follow_redirects_without_credentials(redirecting: Redirecting) -> None:
    sink = RegistrySink(redirecting.host, repo_name(), credentials=USER)
    data = bytes(range(256)) * 4000
    desc = put_bytes(sink, data, OCI_LAYER_GZIP)
    before = len(redirecting.seen)
    with sink.open_blob(desc.digest) as f:
        assert f.read() == data
    with sink.open_blob(desc.digest, 1000, 5000) as f:  # storage ignores Range: the client skips
        assert f.read() == data[1000:6000]
    assert sink.stat_blob(desc.digest) == len(data)
    reached = redirecting.seen[before:]
    assert len(reached) >= 2
    assert not any(k.lower() == "authorization" for h in reached for k in h)
    sink.close()


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    work = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(work)
    config = f"  tls:\n    certificate: {cert}\n    key: {key}\n"
    with registry_process(work, config, free_port()) as host:
        yield host, cert


def test_tls_is_verified_and_never_downgraded(tls_registry: tuple[str, Path]) -> None:
    host, _ = tls_registry
    sink = RegistrySink(host, repo_name())
    with pytest.raises(SinkError, match="TLS certificate not trusted") as err:
        put_bytes(sink, b"blob", OCI_LAYER_GZIP)
    assert host in str(err.value) and "insecure=true" in str(err.value)
    sink.close()


def test_tls_with_a_trusted_ca_or_insecure(tls_registry: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    host, cert = tls_registry
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    trusted = RegistrySink(host, repo_name())
    desc = put_bytes(trusted, b"over verified TLS", OCI_LAYER_GZIP)
    assert trusted.client.base_url == f"https://{host}"
    trusted.close()
    monkeypatch.delenv("SSL_CERT_FILE")
    insecure = RegistrySink(host, trusted.repository, insecure=True)
    assert insecure.stat_blob(desc.digest) == desc.size
    assert insecure.client.base_url == f"https://{host}"
    with insecure.open_blob(desc.digest) as f:  # TLS records cannot be peeked at: the body is read through httpx
        assert f._chunks.gi_code.co_name != "_body_chunks"  # type: ignore[attr-defined]
        assert Digest.of(f.read()) == desc.digest
    insecure.close()
