"""The C extension and its pure-Python twin: the same checks against both.

Every test that takes ``walker`` runs once per implementation. The native one
is skipped when ``transcoder._native`` was not built, except under CI=true,
where CI builds it and its absence fails. A differential property test feeds
both the same arbitrary bytes in the same arbitrary pieces and requires the
same outcome, error message included.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import peers
from transcoder import accel
from transcoder.errors import FormatError
from transcoder.transcode import decode_stream
from transcoder.writers import NullWriter

Factory = Callable[[str], accel.FrameWalker]
IMPLS = ("python", "native")
MAGIC = b"\x28\xb5\x2f\xfd"


def factory(impl: str) -> Factory:
    impls = accel.frame_walkers()
    if impl not in impls:
        if peers.in_ci():
            pytest.fail("transcoder._native is not built under CI=true (pip install -e . must build it)", pytrace=False)
        pytest.skip("transcoder._native is not built (no C compiler at install time)")
    return impls[impl]


@pytest.fixture(params=IMPLS)
def walker(request: pytest.FixtureRequest) -> Factory:
    return factory(request.param)


@pytest.fixture(params=IMPLS)
def pipeline_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Make the pipeline's zstd decode use one implementation."""
    factory(request.param)
    monkeypatch.setattr(accel, "NATIVE", request.param == "native")
    yield request.param


class Capture(NullWriter):
    """Keeps what it is given."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.buf = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        super().write(data)
        self.buf += data


def payload(n: int, seed: int = 1) -> bytes:
    """Compressible but not trivial bytes (text with varying numbers)."""
    return b"".join(b"line %d of layer %d: %x\n" % (i, seed, i * 2654435761 % 2**32) for i in range(n))


def zst(data: bytes, level: int = 3, *, checksum: bool = True, size: bool = True, threads: int = 1) -> bytes:
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=checksum, write_content_size=size, threads=threads)
    return cctx.compress(data)


def skippable(content: bytes, nibble: int = 0) -> bytes:
    return bytes([0x50 | nibble, 0x2A, 0x4D, 0x18]) + len(content).to_bytes(4, "little") + content


def tiny_blocks(n: int, *, last: bool = True) -> bytes:
    """One frame of ``n`` empty raw blocks: the walker's worst case."""
    frame = MAGIC + b"\x00\x00" + (0).to_bytes(3, "little") * n
    return frame + ((1).to_bytes(3, "little") if last else b"")


def feed_all(make: Factory, data: bytes, piece: int, name: str = "blob") -> None:
    w = make(name)
    view = memoryview(data)
    for i in range(0, len(data), piece):
        w.feed(view[i : i + piece])
    w.finish()


def outcome(make: Factory, data: bytes, cuts: list[int]) -> str:
    """'ok' or the error message, feeding ``data`` split at ``cuts``."""
    w = make("blob")
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    try:
        for a, b in itertools.pairwise(bounds):
            w.feed(data[a:b])
        w.finish()
    except FormatError as exc:
        return str(exc)
    return "ok"


VALID = {
    "one frame": zst(payload(20000)),
    "no checksum, no size": zst(payload(20000), checksum=False, size=False),
    "level 19": zst(payload(3000), level=19),
    "multi-threaded jobs": zst(payload(200000), threads=2),
    "incompressible (raw blocks)": zst(os.urandom(300_000)),
    "rle block": zst(b"\x00" * 500_000),
    "empty content": zst(b""),
    "two frames": zst(payload(100)) + zst(payload(200, 2)),
    "skippable frames": skippable(b"meta") + zst(payload(100)) + skippable(b"", 0xF),
    "tiny blocks": tiny_blocks(1000),
}


@pytest.mark.parametrize("case", sorted(VALID))
@pytest.mark.parametrize("piece", [1, 3, 7, 4096, 1 << 20])
def test_complete_streams_pass(walker: Factory, case: str, piece: int) -> None:
    data = VALID[case]
    if piece < 4096 and len(data) > 200_000:
        data = VALID["two frames"]  # tiny pieces of a big stream are slow in the Python twin
    feed_all(walker, data, piece)


