"""The bearer-token flow (WWW-Authenticate realm, service, scope) against a
token service written for the test, in front of the real registry; identity
tokens through the OAuth2 refresh-token POST, and its GET fallback."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.registry_support import TokenFront, repo_name, write_credential_helper
from transcoder.descriptor import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor
from transcoder.digest import Digest
from transcoder.errors import AuthError
from transcoder.records import ImageRecord
from transcoder.registry.auth import Credentials
from transcoder.registry.source import RegistrySource
from transcoder.sinks.base import put_bytes
from transcoder.sinks.registry import RegistrySink

pytestmark = pytest.mark.peers
WRITER = Credentials("writer", "w-secret-5d1e")
READER = Credentials("reader", "r-secret-77aa")


@pytest.fixture
def front(registry: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[TokenFront]:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))  # no docker credentials
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    users = {"writer": (WRITER.password.reveal(), "pull,push"), "reader": (READER.password.reveal(), "pull")}
    server = TokenFront(registry.host, users, anonymous="pull")
    yield server
    server.close()


def push_image(sink: RegistrySink, tag: str) -> Descriptor:
    layer = put_bytes(sink, b"\x1f\x8b layer bytes " * 1000, OCI_LAYER_GZIP)
    config = put_bytes(sink, b'{"rootfs": {"type": "layers", "diff_ids": []}}', OCI_CONFIG)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(),
                           "layers": [layer.to_json()]}).encode()
    desc = sink.put_manifest(manifest, OCI_MANIFEST)
    sink.put_image(ImageRecord(tag, desc))
    return desc


def test_push_and_pull_with_tokens(front: TokenFront) -> None:
    repo = repo_name()
    sink = RegistrySink(front.host, repo, credentials=WRITER)
    desc = push_image(sink, "v1")
    sink.close()
    pushes = [r for r in front.token_requests if r["user"] == "writer"]
    # One token per scope, reused for every later request with that scope.
    assert {tuple(r["scope"]) for r in pushes} == {(f"repository:{repo}:pull",), (f"repository:{repo}:pull,push",)}
    assert len(pushes) == 2 and all(r["service"] == ["test-registry"] for r in pushes)
    with RegistrySource.from_ref(f"{front.host}/{repo}:v1") as anonymous:
        assert anonymous.resolve()[0] == desc
        manifest = json.loads(anonymous.get_manifest(desc))
        layer = Descriptor.from_json(manifest["layers"][0])
        with anonymous.open_blob(layer) as f:
            assert Digest.of(f.read()) == layer.digest
    assert any(r["user"] is None for r in front.token_requests)


def test_mount_asks_for_both_repositories(front: TokenFront) -> None:
    first, second = repo_name(), repo_name()
    sink = RegistrySink(front.host, first, credentials=WRITER)
    blob = put_bytes(sink, b"shared blob" * 100, OCI_LAYER_GZIP)
    target = RegistrySink(front.host, second, credentials=WRITER)
    assert target.mount_blob(blob, RegistrySource.from_ref(f"{front.host}/{first}:x"))
    assert target.stat_blob(blob.digest) == blob.size
    assert any(set(r["scope"]) == {f"repository:{second}:pull,push", f"repository:{first}:pull"}
               for r in front.token_requests)
    sink.close()
    target.close()


def test_a_token_without_push_is_refused_clearly(front: TokenFront) -> None:
    sink = RegistrySink(front.host, repo_name(), credentials=READER)
    with pytest.raises(AuthError) as err:
        put_bytes(sink, b"data", OCI_CONFIG)
    assert "401" in str(err.value) and sink.repository in str(err.value) and front.host in str(err.value)
    assert READER.password.reveal() not in str(err.value)
    sink.close()


def test_denied_repository_is_403(front: TokenFront) -> None:
    with pytest.raises(AuthError) as err:
        RegistrySource.from_ref(f"{front.host}/denied/app:v1", credentials=WRITER).resolve()
    message = str(err.value)
    assert "403 Forbidden" in message and "denied/app" in message and front.host in message
    assert WRITER.password.reveal() not in message


def test_bad_password_at_the_token_service(front: TokenFront) -> None:
    wrong = Credentials("writer", "not-the-password-q9")
    with pytest.raises(AuthError) as err:
        RegistrySource.from_ref(f"{front.host}/some/app:v1", credentials=wrong).resolve()
    message = str(err.value)
    assert "token service" in message and "rejected" in message and front.host in message
    assert "q9" not in message


# -- identity tokens (OAuth2 refresh-token grant) ----------------------------------------


def docker_login_with_token(home: Path, host: str, token: str) -> None:
    """What docker writes after a login that got an identity token (the password is kept too)."""
    auth = base64.b64encode(f"writer:{WRITER.password.reveal()}".encode()).decode()
    (home / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth, "identitytoken": token}}}))


def test_identity_token_goes_in_the_oauth_post(front: TokenFront, tmp_path: Path) -> None:
    front.refresh_tokens["idt-writer-9b1"] = "writer"
    docker_login_with_token(tmp_path, front.host, "idt-writer-9b1")
    repo = repo_name()
    sink = RegistrySink(front.host, repo)
    assert "idt-writer" not in repr(sink.client) + repr(sink.client._auth)
    push_image(sink, "v1")
    sink.close()
    posts = [r for r in front.token_requests if r["method"] == "POST"]
    assert {r["form"]["scope"] for r in posts} == {f"repository:{repo}:pull", f"repository:{repo}:pull,push"}
    for r in posts:
        assert r["user"] == "writer" and r["content_type"] == "application/x-www-form-urlencoded"
        assert r["form"] == {"grant_type": "refresh_token", "refresh_token": "idt-writer-9b1", "client_id": "transcoder",
                             "service": "test-registry", "scope": r["form"]["scope"]}
    # The password never went anywhere: no GET for a token, no Basic header.
    assert [r for r in front.token_requests if r["method"] == "GET"] == []
    assert all(r["authorization"] == "" for r in front.token_requests)


def test_identity_token_from_a_credential_helper(front: TokenFront, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin").mkdir()
    write_credential_helper(tmp_path / "bin", "tok", {front.host: ("<token>", "idt-helper-51")})
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {front.host: "tok"}}))
    front.refresh_tokens["idt-helper-51"] = "writer"
    sink = RegistrySink(front.host, repo_name())
    push_image(sink, "v1")
    sink.close()
    assert {r["form"]["refresh_token"] for r in front.token_requests} == {"idt-helper-51"}


def test_a_rotated_refresh_token_is_used_next(front: TokenFront, tmp_path: Path) -> None:
    front.rotate = True
    front.refresh_tokens["idt-first"] = "writer"
    docker_login_with_token(tmp_path, front.host, "idt-first")
    sink = RegistrySink(front.host, repo_name())
    push_image(sink, "v1")  # two scopes, two POSTs: the second only works with the rotated token
    sink.close()
    posts = [r for r in front.token_requests if r["method"] == "POST"]
    assert len(posts) == 2 and all(r["user"] == "writer" for r in posts)
    assert posts[0]["form"]["refresh_token"] == "idt-first" != posts[1]["form"]["refresh_token"]


def test_without_oauth_the_token_falls_back_to_get(front: TokenFront, tmp_path: Path) -> None:
    front.oauth = False  # POST /token answers 404, as the spec allows
    front.refresh_tokens["idt-get-2c"] = "writer"
    docker_login_with_token(tmp_path, front.host, "idt-get-2c")
    sink = RegistrySink(front.host, repo_name())
    push_image(sink, "v1")
    sink.close()
    gets = [r for r in front.token_requests if r["method"] == "GET"]
    assert gets and all(r["user"] == "writer" for r in gets)
    basic = {base64.b64decode(r["authorization"].removeprefix("Basic ")).decode() for r in gets}
    assert basic == {"writer:idt-get-2c"}


def test_a_refused_identity_token_is_named_not_shown(front: TokenFront, tmp_path: Path) -> None:
    docker_login_with_token(tmp_path, front.host, "idt-revoked-0f")
    with pytest.raises(AuthError) as err:
        RegistrySource.from_ref(f"{front.host}/some/app:v1").resolve()
    message = str(err.value)
    assert "token service" in message and "identity token was rejected" in message and front.host in message
    assert "idt-revoked" not in message and WRITER.password.reveal() not in message
