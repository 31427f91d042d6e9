"""The streaming pipeline against real bytes, checked by independent decoders."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import shutil
import subprocess
import threading
import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.imagegen import gz, make_tar
from tests.peers import require_tool
from transcoder.codecs import ZstdParams
from transcoder.codecs.constants import FRAME_SIZE
from transcoder.codecs.framepool import compress_frames
from transcoder.descriptor import OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD
from transcoder.digest import Digest
from transcoder.errors import DigestMismatch, FormatError, SizeLimitExceeded, SizeMismatch
from transcoder.transcode import decode_stream, transcode_stream
from transcoder.writers import FileWriter, NullWriter

TAR = make_tar(7, size=2_000_000, files=30)


class Collect(NullWriter):
    def __init__(self) -> None:
        super().__init__("memory")
        self.buf = bytearray()
        self.committed = False

    def write(self, data: bytes | memoryview) -> None:
        super().write(data)
        self.buf += data

    def commit(self, size: int, digest: Digest) -> None:
        super().commit(size, digest)
        self.committed = True


def run(data: bytes, **kw: object) -> tuple[Collect, object]:
    w = Collect()
    res = transcode_stream(io.BytesIO(data), w, **kw)  # type: ignore[arg-type]
    return w, res


def zstd_cli_decode(data: bytes) -> bytes:
    """An independent decoder: the zstd command-line tool."""
    exe = shutil.which("zstd")
    if exe is None:
        return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(data)
    return subprocess.run([exe, "-dc"], input=data, capture_output=True, check=True).stdout


def test_gzip_to_zstd_round_trip_and_digests() -> None:
    src = gz(TAR)
    w, res = run(src)
    assert w.committed
    assert zstd_cli_decode(bytes(w.buf)) == TAR
    assert res.diff_id == Digest.of(TAR)  # type: ignore[attr-defined]
    assert res.source.digest == Digest.of(src) and res.source.size == len(src)  # type: ignore[attr-defined]
    assert res.source.media_type == OCI_LAYER_GZIP  # type: ignore[attr-defined]
    assert res.target.digest == Digest.of(bytes(w.buf)) and res.target.size == len(w.buf)  # type: ignore[attr-defined]
    assert res.target.media_type == OCI_LAYER_ZSTD  # type: ignore[attr-defined]


def test_multi_member_gzip_as_pigz_writes_it() -> None:
    members = b"".join(gz(TAR[i : i + 300_000]) for i in range(0, len(TAR), 300_000))
    w, res = run(members)
    assert zstd_cli_decode(bytes(w.buf)) == TAR
    assert res.diff_id == Digest.of(TAR)  # type: ignore[attr-defined]


def test_real_pigz_output() -> None:
    pigz = require_tool("pigz")
    src = subprocess.run([pigz, "-6", "-n", "-b", "128"], input=TAR, capture_output=True, check=True).stdout
    w, _res = run(src)
    assert zstd_cli_decode(bytes(w.buf)) == TAR


def test_plain_tar_is_compressed() -> None:
    w, res = run(TAR)
    assert res.source.media_type == OCI_LAYER_TAR  # type: ignore[attr-defined]
    assert zstd_cli_decode(bytes(w.buf)) == TAR


def test_zstd_input_at_same_parameters_is_nothing_to_do() -> None:
    first, _ = run(gz(TAR))
    again, res = run(bytes(first.buf))
    assert res.noop and bytes(again.buf) == bytes(first.buf)  # type: ignore[attr-defined]
    _, other = run(bytes(first.buf), params=ZstdParams(level=1))
    assert not other.noop  # type: ignore[attr-defined]


def test_output_identical_for_any_worker_count() -> None:
    src = gz(TAR)
    outs = {bytes(run(src, workers=n)[0].buf) for n in (1, 2, 3, 4, 8)}
    assert len(outs) == 1


@settings(max_examples=12, deadline=None)
@given(level=st.sampled_from([1, 3, 6]), workers=st.integers(1, 4), cut=st.integers(1, 5), seed=st.integers(0, 3))
def test_property_levels_workers_members(level: int, workers: int, cut: int, seed: int) -> None:
    tar = make_tar(seed, size=200_000, files=5)
    step = max(1, len(tar) // cut)
    src = b"".join(gz(tar[i : i + step], 1 + (i % 9)) for i in range(0, len(tar), step))
    w, res = run(src, params=ZstdParams(level=level), workers=workers)
    ref, _ = run(gz(tar), params=ZstdParams(level=level), workers=1)
    assert bytes(w.buf) == bytes(ref.buf)  # output depends on the tar and parameters only
    assert zstandard.ZstdDecompressor().decompressobj().decompress(bytes(w.buf)) == tar
    assert res.diff_id == Digest.of(tar)  # type: ignore[attr-defined]


def test_expected_digest_mismatch_commits_nothing(tmp_path: pytest.TempPathFactory) -> None:
    out = tmp_path / "out.zst"  # type: ignore[operator]
    with pytest.raises(DigestMismatch, match=r"expected sha256:0{64}"):
        transcode_stream(io.BytesIO(gz(TAR)), FileWriter(out), expect=Digest("sha256:" + "0" * 64))
    assert not out.exists() and not list(tmp_path.iterdir())  # type: ignore[attr-defined]


def test_expected_size_mismatch() -> None:
    src = gz(TAR)
    with pytest.raises(SizeMismatch, match="descriptor says"):
        run(src, expect_size=len(src) + 1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty input"),
        (gz(TAR)[:-100], "truncated gzip"),
        (gz(TAR)[:-8] + (zlib.crc32(TAR) ^ 1).to_bytes(4, "little") + gz(TAR)[-4:], "corrupt gzip"),
        (gz(TAR)[:-4] + (len(TAR) + 1).to_bytes(4, "little"), "corrupt gzip"),
        (gz(TAR) + b"trailing garbage", "garbage after gzip member 1"),
        (b"PK\x03\x04 this is a zip" * 40, "not gzip, zstd or tar"),
    ],
    ids=["empty", "truncated", "crc", "length", "garbage", "unknown"],
)
def test_bad_input_commits_nothing(data: bytes, message: str) -> None:
    w = Collect()
    with pytest.raises(FormatError, match=message):
        transcode_stream(io.BytesIO(data), w, name="layer.gz")
    assert not w.committed


def test_truncated_zstd_input() -> None:
    first, _ = run(gz(TAR))
    with pytest.raises(FormatError, match="truncated zstd"):
        run(bytes(first.buf)[:-7])


def test_decompression_bomb_is_stopped() -> None:
    bomb = gzip.compress(b"\0" * (64 << 20), 9)  # 64 KiB that inflates to 64 MiB
    w = Collect()
    with pytest.raises(SizeLimitExceeded, match="--max-size 1048576"):
        transcode_stream(io.BytesIO(bomb), w, max_size=1 << 20)
    assert not w.committed


def test_decode_stream_matches_pipeline() -> None:
    src = gz(TAR)
    res = decode_stream(io.BytesIO(src))
    assert res.diff_id == Digest.of(TAR) and res.tar_size == len(TAR)
    assert res.source.digest == Digest.of(src)


def test_tee_keeps_canonical_bytes() -> None:
    src = gz(TAR)
    tee = Collect()
    w = Collect()
    transcode_stream(io.BytesIO(src), w, tee=tee)
    assert tee.committed and bytes(tee.buf) == src
    assert hashlib.sha256(tee.buf).hexdigest() == Digest.of(src).hex


def test_params_identity_includes_library() -> None:
    p = ZstdParams(level=3)
    assert p.library.startswith("libzstd ") and p.producible
    assert ZstdParams(level=3, library="libzstd 0.0.1").key != p.key
    assert ZstdParams.from_json(p.to_json()) == p


# -- the frame layout ------------------------------------------------------------

BIG = make_tar(11, size=20_000_000, files=400)  # three frames: 8 MiB, 8 MiB, the rest


class Trickle(io.RawIOBase):
    """A source that answers every read with a few bytes fewer than asked, like a pipe."""

    def __init__(self, data: bytes, seed: int) -> None:
        self._data, self._pos, self._rnd = data, 0, random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), self._rnd.randint(1, 100_000), len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def frame_sizes(data: bytes) -> list[int]:
    """Content size of every zstd frame, read frame by frame by libzstd."""
    sizes = []
    while data:
        d = zstandard.ZstdDecompressor().decompressobj()
        sizes.append(len(d.decompress(data)))
        data = d.unused_data
    return sizes


def test_frames_are_cut_every_8_mib_whatever_the_workers_and_reads() -> None:
    src = gz(BIG)
    outs = {bytes(run(src, workers=n)[0].buf) for n in (1, 2, 5)}
    outs.add(bytes(run(Trickle(src, 3).read(), workers=2)[0].buf))  # type: ignore[arg-type]
    w = Collect()
    transcode_stream(io.BufferedReader(Trickle(src, 4), 1 << 16), w, workers=3)
    outs.add(bytes(w.buf))
    outs.add(compress_frames(BIG, ZstdParams(), workers=2))
    assert len(outs) == 1
    out = outs.pop()
    assert frame_sizes(out) == [FRAME_SIZE, FRAME_SIZE, len(BIG) - 2 * FRAME_SIZE]
    assert zstd_cli_decode(out) == BIG


def test_empty_tar_is_one_empty_frame() -> None:
    w, res = run(gz(b""))
    assert frame_sizes(bytes(w.buf)) == [0] and res.diff_id == Digest.of(b"")  # type: ignore[attr-defined]
    assert bytes(w.buf) == compress_frames(b"", ZstdParams())


def test_tuned_frames_are_what_libzstd_makes_with_those_parameters() -> None:
    """Each frame is libzstd's one-shot output at the level with the named
    parameters over it, whatever the worker count; without tuning the identity
    is the level's alone, as recorded before tuning existed."""
    params = ZstdParams(tuning=ZstdParams.parse_tuning("clog=13,hlog=16"))
    assert params.tuning == (("hlog", 16), ("clog", 13))  # TUNABLES order, whatever the order given
    cctx = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
        3, hash_log=16, chain_log=13))
    oracle = b"".join(cctx.compress(BIG[i : i + FRAME_SIZE]) for i in range(0, len(BIG), FRAME_SIZE))
    outs = {bytes(run(gz(BIG), params=params, workers=n)[0].buf) for n in (1, 3)}
    assert outs == {oracle} and oracle != compress_frames(BIG, ZstdParams(), workers=2)
    assert zstd_cli_decode(oracle) == BIG
    assert "tuning" not in ZstdParams().to_json() and ZstdParams().label == "zstd-3"
    assert params.key != ZstdParams().key and ZstdParams.from_json(params.to_json()) == params
    assert params.label == "zstd-3 hlog=16,clog=13"


