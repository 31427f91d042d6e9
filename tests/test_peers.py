"""Each peer fixture gives a working server, and the harness behaves as documented."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import tarfile
import uuid
from pathlib import Path

import boto3
import httpx
import pytest
from azure.storage.blob import BlobServiceClient
from botocore.config import Config

from tests import peers

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def unique(prefix: str) -> str:
    """A name no earlier run used, since reused peers keep their state."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# --- harness behaviour (no peer needed) ----------------------------------------------------------


def test_require_tool_finds_a_present_tool() -> None:
    assert Path(peers.require_tool("sh")).name == "sh"


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_tool_fails_under_ci_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch, ci: str,
                                                         outcome: type[BaseException]) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no-such-tool-b41c not found on PATH"):
        peers.require_tool("no-such-tool-b41c")


def test_transcoder_home_is_private(transcoder_home: Path) -> None:
    assert os.environ["TRANSCODER_HOME"] == str(transcoder_home)
    assert transcoder_home.is_dir()
    assert not transcoder_home.is_relative_to(Path.home() / ".cache")


def test_command_failure_names_stderr_and_hides_password() -> None:
    with pytest.raises(peers.CommandFailed) as info:
        peers.run("sh", "-c", "echo broken >&2; exit 3", "--user", "tester:hunter2")
    message = str(info.value)
    assert "status 3" in message
    assert "broken" in message
    assert "hunter2" not in message
    assert "tester:***" in message
    assert peers.redact(["x", "--dest-creds=u:pw"]) == ["x", "--dest-creds=u:***"]


def test_server_that_dies_while_starting_reports_its_log(tmp_path: Path) -> None:
    proc = peers.spawn("crasher", ["sh", "-c", "echo cannot bind >&2; exit 4"], tmp_path / "crasher.log", tmp_path)
    with pytest.raises(peers.PeerUnavailable, match=r"(?s)crasher exited with status 4.*cannot bind"):
        peers.wait_ready(proc, lambda: False)


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    proc = peers.spawn("group", ["sh", "-c", "sleep 300 & echo $! > child.pid; wait"], tmp_path / "g.log", tmp_path)
    assert peers.poll(lambda: (tmp_path / "child.pid").exists(), 10.0)
    child = int((tmp_path / "child.pid").read_text())
    proc.stop()
    assert proc.popen.returncode is not None
    assert peers.poll(lambda: not Path(f"/proc/{child}").exists() or _is_zombie(child), 10.0)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# --- each peer answers -----------------------------------------------------------------------------


@pytest.mark.peers
def test_registry_answers_v2(registry: peers.Registry) -> None:
    response = httpx.get(f"{registry.url}/v2/", trust_env=False)
    assert response.status_code == 200
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"


@pytest.mark.peers
def test_running_peer_is_reused_not_restarted(registry: peers.Registry, tmp_path: Path) -> None:
    logged = len(peers.STARTUP)
    with peers.registry_peer(tmp_path / "second") as again:
        assert again.host == registry.host
        assert again.log is None
    assert peers.STARTUP[logged:] == [f"registry: reused the server on {registry.host}"]
    del peers.STARTUP[logged:]
    assert not (tmp_path / "second").exists()
    assert httpx.get(f"{registry.url}/v2/", trust_env=False).status_code == 200


@pytest.mark.peers
def test_auth_registry_requires_basic_credentials(registry_auth: peers.AuthRegistry) -> None:
    url = f"{registry_auth.url}/v2/"
    anonymous = httpx.get(url, trust_env=False)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Basic ")
    wrong = httpx.get(url, auth=(registry_auth.username, registry_auth.password + "x"), trust_env=False)
    assert wrong.status_code == 401
    good = httpx.get(url, auth=(registry_auth.username, registry_auth.password), trust_env=False)
    assert good.status_code == 200
    assert registry_auth.password not in repr(registry_auth)


@pytest.mark.peers
def test_azurite_blob_round_trip(azurite: peers.Azurite) -> None:
    payload = os.urandom(70_000)
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.create_container(unique("peers-"))
    try:
        container.upload_blob("dir/blob.bin", payload)
        assert container.download_blob("dir/blob.bin").readall() == payload
    finally:
        container.delete_container()
    assert azurite.blob_endpoint == f"http://127.0.0.1:{peers.AZURITE_PORT}/devstoreaccount1"
    assert azurite.key not in repr(azurite)


