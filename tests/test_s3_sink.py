"""type=s3 beyond the contract: options, the AWS credential chain, layout,
create-only writes, faults (through tests/faultproxy.py) and many parallel
exporters. Against moto server; the credential tests use a private moto
server with IAM authentication on, so that signatures are really checked."""

from __future__ import annotations

import json
import secrets
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import peers
from tests.faultproxy import Fault, FaultProxy
from tests.sink_contract import (
    S3_KEY_ID,
    S3_REGION,
    check_object_layout,
    randbytes,
    read_all,
    s3_client,
    s3_leftovers,
    write_blob,
)
from tests.sink_exports import check_exports, parallel_exports
from transcoder.digest import Digest
from transcoder.errors import AuthError, SinkError, StoreError, TranscoderError, UsageError
from transcoder.sinks import open_sink
from transcoder.sinks.s3 import S3Sink

pytestmark = pytest.mark.peers
SECRET = "s3-test-" + secrets.token_hex(12)
MIB = 1 << 20


@pytest.fixture(scope="module")
def bucket(moto_s3: peers.MotoS3) -> str:
    name = f"tc-{secrets.token_hex(6)}"
    s3_client(moto_s3.endpoint_url).create_bucket(Bucket=name)
    return name


def spec(endpoint: str, bucket: str, prefix: str, **extra: str) -> str:
    opts = {"type": "s3", "bucket": bucket, "region": S3_REGION, "endpoint_url": endpoint, "prefix": prefix,
            "part_size": "5MiB", "access_key_id": S3_KEY_ID, "secret_access_key": SECRET, **extra}
    return ",".join(f"{k}={v}" for k, v in opts.items())


@pytest.fixture
def sink(moto_s3: peers.MotoS3, bucket: str, tmp_path: Path) -> Iterator[S3Sink]:
    s = open_sink(spec(moto_s3.endpoint_url, bucket, tmp_path.name))
    assert isinstance(s, S3Sink)
    yield s
    s.close()


# -- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "named"), [
    ("type=s3,region=us-east-1", "bucket="),
    ("type=s3,bucket=B_bad,region=us-east-1", "bucket='B_bad'"),
    ("type=s3,bucket=good,region=us-east-1,colour=red", "'colour'"),
    ("type=s3,bucket=good,region=us-east-1,endpoint_url=ftp://x", "endpoint_url='ftp://x'"),
    ("type=s3,bucket=good,region=us-east-1,part_size=1MiB", "part_size='1MiB'"),
    ("type=s3,bucket=good,region=us-east-1,part_size=lots", "part_size='lots'"),
    ("type=s3,bucket=good,region=us-east-1,upload_concurrency=0", "upload_concurrency='0'"),
    ("type=s3,bucket=good,region=us-east-1,prefix=a/../b", "prefix='a/../b'"),
    ("type=s3,bucket=good,region=us-east-1,use_path_style=maybe", "use_path_style='maybe'"),
    ("type=s3,bucket=good,region=us-east-1,access_key_id=AKIA", "access_key_id= and secret_access_key="),
    ("type=s3,bucket=good,region=us-east-1,profile=no-such-profile-here", "profile='no-such-profile-here'"),
])
def test_bad_options_are_named(text: str, named: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(UsageError) as info:
        open_sink(text)
    assert named in str(info.value)


def test_region_is_required_somewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(UsageError, match="region="):
        open_sink("type=s3,bucket=good")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert open_sink("type=s3,bucket=good,prefix=/x/y/").location == "s3:good/x/y"


def test_location_and_repr_hide_credentials(sink: S3Sink, tmp_path: Path) -> None:
    assert sink.location == f"s3:{sink.store.bucket}/{tmp_path.name}"  # type: ignore[attr-defined]
    assert SECRET not in repr(sink) + str(sink) + repr(sink.store) + repr(vars(sink))


# -- layout and conditional writes ---------------------------------------------------------------


def test_layout_under_the_prefix(sink: S3Sink, moto_s3: peers.MotoS3, bucket: str, tmp_path: Path) -> None:
    client = s3_client(moto_s3.endpoint_url)
    check_object_layout(sink, f"{tmp_path.name}/",
                        lambda p: [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=p)["Contents"]])


@pytest.mark.parametrize(("size", "hint"), [(1000, False), (12 * MIB, True), (12 * MIB, False)])
def test_create_only_write_never_replaces(sink: S3Sink, moto_s3: peers.MotoS3, bucket: str, tmp_path: Path,
                                          size: int, hint: bool) -> None:
    """An object already at the blob's key is kept (If-None-Match: *), whichever upload path runs."""
    data = randbytes(32, size)
    digest = Digest.of(data)
    squatter = b"not the blob"
    s3_client(moto_s3.endpoint_url).put_object(Bucket=bucket, Key=f"{tmp_path.name}/blobs/sha256/{digest.hex}", Body=squatter)
    with pytest.raises(StoreError, match="already existed but now holds 12 bytes"):
        write_blob(sink, data, chunk=MIB, hint=str(digest) if hint else None)
    assert read_all(sink, digest) == squatter
    assert s3_leftovers(moto_s3.endpoint_url, bucket, f"{tmp_path.name}/") == []


