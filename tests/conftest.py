"""Session fixtures for the real peers, and a private TRANSCODER_HOME per test.

Peers (see tests/peers.py): `azurite`, `registry`, `registry_auth`, `moto_s3`,
`containerd`, `skopeo`, `node_peers`. Each is started once per session, or
reused if already running, and fails under CI=true when it cannot be had.

`clock` and `emu`: an Actions cache emulator on a manual clock (modules that
need the emulator set up otherwise define their own `emu`, which wins there).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import peers
from transcoder import preconnect
from transcoder.gha.emulator import Emulator, ManualClock


@pytest.fixture(scope="session")
def peers_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Configs, data and logs of the peers this session starts (kept after the run)."""
    return tmp_path_factory.mktemp("peers")


@pytest.fixture(scope="session")
def azurite(peers_workdir: Path) -> Iterator[peers.Azurite]:
    with peers.azurite_peer(peers_workdir / "azurite") as peer:
        yield peer


@pytest.fixture(scope="session")
def registry(peers_workdir: Path) -> Iterator[peers.Registry]:
    with peers.registry_peer(peers_workdir / "registry") as peer:
        yield peer


@pytest.fixture(scope="session")
def registry_auth(peers_workdir: Path) -> Iterator[peers.AuthRegistry]:
    with peers.registry_auth_peer(peers_workdir / "registry-auth") as peer:
        yield peer


@pytest.fixture(scope="session")
def moto_s3(peers_workdir: Path) -> Iterator[peers.MotoS3]:
    with peers.moto_peer(peers_workdir / "moto") as peer:
        yield peer


@pytest.fixture(scope="session")
def containerd(peers_workdir: Path) -> Iterator[peers.Containerd]:
    with peers.containerd_peer(peers_workdir / "containerd") as peer:
        yield peer


@pytest.fixture(scope="session")
def skopeo() -> str:
    return peers.require_tool("skopeo")


@pytest.fixture(scope="session")
def node_peers() -> Path:
    return peers.node_peers_dir()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def emu(clock: ManualClock) -> Iterator[Emulator]:
    with Emulator(clock=clock) as emulator:
        yield emulator


@pytest.fixture
def transcoder_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh TRANSCODER_HOME (variant table, caches) for this test, outside its tmp_path."""
    home = tmp_path_factory.mktemp("transcoder-home")
    monkeypatch.setenv("TRANSCODER_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _private_transcoder_home(transcoder_home: Path) -> None:
    """Every test gets its own TRANSCODER_HOME, so none touches ~/.cache."""


@pytest.fixture(autouse=True)
def _no_connections_ahead() -> Iterator[None]:
    """Connections a command line run opened ahead and did not use close with
    its test, so that no test takes another's."""
    yield
    preconnect.forget()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if peers.STARTUP:
        terminalreporter.write_sep("-", "peers")
        for line in peers.STARTUP:
            terminalreporter.write_line(line)
