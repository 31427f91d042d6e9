"""What a conversion starts while it is still loading: TCP connections opened
ahead (``transcoder.preconnect``) and taken by the HTTP pools, a registry
source's manifest asked for ahead (``resolve_ahead``), and the command line's
order of loading. Against real HTTP servers on loopback and the real
registry."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http_support import WAIT, Counting
from tests.imagegen import make_tar, write_layout
from tests.registry_support import push_one_layer_image, repo_name, self_signed
from transcoder import preconnect
from transcoder.cli import main
from transcoder.errors import NotFound, SinkError
from transcoder.gha.emulator import Emulator
from transcoder.httpclient import new_client
from transcoder.registry.source import RegistrySource
from transcoder.registry.transport import RegistryHTTP
from transcoder.sinks.registry import RegistrySink


@pytest.fixture
def server() -> Iterator[Counting]:
    with Counting() as s:
        yield s


def test_a_client_takes_the_connections_opened_ahead(server: Counting) -> None:
    preconnect.open_ahead("127.0.0.1", server.port, 2)
    server.wait_accepted(2)
    ahead = set(server.accepted)
    with new_client() as client:
        for _ in range(3):
            assert client.get(f"http://127.0.0.1:{server.port}/").text == "ok"
    assert len(server.accepted) == 2, "the client connected itself though two connections were open"
    assert set(server.served) <= ahead and len(set(server.served)) == 1  # one kept-alive connection


def test_a_connection_its_server_has_closed_is_not_taken() -> None:
    closed = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def close_at_once() -> None:
            conn, _ = listener.accept()
            conn.close()
            closed.set()

        threading.Thread(target=close_at_once, daemon=True).start()
        preconnect.open_ahead("127.0.0.1", listener.getsockname()[1], 1)
        assert closed.wait(WAIT)
        assert preconnect.take("127.0.0.1", listener.getsockname()[1], WAIT) is None


def test_a_connection_older_than_max_age_is_closed_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    ended = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def read_to_the_end() -> None:
            conn, _ = listener.accept()
            with conn:
                if conn.recv(1) == b"":
                    ended.set()

        threading.Thread(target=read_to_the_end, daemon=True).start()
        monkeypatch.setattr(preconnect, "MAX_AGE", -1.0)
        preconnect.open_ahead("127.0.0.1", listener.getsockname()[1], 1)
        assert preconnect.take("127.0.0.1", listener.getsockname()[1], WAIT) is None
        assert ended.wait(WAIT), "the stale connection was left open"


def test_nothing_is_opened_ahead_through_a_proxy(server: Counting, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    preconnect.open_ahead("127.0.0.1", server.port, 2)
    assert preconnect.take("127.0.0.1", server.port, WAIT) is None
    assert server.accepted == []


def test_a_refused_connection_leaves_the_connect_to_the_pool() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    preconnect.open_ahead("127.0.0.1", port, 2)
    assert preconnect.take("127.0.0.1", port, WAIT) is None
    with new_client() as client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}/")


def test_a_refused_address_gives_way_to_the_names_next(server: Counting, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that resolves to ::1 first while the server listens on IPv4 only (fault injection: the lookup)."""
    real = socket.getaddrinfo
    answers = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", server.port, 0, 0)),
               (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.port))]
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, *a, **k: answers if host == "dual.test" else real(host, *a, **k))
    preconnect.open_ahead("dual.test", server.port, 1)
    sock = preconnect.take("dual.test", server.port, WAIT)
    assert sock is not None and sock.getpeername()[0] == "127.0.0.1"
    sock.close()
    server.wait_accepted(1)


def test_connections_dropped_before_use_are_closed(server: Counting) -> None:
    preconnect.open_ahead("127.0.0.1", server.port, 2)
    server.wait_accepted(2)
    preconnect.forget()
    assert preconnect.take("127.0.0.1", server.port, WAIT) is None
    with new_client() as client:
        assert client.get(f"http://127.0.0.1:{server.port}/").text == "ok"
    assert len(server.accepted) == 3


# -- TLS handshakes made ahead -----------------------------------------------------------------

@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("early-tls"))


