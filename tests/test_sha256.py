"""SHA-256 with the x86 SHA extensions (transcoder._sha256) against hashlib,
and the pipeline's use of it: two streams hashed together give exactly the
digests each gives alone, whatever the split of the bytes."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.imagegen import make_tar
from transcoder import accel, hashing
from transcoder.digest import Digest
from transcoder.writers import NullWriter

IMPLS = accel.sha256_impls()
NATIVE: Callable[[], Any] | None = IMPLS.get("native")
needs_native = pytest.mark.skipif(NATIVE is None, reason="this CPU has no SHA extensions (hashlib is used)")


def test_the_extension_is_built_in_ci() -> None:
    """With a compiler (CI), the extension builds; whether it is used depends on the CPU."""
    if os.environ.get("CI") == "true":
        assert accel._sha256 is not None


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("n", [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 4095, 4096, 100_003])
def test_one_stream_matches_hashlib_whole_and_in_pieces(impl: str, n: int) -> None:
    data = os.urandom(n)
    assert IMPLS[impl](data).hexdigest() == hashlib.sha256(data).hexdigest()
    h = IMPLS[impl]()
    for i in range(0, n, 7):
        h.update(memoryview(data)[i : i + 7])
    assert h.digest() == hashlib.sha256(data).digest()


@needs_native
def test_interface_copy_and_refusals() -> None:
    assert NATIVE is not None
    h = NATIVE(b"abc")
    assert (h.name, h.digest_size, h.block_size) == ("sha256", 32, 64)
    c = h.copy()
    c.update(b"def")
    assert h.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    assert c.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()
    assert Digest.from_hasher(h) == Digest.of(b"abc")
    with pytest.raises(TypeError, match="encoded"):
        h.update("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must differ"):
        accel._sha256.update_pair(h, b"x", h, b"y")  # type: ignore[union-attr]


@needs_native
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.binary(max_size=3000), st.lists(st.tuples(st.integers(0, 700), st.integers(0, 700)),
                                                                       min_size=1, max_size=30))
def test_pairs_give_each_stream_its_own_digest(a: bytes, b: bytes, cuts: list[tuple[int, int]]) -> None:
    assert NATIVE is not None
    ha, hb = NATIVE(), NATIVE()
    ia = ib = 0
    for ka, kb in cuts:
        hashing.update_pair(ha, a[ia : ia + ka], hb, b[ib : ib + kb])
        ia, ib = ia + ka, ib + kb
    ha.update(a[ia:])
    hb.update(b[ib:])
    assert ha.digest() == hashlib.sha256(a).digest()
    assert hb.digest() == hashlib.sha256(b).digest()


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_hashing_after_isal_inflate_in_the_same_thread(impl: str) -> None:
    """ISA-L's AVX code leaves the vector registers' upper halves in use; the
    native hasher clears them first (VZEROUPPER) and must still hash right."""
    from isal import isal_zlib

    data = os.urandom(3 << 20)
    packed = isal_zlib.compress(data)
    for _ in range(3):
        assert isal_zlib.decompress(packed) == data
        h = IMPLS[impl]()
        h.update(data)
        assert h.digest() == hashlib.sha256(data).digest()


def test_update_pair_falls_back_for_other_hashers() -> None:
    a, b = hashlib.sha256(), hashing.new_sha256()
    hashing.update_pair(a, b"left", b, b"right")
    assert (a.hexdigest(), b.hexdigest()) == (hashlib.sha256(b"left").hexdigest(), hashlib.sha256(b"right").hexdigest())


@needs_native
def test_threads_hash_at_once_with_the_gil_released() -> None:
    assert NATIVE is not None
    blobs = [os.urandom(8 << 20) for _ in range(4)]
    hashers = [NATIVE() for _ in blobs]

    def work(i: int) -> None:
        for _ in range(3):
            hashing.update_pair(hashers[i], blobs[i], hashers[i ^ 1], b"") if i % 2 else hashers[i].update(blobs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h, blob in zip(hashers, blobs, strict=True):
        assert h.digest() == hashlib.sha256(blob * 3).digest()


def test_write_along_is_write_with_the_other_stream_hashed() -> None:
    data, other = os.urandom(300_000), os.urandom(123_457)
    alone, along = NullWriter("a"), NullWriter("b")
    alone.write(data)
    partner = hashing.new_sha256()
    along.write_along(data, partner, other)
    assert along.written_digest() == alone.written_digest() == Digest.of(data)
    assert partner.hexdigest() == hashlib.sha256(other).hexdigest()
    along.commit(len(data), Digest.of(data))


class _PlainWriter:
    """A writer that does not hash (as the registry's): the pipeline hashes its output."""

    hashes = False

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.committed: tuple[int, Digest] | None = None

    def write(self, data: bytes | memoryview) -> None:
        self.buf.write(data)

    def commit(self, size: int, digest: Digest) -> None:
        self.committed = (size, digest)

    def abort(self) -> None:
        pass


_PIPELINE = """
import gzip, hashlib, io, sys, zstandard
from transcoder import accel
from transcoder.transcode import transcode_stream
from transcoder.writers import NullWriter
sys.path.insert(0, sys.argv[2])
from tests.test_sha256 import _PlainWriter
tar = open(sys.argv[1], "rb").read()
gz = gzip.compress(tar, 6, mtime=0)
for w in (NullWriter("out"), _PlainWriter()):
    r = transcode_stream(io.BytesIO(gz), w, name="layer")
    out = w.buf.getvalue() if isinstance(w, _PlainWriter) else None
    if out is not None:
        assert r.target.digest.hex == hashlib.sha256(out).hexdigest() and w.committed == (len(out), r.target.digest)
        assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(out), read_across_frames=True).read() == tar
    assert r.diff_id.hex == hashlib.sha256(tar).hexdigest() and r.source.digest.hex == hashlib.sha256(gz).hexdigest()
    print(accel.NATIVE_SHA256, r.target.digest)
"""


@pytest.mark.parametrize("forced", [False, True], ids=["chosen", "python-forced"])
def test_pipeline_digests_match_hashlib(tmp_path: Any, forced: bool) -> None:
    """Many frames (40 MiB of tar), each output written with the next tar frame's hash alongside:
    the diffID, source and output digests are hashlib's, with the native hasher and without."""
    tar = tmp_path / "layer.tar"
    tar.write_bytes(make_tar(7, size=40 << 20, files=30))
    env = {**os.environ, accel.NO_NATIVE_ENV: "1"} if forced else dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _PIPELINE, str(tar), root], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")[:2]
    assert lines[0] == lines[1]  # the same output whatever writer
    assert lines[0].startswith(str(False if forced else accel.NATIVE_SHA256))


