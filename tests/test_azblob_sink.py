"""type=azblob beyond the contract: options, credential sources, layout,
create-only writes, faults (through tests/faultproxy.py) and many parallel
exporters. Against Azurite, which checks Shared Key and SAS signatures."""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import peers
from tests.faultproxy import Fault, FaultProxy
from tests.sink_contract import (
    azure_container,
    azure_leftovers,
    check_object_layout,
    randbytes,
    read_all,
    write_blob,
)
from tests.sink_exports import check_exports, parallel_exports
from transcoder.digest import Digest
from transcoder.errors import AuthError, SinkError, StoreError, TranscoderError, TransientError, UsageError
from transcoder.sinks import open_sink
from transcoder.sinks.azblob import AzblobSink

pytestmark = pytest.mark.peers
MIB = 1 << 20
AZURE_VARS = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_ACCOUNT")


@pytest.fixture(autouse=True)
def clean_azure_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in AZURE_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def container(azurite: peers.Azurite) -> str:
    client = azure_container(azurite.connection_string)
    client.create_container()
    return str(client.container_name)


def spec(url: str, container: str, prefix: str, **extra: str) -> str:
    opts = {"type": "azblob", "account_url": url, "name": container, "prefix": prefix, "part_size": "1MiB", **extra}
    return ",".join(f"{k}={v}" for k, v in opts.items())


@pytest.fixture
def sink(azurite: peers.Azurite, container: str, tmp_path: Path) -> Iterator[AzblobSink]:
    s = open_sink(spec(azurite.blob_endpoint, container, tmp_path.name, account_key=azurite.key))
    assert isinstance(s, AzblobSink)
    yield s
    s.close()


def sas(azurite: peers.Azurite, container: str, key: str | None = None) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        azurite.account, container, account_key=key or azurite.key,
        permission=ContainerSasPermissions(read=True, write=True, create=True, delete=True, list=True),
        expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2))


def round_trip(s: AzblobSink, size: int = 3 * MIB) -> None:
    data = randbytes(size, size)
    assert read_all(s, write_blob(s, data)) == data


# -- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "named"), [
    ("type=azblob,account_url=http://h/acct", "name="),
    ("type=azblob,name=cache", "account_url="),
    ("type=azblob,account_url=h/acct,name=cache", "account_url='h/acct'"),
    ("type=azblob,account_url=http://h/acct,name=Bad_Name", "name='Bad_Name'"),
    ("type=azblob,account_url=http://h/acct,name=cache,colour=red", "'colour'"),
    ("type=azblob,account_url=http://h/acct,name=cache,part_size=1KiB", "part_size='1KiB'"),
    ("type=azblob,account_url=http://h/acct,name=cache,upload_concurrency=100", "upload_concurrency='100'"),
    ("type=azblob,account_url=http://h/acct,name=cache,prefix=a/./b", "prefix='a/./b'"),
    ("type=azblob,account_url=http://h/acct,name=cache,retries=-1", "retries='-1'"),
])
def test_bad_options_are_named(text: str, named: str) -> None:
    with pytest.raises(UsageError) as info:
        open_sink(text)
    assert named in str(info.value)


def test_malformed_connection_string_is_not_echoed() -> None:
    secret = "Zm9vYmFy" + secrets.token_hex(8)
    with pytest.raises(UsageError) as info:
        open_sink(f"type=azblob,name=cache,connection_string=AccountKey={secret};nonsense")
    assert secret not in f"{info.value} {info.value!r} {info.value.__cause__!r}"


def test_location_and_repr_hide_the_key(sink: AzblobSink, azurite: peers.Azurite, container: str, tmp_path: Path) -> None:
    assert sink.location == f"azblob:{azurite.account}/{container}/{tmp_path.name}"
    assert azurite.key not in repr(sink) + str(sink) + repr(sink.store) + repr(vars(sink))


# -- credential sources ---------------------------------------------------------------------------