class PlainWriter:
    """A BlobWriter that is not a WriterBase: the pipeline hashes the output itself."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.committed: tuple[int, Digest] | None = None

    def write(self, data: bytes | memoryview) -> None:
        self.buf += data

    def commit(self, size: int, digest: Digest) -> None:
        self.committed = (size, digest)

    def abort(self) -> None:
        raise AssertionError("not expected")


def test_any_blob_writer_gets_the_right_digest() -> None:
    w = PlainWriter()
    res = transcode_stream(io.BytesIO(gz(BIG)), w, workers=2)
    assert w.committed == (len(w.buf), Digest.of(bytes(w.buf))) == (res.target.size, res.target.digest)


class FailingWriter(Collect):
    def write(self, data: bytes | memoryview) -> None:
        raise OSError("disk full")


def test_writer_failure_stops_every_thread() -> None:
    before = threading.active_count()
    # Plain tar, thirteen frames: more than the decoder may run ahead of a
    # failing writer (three frames in flight per worker, the one being filled,
    # and the output held one frame to be hashed with the next frame's tar).
    src = io.BytesIO(BIG * 6)
    w = FailingWriter()
    with pytest.raises(OSError, match="disk full"):
        transcode_stream(src, w, workers=2)
    assert not w.committed
    assert threading.active_count() == before  # decode thread and encoder workers are gone
    assert src.tell() < len(BIG) * 6  # the decoder was stopped, not left to read the rest


def test_file_writer_starts_writeback_as_it_goes(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit's fsync is not left all the disk work: every WRITEBACK_STEP bytes,
    writeback of exactly the bytes not yet handed over is started (the real
    sync_file_range, observed on its way)."""
    from transcoder import writers

    real = writers._sync_file_range()
    assert real is not None, "sync_file_range is missing from libc"
    calls: list[tuple[int, int, int]] = []

    def observed(fd: int, offset: int, length: int, flags: int) -> int:
        calls.append((offset, length, flags))
        result: int = real(fd, offset, length, flags)
        assert result == 0
        return result

    monkeypatch.setattr(writers, "_sync_file_range", lambda: observed)
    data = random.Random(7).randbytes(3 * writers.WRITEBACK_STEP + 12345)
    out = tmp_path / "blob"  # type: ignore[operator]
    with FileWriter(out) as w:
        for i in range(0, len(data), 1 << 20):
            w.write(data[i : i + (1 << 20)])
        w.commit(len(data), Digest.of(data))
    assert out.read_bytes() == data
    assert [offset for offset, _, _ in calls] == [0, writers.WRITEBACK_STEP, 2 * writers.WRITEBACK_STEP]
    assert all(length == writers.WRITEBACK_STEP and flags == 2 for _, length, flags in calls)
    calls.clear()
    with FileWriter(tmp_path / "unsynced", fsync=False) as w:  # type: ignore[operator]
        w.write(data)
        w.commit(len(data), Digest.of(data))
    assert calls == []  # no durability asked, no early writeback


def test_frame_compression_result_error_and_cancel() -> None:
    """A frame's compression hands over its bytes or its error, and one cancelled
    before any thread took it is never compressed and says so."""
    from transcoder.codecs.framepool import Cancelled, Compression

    done = Compression()
    assert done.claim() and not done.cancel()
    done.finish(b"frame")
    assert done.result() == b"frame"
    failed = Compression()
    assert failed.claim()
    failed.finish(ValueError("libzstd said no"))
    with pytest.raises(ValueError, match="libzstd said no"):
        failed.result()
    dropped = Compression()
    assert dropped.cancel() and dropped.cancel()
    assert not dropped.claim()
    with pytest.raises(Cancelled):
        dropped.result()