class _Trickle(io.RawIOBase):
    """A stream that returns at most ``n`` bytes per read, as a pipe or a socket may,
    and never reads across ``cut`` (so the bytes after it arrive in a read of their own)."""

    def __init__(self, data: bytes, n: int, cut: int | None = None) -> None:
        self._data, self._n, self._at, self._cut = data, n, 0, cut

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        end = self._cut if self._cut is not None and self._at < self._cut else len(self._data)
        k = min(self._n, len(b), end - self._at)
        b[:k] = self._data[self._at : self._at + k]
        self._at += k
        return k


class _Views(io.RawIOBase):
    """A stream with ``read_view``, as the registry blob reader has: views of
    1 MiB chunks, handed out in pieces of at most ``n`` bytes (the chunk itself
    when a piece is all of it)."""

    def __init__(self, data: bytes, n: int) -> None:
        self._chunks = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
        self._n, self._view = n, memoryview(b"")

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # the format sniff's peek
        return bytes(self.read_view(size if size >= 0 else self._n))

    def read_view(self, size: int) -> bytes | memoryview:
        if not self._view:
            if not self._chunks:
                return b""
            chunk = self._chunks.pop(0)
            if len(chunk) <= min(size, self._n):
                return chunk
            self._view = memoryview(chunk)
        k = min(size, self._n)
        piece, self._view = self._view[:k], self._view[k:]
        return piece


@pytest.mark.parametrize("kind", ["gzip-exact-frames", "gzip-short-reads", "gzip-trailer-apart", "gzip-views", "tar",
                                  "zstd", "tar-views", "head-start", "tee"])
def test_source_hashed_with_the_tar_gives_the_source_digest(kind: str, tmp_path: Any) -> None:
    """The source's bytes are hashed by the consumer, in one pass with the tar:
    its digest is still the source's, whatever the format, however the bytes
    arrive, and when the source ends after a frame boundary (the gzip trailer
    then follows the last whole frame)."""
    import gzip

    import zstandard

    from transcoder.codecs.constants import FRAME_SIZE
    from transcoder.decode import HeadStart
    from transcoder.transcode import transcode_stream

    # Exactly two frames, compressible; a tar source must be a real tar (detected by its header).
    tar = make_tar(5, size=20 << 20, files=20) if kind.startswith("tar") else os.urandom(FRAME_SIZE // 2) * 4
    gz = gzip.compress(tar, 1, mtime=0)
    src = {"tar": tar, "tar-views": tar, "zstd": zstandard.ZstdCompressor(level=1).compress(tar)}.get(kind, gz)
    stream: Any = _Trickle(src, 10_000) if kind == "gzip-short-reads" else io.BytesIO(src)
    if kind.endswith("-views"):  # pieces of received chunks, kept unhashed until the consumer's pass
        stream = _Views(src, 300_000)
    if kind == "gzip-trailer-apart":  # read after the last frame is complete: carried past the frames
        stream = _Trickle(src, 1 << 20, cut=len(src) - 8)
    if kind == "head-start":
        path = tmp_path / "layer.gz"
        path.write_bytes(src)
        stream = HeadStart.begin(str(path), frame_size=FRAME_SIZE)
    tee = NullWriter("tee") if kind == "tee" else None
    w = NullWriter("out")
    r = transcode_stream(stream, w, name="layer", tee=tee)
    assert r.source.digest == Digest.of(src) and r.source.size == len(src)
    assert r.diff_id == Digest.of(tar)
    assert w.done and (tee is None or tee.done)
