"""One layer into a sink: reuse a known variant, or transcode it once.

Order of preference for a gzip (or tar) layer: a variant the local table
knows and the sink still holds; a variant record the sink itself holds (left
there by another machine); otherwise transcode, teeing the canonical bytes
into the sink when it lacks them so the source is read exactly once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple

from ..codecs import ZstdParams
from ..codecs.framepool import EncoderThreads
from ..descriptor import GZIP_LAYER_TYPES, OCI_LAYER_ZSTD, TAR_LAYER_TYPES, ZSTD_LAYER_TYPES, Descriptor
from ..digest import Digest
from ..errors import SinkError
from ..faults import crashpoint
from ..parallel import Parallel
from ..records import VariantRecord
from ..sinks.base import BlobMounter, RecordStager, Sink, StatAhead
from ..transcode import Progress, transcode_stream
from ..variants import VariantTable
from ..writers import BlobWriter
from .source import ImageSource

ProgressFactory = Callable[[Descriptor], AbstractContextManager[Progress | None]]

# Source bytes left to read when a layer tells that the next one's turn is
# near (``LayerJob.source_near``): the next one then opens its blob, which
# waits idle for at most the time these take to read and decode, well under
# a second here, far from any server's idle timeout.
NEAR_END = 16 << 20


def mounted(source: ImageSource, sink: Sink, desc: Descriptor) -> bool:
    """True if the sink could link the blob from the source without moving bytes."""
    return isinstance(sink, BlobMounter) and sink.mount_blob(desc, source)


def copy_blob(source: ImageSource, sink: Sink, desc: Descriptor) -> None:
    """Stream a blob from ``source`` into ``sink``, verified; skip if present."""
    if sink.stat_blob(desc.digest) == desc.size or mounted(source, sink, desc):
        return
    writer = sink.blob_writer(desc.media_type, key_hint=str(desc.digest), size_hint=desc.size)
    try:
        with source.open_blob(desc) as f:
            while block := f.read(1 << 20):
                writer.write(block)
        writer.commit(desc.size, desc.digest)
    except BaseException:
        writer.abort()
        raise


@dataclass(frozen=True)
class LayerOutcome:
    source: Descriptor
    target: Descriptor
    status: str  # "converted", "hit" (variant reused), "zstd" (already zstd), "kept" (not a tar layer)
    diff_id: str | None
    seconds: float
    record: VariantRecord | None = None  # a new variant, to be recorded once the whole image succeeded

    def to_json(self) -> dict[str, Any]:
        return {
            "source": {"digest": str(self.source.digest), "size": self.source.size, "media_type": self.source.media_type},
            "target": {"digest": str(self.target.digest), "size": self.target.size, "media_type": self.target.media_type},
            "status": self.status,
            "diff_id": self.diff_id,
            "seconds": round(self.seconds, 6),
        }


class Opened(NamedTuple):
    """A layer's output writer and source blob, opened ahead of its transcode (:meth:`LayerJob.open`)."""

    writer: BlobWriter
    stream: BinaryIO

    def close(self) -> None:
        """For a layer that never got to them."""
        try:
            self.writer.abort()
        finally:
            self.stream.close()


