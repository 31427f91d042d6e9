"""The registry flags of ``transcoder convert`` and ``restore`` (``--src-creds``,
``--src-registry-token``, ``--src-tls-verify``, the ``--dest-*`` twins for a
registry sink, ``--authfile``) through the CLI, against the real registry with
htpasswd auth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.imagegen import config_for, gz, make_tar, write_layout
from tests.registry_support import TokenFront, push_one_layer_image, repo_name
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
    push_one_layer_image(RegistrySink(registry_auth.host, repo, credentials=Credentials(registry_auth.username,
                                                                                        registry_auth.password)), TAR)
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
        # "=": a random token may begin with "-", which argparse would take for an option
        code, _, err = run(capsys, "convert", f"docker://{front.host}/{repo}:v1", f"--src-registry-token={token}",
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


def one_line_error(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("transcoder: ")


def test_dest_creds_push_and_restore(registry_auth: Any, home: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    layout = write_layout(tmp_path / "layout", {"app": [TAR]})
    good = f"{registry_auth.username}:{registry_auth.password}"
    repo = repo_name()
    target = f"type=registry,ref={registry_auth.host}/{repo}:v1"
    code, out, err = run(capsys, "convert", f"oci:{layout}:app", "--no-table", "--to", target, "--dest-creds", good,
                         "--dest-tls-verify=true")
    assert code == 0, err
    assert registry_auth.password not in out + err

    code, _, err = run(capsys, "restore", f"type=registry,ref={registry_auth.host}/{repo}", "v1",
                       "-o", f"oci:{tmp_path / 'restored'}", "--src-creds", good, "--src-tls-verify=false")
    assert code == 0, err
    assert (tmp_path / "restored" / "index.json").is_file()

    code, out, err = run(capsys, "convert", f"oci:{layout}:app", "--no-table", "--to", target)
    assert code == 1 and out == "" and one_line_error(err)
    assert "401" in err and "no credentials given" in err and f"repository {repo}" in err

    code, _, err = run(capsys, "convert", f"oci:{layout}:app", "--no-table", "--to", target,
                       "--dest-creds", f"{registry_auth.username}:bad-pw-0c4")
    assert code == 1 and one_line_error(err) and "401" in err and "rejected" in err and "--dest-creds" in err
    assert "bad-pw-0c4" not in err

    code, _, err = run(capsys, "restore", f"type=registry,ref={registry_auth.host}/{repo}", "v1",
                       "-o", f"oci:{tmp_path / 'restored2'}", "--src-creds", f"{registry_auth.username}:bad-pw-0c4")
    assert code == 1 and one_line_error(err) and "401" in err and "bad-pw-0c4" not in err


def test_dest_registry_token(registry: Any, tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    front = TokenFront(registry.host, {"writer": ("w-pw-4a", "pull,push")})
    try:
        layout = write_layout(tmp_path / "layout", {"app": [TAR]})
        repo = repo_name()
        token = front.issue("writer", [f"repository:{repo}:pull,push"])
        code, _, err = run(capsys, "convert", f"oci:{layout}:app", "--no-table", f"--dest-registry-token={token}",
                           "--to", f"type=registry,ref={front.host}/{repo}:v1")
        assert code == 0, err
        code, _, err = run(capsys, "convert", f"oci:{layout}:app", "--no-table", "--dest-registry-token", "t0k-bad-4a",
                           "--to", f"type=registry,ref={front.host}/{repo_name()}:v1")
        assert code == 1 and one_line_error(err) and "401" in err and "t0k-bad-4a" not in err
        assert not front.token_requests  # a given token is never traded at the token service
    finally:
        front.close()


def test_repo_scoped_auth_keys_through_the_cli(image: str, registry_auth: Any, home: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The host key holds a wrong password, host/NAMESPACE the right one: the sink
    in that namespace and the source under it work, others get a clear 401."""
    ns = repo_name("scoped")
    source_repo = image.partition("/")[2].rsplit(":", 1)[0]
    authfile = tmp_path / "auth.json"
    right = {"username": registry_auth.username, "password": registry_auth.password}
    authfile.write_text(json.dumps({"auths": {
        registry_auth.host: {"username": registry_auth.username, "password": "wrong-pw-77d"},
        f"{registry_auth.host}/{ns}": right, f"{registry_auth.host}/{source_repo}": right,
    }}))
    code, _, err = run(capsys, "convert", f"docker://{image}", "--authfile", str(authfile), "--no-table",
                       "--to", f"type=registry,ref={registry_auth.host}/{ns}/app:zstd")
    assert code == 0, err
    other = repo_name("scoped")
    code, _, err = run(capsys, "convert", f"docker://{image}", "--authfile", str(authfile), "--no-table",
                       "--to", f"type=registry,ref={registry_auth.host}/{other}:zstd")
    assert code == 1 and one_line_error(err) and "401" in err and "rejected" in err and f"repository {other}" in err
    assert f"auths[{registry_auth.host!r}]" in err and "wrong-pw-77d" not in err and registry_auth.password not in err


def test_dest_flag_misuse_is_a_usage_error(tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = write_layout(tmp_path / "layout", {"app": [TAR]})
    src = f"oci:{layout}:app"
    reg = "type=registry,ref=127.0.0.1:5002/a/b:v1"
    pw = "u:secret-pw-bb"
    cases = [
        (["convert", src, "--dest-creds", pw, "--to", f"type=local,dest={tmp_path}"], "--dest-creds", "type=local"),
        (["convert", src, "--dest-tls-verify=false", "--to", f"type=local,dest={tmp_path}"], "--dest-tls-verify",
         "type=registry"),
        (["convert", "blob.gz", "-o", "out.zst", "--dest-registry-token", "t"], "--dest-registry-token", "--to"),
        (["convert", src, "--dest-creds", pw, "--dest-registry-token", "t", "--to", reg], "--dest-creds", "not both"),
        (["convert", src, "--dest-creds", pw, "--to", f"{reg},username=u,password=secret-pw-bb"], "--dest-creds",
         "username="),
        (["convert", src, "--dest-registry-token", "t", "--to", f"{reg},username=u,password=secret-pw-bb"],
         "--dest-registry-token", "username="),
        (["convert", src, "--dest-tls-verify=false", "--to", f"{reg},insecure=true"], "--dest-tls-verify", "insecure="),
        (["restore", f"type=local,dest={tmp_path}", "v1", "-o", f"oci:{tmp_path / 'o'}", "--src-creds", pw],
         "--src-creds", "type=local"),
        (["restore", f"{reg},username=u,password=secret-pw-bb", "v1", "-o", f"oci:{tmp_path / 'o'}",
          "--src-creds", pw], "--src-creds", "username="),
        (["restore", reg, "v1", "-o", f"oci:{tmp_path / 'o'}", "--src-tls-verify", "--src-registry-token", "t",
          "--src-creds", pw], "--src-creds", "not both"),
    ]
    for argv, option, words in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and one_line_error(err), (argv, err)
        assert option in err and words in err and "secret-pw-bb" not in err, (argv, err)
    with pytest.raises(SystemExit) as exit_:
        main(["convert", src, "--dest-tls-verify=maybe", "--to", reg])
    assert exit_.value.code == 2 and "--dest-tls-verify" in capsys.readouterr().err
