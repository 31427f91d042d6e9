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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from .codecs import Format, ZstdParams
from .codecs.framepool import EncoderThreads, FramePool
from .decode import Decoded, HeadStart, Progress, SourceReader, decode_thread, open_decoder
from .descriptor import OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, Descriptor
from .digest import Digest
from .errors import DigestMismatch, SizeLimitExceeded, SizeMismatch
from .hashing import new_sha256
from .writers import BlobWriter, StreamDigest

__all__ = ["DecodeResult", "Progress", "TranscodeResult", "Verified", "decode_stream", "default_workers",
           "transcode_stream"]

MEDIA_TYPES = {Format.GZIP: OCI_LAYER_GZIP, Format.ZSTD: OCI_LAYER_ZSTD, Format.TAR: OCI_LAYER_TAR}

# Told (source, diffID, output) once a transcode is verified, before its commit.
Verified = Callable[[Descriptor, Digest, Descriptor], None]


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


def _check_source(src: SourceReader, name: str, expect: Digest | None, expect_size: int | None) -> Digest:
    digest = src.digest.value()
    if expect_size is not None and src.size != expect_size:
        raise SizeMismatch(f"{name}: source is {src.size} bytes, descriptor says {expect_size}")
    if expect is not None and digest != expect:
        raise DigestMismatch(f"{name}: source digest is {digest}, expected {expect}")
    return digest


def transcode_stream(
    stream: BinaryIO | HeadStart,
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
    on_verified: Verified | None = None,
) -> TranscodeResult:
    """Transcode one layer blob to zstd; commit to ``writer`` only if all checks pass.

    ``stream`` may be a :class:`~transcoder.decode.HeadStart` already
    decoding it; its own ``name`` and ``max_size`` then apply, and the
    result's seconds count from when it began. ``tee``, if given, receives the
    source bytes as they are read and is committed under the source digest,
    so a sink can keep the canonical blob without a second read. ``threads``,
    if given, are compressing threads shared with other transcodes running at
    once (then ``workers`` only sizes this one's frames in flight).
    ``on_verified``, if given, is told the source, the diffID and the output
    once every check has passed, just before the output is committed: a
    caller can start what follows from them (records to push) while the
    commit's round trip runs. Always either commits or aborts every writer,
    even on error or interrupt.
    """
    params = params or ZstdParams()
    started = time.perf_counter()
    head: HeadStart | None = None
    if isinstance(stream, HeadStart):
        head = stream
        if tee is not None:
            raise ValueError(f"{head.name}: a tee must see the source from its first byte, before a head start")
        src, info, name, max_size, started = head.reader, head.info, head.name, head.max_size, head.started
    else:
        src, info = SourceReader(stream, progress, tee, defer=True), Decoded()
    with FramePool(params, workers or default_workers(), threads=threads) as pool:
        thread = _start_decoding(head, pool, src, name, max_size, info, progress)
        try:
            target, diff_id = _write_frames(pool, writer, src.digest)
            thread.join()
            source_digest = _check_source(src, name, expect, expect_size)
            if on_verified is not None:
                on_verified(Descriptor(MEDIA_TYPES[info.fmt], source_digest, src.size), diff_id, target)
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


def _start_decoding(head: HeadStart | None, pool: FramePool, src: SourceReader, name: str, max_size: int | None,
                    info: Decoded, progress: Progress | None) -> threading.Thread:
    """The pool's producer: a new decode thread, or a head start's, handed the pool."""
    if head is None:
        thread = threading.Thread(target=decode_thread, args=(src, name, max_size, pool, info), name="decode",
                                  daemon=True)
        thread.start()
        return thread
    try:
        head.attach(pool, progress)
    except BaseException:
        head.cancel()
        raise
    return head.thread


def _write_frames(pool: FramePool, writer: BlobWriter, source: StreamDigest) -> tuple[Descriptor, Digest]:
    """Consumer: the frames, in order, into ``writer``; returns the output's descriptor and the diffID.

    The tar is hashed here, a frame at a time, rather than in the decode
    thread: decoding is the one serial stage, and this thread has time. Each
    frame's tar is hashed while it is still being compressed, in one pass
    with the source bytes read for it (``source``, when the reader deferred
    them) and then with the previous frame's output, which is written then
    (``hashing.update_pair``: two SHA-256 streams at once cost about one, and
    the tar is longer than the other two together on any compressible layer).
    """
    out = StreamDigest(writer)
    tar_hash = new_sha256()
    held: bytes | None = None  # the previous frame's output, not yet hashed or written
    for frame, compression, read in pool.frames():
        view = memoryview(frame)
        at = 0
        for chunk in read:
            source.update_along(chunk, tar_hash, view[at : at + len(chunk)])
            at += len(chunk)
        if held is not None:
            out.write_along(writer, held, tar_hash, view[at : at + len(held)])
            at += len(held)
        tar_hash.update(view[at:])
        held = compression.result()
    if held is not None:
        out.write_along(writer, held)
    for chunk in pool.leftover_source:
        source.update(chunk)
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
    src = SourceReader(stream)
    fmt, chunks = open_decoder(src, name)
    tar_hash = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if max_size is not None and size > max_size:
            raise SizeLimitExceeded(f"{name}: decoded size exceeds --max-size {max_size} bytes")
        tar_hash.update(chunk)
    digest = _check_source(src, name, expect, expect_size)
    return DecodeResult(Descriptor(MEDIA_TYPES[fmt], digest, src.size), Digest.from_hasher(tar_hash), size)
