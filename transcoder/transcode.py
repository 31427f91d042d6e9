"""The one streaming pipeline: source blob -> decoded tar -> zstd -> writer.

Three kinds of thread. The decode thread reads the source, hashes it, decodes
it (ISA-L for gzip) and cuts the tar into frames; ``workers - 1`` encoder
threads and the decode thread itself, when it is ahead, compress whole frames
(``codecs.framepool``); the calling thread takes the frames in order, hashes
the tar (the diffID) and hands the compressed frames to the writer, which
hashes what it is given. Every heavy call releases the GIL, so the stages
overlap on all cores; decoding is the one serial stage, so it carries no more
than it must. Memory is bounded by the frames in flight (three per worker)
whatever the layer size. The output is committed only after the source
digest, the size bound and the output digest have all been checked.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from . import accel
from .codecs import Format, ZstdParams, detect, iter_gzip, iter_zstd
from .codecs.framepool import EncoderThreads, FramePool
from .codecs.gzip import iter_gzip_frames
from .descriptor import OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, Descriptor
from .digest import Digest
from .errors import DigestMismatch, FormatError, SizeLimitExceeded, SizeMismatch
from .faults import crashpoint
from .writers import BlobWriter, StreamDigest

# Source bytes per read. 256 KiB of gzip decodes to ~1 MiB of tar, which
# ISA-L writes straight into its frame (``transcoder._isal``; the Python twin
# copies it in while it is still in the core's cache).
CHUNK = 256 << 10
MEDIA_TYPES = {Format.GZIP: OCI_LAYER_GZIP, Format.ZSTD: OCI_LAYER_ZSTD, Format.TAR: OCI_LAYER_TAR}

Progress = Callable[[int], None]


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class TranscodeResult:
    source: Descriptor
    target: Descriptor
    diff_id: Digest
    params: ZstdParams
    cached: bool = False
    noop: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        def desc(d: Descriptor) -> dict[str, Any]:
            return {"digest": str(d.digest), "size": d.size, "media_type": d.media_type}

        return {
            "source": desc(self.source),
            "diff_id": str(self.diff_id),
            "target": desc(self.target),
            "params": self.params.to_json(),
            "cached": self.cached,
            "noop": self.noop,
            "seconds": round(self.seconds, 6),
        }


class _SourceReader:
    """Reads the source, hashing and counting every byte exactly once."""

    def __init__(self, stream: BinaryIO, progress: Progress | None, tee: BlobWriter | None = None) -> None:
        self._stream = stream
        # The decoders take pieces of any length: read1 hands over what one read
        # brings (a registry download's chunks without another copy).
        self._read: Callable[[int], bytes] = getattr(stream, "read1", stream.read)
        self._progress = progress
        self._tee = tee
        # A tee that hashes what it is given hashes the source for us.
        self.digest = StreamDigest(tee)
        self._head = b""

    @property
    def size(self) -> int:
        return self.digest.size

    def peek(self, n: int) -> bytes:
        while len(self._head) < n:
            more = self._stream.read(n - len(self._head))
            if not more:
                break
            self._head += more
        return self._head

    def read(self, n: int) -> bytes:
        if self._head:
            data, self._head = self._head, b""
        else:
            data = self._read(n)
        if data:
            self.digest.update(data)
            if self._tee is not None:
                self._tee.write(data)
            if self._progress:
                self._progress(len(data))
        return data


@dataclass
class _Decoded:
    """What the decode thread learned, read by the caller after the join."""

    fmt: Format = Format.UNKNOWN
    tar_size: int = 0


def _decoded_chunks(src: _SourceReader, fmt: Format, name: str, frame_size: int | None) -> Iterator[bytes]:
    """The tar in pieces; for gzip and a ``frame_size``, in whole frames of that size (the last one short)."""
    if fmt is Format.GZIP:
        if frame_size is not None:
            return iter_gzip_frames(src.read, accel.gzip_frames(name, frame_size), CHUNK)
        return iter_gzip(src.read, name, CHUNK)
    if fmt is Format.ZSTD:
        return iter_zstd(src.read, name)
    return iter(lambda: src.read(CHUNK), b"")


def _open_decoder(src: _SourceReader, name: str, frame_size: int | None = None) -> tuple[Format, Iterator[bytes]]:
    head = src.peek(512)
    if not head:
        raise FormatError(f"{name}: empty input")
    fmt = detect(head)
    if fmt is Format.UNKNOWN:
        raise FormatError(f"{name}: not gzip, zstd or tar (starts with {head[:4].hex()})")
    return fmt, _decoded_chunks(src, fmt, name, frame_size)


def _decode_thread(src: _SourceReader, name: str, max_size: int | None, pool: FramePool, info: _Decoded) -> None:
    """Producer: always ends the pool's stream, with ``close`` or ``fail``."""
    try:
        info.fmt, chunks = _open_decoder(src, name, pool.frame_size)
        for chunk in chunks:
            info.tar_size += len(chunk)
            if max_size is not None and info.tar_size > max_size:
                raise SizeLimitExceeded(f"{name}: decoded size exceeds --max-size {max_size} bytes")
            crashpoint("decode")
            pool.add(chunk)
        pool.close()
    except BaseException as exc:
        pool.fail(exc)


