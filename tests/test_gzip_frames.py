"""gzip inflated into frames: the C twin (``transcoder._isal``, ISA-L writing
into the frame) and the Python twin (python-isal pieces joined), the same
checks against both.

The native one is skipped when ``transcoder._isal`` was not built (no
compiler or no libisal-dev at install time), except under CI=true, where its
absence fails. A differential property test feeds both the same arbitrary
bytes in the same arbitrary pieces and requires the same frames or the same
error message.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import peers
from transcoder import accel
from transcoder.digest import Digest
from transcoder.errors import FormatError
from transcoder.transcode import transcode_stream
from transcoder.writers import NullWriter

Factory = Callable[[str, int], accel.GzipFrames]
IMPLS = ("python", "native")


def factory(impl: str) -> Factory:
    impls = accel.gzip_frame_impls()
    if impl not in impls:
        if peers.in_ci():
            pytest.fail("transcoder._isal is not built under CI=true (libisal-dev and pip install -e . must build it)",
                        pytrace=False)
        pytest.skip("transcoder._isal is not built (no compiler or no libisal-dev at install time)")
    return impls[impl]


@pytest.fixture(params=IMPLS)
def make(request: pytest.FixtureRequest) -> Factory:
    return factory(request.param)


def payload(n: int, seed: int = 1) -> bytes:
    return b"".join(b"entry %d of member %d: %x\n" % (i, seed, i * 2654435761 % 2**32) for i in range(n))


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def inflate(make: Factory, data: bytes, piece: int, frame_size: int) -> tuple[list[bytes], int]:
    """Every frame (the last one short, maybe empty) and the member count; raises what the inflater raises."""
    frames, out = make("blob.gz", frame_size), []
    for p in pieces(data, piece):
        frames.feed(p)
        while (frame := frames.next()) is not None:
            out.append(frame)
    out.append(frames.finish())
    return out, frames.members


def outcome(make: Factory, data: bytes, piece: int, frame_size: int) -> tuple[str, object]:
    try:
        return "ok", inflate(make, data, piece, frame_size)
    except FormatError as exc:
        return "error", str(exc)


MEMBERS = [payload(3000, 1), b"", payload(10, 2), payload(20000, 3)]
MULTI = b"".join(gzip.compress(m, mtime=0) for m in MEMBERS)


# (piece, frame size): bytes fed a few at a time, and frames from one byte to more than the stream.
SPLITS = [(p, f) for p in (1, 2, 7, 4096, 1 << 20) for f in (1, 1000, 65536, 1 << 22) if f > 1 or p >= 4096]


@pytest.mark.parametrize(("piece", "frame_size"), SPLITS)
def test_multi_member_stream_becomes_exact_frames(make: Factory, piece: int, frame_size: int) -> None:
    frames, members = inflate(make, MULTI, piece, frame_size)
    tar = b"".join(MEMBERS)
    assert b"".join(frames) == tar and members == len(MEMBERS)
    assert all(len(f) == frame_size for f in frames[:-1]) and len(frames[-1]) < frame_size


def test_a_stream_that_ends_on_a_frame_boundary_ends_with_an_empty_frame(make: Factory) -> None:
    tar = payload(4096)
    tar = tar[: len(tar) // 4 * 4]
    frames, _ = inflate(make, gzip.compress(tar), 4096, len(tar) // 4)
    assert frames[-1] == b"" and b"".join(frames) == tar and len(frames) == 5


def test_output_per_call_is_bounded_by_one_frame(make: Factory) -> None:
    """A small input that inflates to 64 MiB comes out a frame at a time."""
    bomb = gzip.compress(bytes(64 << 20), compresslevel=9)
    frames = make("bomb.gz", 1 << 20)
    frames.feed(bomb)
    first = frames.next()
    assert first is not None and len(first) == 1 << 20


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "blob.gz: truncated gzip stream (no complete member)"),
        (MULTI[:-1], "blob.gz: truncated gzip stream in member 4"),
        (gzip.compress(b"x" * 1000)[:15], "blob.gz: truncated gzip stream (no complete member)"),
        (MULTI + b"\x00", "blob.gz: garbage after gzip member 4"),
        (MULTI + b"\x1f", "blob.gz: garbage after gzip member 4"),
        (MULTI + b"\x1f\x8c", "blob.gz: garbage after gzip member 4"),
        (MULTI + b"\x1f\x8b", "blob.gz: truncated gzip stream in member 5"),
    ],
    ids=["empty", "truncated", "truncated-first", "garbage", "half-magic", "bad-magic", "magic-only"],
)
def test_bad_streams_fail_with_one_line_naming_the_blob(make: Factory, data: bytes, message: str) -> None:
    for piece in (1, 3, 1 << 20):
        with pytest.raises(FormatError) as info:
            inflate(make, data, piece, 4096)
        assert str(info.value) == message


def test_corrupt_trailer_and_data_are_named_by_member(make: Factory) -> None:
    one = gzip.compress(payload(2000))
    bad_crc = one[:-8] + bytes([one[-8] ^ 1]) + one[-7:]
    bad_len = one[:-4] + bytes([one[-4] ^ 1]) + one[-3:]
    bad_data = one[:40] + bytes(50) + one[90:]
    for blob, member in ((bad_crc, 1), (one + bad_len, 2), (bad_data, 1)):
        with pytest.raises(FormatError, match=rf"^blob\.gz: corrupt gzip data in member {member}: Error -?\d+ "):
            inflate(make, blob, 1000, 4096)


def test_native_object_without_init_refuses_instead_of_crashing() -> None:
    factory("native")
    cls = type(accel.native_gzip_frames("x", 1))
    bare = cls.__new__(cls)
    for call in (bare.next, bare.finish, lambda: bare.feed(b"x")):
        with pytest.raises(RuntimeError, match="before __init__"):
            call()


def test_feeding_before_the_input_is_used_up_is_refused(make: Factory) -> None:
    frames = make("blob.gz", 16)
    frames.feed(gzip.compress(payload(100)))
    with pytest.raises(RuntimeError, match="not used up"):
        frames.feed(b"more")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.integers(0, len(MULTI)),
    flips=st.lists(st.tuples(st.integers(0, len(MULTI) - 1), st.integers(1, 255)), max_size=3),
    tail=st.binary(max_size=4),
    piece=st.integers(1, 5000),
    frame_size=st.integers(1, 70000),
)
def test_twins_agree_on_any_bytes_in_any_pieces(cut: int, flips: list[tuple[int, int]], tail: bytes, piece: int,
                                                 frame_size: int) -> None:
    native, python = factory("native"), factory("python")
    data = bytearray(MULTI[:cut])
    for at, mask in flips:
        if at < len(data):
            data[at] ^= mask
    blob = bytes(data) + tail
    frame_size = max(frame_size, len(blob) // 64 or 1)  # bound the frame count, not the cases
    assert outcome(native, blob, piece, frame_size) == outcome(python, blob, piece, frame_size)


def test_pipeline_output_is_the_same_with_either_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole frames from ISA-L or joined pieces: the same zstd bytes, diffID and source digest."""
    factory("native")
    blob = MULTI + gzip.compress(payload(50000, 9))
    results = {}
    for native in (True, False):
        monkeypatch.setattr(accel, "NATIVE_GZIP", native)
        w = NullWriter("out")
        r = transcode_stream(io.BytesIO(blob), w, name="src.gz")
        results[native] = (r.target.digest, r.diff_id, r.source.digest, r.target.size)
    assert results[True] == results[False]
    assert results[True][1] == Digest.of(b"".join(MEMBERS) + payload(50000, 9))
    assert results[True][2] == Digest.of(blob)


def test_raw_deflate_and_zlib_wrappers_are_not_gzip(make: Factory) -> None:
    raw = zlib.compress(payload(100))
    with pytest.raises(FormatError, match=r"^blob\.gz: corrupt gzip data in member 1"):
        inflate(make, raw, 4096, 4096)
