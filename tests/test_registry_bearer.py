"""The bearer-token flow (WWW-Authenticate realm, service, scope) against a
token service written for the test, in front of the real registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.registry_support import TokenFront, repo_name
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
    server = TokenFront(registry.host, {"writer": (WRITER.password, "pull,push"), "reader": (READER.password, "pull")},
                        anonymous="pull")
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
    assert READER.password not in str(err.value)
    sink.close()


def test_denied_repository_is_403(front: TokenFront) -> None:
    with pytest.raises(AuthError) as err:
        RegistrySource.from_ref(f"{front.host}/denied/app:v1", credentials=WRITER).resolve()
    message = str(err.value)
    assert "403 Forbidden" in message and "denied/app" in message and front.host in message
    assert WRITER.password not in message


def test_bad_password_at_the_token_service(front: TokenFront) -> None:
    wrong = Credentials("writer", "not-the-password-q9")
    with pytest.raises(AuthError) as err:
        RegistrySource.from_ref(f"{front.host}/some/app:v1", credentials=wrong).resolve()
    message = str(err.value)
    assert "token service" in message and "rejected" in message and front.host in message
    assert "q9" not in message