@dataclass
class LayerJob:
    source: ImageSource
    sink: Sink
    params: ZstdParams
    keep_canonical: bool
    table: VariantTable | None
    workers: int | None
    max_size: int | None
    progress: ProgressFactory | None = None
    # Compressing threads shared by the layers in flight (see schedule.run_layers).
    threads: EncoderThreads | None = None
    # Told once a transcoded layer's source has been read to its end: what is
    # left (the last frames, the commit) no longer needs every core.
    source_read: Callable[[Descriptor], None] | None = None
    # Told once at most NEAR_END bytes of a transcoded layer's source are left
    # to read (at its start, for a smaller layer): the next layer's turn is near.
    source_near: Callable[[Descriptor], None] | None = None
    # Told a transcoded layer's output once it is verified, before its commit.
    target_known: Callable[[Descriptor, Descriptor], None] | None = None

    # One layer's job, in the steps schedule.run_layers spreads over threads:
    # lookup, then convert when needs_transcode, else finish.

    @staticmethod
    def transcodes(layer: Descriptor) -> bool:
        """False for a layer carried as is: already zstd, or not a filesystem layer (attestations)."""
        return layer.media_type in GZIP_LAYER_TYPES | TAR_LAYER_TYPES

    def lookup(self, layer: Descriptor) -> VariantRecord | None:
        """The variant to reuse for ``layer``, if any: round trips, no CPU. A
        sink that can is asked meanwhile whether it holds the layer's own blob,
        which the layer needs to know whatever is found when it keeps or
        carries that blob: one round trip less before a transcode starts, or
        before a reused layer is done."""
        if (self.keep_canonical or not self.transcodes(layer)) and isinstance(self.sink, StatAhead):
            self.sink.stat_ahead(layer.digest)
        return self.known_variant(layer) if self.transcodes(layer) else None

    def needs_transcode(self, layer: Descriptor, found: VariantRecord | None) -> bool:
        return found is None and self.transcodes(layer)

    def finish(self, layer: Descriptor, found: VariantRecord | None) -> LayerOutcome:
        """A layer that needs no transcode (see :meth:`needs_transcode`): carried or reused."""
        started = time.perf_counter()
        if found is None:
            self.copy(layer)
            status = "zstd" if layer.media_type in ZSTD_LAYER_TYPES else "kept"
            return LayerOutcome(layer, layer, status, None, time.perf_counter() - started)
        if self.keep_canonical:
            self.copy(layer)
        return LayerOutcome(layer, found.target, "hit", str(found.diff_id), time.perf_counter() - started)

    def open(self, layer: Descriptor) -> Opened:
        """``layer``'s output writer, then its blob, for a transcode to come.
        The writer goes first: a sink that opens an upload session for it (a
        registry) does so on a thread of its own, so that round trip overlaps
        the blob's instead of following it."""
        writer = self.sink.blob_writer(OCI_LAYER_ZSTD, key_hint=f"{layer.digest}-{self.params.key}")
        try:
            return Opened(writer, self.source.open_blob(layer))
        except BaseException:
            writer.abort()
            raise

    def convert(self, layer: Descriptor, opened: Opened) -> LayerOutcome:
        """Transcode ``layer``, whose variant is known nowhere (``opened``: its
        writer and blob from :meth:`open`, taken over here)."""
        started = time.perf_counter()
        rec = self.transcode(layer, opened)
        return LayerOutcome(layer, rec.target, "converted", str(rec.diff_id), time.perf_counter() - started, rec)

    def _verified(self, layer: Descriptor, rec: VariantRecord) -> None:
        """The transcode of ``layer`` passed every check and its output is
        about to be committed. A sink that can (a registry) starts storing the
        record's blob now, beside the commit's round trip, leaving only its
        tag for the end; best effort: what fails here is pushed again by
        ``record``, which reports it. Then ``target_known`` is told."""
        if isinstance(self.sink, RecordStager):
            with contextlib.suppress(SinkError):
                self.sink.stage_variant(rec)
        if self.target_known is not None:
            self.target_known(layer, rec.target)

    def known_variant(self, layer: Descriptor) -> VariantRecord | None:
        candidates: list[VariantRecord] = []
        if self.table is not None and (rec := self.table.find(layer.digest, self.params)) is not None:
            candidates.append(rec)
        candidates += [r for r in self.sink.find_variants(layer.digest) if r.params.key == self.params.key]
        for rec in candidates:
            if rec.source.size == layer.size and self.sink.stat_blob(rec.target.digest) == rec.target.size:
                return rec
        return None

    def copy(self, desc: Descriptor) -> None:
        copy_blob(self.source, self.sink, desc)

    def transcode(self, layer: Descriptor, opened: Opened) -> VariantRecord:
        # The canonical blob, when kept: one the sink can have without our
        # bytes (a registry's mount from the same host, or a blob of its own
        # repository) is seen to once the transcode has verified the source,
        # beside the output's commit, so the read waits on no HEAD; one the
        # sink lacks otherwise is teed from the one read.
        linked = self.keep_canonical and isinstance(self.sink, BlobMounter) and self.sink.can_mount(self.source)
        # transcode_stream commits or aborts every writer; those of a
        # transcode that never gets to it are aborted here.
        writer, stream = opened
        tee = None
        try:
            if self.keep_canonical and not linked and self.sink.stat_blob(layer.digest) != layer.size:
                tee = self.sink.blob_writer(layer.media_type, key_hint=str(layer.digest), size_hint=layer.size)
        except BaseException:
            opened.close()
            raise
        made: list[VariantRecord] = []  # the record, made once the transcode is verified
        linking: list[Parallel[Descriptor, None]] = []

        def verified(source: Descriptor, diff_id: Digest, target: Descriptor) -> None:
            made.append(VariantRecord(Descriptor(layer.media_type, source.digest, source.size), diff_id, target,
                                      self.params))
            if linked:
                linking.append(Parallel(self.copy, [layer], 1, "link"))
            self._verified(layer, made[0])

        bar = self.progress(layer) if self.progress else nullcontext(None)
        try:
            with stream as blob, bar as tick:
                transcode_stream(
                    blob, writer, params=self.params, workers=self.workers, expect=layer.digest,
                    expect_size=layer.size, max_size=self.max_size, name=f"{self.source.name}: layer {layer.digest}",
                    progress=self._watch_reads(layer, tick), tee=tee,
                    threads=self.threads, on_verified=verified,
                )
        except BaseException:
            for link in linking:
                link.outcomes()  # it ends; the transcode's error is the one reported
            raise
        for link in linking:
            link.join()
        crashpoint("layer-done")
        return made[0]

    def _watch_reads(self, layer: Descriptor, tick: Progress | None) -> Progress | None:
        """``tick``, also calling ``source_near`` once ``NEAR_END`` bytes or
        fewer are left to read, and ``source_read`` once ``layer.size`` bytes
        have been read."""
        marks = [(at, tell) for at, tell in ((layer.size - NEAR_END, self.source_near), (layer.size, self.source_read))
                 if tell is not None]
        while marks and marks[0][0] <= 0:
            marks.pop(0)[1](layer)
        if not marks:
            return tick
        read = 0

        def progress(n: int) -> None:
            nonlocal read
            read += n
            if tick is not None:
                tick(n)
            while marks and read >= marks[0][0]:
                marks.pop(0)[1](layer)

        return progress

    def record(self, rec: VariantRecord) -> None:
        """The variant's record into the sink, then into the local table
        (thread-safe: sinks and the table take records concurrently)."""
        self.sink.put_variant(rec)
        crashpoint("record-written")
        if self.table is not None:
            self.table.record(rec, {rec.target.digest: self.sink.location})