def _check_source(src: _SourceReader, name: str, expect: Digest | None, expect_size: int | None) -> Digest:
    digest = src.digest.value()
    if expect_size is not None and src.size != expect_size:
        raise SizeMismatch(f"{name}: source is {src.size} bytes, descriptor says {expect_size}")
    if expect is not None and digest != expect:
        raise DigestMismatch(f"{name}: source digest is {digest}, expected {expect}")
    return digest


def transcode_stream(
    stream: BinaryIO,
    writer: BlobWriter,
    *,
    params: ZstdParams | None = None,
    workers: int | None = None,
    expect: Digest | None = None,
    expect_size: int | None = None,
    max_size: int | None = None,
    name: str = "input",
    progress: Progress | None = None,
    tee: BlobWriter | None = None,
    threads: EncoderThreads | None = None,
) -> TranscodeResult:
    """Transcode one layer blob to zstd; commit to ``writer`` only if all checks pass.

    ``tee``, if given, receives the source bytes as they are read and is
    committed under the source digest, so a sink can keep the canonical blob
    without a second read. ``threads``, if given, are compressing threads
    shared with other transcodes running at once (then ``workers`` only sizes
    this one's frames in flight). Always either commits or aborts every
    writer, even on error or interrupt.
    """
    params = params or ZstdParams()
    started = time.perf_counter()
    src = _SourceReader(stream, progress, tee)
    info = _Decoded()
    with FramePool(params, workers or default_workers(), threads=threads) as pool:
        thread = threading.Thread(target=_decode_thread, args=(src, name, max_size, pool, info), daemon=True)
        thread.start()
        try:
            target, diff_id = _write_frames(pool, writer)
            thread.join()
            source_digest = _check_source(src, name, expect, expect_size)
            writer.commit(target.size, target.digest)
            if tee is not None:
                tee.commit(src.size, source_digest)
        except BaseException:
            pool.cancel(thread)
            writer.abort()
            if tee is not None:
                tee.abort()
            raise
    source = Descriptor(MEDIA_TYPES[info.fmt], source_digest, src.size)
    noop = source.digest == target.digest
    return TranscodeResult(source, target, diff_id, params, noop=noop, seconds=time.perf_counter() - started)


def _write_frames(pool: FramePool, writer: BlobWriter) -> tuple[Descriptor, Digest]:
    """Consumer: the frames, in order, into ``writer``; returns the output's descriptor and the diffID.

    The tar is hashed here, a frame at a time, rather than in the decode
    thread: decoding is the one serial stage, and this thread has time.
    """
    out = StreamDigest(writer)
    tar_hash = hashlib.sha256()
    for frame, compression in pool.frames():
        tar_hash.update(frame)
        compressed = compression.result()
        out.update(compressed)
        writer.write(compressed)
    return Descriptor(OCI_LAYER_ZSTD, out.value(), out.size), Digest.from_hasher(tar_hash)


@dataclass(frozen=True)
class DecodeResult:
    source: Descriptor
    diff_id: Digest
    tar_size: int


def decode_stream(
    stream: BinaryIO, *, expect: Digest | None = None, expect_size: int | None = None, max_size: int | None = None,
    name: str = "input",
) -> DecodeResult:
    """Decode and hash without encoding: checks a blob and computes its diffID."""
    src = _SourceReader(stream, None)
    fmt, chunks = _open_decoder(src, name)
    tar_hash = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if max_size is not None and size > max_size:
            raise SizeLimitExceeded(f"{name}: decoded size exceeds --max-size {max_size} bytes")
        tar_hash.update(chunk)
    digest = _check_source(src, name, expect, expect_size)
    return DecodeResult(Descriptor(MEDIA_TYPES[fmt], digest, src.size), Digest.from_hasher(tar_hash), size)
