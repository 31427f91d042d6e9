"""Credentials from docker credential helpers (``credHelpers``, ``credsStore``)
and from the auth files docker and skopeo read (repo-scoped ``auths`` keys
included), against the real registry with htpasswd auth. The helpers are real
executables on PATH."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.registry_support import helper_calls, repo_name, write_credential_helper
from transcoder.descriptor import OCI_CONFIG
from transcoder.digest import Digest
from transcoder.errors import AuthError, UsageError
from transcoder.records import ImageRecord
from transcoder.registry.credentials import (
    Credentials,
    auth_file_paths,
    key_scope,
    load_docker_credentials,
    server_url,
)
from transcoder.registry.source import RegistrySource
from transcoder.sinks.base import put_bytes
from transcoder.sinks.registry import RegistrySink

pytestmark = pytest.mark.peers


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private docker config dir, no other auth file, and a bin dir first on PATH."""
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def docker_config(home: Path, config: dict[str, Any]) -> None:
    (home / "config.json").write_text(json.dumps(config))


def push_and_pull(host: str, authfile: Path | None = None, repo: str | None = None) -> None:
    """Push a small image with the credentials found, and read it back."""
    repo = repo or repo_name()
    sink = RegistrySink(host, repo, authfile=str(authfile) if authfile else None)
    config = put_bytes(sink, b'{"rootfs": {"type": "layers", "diff_ids": []}}', OCI_CONFIG)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": config.to_json(), "layers": []}).encode()
    desc = sink.put_manifest(manifest, "application/vnd.oci.image.manifest.v1+json")
    sink.put_image(ImageRecord("v1", desc))
    sink.close()
    with RegistrySource.from_ref(f"{host}/{repo}:v1", authfile=authfile) as src:
        root, _ = src.resolve()
        assert root.digest == Digest.of(manifest) and src.get_manifest(root) == manifest


def test_cred_helpers_name_the_helper_per_registry(registry_auth: Any, home: Path) -> None:
    log = write_credential_helper(home / "bin", "pass", {registry_auth.host: (registry_auth.username,
                                                                             registry_auth.password)})
    other = write_credential_helper(home / "bin", "other", fail="must not be asked")
    docker_config(home, {"credHelpers": {registry_auth.host: "pass"}, "credsStore": "other"})
    push_and_pull(registry_auth.host)
    calls = helper_calls(log)
    assert calls and all(c == {"argv": ["get"], "stdin": registry_auth.host} for c in calls)
    assert helper_calls(other) == []


def test_creds_store_is_the_default_helper(registry_auth: Any, home: Path) -> None:
    log = write_credential_helper(home / "bin", "store", {registry_auth.host: (registry_auth.username,
                                                                              registry_auth.password)})
    # What `docker login` leaves behind with a credsStore: an empty auths entry.
    docker_config(home, {"auths": {registry_auth.host: {}}, "credsStore": "store"})
    push_and_pull(registry_auth.host)
    assert helper_calls(log)[0] == {"argv": ["get"], "stdin": registry_auth.host}


def test_helper_without_credentials_means_anonymous(registry_auth: Any, home: Path) -> None:
    log = write_credential_helper(home / "bin", "empty", {})
    docker_config(home, {"credsStore": "empty"})
    repo = repo_name()
    with pytest.raises(AuthError) as err:
        RegistrySource.from_ref(f"{registry_auth.host}/{repo}:v1").resolve()
    assert "401" in str(err.value) and "no credentials given" in str(err.value) and repo in str(err.value)
    assert helper_calls(log) == [{"argv": ["get"], "stdin": registry_auth.host}]


def test_missing_helper_is_one_clear_error(registry_auth: Any, home: Path) -> None:
    docker_config(home, {"credHelpers": {registry_auth.host: "absent-7c2"}})
    with pytest.raises(AuthError) as err:
        RegistrySource.from_ref(f"{registry_auth.host}/{repo_name()}:v1")
    message = str(err.value)
    assert "\n" not in message and registry_auth.host in message
    assert "docker-credential-absent-7c2" in message and "not found on PATH" in message and "credHelpers" in message


def test_failing_helper_is_one_clear_error(registry_auth: Any, home: Path) -> None:
    write_credential_helper(home / "bin", "locked", fail="error: the keychain is locked")
    docker_config(home, {"credsStore": "locked"})
    with pytest.raises(AuthError) as err:
        RegistrySink(registry_auth.host, repo_name())
    message = str(err.value)
    assert "\n" not in message and registry_auth.host in message and "docker-credential-locked" in message
    assert "exit status 3" in message and "keychain is locked" in message