@pytest.fixture
def tls_server(cert: tuple[Path, Path]) -> Iterator[Counting]:
    """The counting server behind TLS: a connection counts once its handshake is made."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    with Counting(context) as s:
        yield s


def test_tls_handshakes_made_ahead_are_used_by_a_client_of_the_same_context(
        tls_server: Counting, cert: tuple[Path, Path]) -> None:
    context = ssl.create_default_context(cafile=str(cert[0]))
    preconnect.open_ahead("127.0.0.1", tls_server.port, 2, lambda: context)
    tls_server.wait_accepted(2)
    with new_client(verify=context) as client:
        assert client.get(f"https://127.0.0.1:{tls_server.port}/").text == "ok"
    assert len(tls_server.accepted) == 2, "the client made a handshake of its own"


def test_a_tls_connection_made_with_another_context_is_replaced(tls_server: Counting,
                                                                cert: tuple[Path, Path]) -> None:
    preconnect.open_ahead("127.0.0.1", tls_server.port, 1, lambda: ssl.create_default_context(cafile=str(cert[0])))
    tls_server.wait_accepted(1)
    with new_client(verify=ssl.create_default_context(cafile=str(cert[0]))) as client:
        assert client.get(f"https://127.0.0.1:{tls_server.port}/").text == "ok"
    assert len(tls_server.accepted) == 2 and tls_server.served == tls_server.accepted[1:]


def test_an_untrusted_server_fails_the_handshake_ahead_and_then_the_request(tls_server: Counting) -> None:
    context = ssl.create_default_context()  # the public CAs: the test's certificate is not trusted
    preconnect.open_ahead("127.0.0.1", tls_server.port, 1, lambda: context)
    assert preconnect.take("127.0.0.1", tls_server.port, WAIT) is None
    with new_client(verify=context) as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(f"https://127.0.0.1:{tls_server.port}/")
    assert tls_server.served == []


def test_a_plain_server_fails_the_tls_handshake_ahead(server: Counting) -> None:
    preconnect.open_ahead("127.0.0.1", server.port, 1, ssl.create_default_context)
    assert preconnect.take("127.0.0.1", server.port, WAIT) is None
    with new_client() as client:
        assert client.get(f"http://127.0.0.1:{server.port}/").text == "ok"


def test_a_handshake_ahead_that_does_not_end_in_time_fails_the_connect() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        preconnect.open_ahead("127.0.0.1", port, 1, ssl.create_default_context)
        silent, _ = listener.accept()  # it never answers the TLS handshake
        with silent, new_client(timeout=httpx.Timeout(WAIT, connect=0.2)) as client, \
                pytest.raises(httpx.ConnectTimeout, match="not connected within"):
            client.get(f"https://127.0.0.1:{port}/")


# -- whether a server speaks TLS, asked ahead ----------------------------------------------------

def test_a_plain_server_is_found_not_to_speak_tls(server: Counting) -> None:
    preconnect.probe_ahead("127.0.0.1", server.port)
    assert preconnect.speaks_tls("127.0.0.1", server.port, WAIT) is False
    server.wait_accepted(1)  # the probe's own connection: the hello got an HTTP error
    assert server.served == []


def test_a_tls_server_is_found_to_speak_tls_trusted_or_not(tls_server: Counting) -> None:
    preconnect.probe_ahead("127.0.0.1", tls_server.port)
    assert preconnect.speaks_tls("127.0.0.1", tls_server.port, WAIT) is True


def test_a_probe_is_undecided_when_not_asked_unconnected_or_old(server: Counting, monkeypatch: pytest.MonkeyPatch) -> None:
    assert preconnect.speaks_tls("127.0.0.1", server.port, WAIT) is None  # never asked: no wait either
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    preconnect.probe_ahead("127.0.0.1", port)
    assert preconnect.speaks_tls("127.0.0.1", port, WAIT) is None  # refused: the client asks itself
    preconnect.probe_ahead("127.0.0.1", server.port)
    assert preconnect.speaks_tls("127.0.0.1", server.port, WAIT) is False
    monkeypatch.setattr(preconnect, "MAX_AGE", -1.0)
    assert preconnect.speaks_tls("127.0.0.1", server.port, WAIT) is None  # another server may listen there now


def test_a_server_silent_to_the_hello_is_taken_for_plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preconnect, "PROBE_TIMEOUT", 0.2)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        preconnect.probe_ahead("127.0.0.1", port)
        silent, _ = listener.accept()  # it never answers the TLS hello
        with silent:
            assert preconnect.speaks_tls("127.0.0.1", port, WAIT) is False


@pytest.mark.peers
def test_a_registry_probed_ahead_sends_no_probe_of_its_own(registry: Any) -> None:
    name, port = registry.host.rsplit(":", 1)
    alone = RegistryHTTP(registry.host)
    assert alone.base_url == f"http://{registry.host}" and alone.requests == 1  # its own probe: the TLS attempt
    alone.close()
    preconnect.probe_ahead(name, int(port))
    ahead = RegistryHTTP(registry.host)
    assert ahead.base_url == f"http://{registry.host}" and ahead.requests == 0
    ahead.close()


def test_a_tls_registry_probed_ahead_is_still_verified(tls_server: Counting) -> None:
    """The probe ahead trusts anything; the client's own probe still checks
    the certificate, and never falls back to plain HTTP."""
    preconnect.probe_ahead("127.0.0.1", tls_server.port)
    client = RegistryHTTP(f"127.0.0.1:{tls_server.port}")
    with pytest.raises(SinkError, match="TLS certificate not trusted"):
        client.url("/v2/")
    client.close()


def _endpoints(argv: list[str], counts: bool = False) -> list[tuple[Any, ...]]:
    """What ``convert ARGV`` opens ahead: (host, port, with TLS[, how many]), through the command line's own parser."""
    from transcoder.cli import build_parser
    from transcoder.cli.convert import _endpoints as endpoints

    return [tuple(e)[:4] if counts else tuple(e)[:3] for e in endpoints(build_parser("convert").parse_args(["convert", *argv]))]


