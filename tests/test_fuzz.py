"""Bounded fuzzing (hypothesis) of every parser that reads untrusted bytes;
the long, coverage-guided run is tests/fuzz/run_atheris.py."""

from __future__ import annotations

import gzip

import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import docker_archive, json_manifest, layer_stream, manifest_doc, records
from tests.imagegen import make_tar

TAR = make_tar(5, size=60_000, files=4)
GZ = gzip.compress(TAR, 6, mtime=0)
ZST = zstandard.ZstdCompressor(level=3, threads=1).compress(TAR)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 4096))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        else:
            data += data[pos : pos + draw(st.integers(1, 2048))]
    return bytes(data)


@FAST
@given(mutated(GZ))
def test_mutated_gzip(data: bytes) -> None:
    layer_stream(data)


@FAST
@given(mutated(ZST))
def test_mutated_zstd(data: bytes) -> None:
    layer_stream(data)


@FAST
@given(st.binary(max_size=4096))
def test_random_bytes_as_layer(data: bytes) -> None:
    layer_stream(data)


@FAST
@given(st.binary(max_size=2048))
def test_random_bytes_as_manifest(data: bytes) -> None:
    manifest_doc(data)
    records(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
descriptor_like = st.fixed_dictionaries({
    "mediaType": st.sampled_from(["application/vnd.oci.image.layer.v1.tar+gzip", "x", 3]),
    "digest": st.sampled_from(["sha256:" + "a" * 64, "sha256:../../etc", "md5:00", ""]),
    "size": st.sampled_from([0, -1, 10, "10", 2**70, True]),
})


@FAST
@given(st.fixed_dictionaries({
    "schemaVersion": st.sampled_from([2, 1, "2", None]),
    "config": descriptor_like | json_values,
    "layers": st.lists(descriptor_like | json_values, max_size=4) | json_values,
    "manifests": st.lists(descriptor_like | json_values, max_size=4) | json_values,
}))
def test_structured_manifests(obj: dict[str, object]) -> None:
    json_manifest(obj)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=512) | json_values.map(lambda v: __import__("json").dumps(v).encode()))
def test_docker_archive_manifest_json(data: bytes) -> None:
    docker_archive(data)


def test_second_member_cut_inside_its_header() -> None:
    import io

    import pytest

    from transcoder.errors import FormatError
    from transcoder.transcode import transcode_stream
    from transcoder.writers import NullWriter

    with pytest.raises(FormatError, match="truncated gzip stream in member 2"):
        transcode_stream(io.BytesIO(GZ + GZ[:5]), NullWriter("x"))


@FAST
@given(st.binary(max_size=400) | st.text(max_size=200).map(lambda t: ('Bearer realm="' + t + '",scope=x').encode()))
def test_www_authenticate_headers(data: bytes) -> None:
    from tests.fuzz.targets import www_authenticate

    www_authenticate(data)


@FAST
@given(st.binary(max_size=600) | json_values.map(lambda v: __import__("json").dumps({"errors": [v]}).encode()))
def test_registry_error_bodies(data: bytes) -> None:
    from tests.fuzz.targets import registry_error_body

    registry_error_body(data)


@FAST
@given(st.binary(max_size=600) | st.tuples(st.binary(min_size=1, max_size=1), json_values).map(
    lambda p: p[0] + __import__("json").dumps(p[1]).encode()))
def test_twirp_responses(data: bytes) -> None:
    from tests.fuzz.targets import twirp_response

    twirp_response(data)
