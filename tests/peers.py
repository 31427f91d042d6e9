"""Real third-party peers for the tests: start, readiness, stop.

A peer already healthy on its port is reused (CI, or an earlier run, may have
started it); otherwise it is started here with its config and data in a temp
dir, in its own process group, and stopped with that group at session end.
A peer that cannot be had fails the test under ``CI=true`` and skips it
otherwise, so a CI run never passes by skipping.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from tests.peer_process import (
    HOST,
    CommandFailed,
    PeerUnavailable,
    Process,
    http_get,
    poll,
    port_open,
    redact,
    run,
    spawn,
    wait_ready,
)

__all__ = [
    "HOST", "PEERS_DIR", "STARTUP", "AuthRegistry", "Azurite", "CommandFailed", "Containerd", "MotoS3",
    "PeerUnavailable", "Process", "Registry", "azurite_peer", "containerd_peer", "in_ci", "moto_peer",
    "node_peers_dir", "poll", "redact", "registry_auth_peer", "registry_peer", "require_tool", "run", "spawn",
    "unavailable", "wait_ready",
]


def _port(peer: str, default: int) -> int:
    """The peer's port; TRANSCODER_TEST_<PEER>_PORT moves it (e.g. when another program holds it)."""
    return int(os.environ.get(f"TRANSCODER_TEST_{peer}_PORT", default))


AZURITE_PORT = _port("AZURITE", 10000)
REGISTRY_PORT = _port("REGISTRY", 5000)
MOTO_PORT = _port("MOTO", 5001)
REGISTRY_AUTH_PORT = _port("REGISTRY_AUTH", 5002)
PEERS_DIR = Path(os.environ.get("PEERS_DIR", "/opt/transcoder-peers"))
INSTALL_HINT = "run .ci/install-peers as root"

# The well-known Azurite development account (public, not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# Fixed (overridable) so that a registry started before the tests can be reused.
REGISTRY_USER = os.environ.get("TRANSCODER_TEST_REGISTRY_USER", "tester")
REGISTRY_PASSWORD = os.environ.get("TRANSCODER_TEST_REGISTRY_PASSWORD", "peer-pass-7f3c")

# One line per peer ("registry: started in 0.04 s"), printed after the run.
STARTUP: list[str] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Fail under CI (a missing peer is a broken CI machine), skip elsewhere."""
    if in_ci():
        pytest.fail(f"peer unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """Path of an executable on PATH, or fail/skip naming it."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} not found on PATH ({INSTALL_HINT})")
    return path


@contextmanager
def serve(name: str, port: int, healthy: Callable[[], bool], argv: Callable[[], list[str]],
          workdir: Path) -> Iterator[Path | None]:
    """Reuse a healthy server on `port` or start one; yields its log path (None when reused)."""
    if port_open(port):
        # A server started just before the tests may still be warming up.
        if not poll(healthy, 10.0):
            variable = f"TRANSCODER_TEST_{name.upper().replace('-', '_')}_PORT"
            unavailable(f"{HOST}:{port} is taken by something that is not a working {name} (stop it or set {variable})")
        STARTUP.append(f"{name}: reused the server on {HOST}:{port}")
        yield None
        return
    workdir.mkdir(parents=True, exist_ok=True)
    proc = spawn(name, argv(), workdir / f"{name}.log", workdir)
    try:
        seconds = wait_ready(proc, healthy)
    except PeerUnavailable as exc:
        proc.stop()
        unavailable(str(exc))
    STARTUP.append(f"{name}: started on {HOST}:{port} in {seconds:.2f} s (log {proc.log})")
    try:
        yield proc.log
    finally:
        proc.stop()


# --- Azurite (Azure Blob emulator) -------------------------------------------------------------


@dataclass(frozen=True)
class Azurite:
    blob_endpoint: str
    account: str
    key: str = field(repr=False)
    log: Path | None = None

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
                f"BlobEndpoint={self.blob_endpoint};")


def _azurite_healthy(endpoint: str) -> bool:
    # Unauthenticated list answers 403; any answer from Azurite itself will do.
    response = http_get(f"{endpoint}?comp=list")
    return response is not None and response.headers.get("server", "").startswith("Azurite-Blob")


