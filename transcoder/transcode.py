"""The one streaming pipeline: source blob -> decoded tar -> zstd -> writer.

Two Python threads and ``workers`` libzstd threads. The decode thread reads
the source, hashes it and decodes it (ISA-L for gzip); the calling thread
feeds libzstd's multi-threaded compressor, hashes the tar (the diffID) while
libzstd works on it, hashes the output and hands it to the writer. Decoding
is the one serial stage, so it carries no more than it must. Every heavy call
releases the GIL, so the stages overlap on all cores. A bounded queue between
the two threads caps memory at ``QUEUE_DEPTH`` decoded chunks plus libzstd's
job buffers, whatever the layer size. The output is committed only after the
source digest, the size bound and the output digest have all been checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from .codecs import Format, ZstdParams, detect, iter_gzip, iter_zstd
from .descriptor import OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, Descriptor
from .digest import Digest
from .errors import DigestMismatch, FormatError, SizeLimitExceeded, SizeMismatch
from .faults import crashpoint
from .writers import BlobWriter

# Source bytes per read. 256 KiB of gzip decodes to ~1 MiB of tar: small
# decoded chunks keep the peak RSS of a 500 MB layer near 115 MiB (1 MiB reads:
# ~140 MiB, from 3-4 MiB output buffers) at no measurable cost in CPU.
CHUNK = 256 << 10
QUEUE_DEPTH = 8
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
        self._progress = progress
        self._tee = tee
        self.hash = hashlib.sha256()
        self.size = 0
        self._head = b""

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
            data = self._stream.read(n)
        if data:
            self.hash.update(data)
            self.size += len(data)
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
    error: BaseException | None = None


_END = object()


def _decoded_chunks(src: _SourceReader, fmt: Format, name: str) -> Iterator[bytes]:
    if fmt is Format.GZIP:
        return iter_gzip(src.read, name, CHUNK)
    if fmt is Format.ZSTD:
        return iter_zstd(src.read, name)
    return iter(lambda: src.read(CHUNK), b"")


def _decode_thread(src: _SourceReader, name: str, max_size: int | None, out: queue.Queue[Any], info: _Decoded) -> None:
    """Producer: always ends by putting _END or an exception on the queue."""
    try:
        head = src.peek(512)
        if not head:
            raise FormatError(f"{name}: empty input")
        info.fmt = detect(head)
        if info.fmt is Format.UNKNOWN:
            raise FormatError(f"{name}: not gzip, zstd or tar (starts with {head[:4].hex()})")
        for chunk in _decoded_chunks(src, info.fmt, name):
            info.tar_size += len(chunk)
            if max_size is not None and info.tar_size > max_size:
                raise SizeLimitExceeded(f"{name}: decoded size exceeds --max-size {max_size} bytes")
            crashpoint("decode")
            out.put(chunk)
        out.put(_END)
    except BaseException as exc:
        info.error = exc
        out.put(exc)


def _check_source(src: _SourceReader, name: str, expect: Digest | None, expect_size: int | None) -> Digest:
    digest = Digest.from_hasher(src.hash)
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
) -> TranscodeResult:
    """Transcode one layer blob to zstd; commit to ``writer`` only if all checks pass.

    ``tee``, if given, receives the source bytes as they are read and is
    committed under the source digest, so a sink can keep the canonical blob
    without a second read. Always either commits or aborts every writer, even
    on error or interrupt.
    """
    params = params or ZstdParams()
    started = time.perf_counter()
    src = _SourceReader(stream, progress, tee)
    chunks: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)
    info = _Decoded()
    thread = threading.Thread(target=_decode_thread, args=(src, name, max_size, chunks, info), daemon=True)
    thread.start()
    try:
        out_hash, out_size, diff_id = _encode(chunks, writer, params, workers or default_workers())
        thread.join()
        source_digest = _check_source(src, name, expect, expect_size)
        target = Descriptor(OCI_LAYER_ZSTD, Digest.from_hasher(out_hash), out_size)
        writer.commit(out_size, target.digest)
        if tee is not None:
            tee.commit(src.size, source_digest)
    except BaseException:
        _drain(chunks, thread)
        writer.abort()
        if tee is not None:
            tee.abort()
        raise
    source = Descriptor(MEDIA_TYPES[info.fmt], source_digest, src.size)
    noop = source.digest == target.digest
    return TranscodeResult(source, target, diff_id, params, noop=noop, seconds=time.perf_counter() - started)


def _encode(chunks: queue.Queue[Any], writer: BlobWriter, params: ZstdParams, workers: int) -> tuple[Any, int, Digest]:
    """Consumer: returns (output hasher, output size, diffID)."""
    cobj = params.compressor(workers).compressobj()
    tar_hash = hashlib.sha256()
    out_hash = hashlib.sha256()
    out_size = 0
    while True:
        item = chunks.get()
        if item is _END:
            data = cobj.flush()
        elif isinstance(item, BaseException):
            raise item
        else:
            data = cobj.compress(item)
            tar_hash.update(item)  # after compress: libzstd's workers already have the chunk
        if data:
            out_hash.update(data)
            out_size += len(data)
            writer.write(data)
        if item is _END:
            return out_hash, out_size, Digest.from_hasher(tar_hash)


def _drain(chunks: queue.Queue[Any], thread: threading.Thread) -> None:
    """Unblock and reap the decode thread after the consumer failed."""
    while thread.is_alive():
        with contextlib.suppress(queue.Empty):
            chunks.get(timeout=0.05)


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
    head = src.peek(512)
    if not head:
        raise FormatError(f"{name}: empty input")
    fmt = detect(head)
    if fmt is Format.UNKNOWN:
        raise FormatError(f"{name}: not gzip, zstd or tar (starts with {head[:4].hex()})")
    tar_hash = hashlib.sha256()
    size = 0
    for chunk in _decoded_chunks(src, fmt, name):
        size += len(chunk)
        if max_size is not None and size > max_size:
            raise SizeLimitExceeded(f"{name}: decoded size exceeds --max-size {max_size} bytes")
        tar_hash.update(chunk)
    digest = _check_source(src, name, expect, expect_size)
    return DecodeResult(Descriptor(MEDIA_TYPES[fmt], digest, src.size), Digest.from_hasher(tar_hash), size)