def test_hinted_blob_already_stored_is_not_uploaded_again(sink: S3Sink, moto_s3: peers.MotoS3) -> None:
    data = randbytes(33, 11 * MIB)
    digest = write_blob(sink, data)
    with FaultProxy(moto_s3.endpoint_url) as proxy:
        via = S3Sink(sink.store.bucket, region=S3_REGION, endpoint_url=proxy.url, prefix=sink.prefix,  # type: ignore[attr-defined]
                     credentials={"aws_access_key_id": S3_KEY_ID, "aws_secret_access_key": SECRET})
        write_blob(via, data, hint=str(digest))
        assert proxy.bytes["up"] < MIB  # a HEAD, no part
        via.close()


def test_missing_bucket_is_named(moto_s3: peers.MotoS3, tmp_path: Path) -> None:
    s = open_sink(spec(moto_s3.endpoint_url, "tc-no-such-bucket", "x"))
    with pytest.raises(SinkError, match="bucket 'tc-no-such-bucket' does not exist"):
        write_blob(s, b"data")
    with pytest.raises(SinkError, match="bucket 'tc-no-such-bucket' does not exist"):
        write_blob(s, randbytes(34, 6 * MIB))


# -- faults ---------------------------------------------------------------------------------------


def via_proxy(proxy: FaultProxy, sink: S3Sink, **extra: str) -> S3Sink:
    bucket = sink.store.bucket  # type: ignore[attr-defined]
    s = open_sink(spec(proxy.url, bucket, sink.prefix.rstrip("/"), retries="1", **extra))
    assert isinstance(s, S3Sink)
    return s


@pytest.mark.parametrize("hint", [False, True])
def test_connection_cut_mid_upload_leaves_nothing(sink: S3Sink, moto_s3: peers.MotoS3, bucket: str, tmp_path: Path,
                                                  hint: bool) -> None:
    data = randbytes(35, 16 * MIB)
    with FaultProxy(moto_s3.endpoint_url) as proxy:
        # Every connection is cut after 2 MiB upstream: small requests pass, no 5 MiB part ever does.
        proxy.schedule(Fault.reset(after=2 * MIB), connections=None)
        cut = via_proxy(proxy, sink)
        with pytest.raises(TranscoderError) as info:
            write_blob(cut, data, hint=str(Digest.of(data)) if hint else None)
        assert proxy.fired and proxy.fired[0][1] == "reset"
        cut.close()
    assert "Transient" in type(info.value).__name__ or isinstance(info.value, SinkError)
    assert SECRET not in str(info.value)
    assert sink.stat_blob(Digest.of(data)) is None
    assert s3_leftovers(moto_s3.endpoint_url, bucket, f"{tmp_path.name}/") == []


def test_truncated_download_is_an_error_not_a_short_blob(sink: S3Sink, moto_s3: peers.MotoS3) -> None:
    data = randbytes(36, 3 * MIB)
    digest = write_blob(sink, data)
    with FaultProxy(moto_s3.endpoint_url) as proxy:
        proxy.schedule(Fault.truncate(after=MIB, direction="down"), connections=None)
        cut = via_proxy(proxy, sink)
        with pytest.raises(TranscoderError):
            read_all(cut, digest)
        cut.close()


def test_parts_are_uploaded_in_parallel(sink: S3Sink, moto_s3: peers.MotoS3) -> None:
    data = randbytes(37, 20 * MIB)
    with FaultProxy(moto_s3.endpoint_url) as proxy:
        proxy.schedule(Fault.delay(0.3, direction="down"), connections=None)  # slow answers: parts overlap
        fast = via_proxy(proxy, sink, upload_concurrency="4")
        write_blob(fast, data, chunk=MIB)
        assert proxy.connections >= 3
        fast.close()
    assert read_all(sink, Digest.of(data)) == data


# -- credentials, with signatures checked ----------------------------------------------------------