@contextmanager
def azurite_peer(workdir: Path) -> Iterator[Azurite]:
    endpoint = f"http://{HOST}:{AZURITE_PORT}/{AZURITE_ACCOUNT}"

    def argv() -> list[str]:
        require_tool("node")
        binary = PEERS_DIR / "node_modules" / ".bin" / "azurite-blob"
        if not binary.exists():
            unavailable(f"Azurite not installed: {binary} missing ({INSTALL_HINT})")
        return [str(binary), "--blobHost", HOST, "--blobPort", str(AZURITE_PORT), "--inMemoryPersistence",
                "--skipApiVersionCheck", "--loose", "--disableTelemetry"]

    with serve("azurite", AZURITE_PORT, lambda: _azurite_healthy(endpoint), argv, workdir) as log:
        yield Azurite(endpoint, AZURITE_ACCOUNT, AZURITE_KEY, log)


# --- docker-registry (CNCF distribution), anonymous and basic auth -----------------------------


@dataclass(frozen=True)
class Registry:
    host: str
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"


@dataclass(frozen=True)
class AuthRegistry(Registry):
    username: str = ""
    password: str = field(default="", repr=False)


def _registry_config(workdir: Path, port: int, htpasswd: Path | None) -> Path:
    auth = f"auth:\n  htpasswd: {{realm: transcoder-tests, path: {htpasswd}}}\n" if htpasswd else ""
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: info}\n"
        f"storage:\n  filesystem: {{rootdirectory: {workdir / 'data'}}}\n  delete: {{enabled: true}}\n"
        f"http: {{addr: '{HOST}:{port}'}}\n" + auth)
    return config


def _registry_answers(host: str, expect: int, auth: tuple[str, str] | None = None) -> bool:
    response = http_get(f"http://{host}/v2/", auth)
    return (response is not None and response.status_code == expect
            and response.headers.get("docker-distribution-api-version") == "registry/2.0")


@contextmanager
def registry_peer(workdir: Path) -> Iterator[Registry]:
    host = f"{HOST}:{REGISTRY_PORT}"

    def argv() -> list[str]:
        return [require_tool("docker-registry"), "serve", str(_registry_config(workdir, REGISTRY_PORT, None))]

    with serve("registry", REGISTRY_PORT, lambda: _registry_answers(host, 200), argv, workdir) as log:
        yield Registry(host, log)


def _bcrypt_htpasswd(path: Path, user: str, password: str) -> None:
    # distribution accepts bcrypt entries only, hence -B; -i keeps the password off the command line.
    line = subprocess.run([require_tool("htpasswd"), "-niB", user], input=password, capture_output=True,
                          text=True, check=True).stdout
    path.write_text(line)


@contextmanager
def registry_auth_peer(workdir: Path) -> Iterator[AuthRegistry]:
    host = f"{HOST}:{REGISTRY_AUTH_PORT}"
    creds = (REGISTRY_USER, REGISTRY_PASSWORD)

    def healthy() -> bool:
        return _registry_answers(host, 401) and _registry_answers(host, 200, creds)

    def argv() -> list[str]:
        htpasswd = workdir / "htpasswd"
        _bcrypt_htpasswd(htpasswd, *creds)
        return [require_tool("docker-registry"), "serve", str(_registry_config(workdir, REGISTRY_AUTH_PORT, htpasswd))]

    if port_open(REGISTRY_AUTH_PORT) and _registry_answers(host, 401) and not healthy():
        unavailable(f"the registry on {host} rejects user {REGISTRY_USER!r}; set TRANSCODER_TEST_REGISTRY_USER "
                    "and TRANSCODER_TEST_REGISTRY_PASSWORD to its credentials or stop it")
    with serve("registry-auth", REGISTRY_AUTH_PORT, healthy, argv, workdir) as log:
        yield AuthRegistry(host, log, REGISTRY_USER, REGISTRY_PASSWORD)


# --- moto server (S3) --------------------------------------------------------------------------


