"""References, sink options, challenges and docker credentials: the parsing
edge of the registry client (no server needed)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from transcoder.digest import Digest
from transcoder.errors import UsageError
from transcoder.registry.auth import Credentials, load_docker_credentials, parse_challenge, scope_for
from transcoder.registry.reference import is_loopback, parse_reference
from transcoder.registry.variants import is_attachment_tag, tag_prefix, variant_tag
from transcoder.sinks import open_sink
from transcoder.sinks.registry import RegistrySink

D = Digest.of(b"x")


@pytest.mark.parametrize(("text", "host", "repo", "tag", "digest"), [
    ("127.0.0.1:5000/a/b:v1", "127.0.0.1:5000", "a/b", "v1", None),
    ("localhost/app", "localhost", "app", "latest", None),
    (f"reg.example.com/x/y@{D}", "reg.example.com", "x/y", None, D),
    (f"reg.example.com/x/y:t@{D}", "reg.example.com", "x/y", "t", D),
    ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
    ("index.docker.io/me/app:1.0", "docker.io", "me/app", "1.0", None),
    ("[::1]:5000/a.b-c__d/e:_x", "[::1]:5000", "a.b-c__d/e", "_x", None),
])
def test_references_parse(text: str, host: str, repo: str, tag: str | None, digest: Digest | None) -> None:
    ref = parse_reference(text)
    assert (ref.host, ref.repository, ref.tag, ref.digest) == (host, repo, tag, digest)


def test_docker_hub_requests_go_to_its_api_host() -> None:
    assert parse_reference("ubuntu:22.04").api_host == "registry-1.docker.io"
    assert parse_reference("127.0.0.1:5000/a").api_host == "127.0.0.1:5000"


@pytest.mark.parametrize("text", [
    "127.0.0.1:5000/Upper/case", "127.0.0.1:5000/a//b", "127.0.0.1:5000/-a", "127.0.0.1:5000/a:bad/tag",
    "127.0.0.1:5000/a:" + "t" * 129, "127.0.0.1:5000/a@sha256:abc", "127.0.0.1:5000/a@md5:" + "0" * 32,
    "127.0.0.1:5000/a/../b", "bad_host!/a", "", "a b", "127.0.0.1:5000/" + "a" * 256,
    "127.0.0.1:5000/a%2fb", "127.0.0.1:5000/a?x=1",
])
def test_bad_references_are_refused_naming_them(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_reference(text)
    assert "reference" in str(err.value) or "host" in str(err.value)


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1:5000") and is_loopback("localhost") and is_loopback("[::1]:5000")
    assert not is_loopback("registry.example.com") and not is_loopback("10.0.0.1:5000")


def test_sink_options_are_validated_up_front() -> None:
    sink = open_sink("type=registry,ref=127.0.0.1:5000/a/b:v2,mode=replace,insecure=true")
    assert isinstance(sink, RegistrySink)
    assert (sink.location, sink.tag, sink.mode) == ("registry:127.0.0.1:5000/a/b", "v2", "replace")
    assert sink.client.insecure and sink.client.plain_allowed
    sink.close()
    for spec, word in [
        ("type=registry", "ref"),
        ("type=registry,ref=127.0.0.1:5000/a,mode=merge", "mode"),
        ("type=registry,ref=127.0.0.1:5000/a,insecure=maybe", "insecure"),
        ("type=registry,ref=127.0.0.1:5000/a,colour=blue", "colour"),
        ("type=registry,ref=127.0.0.1:5000/a,username=u", "password"),
        (f"type=registry,ref=127.0.0.1:5000/a@{D}", "digest"),
        ("type=registry,ref=127.0.0.1:5000/A", "repository"),
    ]:
        with pytest.raises(UsageError, match=word):
            open_sink(spec)


def test_secrets_stay_out_of_reprs() -> None:
    sink = open_sink("type=registry,ref=127.0.0.1:5000/a,username=someone,password=hunter2-secret")
    assert sink.client.credentials == Credentials("someone", "hunter2-secret")
    for text in (repr(sink), str(sink), repr(sink.client), repr(sink.client.credentials), repr(sink.client._auth)):
        assert "hunter2" not in text
    sink.close()


def test_plain_http_only_for_loopback_or_insecure() -> None:
    remote = RegistrySink("registry.example.com", "a/b")
    assert not remote.client.plain_allowed and remote.client.base_url == "https://registry.example.com"
    remote.close()


def test_challenges_parse() -> None:
    c = parse_challenge('Bearer realm="https://auth.example.com/token",service="registry.example.com",'
                        'scope="repository:a/b:pull,push"')
    assert c is not None and c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example.com/token", "service": "registry.example.com",
                        "scope": "repository:a/b:pull,push"}
    basic = parse_challenge('Basic realm="peers-realm"')
    assert basic is not None and basic.scheme == "basic"
    assert parse_challenge("Negotiate abc") is None and parse_challenge("") is None


def test_scopes_follow_the_request() -> None:
    get = httpx.Request("GET", "http://r/v2/a/b/manifests/v1")
    post = httpx.Request("POST", "http://r/v2/a/b/blobs/uploads/?mount=sha256:00&from=c/d")
    assert scope_for(get) == ["repository:a/b:pull"]
    assert scope_for(post) == ["repository:a/b:pull,push", "repository:c/d:pull"]
    assert scope_for(httpx.Request("GET", "http://r/v2/")) == []


def _config(tmp_path: Path, auths: dict[str, object]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


def test_docker_config_auth_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded = base64.b64encode(b"alice:pa:ss").decode()
    _config(tmp_path, {
        "http://127.0.0.1:5002/v2/": {"auth": encoded},
        "https://index.docker.io/v1/": {"username": "bob", "password": "pw"},
    })
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert load_docker_credentials("127.0.0.1:5002") == Credentials("alice", "pa:ss")
    assert load_docker_credentials("registry-1.docker.io") == Credentials("bob", "pw")
    assert load_docker_credentials("elsewhere.example.com") is None
    sink = RegistrySink("127.0.0.1:5002", "a")
    assert sink.client.credentials == Credentials("alice", "pa:ss")
    sink.close()


def test_docker_config_bad_auth_is_named_without_its_value(tmp_path: Path) -> None:
    path = _config(tmp_path, {"r.example.com": {"auth": "not base64!!"}})
    with pytest.raises(UsageError, match="auth") as err:
        load_docker_credentials("r.example.com", path)
    assert "not base64!!" not in str(err.value)
    assert load_docker_credentials("r.example.com", tmp_path / "missing.json") is None


def test_variant_tags() -> None:
    tag = variant_tag(D, "zstd-3-0123456789ab")
    assert tag.startswith(tag_prefix(D)) and len(tag) <= 128
    assert is_attachment_tag(tag) and is_attachment_tag(f"sha256-{D.hex}.sig") and is_attachment_tag(f"sha256-{D.hex}")
    assert not is_attachment_tag("v1") and not is_attachment_tag("sha256-short")
