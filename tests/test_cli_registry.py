"""The registry flags of ``transcoder convert`` and ``restore`` (``--src-creds``,
``--src-registry-token``, ``--src-tls-verify``, ``--authfile``) through the CLI,
against the real registry with htpasswd auth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.imagegen import config_for, gz, make_tar, write_layout
from tests.registry_support import TokenFront, repo_name
from transcoder.cli import main
from transcoder.descriptor import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from transcoder.records import ImageRecord
from transcoder.registry.credentials import Credentials
from transcoder.sinks.base import put_bytes
from transcoder.sinks.registry import RegistrySink

pytestmark = pytest.mark.peers
TAR = make_tar(31, size=200_000, files=6)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No auth file anywhere unless the test writes one."""
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return tmp_path


@pytest.fixture
def image(registry_auth: Any) -> str:
    """A gzip image pushed to the htpasswd registry; its reference."""
    repo = repo_name()
    sink = RegistrySink(registry_auth.host, repo, credentials=Credentials(registry_auth.username,
                                                                          registry_auth.password))
    layer = put_bytes(sink, gz(TAR), OCI_LAYER_GZIP)
    config = put_bytes(sink, config_for([TAR]), OCI_CONFIG)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(),
                           "layers": [layer.to_json()]}).encode()
    sink.put_image(ImageRecord("v1", sink.put_manifest(manifest, OCI_MANIFEST)))
    sink.close()
    return f"{registry_auth.host}/{repo}:v1"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_src_creds_right_and_wrong(image: str, registry_auth: Any, home: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    good = f"{registry_auth.username}:{registry_auth.password}"
    code, out, err = run(capsys, "convert", f"docker://{image}", "--src-creds", good, "--src-tls-verify=true",
                         "--to", f"type=local,dest={tmp_path / 'out'}", "--no-table", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["converted"] == 1 and result["source"]["mediaType"] == OCI_MANIFEST
    assert registry_auth.password not in out + err

    code, out, err = run(capsys, "convert", f"docker://{image}", "--src-creds", f"{registry_auth.username}:bad-pw-6d1",
                         "--to", f"type=local,dest={tmp_path / 'out2'}", "--no-table")
    host, _, rest = image.partition("/")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("transcoder: ")
    assert "401" in err and "rejected" in err and f"registry {host}" in err and f"repository {rest[:-3]}" in err
    assert "bad-pw-6d1" not in err

    code, _, err = run(capsys, "convert", f"docker://{image}", "--to", f"type=local,dest={tmp_path / 'out3'}",
                       "--no-table")
    assert code == 1 and "401" in err and "no credentials given" in err


def test_src_insecure_flags_parse(image: str, registry_auth: Any, home: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    # Loopback registries may speak plain HTTP anyway; the flags must still be accepted and work.
    creds = f"{registry_auth.username}:{registry_auth.password}"
    for flag in ("--src-tls-verify=false", "--src-insecure"):
        code, _, err = run(capsys, "convert", f"docker://{image}", "--src-creds", creds, flag,
                           "--to", f"type=local,dest={tmp_path / flag.strip('-')}", "--no-table")
        assert code == 0, err
    with pytest.raises(SystemExit) as exit_:
        main(["convert", f"docker://{image}", "--src-tls-verify=maybe", "--to", "type=local,dest=x"])
    assert exit_.value.code == 2 and "--src-tls-verify" in capsys.readouterr().err


def test_authfile_for_source_sink_and_restore(image: str, registry_auth: Any, home: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {registry_auth.host: {
        "username": registry_auth.username, "password": registry_auth.password}}}))
    target = f"{registry_auth.host}/{repo_name()}:zstd"
    code, _, err = run(capsys, "convert", f"docker://{image}", "--authfile", str(authfile),
                       "--to", f"type=registry,ref={target}", "--no-table")
    assert code == 0, err
    code, _, err = run(capsys, "restore", f"type=registry,ref={target.rsplit(':', 1)[0]}", "zstd",
                       "-o", f"oci:{tmp_path / 'restored'}", "--authfile", str(authfile))
    assert code == 0, err
    index = json.loads((tmp_path / "restored" / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "zstd"
    code, _, err = run(capsys, "convert", f"docker://{image}", "--authfile", str(tmp_path / "missing.json"),
                       "--to", f"type=local,dest={tmp_path / 'x'}", "--no-table")
    assert code == 2 and "missing.json" in err and "no such file" in err


def test_registry_sink_password_never_echoed(registry_auth: Any, home: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    layout = write_layout(tmp_path / "layout", {"app": [TAR]})
    ref = f"{registry_auth.host}/{repo_name()}:v1"
    code, _, err = run(capsys, "convert", f"oci:{layout}:app", "--no-table",
                       "--to", f"type=registry,ref={ref},username={registry_auth.username},password=wrong-pw-83e")
    assert code == 1 and "401" in err and "rejected" in err and "wrong-pw-83e" not in err
    # A comma cuts a password in two; the tail is not echoed as a bad option.
    code, _, err = run(capsys, "convert", f"oci:{layout}:app", "--no-table",
                       "--to", f"type=registry,ref={ref},username=u,password=ab,tail-of-secret")
    assert code == 2 and "password" in err and "tail-of-secret" not in err


def test_src_registry_token(registry: Any, tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    front = TokenFront(registry.host, {"reader": ("r-pw-19", "pull"), "writer": ("w-pw-19", "pull,push")})
    try:
        repo = repo_name()
        sink = RegistrySink(front.host, repo, credentials=Credentials("writer", "w-pw-19"))
        config = put_bytes(sink, config_for([TAR]), OCI_CONFIG)
        layer = put_bytes(sink, gz(TAR), OCI_LAYER_GZIP)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(),
                               "layers": [layer.to_json()]}).encode()
        sink.put_image(ImageRecord("v1", sink.put_manifest(manifest, OCI_MANIFEST)))
        sink.close()
        token = front.issue("reader", [f"repository:{repo}:pull"])
        code, _, err = run(capsys, "convert", f"docker://{front.host}/{repo}:v1", "--src-registry-token", token,
                           "--to", f"type=local,dest={tmp_path / 'out'}", "--no-table")
        assert code == 0, err
        before = len(front.token_requests)
        code, _, err = run(capsys, "convert", f"docker://{front.host}/{repo}:v1", "--src-registry-token", "t0k-bad",
                           "--to", f"type=local,dest={tmp_path / 'out2'}", "--no-table")
        assert code == 1 and "401" in err and "t0k-bad" not in err
        assert len(front.token_requests) == before  # a given token is never traded at the token service
    finally:
        front.close()


def test_flag_misuse_is_a_usage_error(tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = write_layout(tmp_path / "layout", {"app": [TAR]})
    cases = [
        (["convert", f"oci:{layout}:app", "--src-creds", "u:secret-pw-aa", "--to", f"type=local,dest={tmp_path}"],
         "docker:// SRC"),
        (["convert", "docker://127.0.0.1:5002/a/b:v1", "--src-creds", "u:secret-pw-aa", "--src-registry-token", "t",
          "--to", f"type=local,dest={tmp_path}"], "not both"),
        (["convert", "blob.gz", "-o", "out.zst", "--src-insecure"], "docker:// SRC"),
    ]
    for argv, words in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and words in err and "secret-pw-aa" not in err, err


def test_src_creds_without_password_off_a_terminal(tmp_path: Path, home: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "transcoder", "convert", "docker://127.0.0.1:5002/a/b:v1",
                        "--src-creds", "someone", "--to", f"type=local,dest={tmp_path}"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no password" in r.stderr
