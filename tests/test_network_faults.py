"""Network faults between the client and every real peer.

A fault-injecting TCP proxy (tests/faultproxy.py) sits between each sink and
its server: the emulator of the Actions cache, Azurite, the registry and moto.
Each schedule resets, truncates, stalls or delays connections at chosen byte
offsets. Every run must either succeed with correct data or fail with a
TranscoderError (one line) in bounded time, and afterwards a direct,
unfaulted reader must never see a partial blob or a broken record.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import peers
from tests.faultproxy import Fault, FaultProxy
from tests.sink_contract import S3_KEY_ID, S3_REGION, new_bucket, new_container, randbytes, write_blob
from transcoder.codecs import ZstdParams
from transcoder.descriptor import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor
from transcoder.digest import Digest
from transcoder.errors import TranscoderError
from transcoder.records import ImageRecord, VariantRecord
from transcoder.sinks import open_sink
from transcoder.sinks.base import Sink

MiB = 1 << 20
SIZE = 3 * MiB + 4321
SCHEDULES: list[tuple[str, list[Fault], int | None]] = [
    ("reset-up-early", [Fault.reset(after=200, direction="up")], 1),
    ("reset-up-mid", [Fault.reset(after=MiB, direction="up")], 1),
    ("reset-down-early", [Fault.reset(after=20, direction="down")], 1),
    ("truncate-down", [Fault.truncate(after=60, direction="down")], 1),
    ("reset-every-3rd-kb", [Fault.reset(after=3000, direction="up")], 3),
    ("stall-2s", [Fault.stall(after=100, seconds=2.0, direction="down")], 2),
    ("slow-bytes", [Fault.delay(0.01, direction="down")], None),
    ("reset-always", [Fault.reset(after=0, direction="up")], None),
]
OUTCOMES: dict[str, int] = {"runs": 0, "succeeded": 0, "failed cleanly": 0, "checks": 0}


@dataclass
class Target:
    name: str
    upstream: str  # URL the proxy forwards to
    spec: Callable[[str, str], str]  # (base URL to use, unique prefix) -> sink spec
    secrets: list[str]


def _s3(moto: peers.MotoS3) -> Target:
    bucket = new_bucket(moto.endpoint_url)
    secret = "nf-" + secrets.token_hex(8)
    return Target("s3", moto.endpoint_url, lambda url, p: (
        f"type=s3,bucket={bucket},region={S3_REGION},endpoint_url={url},prefix={p},part_size=5MiB,retries=1,"
        f"access_key_id={S3_KEY_ID},secret_access_key={secret}"), [secret])


def _azblob(az: peers.Azurite) -> Target:
    container = new_container(az.connection_string)
    return Target("azblob", "http://127.0.0.1:" + az.blob_endpoint.split(":")[2].split("/")[0], lambda url, p: (
        f"type=azblob,account_url={url}/{az.account},name={container},prefix={p},part_size=256KiB,retries=1,"
        f"account_key={az.key}"), [az.key])


def _registry(reg: peers.Registry) -> Target:
    return Target("registry", reg.url, lambda url, p: f"type=registry,ref={url.split('//')[1]}/faults/{p}", [])


@pytest.fixture(scope="module")
def emulator() -> Iterator[Any]:
    from transcoder.gha.emulator import Emulator

    with Emulator(visibility_delay=0) as emu:
        yield emu


def _gha(emu: Any) -> Target:
    token = emu.mint_token()
    return Target("gha", emu.results_url.rstrip("/"), lambda url, p: (
        f"type=gha,scope={p},url_v2={url}/,token={token},timeout=20s"), [token])


TARGETS = {
    "s3": lambda r: _s3(r.getfixturevalue("moto_s3")),
    "azblob": lambda r: _azblob(r.getfixturevalue("azurite")),
    "registry": lambda r: _registry(r.getfixturevalue("registry")),
    "gha": lambda r: _gha(r.getfixturevalue("emulator")),
}


def _exercise(sink: Sink, data: bytes, prefix: str) -> tuple[Digest, VariantRecord, ImageRecord]:
    digest = write_blob(sink, data, hint=f"sha256:{'1' * 64}-{prefix}")
    source = Descriptor(OCI_LAYER_GZIP, Digest.of(prefix.encode()), 10)
    rec = VariantRecord(source, Digest.of(data), Descriptor(OCI_LAYER_ZSTD, digest, len(data)), ZstdParams(3))
    sink.put_variant(rec)
    manifest = sink.put_manifest(b'{"schemaVersion":2,"layers":[]}', "application/vnd.oci.image.manifest.v1+json")
    image = ImageRecord(f"img-{prefix}", manifest)
    sink.put_image(image)
    return digest, rec, image


def _check_visible(direct: Sink, data: bytes, prefix: str) -> None:
    """Whatever a faulted run left, an unfaulted reader sees it whole or not at all."""
    digest = Digest.of(data)
    size = direct.stat_blob(digest)
    assert size in (None, len(data))
    if size is not None:
        with direct.open_blob(digest) as f:
            assert f.read() == data
    for rec in direct.find_variants(Digest.of(prefix.encode())):
        assert rec.target.digest == digest and direct.stat_blob(digest) == len(data)
    image = direct.images().get(f"img-{prefix}")
    if image is not None:
        assert direct.get_manifest(image.root) == b'{"schemaVersion":2,"layers":[]}'
    OUTCOMES["checks"] += 1


@pytest.mark.peers
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fault_schedules(target: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    t = TARGETS[target](request)
    data = randbytes(hash(target) & 0xFFFF, SIZE)
    with FaultProxy(t.upstream) as proxy:
        for name, faults, connections in SCHEDULES:
            prefix = f"{name}-{secrets.token_hex(3)}"
            proxy.clear()
            proxy.schedule(*faults, connections=connections)
            OUTCOMES["runs"] += 1
            try:
                sink = open_sink(t.spec(proxy.url.rstrip("/"), prefix))
                try:
                    _exercise(sink, data, prefix)
                finally:
                    sink.close()
                OUTCOMES["succeeded"] += 1
            except TranscoderError as exc:
                message = str(exc)
                assert "\n" not in message and message, f"{name}: {message!r}"
                assert not any(s in message for s in t.secrets), f"{name}: secret in error"
                OUTCOMES["failed cleanly"] += 1
            proxy.clear()
            direct = open_sink(t.spec(t.upstream.rstrip("/"), prefix))
            try:
                _check_visible(direct, data, prefix)
            finally:
                direct.close()


def test_zz_report(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints how many schedules ran and how many outcomes were checked."""
    with capsys.disabled():
        print(f"\nnetwork faults: {OUTCOMES}")
    assert OUTCOMES["runs"] == 0 or OUTCOMES["checks"] == OUTCOMES["runs"]