def test_helper_with_wrong_secret_is_rejected_without_showing_it(registry_auth: Any, home: Path) -> None:
    write_credential_helper(home / "bin", "stale", {registry_auth.host: (registry_auth.username, "stale-secret-e41")})
    docker_config(home, {"credsStore": "stale"})
    sink = RegistrySink(registry_auth.host, repo_name())
    assert "stale-secret" not in repr(sink.client) + repr(sink.client.credentials) + repr(sink.client._auth)
    with pytest.raises(AuthError) as err:
        put_bytes(sink, b"data", OCI_CONFIG)
    assert "401" in str(err.value) and "rejected" in str(err.value) and "stale-secret" not in str(err.value)
    sink.close()


def test_helper_answers_read_as_docker_does(home: Path) -> None:
    write_credential_helper(home / "bin", "h", {
        "https://index.docker.io/v1/": ("hub-user", "hub-pw"), "r.example.com": ("<token>", "identity-t0k"),
    })
    docker_config(home, {"credsStore": "h"})
    assert load_docker_credentials("registry-1.docker.io") == Credentials("hub-user", "hub-pw")
    token = load_docker_credentials("r.example.com")
    assert token == Credentials.from_identity_token("identity-t0k") and not (token and token.can_basic)
    assert "identity-t0k" not in repr(token)
    assert server_url("docker.io") == "https://index.docker.io/v1/" and server_url("h:5000") == "h:5000"


def test_containers_auth_files(registry_auth: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """skopeo's order: REGISTRY_AUTH_FILE (or --authfile) alone, else
    $XDG_RUNTIME_DIR/containers/auth.json before docker's config.json."""
    good = {"auths": {registry_auth.host: {"auth": base64.b64encode(
        f"{registry_auth.username}:{registry_auth.password}".encode()).decode()}}}
    docker_config(home, {"auths": {registry_auth.host: {"username": "nobody", "password": "wrong-pw-991"}}})
    runtime = home / "run"
    (runtime / "containers").mkdir(parents=True)
    (runtime / "containers" / "auth.json").write_text(json.dumps(good))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert auth_file_paths()[0] == runtime / "containers" / "auth.json"
    push_and_pull(registry_auth.host)

    monkeypatch.delenv("XDG_RUNTIME_DIR")
    (home / "elsewhere.json").write_text(json.dumps(good))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(home / "elsewhere.json"))
    assert auth_file_paths() == [home / "elsewhere.json"]
    push_and_pull(registry_auth.host)
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    push_and_pull(registry_auth.host, authfile=home / "elsewhere.json")
    with pytest.raises(UsageError, match="no such file"):
        RegistrySource.from_ref(f"{registry_auth.host}/a:v1", authfile=home / "missing.json")


def test_sink_option_authfile(registry_auth: Any, home: Path) -> None:
    path = home / "auth.json"
    path.write_text(json.dumps({"auths": {registry_auth.host: {
        "username": registry_auth.username, "password": registry_auth.password}}}))
    sink = RegistrySink.from_options({"ref": f"{registry_auth.host}/{repo_name()}", "authfile": str(path)})
    assert sink.client.credentials == Credentials(registry_auth.username, registry_auth.password)
    assert put_bytes(sink, b"config", OCI_CONFIG).size == 6
    sink.close()


def containers_auth(home: Path, auths: dict[str, Any], **extra: Any) -> Path:
    """``~/.config/containers/auth.json`` (XDG_CONFIG_HOME is private to the test)."""
    path = home / "xdg" / "containers" / "auth.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": auths, **extra}))
    return path