def test_account_key_from_the_environment(azurite: peers.Azurite, container: str, clean_azure_env: pytest.MonkeyPatch) -> None:
    clean_azure_env.setenv("AZURE_STORAGE_ACCOUNT_KEY", azurite.key)
    round_trip(open_sink(spec(azurite.blob_endpoint, container, "env-key")))  # type: ignore[arg-type]


def test_connection_string_from_the_environment(azurite: peers.Azurite, container: str,
                                                clean_azure_env: pytest.MonkeyPatch) -> None:
    clean_azure_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    s = open_sink(f"type=azblob,name={container},prefix=env-cs,part_size=1MiB")
    assert s.location == f"azblob:{azurite.account}/{container}/env-cs"
    round_trip(s)  # type: ignore[arg-type]


def test_connection_string_option_and_buildkit_key_name(azurite: peers.Azurite, container: str) -> None:
    round_trip(open_sink(spec(azurite.blob_endpoint, container, "opt-cs", connection_string=azurite.connection_string)))  # type: ignore[arg-type]
    round_trip(open_sink(spec(azurite.blob_endpoint, container, "opt-bk", secret_access_key=azurite.key)))  # type: ignore[arg-type]


def test_sas_token_from_the_environment(azurite: peers.Azurite, container: str, clean_azure_env: pytest.MonkeyPatch) -> None:
    clean_azure_env.setenv("AZURE_STORAGE_SAS_TOKEN", "?" + sas(azurite, container))
    round_trip(open_sink(spec(azurite.blob_endpoint, container, "env-sas")))  # type: ignore[arg-type]


def _wrong_key() -> str:
    import base64

    return base64.b64encode(secrets.token_bytes(64)).decode()


def test_wrong_account_key_is_a_clear_error_without_the_key(azurite: peers.Azurite, container: str) -> None:
    wrong = _wrong_key()
    s = open_sink(spec(azurite.blob_endpoint, container, "wrong-key", account_key=wrong))
    for attempt in (lambda: write_blob(s, b"tiny"), lambda: write_blob(s, randbytes(40, 3 * MIB)), lambda: s.images(),
                    lambda: s.stat_blob(Digest.of(b"x")), lambda: s.find_variants(Digest.of(b"x"))):
        with pytest.raises(AuthError, match="authentication failed") as info:
            attempt()
        assert wrong not in f"{info.value} {info.value!r} {info.value.__cause__!r}"


def test_wrong_sas_signature_is_a_clear_error_without_it(azurite: peers.Azurite, container: str) -> None:
    token = sas(azurite, container, key=_wrong_key())
    sig = next(p.split("=", 1)[1] for p in token.split("&") if p.startswith("sig="))
    s = open_sink(spec(azurite.blob_endpoint, container, "wrong-sas", sas_token=token))
    with pytest.raises(AuthError) as info:
        write_blob(s, randbytes(41, 3 * MIB))
    chain = f"{info.value} {info.value!r} {info.value.__cause__!r} {info.value.__context__!r}"
    assert sig not in chain and token not in chain


def test_no_credentials_is_an_auth_error(azurite: peers.Azurite, container: str) -> None:
    s = open_sink(spec(azurite.blob_endpoint, container, "anonymous"))
    with pytest.raises(AuthError):
        write_blob(s, b"data")


def test_missing_container_is_named(azurite: peers.Azurite) -> None:
    s = open_sink(spec(azurite.blob_endpoint, "tc-no-such-container", "x", account_key=azurite.key))
    for size in (10, 3 * MIB):
        with pytest.raises(SinkError, match="container 'tc-no-such-container' does not exist"):
            write_blob(s, randbytes(42, size))


# -- layout and conditional writes ---------------------------------------------------------------


def test_layout_under_the_prefix(sink: AzblobSink, azurite: peers.Azurite, container: str, tmp_path: Path) -> None:
    client = azure_container(azurite.connection_string, container)
    check_object_layout(sink, f"{tmp_path.name}/", lambda p: list(client.list_blob_names(name_starts_with=p)))


