"""Convert one blob file (or stream) with the variant table in front of the
pipeline: an unchanged file whose variant is recorded and still stored is a
hit, answered without reading the source or re-encoding it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

from .codecs import ZstdParams
from .decode import HeadStart
from .descriptor import OCI_LAYER_ZSTD
from .digest import Digest
from .errors import DigestMismatch, InputError, StoreError
from .records import VariantRecord
from .transcode import Progress, TranscodeResult, decode_stream, transcode_stream
from .variants import VariantTable
from .writers import FileWriter

FILE_SCHEME = "file:"


def file_location(path: str | os.PathLike[str]) -> str:
    return FILE_SCHEME + os.path.abspath(path)


def _stored_copy(table: VariantTable, rec: VariantRecord) -> Path | None:
    """A file holding the variant's bytes, unchanged since we wrote or checked it."""
    for loc in table.locations(rec.target.digest):
        if loc.startswith(FILE_SCHEME):
            path = Path(loc[len(FILE_SCHEME) :])
            if table.file_digest(path) == rec.target.digest:
                return path
    return None


def _place(stored: Path, out: Path, rec: VariantRecord, table: VariantTable) -> None:
    """Make ``out`` hold the stored variant: a hard link when possible, else a checked copy."""
    if _same_file(stored, out):  # already there (the same path, or a link made earlier)
        return
    tmp = out.with_name(f".{out.name}.{os.getpid()}.link")
    try:
        os.link(stored, tmp)
        os.replace(tmp, out)
    except OSError:
        tmp.unlink(missing_ok=True)
        with open(stored, "rb") as f, FileWriter(out) as w:
            while block := f.read(1 << 20):
                w.write(block)
            w.commit(rec.target.size, rec.target.digest)
    table.remember_file(out, rec.target.digest)
    table.add_location(rec.target.digest, file_location(out))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def lookup_file(table: VariantTable, src: str, out: Path, params: ZstdParams, expect: Digest | None) -> TranscodeResult | None:
    """A table hit for an unchanged source file, placed at ``out``; else None."""
    started = time.perf_counter()
    digest = table.file_digest(src)
    if digest is None or (expect is not None and digest != expect):
        return None
    rec = table.find(digest, params)
    if rec is None:
        return None
    stored = _stored_copy(table, rec)
    if stored is None:
        return None
    _place(stored, out, rec, table)
    return TranscodeResult(rec.source, rec.target, rec.diff_id, rec.params, cached=True, seconds=time.perf_counter() - started)


def convert_blob(
    src: str | BinaryIO | HeadStart,
    out: str | os.PathLike[str],
    *,
    params: ZstdParams | None = None,
    workers: int | None = None,
    expect: Digest | None = None,
    max_size: int | None = None,
    table: VariantTable | None = None,
    progress: Progress | None = None,
) -> TranscodeResult:
    """Transcode ``src`` (a path, ``-`` for stdin, a binary stream, or a
    :class:`~transcoder.decode.HeadStart` already decoding one) to zstd at ``out``.

    A HeadStart stays its caller's to close (a hit cancels it); its own
    ``max_size`` applies."""
    params = params or ZstdParams()
    out = Path(out)
    path = src.path if isinstance(src, HeadStart) else src if isinstance(src, str) and src != "-" else None
    if table is not None and path is not None:
        hit = lookup_file(table, path, out, params, expect)
        if hit is not None:
            if isinstance(src, HeadStart):
                src.cancel()
            return hit
    with ExitStack() as stack:
        stream, name = _open_source(src, stack)
        writer = stack.enter_context(FileWriter(out))
        result = transcode_stream(
            stream, writer, params=params, workers=workers, expect=expect, max_size=max_size, name=name, progress=progress
        )
    if table is not None and not result.noop:
        _record(table, result, path, out)
    return result


def _open_source(src: str | BinaryIO | HeadStart, stack: ExitStack) -> tuple[BinaryIO | HeadStart, str]:
    """The stream to transcode and the name its errors give."""
    if isinstance(src, HeadStart):
        return src, src.name
    if not isinstance(src, str):
        return src, str(getattr(src, "name", "input"))
    if src == "-":
        return sys.stdin.buffer, "stdin"
    try:
        return stack.enter_context(open(src, "rb", buffering=0)), src
    except OSError as exc:
        raise InputError(f"{src}: {exc.strerror or exc}") from exc


def _record(table: VariantTable, result: TranscodeResult, src: str | None, out: Path) -> None:
    rec = VariantRecord(result.source, result.diff_id, result.target, result.params)
    locations = {result.target.digest: file_location(out)}
    if src is not None:
        locations[result.source.digest] = file_location(src)
    table.record(rec, locations)
    table.remember_file(out, result.target.digest)
    if src is not None:
        with contextlib.suppress(OSError):  # a FIFO or a file removed meanwhile: nothing to cache
            table.remember_file(src, result.source.digest)


def verify_variant(rec: VariantRecord, stream: BinaryIO) -> None:
    """Re-decode a stored variant; check its digest, size, format and diffID."""
    res = decode_stream(stream, expect=rec.target.digest, expect_size=rec.target.size, name=f"variant {rec.target.digest}")
    if res.source.media_type != OCI_LAYER_ZSTD:
        raise StoreError(f"variant {rec.target.digest}: stored bytes are {res.source.media_type}, not zstd")
    if res.diff_id != rec.diff_id:
        raise DigestMismatch(f"variant {rec.target.digest}: decodes to {res.diff_id}, recorded diffID {rec.diff_id}")