def test_repo_scoped_keys_most_specific_first(home: Path) -> None:
    """containers-auth.json(5): host/ns/repo, then host/ns, then host; a URL key is its host alone."""
    containers_auth(home, {
        "r.example.com": {"username": "host-user", "password": "p0"},
        "r.example.com/team": {"username": "team-user", "password": "p1"},
        "r.example.com/team/app": {"username": "app-user", "password": "p2"},
        "https://q.example.com/v1/": {"username": "legacy-user", "password": "p3"},
        "docker.io/library/busybox": {"username": "hub-busybox", "password": "p4"},
        "r.example.com/team/ap": {"username": "not-a-prefix", "password": "p5"},
    })
    def user(host: str, repository: str | None) -> str | None:
        found = load_docker_credentials(host, repository=repository)
        return found.username if found else None

    assert user("r.example.com", "team/app") == "app-user"
    assert user("r.example.com", "team/app/sub") == "app-user"
    assert user("r.example.com", "team/apple") == "team-user"  # team/ap is not a path prefix of team/apple
    assert user("r.example.com", "other/app") == "host-user"
    assert user("r.example.com", None) == "host-user"  # no repository: host keys only
    assert user("q.example.com", "v1/x") == "legacy-user"
    assert user("registry-1.docker.io", "library/busybox") == "hub-busybox"
    assert user("registry-1.docker.io", "library/alpine") is None
    found = load_docker_credentials("r.example.com", repository="team/app")
    assert found is not None and "auths['r.example.com/team/app']" in found.origin and "p2" not in repr(found)
    assert key_scope("https://index.docker.io/v1/") == ("docker.io", "")
    assert key_scope("localhost:5000/ns/repo/") == ("localhost:5000", "ns/repo")


def test_repo_scoped_key_yields_to_cred_helpers(home: Path) -> None:
    """credHelpers stay per host (docker's rule) and come before any auths key."""
    log = write_credential_helper(home / "bin", "h", {"r.example.com": ("helper-user", "helper-pw")})
    containers_auth(home, {"r.example.com/team/app": {"username": "app-user", "password": "p2"}},
                    credHelpers={"r.example.com": "h"})
    assert load_docker_credentials("r.example.com", repository="team/app") == Credentials("helper-user", "helper-pw")
    assert helper_calls(log) == [{"argv": ["get"], "stdin": "r.example.com"}]


def test_repo_scoped_key_against_the_registry(registry_auth: Any, home: Path) -> None:
    """A wrong password under the host key and the right one under host/ns/repo:
    ns/repo works, any other repository is refused with a 401 naming the key used."""
    ns = repo_name("scoped")
    right = {"username": registry_auth.username, "password": registry_auth.password}
    containers_auth(home, {registry_auth.host: {"username": registry_auth.username, "password": "wrong-pw-5b0"},
                           f"{registry_auth.host}/{ns}": right})
    push_and_pull(registry_auth.host, repo=ns)
    push_and_pull(registry_auth.host, repo=f"{ns}/deeper")  # a key for ns covers what is under it
    other = repo_name("scoped")
    sink = RegistrySink(registry_auth.host, other)
    with pytest.raises(AuthError) as err:
        put_bytes(sink, b"config", OCI_CONFIG)
    sink.close()
    message = str(err.value)
    assert "\n" not in message and "401" in message and "rejected" in message and other in message
    assert f"auths[{registry_auth.host!r}]" in message
    assert "wrong-pw-5b0" not in message and registry_auth.password not in message
    with pytest.raises(AuthError, match="401"):
        RegistrySource.from_ref(f"{registry_auth.host}/{other}:v1").resolve()


def _unused_token_fetch(*_: Any) -> Any:
    raise AssertionError("a Basic-auth registry asked for a token")


def test_basic_auth_answers_requests_sent_before_the_scheme_was_known(registry_auth: Any) -> None:
    """Two requests leave anonymously at once (an image's config and its first
    layer); both get the Basic challenge. The second 401 to arrive is the
    anonymous one too, not a rejection of the credentials, so both requests
    are sent again with them."""
    import httpx

    from transcoder.registry.auth import RegistryAuth

    auth = RegistryAuth(registry_auth.host, Credentials(registry_auth.username, registry_auth.password),
                        _unused_token_fetch)
    url = f"http://{registry_auth.host}/v2/"
    with httpx.Client() as http:
        flows = [auth.sync_auth_flow(http.build_request("GET", url)) for _ in range(2)]
        first = [next(flow) for flow in flows]
        assert all("Authorization" not in r.headers for r in first)
        again = [flow.send(http.send(r)) for flow, r in zip(flows, first, strict=True)]
        assert all(r.headers["Authorization"].startswith("Basic ") for r in again)
        assert [http.send(r).status_code for r in again] == [200, 200]

        # Credentials sent and refused end the flow: the 401 stands.
        bad = RegistryAuth(registry_auth.host, Credentials(registry_auth.username, "wrong-pw-3c1"), _unused_token_fetch)
        flow = bad.sync_auth_flow(http.build_request("GET", url))
        retry = flow.send(http.send(next(flow)))
        refused = http.send(retry)
        assert refused.status_code == 401
        with pytest.raises(StopIteration):
            flow.send(refused)