@pytest.mark.parametrize(("size", "hint"), [(1000, False), (3 * MIB, True), (3 * MIB, False)])
def test_create_only_write_never_replaces(sink: AzblobSink, azurite: peers.Azurite, container: str, tmp_path: Path,
                                          size: int, hint: bool) -> None:
    data = randbytes(43, size)
    digest = Digest.of(data)
    squatter = b"not the blob"
    azure_container(azurite.connection_string, container).upload_blob(f"{tmp_path.name}/blobs/sha256/{digest.hex}", squatter)
    with pytest.raises(StoreError, match="already existed but now holds 12 bytes"):
        write_blob(sink, data, hint=str(digest) if hint else None)
    assert read_all(sink, digest) == squatter
    assert azure_leftovers(azurite.connection_string, container, f"{tmp_path.name}/") == []


# -- faults ---------------------------------------------------------------------------------------


def via_proxy(proxy: FaultProxy, sink: AzblobSink, azurite: peers.Azurite, **extra: str) -> AzblobSink:
    container = sink.store.name  # type: ignore[attr-defined]
    s = open_sink(spec(proxy.url, container, sink.prefix.rstrip("/"), account_key=azurite.key, retries="0", **extra))
    assert isinstance(s, AzblobSink)
    return s


def test_hinted_blob_already_stored_is_not_uploaded_again(sink: AzblobSink, azurite: peers.Azurite) -> None:
    data = randbytes(44, 5 * MIB)
    digest = write_blob(sink, data)
    with FaultProxy(azurite.blob_endpoint) as proxy:
        write_blob(via_proxy(proxy, sink, azurite), data, hint=str(digest))
        assert proxy.bytes["up"] < MIB


@pytest.mark.parametrize("hint", [False, True])
def test_connection_cut_mid_upload_leaves_nothing(sink: AzblobSink, azurite: peers.Azurite, container: str,
                                                  tmp_path: Path, hint: bool) -> None:
    data = randbytes(45, 12 * MIB)
    with FaultProxy(azurite.blob_endpoint) as proxy:
        # Every connection is cut after 2 MiB upstream: small requests pass, no 4 MiB block ever does.
        proxy.schedule(Fault.reset(after=2 * MIB), connections=None)
        cut = via_proxy(proxy, sink, azurite, part_size="4MiB")
        with pytest.raises(TransientError) as info:
            write_blob(cut, data, hint=str(Digest.of(data)) if hint else None)
        assert proxy.fired and proxy.fired[0][1] == "reset"
    assert azurite.key not in str(info.value)
    assert sink.stat_blob(Digest.of(data)) is None
    assert azure_leftovers(azurite.connection_string, container, f"{tmp_path.name}/") == []


def test_truncated_download_is_an_error_not_a_short_blob(sink: AzblobSink, azurite: peers.Azurite) -> None:
    data = randbytes(46, 3 * MIB)
    digest = write_blob(sink, data)
    with FaultProxy(azurite.blob_endpoint) as proxy:
        proxy.schedule(Fault.truncate(after=MIB, direction="down"), connections=None)
        with pytest.raises(TranscoderError):
            read_all(via_proxy(proxy, sink, azurite), digest)


def test_blocks_are_staged_in_parallel(sink: AzblobSink, azurite: peers.Azurite) -> None:
    data = randbytes(47, 8 * MIB)
    with FaultProxy(azurite.blob_endpoint) as proxy:
        proxy.schedule(Fault.delay(0.3, direction="down"), connections=None)  # slow answers: blocks overlap
        write_blob(via_proxy(proxy, sink, azurite, upload_concurrency="4"), data, chunk=MIB)
        assert proxy.connections >= 3
    assert read_all(sink, Digest.of(data)) == data


# -- many exporters at once -------------------------------------------------------------------------


def test_eight_processes_export_into_one_prefix(azurite: peers.Azurite, container: str, tmp_path: Path) -> None:
    text = spec(azurite.blob_endpoint, container, tmp_path.name, account_key=azurite.key)
    jobs = parallel_exports(text, tmp_path, processes=8)
    s = open_sink(text)
    assert check_exports(s, jobs, tmp_path) > 8 * 4
    assert azure_leftovers(azurite.connection_string, container, f"{tmp_path.name}/") == []
