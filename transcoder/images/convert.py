"""Convert a whole image into a sink: every layer gets its zstd variant, the
canonical manifests stay, and an index offers both (gzip first).

Everything small (manifests, indexes, configs) is read and checked before
anything is written, so malformed or hostile input fails without touching the
sink. Layers are then transcoded in parallel (bounded), each distinct layer
once. The image record is written last: a failure before it leaves the
sink's images and records unchanged (at most unreferenced, verified blobs
that ``gc`` removes).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..codecs import ZstdParams
from ..descriptor import ANNOTATION_ZSTD, OCI_INDEX, OCI_MANIFEST, Descriptor, platform_string
from ..digest import Digest
from ..errors import ManifestError, SinkError, UsageError
from ..parallel import Parallel, each
from ..records import ImageRecord
from ..sinks.base import LookupWarmer, RecordStager, Sink, StatAhead, put_bytes
from ..variants import VariantTable
from .layers import LayerJob, LayerOutcome, ProgressFactory, mounted
from .model import build_index, canonical_json, oci_config_type
from .plan import LIGHT_THREADS, Plan, Platformed, plan, start_plan
from .schedule import run_layers
from .source import ImageSource

RECORD_WRITERS = 8  # variant records written to the sink at once


@dataclass
class ImageResult:
    name: str
    source_root: Descriptor
    root: Descriptor
    mode: str
    layers: list[LayerOutcome]
    seconds: float
    params: ZstdParams = field(default_factory=ZstdParams)  # of the zstd variants

    def to_json(self) -> dict[str, Any]:
        before = sum(o.source.size for o in self.layers)
        after = sum(o.target.size for o in self.layers)
        return {
            "name": self.name,
            "mode": self.mode,
            "source": self.source_root.to_json(),
            "root": self.root.to_json(),
            "params": self.params.to_json(),
            "layers": [o.to_json() for o in self.layers],
            "converted": sum(o.status == "converted" for o in self.layers),
            "hits": sum(o.status == "hit" for o in self.layers),
            "bytes_before": before,
            "bytes_after": after,
            "seconds": round(self.seconds, 6),
        }


@dataclass
class ConvertOptions:
    params: ZstdParams = field(default_factory=ZstdParams)
    mode: str = "add"
    tag: str | None = None
    platforms: list[str] | None = None
    jobs: int = 2
    workers: int | None = None
    max_size: int | None = None
    table: VariantTable | None = None
    progress: ProgressFactory | None = None


def convert_image(source: ImageSource, sink: Sink, opts: ConvertOptions | None = None) -> ImageResult:
    opts = opts or ConvertOptions()
    if opts.mode not in ("add", "replace"):
        raise UsageError(f"--mode {opts.mode!r}: expected add or replace")
    started = time.perf_counter()
    if isinstance(sink, LookupWarmer):
        sink.warm_lookups()  # its round trips overlap the source's
    p = start_plan(source, opts.platforms)
    name = opts.tag or p.tag
    try:  # checks before any write; a failure waits for the configs' reads, then is raised
        if not name:
            raise UsageError(f"{source.name}: the image has no tag; name the result with --tag")
        _check_layers_present(source, p)
    except BaseException:
        _join_quietly(p.reads)
        raise
    early = _EarlyImage(sink, p, opts.mode, name) if isinstance(sink, RecordStager) else None
    job = LayerJob(source, sink, opts.params, opts.mode == "add", opts.table, opts.workers, opts.max_size, opts.progress,
                   target_known=early.known if early else None)
    if isinstance(sink, StatAhead):  # beside the configs' reads, not after them
        for m in p.manifests:
            sink.stat_ahead(m.manifest.config.digest)
    configs = _put_configs(source, sink, p)
    try:
        outcomes = run_layers(job, p, opts.jobs, early.known if early else None)
        configs.join()
        root = _write_outputs(job, p, outcomes, opts.mode, name, early)
    except BaseException:
        _join_quietly(configs)
        raise
    finally:
        if isinstance(sink, RecordStager):
            sink.drop_staged()  # what an image that failed staged ends before this returns
    layers = [outcomes[d] for d in dict.fromkeys(x.digest for m in p.manifests for x in m.manifest.layers)]
    return ImageResult(name, p.root, root, opts.mode, layers, time.perf_counter() - started, opts.params)


def _put_configs(source: ImageSource, sink: Sink, p: Plan) -> Parallel[Platformed, Descriptor]:
    """Every config into the sink while the layers transcode (a conversion
    leaves configs as they are, so they are known from the start), once all
    are verified. On a registry each was a HEAD, a POST and a PUT after its
    read; now the HEAD goes beside the read (``stat_ahead``), and what
    follows is a mount when the source is on the same host, else the POST
    and the PUT."""

    def put(m: Platformed) -> Descriptor:
        p.configs()
        desc = m.manifest.config
        if isinstance(sink, StatAhead) and (sink.stat_blob(desc.digest) == desc.size or mounted(source, sink, desc)):
            return Descriptor(desc.media_type, desc.digest, desc.size)
        assert m.config is not None  # configs() has read it
        return put_bytes(sink, m.config, desc.media_type)

    return Parallel(put, p.manifests, LIGHT_THREADS, "config")


def _join_quietly(writes: Parallel[Any, Any] | None) -> None:
    """Wait for ``writes`` while another error is on its way out (that one is reported)."""
    with contextlib.suppress(Exception):
        if writes is not None:
            writes.join()


class _EarlyImage:
    """The image record of a sink that stages records (a registry), made and
    staged as soon as every layer's output is known: a reused or carried
    layer's from its lookup, a transcoded one's once it is verified, before
    its commit. The record's blob then goes up beside the last layer's
    commit, and after it only the manifests and the record's tag remain."""

    def __init__(self, sink: Sink, p: Plan, mode: str, name: str) -> None:
        self._sink = sink
        self._plan = p
        self._mode = mode
        self._name = name
        self._wanted = {x.digest for m in p.manifests for x in m.manifest.layers}
        self._targets: dict[Digest, Descriptor] = {}
        self._lock = threading.Lock()
        self.image: ImageRecord | None = None

    def known(self, layer: Descriptor, target: Descriptor) -> None:
        """``layer``'s output is ``target``; once every layer's is known, stage the record."""
        with self._lock:
            self._targets[layer.digest] = target
            if self.image is not None or not self._wanted <= self._targets.keys():
                return
            self._plan.configs()  # the manifests name the platforms
            _, root = _manifests(self._plan, self._targets, self._mode)
            self.image = image = ImageRecord(self._name, root)
        _stage_image(self._sink, image)