def test_empty_input_is_complete(walker: Factory) -> None:
    walker("blob").finish()


@pytest.mark.parametrize("case", ["one frame", "two frames", "skippable frames", "tiny blocks"])
def test_every_truncation_is_caught(walker: Factory, case: str) -> None:
    data = VALID[case]
    boundaries = _frame_ends(data)
    step = max(1, len(data) // 400)
    for cut in [*range(1, len(data), step), *(b - 1 for b in boundaries), *(b + 1 for b in boundaries)]:
        if cut <= 0 or cut >= len(data) or cut in boundaries:
            continue
        with pytest.raises(FormatError, match=r"^blob: truncated zstd stream$"):
            feed_all(walker, data[:cut], 4096)


def _frame_ends(data: bytes) -> set[int]:
    """Offsets where a frame ends (the walker may stop there), via libzstd."""
    ends, pos = set(), 0
    while pos < len(data):
        if data[pos : pos + 4] == MAGIC:
            pos += _compressed_size(data[pos:])
        else:
            pos += 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
        ends.add(pos)
    return ends


def _compressed_size(frame: bytes) -> int:
    obj = zstandard.ZstdDecompressor().decompressobj()
    obj.decompress(frame)
    return len(frame) - len(obj.unused_data)


def frame_with_header(fhd: int, blocks: list[tuple[int, bytes]], *, fill: int = 0xA5) -> bytes:
    """A frame with descriptor ``fhd``, its optional header fields filled with ``fill``, and
    ``blocks`` of (block type, payload); the last one is marked last."""
    fcs = (1 if fhd & 0x20 else 0, 2, 4, 8)[fhd >> 6]
    header_len = (0 if fhd & 0x20 else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
    out = MAGIC + bytes([fhd]) + bytes([fill]) * header_len
    for i, (kind, payload) in enumerate(blocks):
        size = len(payload) if kind != 1 else 200  # an RLE block repeats one byte
        out += ((size << 3) | (kind << 1) | (i == len(blocks) - 1)).to_bytes(3, "little") + payload
    return out + (b"\x01\x02\x03\x04" if fhd & 4 else b"")


HEADERS = [fcs << 6 | single << 5 | checksum << 2 | dict_id
           for fcs in range(4) for single in (0, 1) for checksum in (0, 1) for dict_id in range(4)]


@pytest.mark.parametrize("fhd", HEADERS)
def test_every_frame_header_layout(walker: Factory, fhd: int) -> None:
    """Up to 13 header bytes after the descriptor (window, 4-byte dictionary id, 8-byte size)."""
    frame = frame_with_header(fhd, [(0, b"raw"), (1, b"r"), (2, b"\xff" * 9)])
    data = frame + skippable(b"x")
    for piece in (1, 2, 5, 13, len(data)):
        feed_all(walker, data, piece)
    for cut in range(1, len(data)):
        if cut != len(frame):
            with pytest.raises(FormatError, match="truncated zstd stream"):
                feed_all(walker, data[:cut], 3)


def test_garbage_after_frame(walker: Factory) -> None:
    with pytest.raises(FormatError, match=r"^layer\.zst: garbage after zstd frame$"):
        feed_all(walker, VALID["one frame"] + b"PK\x03\x04", 4096, name="layer.zst")


def test_garbage_instead_of_magic(walker: Factory) -> None:
    with pytest.raises(FormatError, match="garbage after zstd frame"):
        feed_all(walker, b"\x1f\x8b\x08\x00" + bytes(100), 7)


def test_reserved_block_type_is_corrupt(walker: Factory) -> None:
    bad = MAGIC + b"\x00\x00" + (0b110).to_bytes(3, "little")  # block type 3 is reserved
    with pytest.raises(FormatError, match=r"^blob: corrupt zstd block header$"):
        feed_all(walker, bad, 1)


def test_missing_checksum_is_truncation(walker: Factory) -> None:
    with pytest.raises(FormatError, match="truncated zstd stream"):
        feed_all(walker, VALID["one frame"][:-2], 1 << 20)


def test_tiny_blocks_without_last_block(walker: Factory) -> None:
    with pytest.raises(FormatError, match="truncated zstd stream"):
        feed_all(walker, tiny_blocks(5000, last=False), 1 << 16)


SMALL = [VALID[k] for k in sorted(VALID) if len(VALID[k]) < 20_000]
# Frames assembled from parts: any descriptor, header bytes and block headers.
BUILT = st.builds(
    frame_with_header,
    st.integers(0, 255),
    st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=5)), min_size=1, max_size=4),
    fill=st.integers(0, 255),
)