def test_tls_is_made_ahead_only_where_it_is_certain(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _endpoints(["docker://ghcr.io/a/b:1", "--to", "type=registry,ref=127.0.0.1:5000/x"]) == [
        ("ghcr.io", 443, True), ("127.0.0.1", 5000, False)]
    assert _endpoints(["docker://alpine", "--to", "type=registry,ref=reg.example:5000/x,insecure=true"]) == [
        ("registry-1.docker.io", 443, True), ("auth.docker.io", 443, True), ("reg.example", 5000, False)]
    assert _endpoints(["docker://ghcr.io/a/b:1", "--src-tls-verify=false", "--to", "type=local,dest=d"]) == [
        ("ghcr.io", 443, False)]
    assert _endpoints(["docker://bad..host/a", "--to", "type=registry,ref=localhost/x",
                       "--dest-tls-verify=true"]) == [("localhost", 443, False)]
    monkeypatch.setenv("ACTIONS_RUNTIME_TOKEN", "t")
    monkeypatch.setenv("ACTIONS_CACHE_SERVICE_V2", "1")
    monkeypatch.setenv("ACTIONS_RESULTS_URL", "https://results.example/")
    assert _endpoints(["oci:img", "--to", "type=gha"]) == [("results.example", 443, True)]
    assert _endpoints(["oci:img", "--to", "type=gha,url_v2=http://127.0.0.1:8080/"]) == [("127.0.0.1", 8080, False)]


def test_only_a_registry_that_may_be_plain_is_probed_ahead() -> None:
    from transcoder.cli import build_parser
    from transcoder.cli.convert import _endpoints as endpoints

    args = build_parser("convert").parse_args(
        ["convert", "docker://ghcr.io/a/b:1", "--to", "type=registry,ref=127.0.0.1:5000/x"])
    assert [(e.host, e.probe) for e in endpoints(args)] == [("ghcr.io", False), ("127.0.0.1", True)]


def test_docker_hubs_token_service_is_opened_ahead_beside_it() -> None:
    """Every request to Docker Hub, an anonymous pull too, first needs a token
    from auth.docker.io: two connections go there ahead, with TLS."""
    assert _endpoints(["docker://docker.io/library/alpine:3", "--to", "type=local,dest=d"], counts=True) == [
        ("registry-1.docker.io", 443, True, 8), ("auth.docker.io", 443, True, 2)]
    assert _endpoints(["docker://ghcr.io/a/b:1", "--to", "type=registry,ref=index.docker.io/me/b"], counts=True) == [
        ("ghcr.io", 443, True, 8), ("registry-1.docker.io", 443, True, 8), ("auth.docker.io", 443, True, 2)]
    assert _endpoints(["docker://alpine", "--src-tls-verify=false", "--to", "type=local,dest=d"]) == [
        ("registry-1.docker.io", 443, False)]  # told not to verify: no TLS made ahead, and no token host


# -- a registry source's manifest, asked for ahead ---------------------------------------------

TAR = make_tar(41, size=100_000, files=4)


@pytest.fixture
def image(registry: Any) -> str:
    repo = repo_name("early")
    push_one_layer_image(RegistrySink(registry.host, repo), TAR)
    return f"{registry.host}/{repo}"


@pytest.mark.peers
def test_a_manifest_asked_for_ahead_is_fetched_once(image: str) -> None:
    with RegistrySource.from_ref(image + ":v1") as plain:
        expected = plain.resolve()
        requests = plain.client.requests
    with RegistrySource.from_ref(image + ":v1") as source:
        source.resolve_ahead()
        source.resolve_ahead()  # a second start is no second request
        assert source.resolve() == expected
        assert source.client.requests == requests


@pytest.mark.peers
def test_a_resolve_ahead_that_failed_is_reported_by_resolve(image: str) -> None:
    with RegistrySource.from_ref(image + ":missing") as plain:
        with pytest.raises(NotFound) as expected:
            plain.resolve()
        requests = plain.client.requests
    with RegistrySource.from_ref(image + ":missing") as source:
        source.resolve_ahead()
        with pytest.raises(NotFound, match=r"repository early/.*not found") as got:
            source.resolve()
        assert str(got.value) == str(expected.value)
        assert source.client.requests == requests, "the failed resolve was asked for again"


@pytest.mark.peers
def test_closing_a_source_ends_its_resolve_ahead(image: str) -> None:
    source = RegistrySource.from_ref(image + ":v1")
    source.resolve_ahead()
    source.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("resolve")]