@dataclass(frozen=True)
class AuthS3:
    endpoint_url: str
    key_id: str
    secret: str
    bucket: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def auth_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthS3]:
    """A private moto server that checks SigV4, with one IAM user allowed s3:*."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        peers.unavailable("moto[server] is not installed")
    import boto3

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    workdir = tmp_path_factory.mktemp("moto-auth")
    # The first three requests (the IAM setup below) run unauthenticated; then every request is checked.
    argv = ["env", "INITIAL_NO_AUTH_ACTION_COUNT=3", sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = peers.spawn("moto-auth", argv, workdir / "moto.log", workdir)
    try:
        peers.wait_ready(proc, lambda: _listening(port))
        iam = boto3.client("iam", endpoint_url=url, region_name=S3_REGION, aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="ci")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="ci", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="ci")["AccessKey"]
        boto3.client("s3", endpoint_url=url, region_name=S3_REGION, aws_access_key_id=key["AccessKeyId"],
                     aws_secret_access_key=key["SecretAccessKey"]).create_bucket(Bucket="auth-bucket")
        yield AuthS3(url, key["AccessKeyId"], key["SecretAccessKey"], "auth-bucket")
    except peers.PeerUnavailable as exc:
        peers.unavailable(str(exc))
    finally:
        proc.stop()


@pytest.fixture
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def _auth_spec(auth: AuthS3, **extra: str) -> str:
    opts = {"type": "s3", "bucket": auth.bucket, "region": S3_REGION, "endpoint_url": auth.endpoint_url,
            "prefix": secrets.token_hex(4), **extra}
    return ",".join(f"{k}={v}" for k, v in opts.items())


def _round_trip(s: S3Sink) -> None:
    data = randbytes(38, 6 * MIB)
    assert read_all(s, write_blob(s, data)) == data


def test_credentials_from_the_environment(auth_s3: AuthS3, clean_aws_env: pytest.MonkeyPatch) -> None:
    clean_aws_env.setenv("AWS_ACCESS_KEY_ID", auth_s3.key_id)
    clean_aws_env.setenv("AWS_SECRET_ACCESS_KEY", auth_s3.secret)
    _round_trip(open_sink(_auth_spec(auth_s3)))  # type: ignore[arg-type]


def test_credentials_from_a_profile(auth_s3: AuthS3, clean_aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n\n"
                     f"[ci]\naws_access_key_id = {auth_s3.key_id}\naws_secret_access_key = {auth_s3.secret}\n")
    clean_aws_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    _round_trip(open_sink(_auth_spec(auth_s3, profile="ci")))  # type: ignore[arg-type]
    with pytest.raises(AuthError):
        _round_trip(open_sink(_auth_spec(auth_s3)))  # type: ignore[arg-type]


def test_wrong_secret_is_a_clear_error_without_the_secret(auth_s3: AuthS3, clean_aws_env: pytest.MonkeyPatch) -> None:
    wrong = "wrong-" + secrets.token_hex(16)
    s = open_sink(_auth_spec(auth_s3, access_key_id=auth_s3.key_id, secret_access_key=wrong))
    for attempt in (lambda: write_blob(s, b"tiny"), lambda: write_blob(s, randbytes(39, 6 * MIB)),
                    lambda: s.images(), lambda: s.stat_blob(Digest.of(b"x"))):
        with pytest.raises(AuthError) as info:
            attempt()
        text = f"{info.value} {info.value!r} {info.value.__cause__!r}"
        # A HEAD answer has no body, so only its status says why.
        assert "access denied (SignatureDoesNotMatch)" in str(info.value) or "access denied (403)" in str(info.value)
        assert wrong not in text and auth_s3.secret not in text


def test_no_credentials_at_all(moto_s3: peers.MotoS3, bucket: str, clean_aws_env: pytest.MonkeyPatch) -> None:
    s = open_sink(f"type=s3,bucket={bucket},region={S3_REGION},endpoint_url={moto_s3.endpoint_url}")
    with pytest.raises(AuthError, match="no AWS credentials found"):
        write_blob(s, b"data")


# -- many exporters at once -------------------------------------------------------------------------


def test_eight_processes_export_into_one_prefix(moto_s3: peers.MotoS3, bucket: str, tmp_path: Path) -> None:
    text = spec(moto_s3.endpoint_url, bucket, tmp_path.name)
    jobs = parallel_exports(text, tmp_path, processes=8)
    s = open_sink(text)
    assert check_exports(s, jobs, tmp_path) > 8 * 4
    assert s3_leftovers(moto_s3.endpoint_url, bucket, f"{tmp_path.name}/") == []


def test_reader_refuses_a_body_that_ends_early() -> None:
    """The object stores' reader counts bytes itself, whatever the HTTP library noticed."""
    import io

    from transcoder.sinks.objectstore import ObjectReader, buffered

    body = io.BytesIO(b"x" * 1000)
    reader = buffered(ObjectReader(body.read, body.close, 1500, "s3:b: read k", lambda e: StoreError(str(e))))
    with pytest.raises(StoreError, match="ended 500 bytes early"):
        reader.read()
    exact = buffered(ObjectReader(io.BytesIO(b"y" * 10).read, lambda: None, 10, "k", lambda e: StoreError(str(e))))
    assert exact.read() == b"y" * 10