@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=40).map(lambda b: MAGIC + b),
        st.tuples(BUILT, st.integers(0, 100), st.binary(max_size=4)).map(lambda t: t[0][: len(t[0]) - t[1]] + t[2]),
        st.tuples(st.sampled_from(SMALL), st.integers(0, 20_000), st.binary(max_size=8)).map(
            lambda t: t[0][: t[1]] + t[2]  # a valid stream, cut anywhere, maybe followed by junk
        ),
    ),
    cuts=st.lists(st.integers(0, 10**6), max_size=6),
)
@settings(max_examples=400, deadline=None)
def test_twins_agree_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    """Same bytes, same pieces: the C and Python walkers give the same outcome."""
    results = {name: outcome(make, data, cuts) for name, make in _all_impls().items()}
    assert len(set(results.values())) == 1, results


def _all_impls() -> dict[str, Factory]:
    factory("native")  # skip (or fail under CI) when only the Python twin exists
    return accel.frame_walkers()


def test_native_argument_errors() -> None:
    factory("native")
    native = accel._native
    assert native is not None
    with pytest.raises(TypeError):
        native.FrameWalker("x", "not an exception class")
    w = native.FrameWalker("x", FormatError)
    with pytest.raises(TypeError):
        w.feed("text is not bytes")
    with pytest.raises(RuntimeError, match="before __init__"):
        native.FrameWalker.__new__(native.FrameWalker).finish()


def test_pipeline_decodes_zstd_with_each_implementation(pipeline_impl: str) -> None:
    tar = payload(50000)
    blob = zst(tar)
    res = decode_stream(io.BytesIO(blob), name="v.zst")
    assert res.tar_size == len(tar)
    with pytest.raises(FormatError, match=r"^v\.zst: truncated zstd stream$"):
        decode_stream(io.BytesIO(blob[:-3]), name="v.zst")
    with pytest.raises(FormatError, match=r"^v\.zst: garbage after zstd frame$"):
        decode_stream(io.BytesIO(blob + b"junk"), name="v.zst")


def test_pipeline_transcodes_zstd_source_with_each_implementation(pipeline_impl: str) -> None:
    from transcoder.transcode import transcode_stream

    made = Capture("first")
    transcode_stream(io.BytesIO(gzip.compress(payload(30000))), made, name="src.gz")
    blob = bytes(made.buf)
    w = NullWriter("out")
    result = transcode_stream(io.BytesIO(blob), w, name="src.zst")
    assert result.noop and w.done
    with pytest.raises(FormatError, match="truncated zstd stream"):
        transcode_stream(io.BytesIO(blob[:-1]), NullWriter("out"), name="src.zst")


def test_environment_forces_python_twin() -> None:
    code = "from transcoder import accel; print(accel.IMPLEMENTATION, sorted(accel.frame_walkers()))"
    env = {**os.environ, accel.NO_NATIVE_ENV: "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("python ")
    env.pop(accel.NO_NATIVE_ENV)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    built = [n for n, impls in (("native", accel.frame_walkers()), ("isal", accel.gzip_frame_impls()),
                                ("sha", accel.sha256_impls())) if "native" in impls]
    assert out.split()[0] == ("+".join(built) or "python")