@dataclass(frozen=True)
class MotoS3:
    endpoint_url: str
    log: Path | None = None


@contextmanager
def moto_peer(workdir: Path) -> Iterator[MotoS3]:
    url = f"http://{HOST}:{MOTO_PORT}"

    def healthy() -> bool:
        response = http_get(f"{url}/moto-api/")
        return response is not None and response.status_code == 200

    def argv() -> list[str]:
        # `python -m` rather than the moto_server script: no PATH or pyenv shim needed.
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(MOTO_PORT)]

    with serve("moto", MOTO_PORT, healthy, argv, workdir) as log:
        yield MotoS3(url, log)


# --- containerd ----------------------------------------------------------------------------------


@dataclass
class Containerd:
    address: str
    ctr_path: str
    log: Path | None = None
    _names: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def ctr(self, *args: str, check: bool = True, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        """Run `ctr -a <address> *args`; with check, a non-zero exit raises CommandFailed."""
        return run(self.ctr_path, "-a", self.address, *args, check=check, timeout=timeout)

    def fresh_namespace(self) -> str:
        """A namespace never used before, so nothing is shared with earlier unpacks."""
        return f"t{next(self._names)}-{uuid.uuid4().hex[:12]}"

    def healthy(self) -> bool:
        try:
            return self.ctr("version", check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False


def _containerd_config(workdir: Path) -> tuple[Path, str]:
    sock = workdir / "containerd.sock"
    config = workdir / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{workdir / "root"}"\n'
        f'state = "{workdir / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n')
    return config, str(sock)


def _unmount_under(directory: Path) -> None:
    """Lazily unmount what a test left mounted from containerd's snapshots (deepest first).

    Matches mounts inside `directory` and mounts elsewhere (a test's tmp_path)
    whose source or overlay options point into it, so nothing keeps it busy.
    """
    prefix = str(directory.resolve()) + os.sep
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if any(prefix in text for text in (fields[3], fields[4], line.rsplit(" - ", 1)[-1])):
                points.append(fields[4].replace("\\040", " "))
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@contextmanager
def containerd_peer(workdir: Path) -> Iterator[Containerd]:
    """Reuse TRANSCODER_TEST_CONTAINERD_ADDRESS if it answers, else start a private containerd."""
    ctr = require_tool("ctr")
    reuse = os.environ.get("TRANSCODER_TEST_CONTAINERD_ADDRESS")
    if reuse:
        peer = Containerd(reuse, ctr)
        if not peer.healthy():
            unavailable(f"containerd at TRANSCODER_TEST_CONTAINERD_ADDRESS={reuse} does not answer `ctr version`")
        STARTUP.append(f"containerd: reused {reuse}")
        yield peer
        return
    binary = require_tool("containerd")
    if os.geteuid() != 0:
        unavailable("containerd needs root to mount snapshots")
    workdir.mkdir(parents=True, exist_ok=True)
    config, sock = _containerd_config(workdir)
    if len(sock) + len(".ttrpc") >= 108:
        unavailable(f"unix socket path too long for containerd: {sock}")
    proc = spawn("containerd", [binary, "--config", str(config)], workdir / "containerd.log", workdir)
    peer = Containerd(sock, ctr, proc.log)
    try:
        try:
            seconds = wait_ready(proc, peer.healthy)
        except PeerUnavailable as exc:
            unavailable(str(exc))
        STARTUP.append(f"containerd: started at {sock} in {seconds:.2f} s (log {proc.log})")
        yield peer
    finally:
        proc.stop()
        _unmount_under(workdir)


# --- tools and node packages ---------------------------------------------------------------------


def node_peers_dir() -> Path:
    """PEERS_DIR, checked to hold Azurite and @actions/cache@6.3.0 (and node to run them)."""
    require_tool("node")
    for package in ("azurite", "@actions/cache"):
        if not (PEERS_DIR / "node_modules" / package / "package.json").is_file():
            unavailable(f"npm package {package} missing from {PEERS_DIR}/node_modules ({INSTALL_HINT})")
    return PEERS_DIR
