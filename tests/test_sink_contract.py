"""Every sink type passes the one contract suite (tests/sink_contract.py)."""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import peers
from tests.sink_contract import (
    S3_KEY_ID,
    S3_REGION,
    SinkContract,
    azure_leftovers,
    new_bucket,
    new_container,
    s3_leftovers,
)
from transcoder.sinks import open_sink
from transcoder.sinks.base import Sink

S3_SECRET = "s3-contract-" + secrets.token_hex(12)
RUN = secrets.token_hex(4)  # a reused registry keeps what earlier runs pushed: new names each run


class TestLocalSink(SinkContract):
    def sink_spec(self, tmp_path: Path, request: pytest.FixtureRequest) -> str:
        return f"type=local,dest={tmp_path / 'store'}"

    def make_sink(self, tmp_path: Path, request: pytest.FixtureRequest) -> Sink:
        self.root = tmp_path / "store"
        return open_sink(self.sink_spec(tmp_path, request))

    def leftovers(self, sink: Sink) -> list[str]:
        return sorted(p.name for p in (self.root / ".transcoder" / "ingest").iterdir())


@pytest.fixture(scope="module")
def s3_bucket(moto_s3: peers.MotoS3) -> str:
    return new_bucket(moto_s3.endpoint_url)


@pytest.mark.peers
class TestS3Sink(SinkContract):
    large = 11 * (1 << 20) + 5  # three 5 MiB parts

    def sink_spec(self, tmp_path: Path, request: pytest.FixtureRequest) -> str:
        url = request.getfixturevalue("moto_s3").endpoint_url
        bucket = request.getfixturevalue("s3_bucket")
        return (f"type=s3,bucket={bucket},region={S3_REGION},endpoint_url={url},prefix={tmp_path.name},part_size=5MiB,"
                f"access_key_id={S3_KEY_ID},secret_access_key={S3_SECRET}")

    def make_sink(self, tmp_path: Path, request: pytest.FixtureRequest) -> Sink:
        self.where = (request.getfixturevalue("moto_s3").endpoint_url, request.getfixturevalue("s3_bucket"), tmp_path.name + "/")
        return open_sink(self.sink_spec(tmp_path, request))

    def leftovers(self, sink: Sink) -> list[str]:
        return s3_leftovers(*self.where)

    def secrets(self) -> list[str]:
        return [S3_SECRET]


@pytest.fixture(scope="module")
def az_container(azurite: peers.Azurite) -> str:
    return new_container(azurite.connection_string)


@pytest.mark.peers
class TestAzblobSink(SinkContract):
    large = 3 * (1 << 20) + 5  # twelve 256 KiB blocks and a bit

    def credential(self, azurite: peers.Azurite, container: str) -> str:
        return f"account_key={azurite.key}"

    def sink_spec(self, tmp_path: Path, request: pytest.FixtureRequest) -> str:
        azurite, container = request.getfixturevalue("azurite"), request.getfixturevalue("az_container")
        return (f"type=azblob,account_url={azurite.blob_endpoint},name={container},prefix={tmp_path.name},"
                f"part_size=256KiB,{self.credential(azurite, container)}")

    def make_sink(self, tmp_path: Path, request: pytest.FixtureRequest) -> Sink:
        azurite, container = request.getfixturevalue("azurite"), request.getfixturevalue("az_container")
        self.where = (azurite.connection_string, container, tmp_path.name + "/")
        self.secret = self.credential(azurite, container).split("=", 1)[1]
        return open_sink(self.sink_spec(tmp_path, request))

    def leftovers(self, sink: Sink) -> list[str]:
        return azure_leftovers(*self.where)

    def secrets(self) -> list[str]:
        return [self.secret]


@pytest.mark.peers
class TestAzblobSinkWithSas(TestAzblobSink):
    """The same contract through a container SAS token instead of the account key."""

    def credential(self, azurite: peers.Azurite, container: str) -> str:
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        token = generate_container_sas(
            azurite.account, container, account_key=azurite.key,
            permission=ContainerSasPermissions(read=True, write=True, create=True, delete=True, list=True),
            expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2))
        return f"sas_token={token}"

    def secrets(self) -> list[str]:
        # The signature is the secret part of a SAS token; the rest (expiry, permissions) may be shown.
        return [p.split("=", 1)[1] for p in self.secret.split("&") if p.startswith("sig=")]


@pytest.mark.peers
class TestRegistrySink(SinkContract):
    def sink_spec(self, tmp_path: Path, request: pytest.FixtureRequest) -> str:
        host = request.getfixturevalue("registry").host
        return f"type=registry,ref={host}/contract-{RUN}/{tmp_path.name.lower()}"

    def make_sink(self, tmp_path: Path, request: pytest.FixtureRequest) -> Sink:
        return open_sink(self.sink_spec(tmp_path, request))


@pytest.fixture(scope="module")
def gha_emulator() -> Iterator[object]:
    from transcoder.gha.emulator import Emulator

    with Emulator(visibility_delay=0) as emu:
        yield emu


class TestGhaSink(SinkContract):
    def sink_spec(self, tmp_path: Path, request: pytest.FixtureRequest) -> str:
        emu = request.getfixturevalue("gha_emulator")
        self.token = emu.mint_token()
        return f"type=gha,scope={tmp_path.name},url_v2={emu.results_url},token={self.token}"

    def make_sink(self, tmp_path: Path, request: pytest.FixtureRequest) -> Sink:
        return open_sink(self.sink_spec(tmp_path, request))

    def secrets(self) -> list[str]:
        return [self.token]