@pytest.mark.peers
def test_registry_convert_restore_and_bench_take_the_connections_they_opened_ahead(
        image: str, registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    taken = _spy_on_take(monkeypatch)
    dest = f"{registry.host}/{repo_name('early-out')}:v1"
    assert main(["convert", "docker://" + image + ":v1", "--to", f"type=registry,ref={dest},mode=replace",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["status"] == "converted"
    assert any(taken), "no connection opened ahead was used"
    preconnect.forget()  # what convert opened and left: restore must find its own
    taken.clear()
    restored = tmp_path / "restored"
    assert main(["restore", f"type=registry,ref={dest.rsplit(':', 1)[0]}", "v1", "-o", f"oci:{restored}"]) == 0
    assert (restored / "index.json").is_file()
    assert any(taken), "restore used no connection opened ahead"
    capsys.readouterr()
    preconnect.forget()
    taken.clear()
    assert main(["bench", "docker://" + image + ":v1", "--codecs", "zstd", "--levels", "1", "--repeat", "1",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"]
    assert any(taken), "bench used no connection opened ahead"


def _spy_on_take(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each connect of a pool found a connection opened ahead."""
    taken: list[bool] = []
    real_take = preconnect.take

    def spy(host: str, port: int, timeout: float | None) -> socket.socket | None:
        sock = real_take(host, port, timeout)
        taken.append(sock is not None)
        return sock

    monkeypatch.setattr(preconnect, "take", spy)
    return taken


def test_an_actions_cache_conversion_takes_the_connections_it_opened_ahead(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    layout = write_layout(tmp_path / "src", {"app": [TAR]})
    taken = _spy_on_take(monkeypatch)
    with Emulator() as emu:
        for name, value in emu.env().items():
            monkeypatch.setenv(name, value)
        assert main(["convert", f"oci:{layout}:app", "--to", "type=gha,scope=early", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["status"] == "converted"
    assert any(taken), "no connection opened ahead was used"


# -- what the command line loads, and when -------------------------------------------------------

def _loaded_after(statement: str, names: set[str]) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(set(sys.modules) & set({sorted(names)!r}))))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    return set(out.split())


def test_the_image_command_loads_the_conversion_after_its_first_requests_left() -> None:
    late = {"transcoder.images.convert", "transcoder.variants", "sqlite3"}
    assert _loaded_after("import transcoder.cli.convert_image", late) == set()


def test_a_reference_is_read_without_the_http_stack() -> None:
    assert _loaded_after("import transcoder.registry.reference", {"httpx", "httpcore"}) == set()