def _stage_image(sink: Sink, image: ImageRecord) -> None:
    if isinstance(sink, RecordStager):
        with contextlib.suppress(SinkError):  # best effort: put_image pushes it again and reports
            sink.stage_image(image)


def _write_outputs(job: LayerJob, p: Plan, outcomes: dict[Digest, LayerOutcome], mode: str, name: str,
                   early: _EarlyImage | None = None) -> Descriptor:
    """Every new variant's record into the sink and then the local table,
    several at once, while this thread writes the manifests and then the image
    record. Returns the root descriptor.

    Each write names only what is already stored (a variant record its blob,
    the image record the root manifest), so none waits for another kind: on a
    remote sink each is a few round trips, and one kind after the other they
    were the last tenth of a second of a registry conversion, with both cores
    idle. For the same reason the image record's blob starts on its way (where
    the sink stages records) as soon as the root's digest is known, before the
    manifests go, or before the last layer's commit (``early``). Once every
    write has ended, a variant record's failure is raised first (the first in
    plan order), then a manifest's or the image record's; a failed manifest
    leaves no image record."""
    records = [o.record for o in outcomes.values() if o.record is not None]
    writes = Parallel(job.record, records, RECORD_WRITERS, "record")
    try:
        pushes, root = _manifests(p, {d: o.target for d, o in outcomes.items()}, mode)
        if early is not None and early.image is not None and early.image.root == root:
            image = early.image
        else:
            image = ImageRecord(name, root)
            _stage_image(job.sink, image)
        # The platforms' manifests name only blobs already stored: all at once;
        # the root (an index, when there are several) once they are in.
        each(lambda push: job.sink.put_manifest(*push), pushes[:-1], LIGHT_THREADS, "manifest")
        job.sink.put_manifest(*pushes[-1])
        job.sink.put_image(image)
    except BaseException:
        writes.join()
        raise
    writes.join()
    return root


def _check_layers_present(source: ImageSource, p: Plan) -> None:
    """Cheap checks before any write, for sources that can stat their blobs."""
    stat = getattr(source, "blob_size", None)
    if stat is None:
        return
    for m in p.manifests:
        for layer in m.manifest.layers:
            size = stat(layer)
            if size is None:
                raise ManifestError(f"{source.name}: layer {layer.digest} is missing")
            if size != layer.size:
                raise ManifestError(f"{source.name}: layer {layer.digest} is {size} bytes, descriptor says {layer.size}")


def _zstd_manifest(m: Platformed, targets: dict[Digest, Descriptor]) -> tuple[bytes, bool]:
    layers = []
    for layer in m.manifest.layers:
        t = targets[layer.digest]
        layers.append(layer.replace(media_type=t.media_type, digest=t.digest, size=t.size))
    changed = any(a.digest != b.digest for a, b in zip(layers, m.manifest.layers, strict=True))
    config = m.manifest.config.replace(media_type=oci_config_type(m.manifest.config.media_type))
    return canonical_json(m.manifest.with_layers(layers, OCI_MANIFEST, config)), changed


def _manifests(p: Plan, targets: dict[Digest, Descriptor], mode: str) -> tuple[list[tuple[bytes, str]], Descriptor]:
    """The manifests to push, the root last (the others name only blobs, and
    configs are in the sink already: _put_configs), and the root's descriptor;
    ``targets``: each layer's output, by the layer's digest."""
    pushes: list[tuple[bytes, str]] = []
    entries: list[Descriptor] = []
    for m in p.manifests:
        zdata, changed = _zstd_manifest(m, targets)
        if mode == "add" or not changed:
            pushes.append((m.raw, m.desc.media_type))
            entries.append(m.desc)
        if changed:
            pushes.append((zdata, OCI_MANIFEST))
            notes = {ANNOTATION_ZSTD: "true"} if mode == "add" else {}
            entries.append(Descriptor(OCI_MANIFEST, Digest.of(zdata), len(zdata), platform=m.desc.platform,
                                      annotations={**m.desc.annotations, **notes}))
    if mode == "replace" and p.index is None and len(entries) == 1:
        return pushes, entries[0].replace(platform=None, annotations={})
    index = canonical_json(build_index(entries, p.index))
    pushes.append((index, OCI_INDEX))
    return pushes, Descriptor(OCI_INDEX, Digest.of(index), len(index))


def describe(result: ImageResult) -> list[str]:
    lines = []
    for o in result.layers:
        lines.append(f"  {o.source.digest.short} {o.source.size:>12} -> {o.target.digest.short} {o.target.size:>12}  "
                     f"{o.status} {o.seconds:.2f}s")
    lines.append(f"{result.name}: {result.root.digest} ({result.mode}), {result.seconds:.2f}s")
    return lines


__all__ = ["ConvertOptions", "ImageResult", "convert_image", "describe", "plan", "platform_string"]