@pytest.mark.peers
def test_moto_s3_round_trip(moto_s3: peers.MotoS3) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing",
                      config=Config(s3={"addressing_style": "path"}))
    bucket = unique("peers-")
    payload = os.urandom(10_000)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a/b", Body=payload)
    assert s3.get_object(Bucket=bucket, Key="a/b")["Body"].read() == payload
    assert s3.get_object(Bucket=bucket, Key="a/b", Range="bytes=10-19")["Body"].read() == payload[10:20]


@pytest.mark.peers
def test_containerd_answers_and_namespaces_are_fresh(containerd: peers.Containerd) -> None:
    version = containerd.ctr("version")
    assert "Server:" in version.stdout
    names = {containerd.fresh_namespace() for _ in range(20)}
    assert len(names) == 20
    listed = containerd.ctr("-n", names.pop(), "images", "ls", "-q")
    assert listed.stdout.strip() == ""
    with pytest.raises(peers.CommandFailed, match="no-such-subcommand"):
        containerd.ctr("no-such-subcommand")
    assert containerd.ctr("no-such-subcommand", check=False).returncode != 0


@pytest.mark.peers
def test_skopeo_runs(skopeo: str) -> None:
    assert peers.run(skopeo, "--version").stdout.startswith("skopeo version ")


@pytest.mark.peers
def test_node_peers_hold_pinned_packages(node_peers: Path) -> None:
    def version(package: str) -> str:
        manifest = json.loads((node_peers / "node_modules" / package / "package.json").read_text())
        return str(manifest["version"])

    assert version("@actions/cache") == "6.3.0"
    assert version("azurite") == "3.35.0"
    assert (node_peers / "node_modules" / ".bin" / "azurite-blob").exists()


# --- the peers work together: skopeo pushes, the registry serves, containerd unpacks ----------------


def _write_blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_oci_layout(layout: Path, tag: str) -> str:
    """A one-layer gzip image for this machine's platform; returns the manifest digest."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    layer_tar = _tar_of({"hello.txt": b"hello from the peers test\n", "bin/data": os.urandom(4096)})
    layer = _write_blob(layout, gzip.compress(layer_tar, mtime=0))
    arch = GOARCH.get(platform.machine(), platform.machine())
    config = _write_blob(layout, json.dumps({
        "architecture": arch, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer_tar).hexdigest()}"]},
    }).encode())
    manifest = _write_blob(layout, json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }).encode())
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, **manifest, "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return str(manifest["digest"])


@pytest.mark.peers
@pytest.mark.parametrize("fixture", ["registry", "registry_auth"])
def test_skopeo_push_then_containerd_pull(fixture: str, request: pytest.FixtureRequest, tmp_path: Path,
                                          skopeo: str, containerd: peers.Containerd) -> None:
    target: peers.Registry = request.getfixturevalue(fixture)
    auth = (target.username, target.password) if isinstance(target, peers.AuthRegistry) else None
    creds = [":".join(auth)] if auth else []
    digest = make_oci_layout(tmp_path / "layout", "v1")
    ref = f"{target.host}/{unique('peers/img-')}:v1"

    peers.run(skopeo, "copy", "--dest-tls-verify=false", *(["--dest-creds", *creds] if creds else []),
              f"oci:{tmp_path / 'layout'}:v1", f"docker://{ref}")
    name, tag = ref.split("/", 1)[1].rsplit(":", 1)
    served = httpx.get(f"{target.url}/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST},
                       auth=auth, trust_env=False)
    assert served.status_code == 200
    assert served.headers["docker-content-digest"] == digest

    namespace = containerd.fresh_namespace()
    containerd.ctr("-n", namespace, "images", "pull", "--plain-http", *(["--user", *creds] if creds else []), ref)
    check = containerd.ctr("-n", namespace, "images", "check")
    assert "complete" in check.stdout
    assert digest in containerd.ctr("-n", namespace, "images", "ls").stdout
