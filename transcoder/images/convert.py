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
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..codecs import ZstdParams
from ..codecs.constants import FRAME_SIZE
from ..codecs.framepool import EncoderThreads
from ..descriptor import (
    ANNOTATION_REF_NAME,
    ANNOTATION_ZSTD,
    INDEX_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    platform_string,
    read_checked,
)
from ..digest import Digest
from ..errors import ManifestError, SinkError, UsageError
from ..parallel import Parallel, each
from ..records import ImageRecord
from ..sinks.base import LookupWarmer, RecordStager, Sink, StatAhead, put_bytes
from ..transcode import default_workers
from ..variants import VariantTable
from .layers import LayerJob, LayerOutcome, Opened, ProgressFactory, mounted
from .model import Index, Manifest, build_index, canonical_json, matches_platform, oci_config_type, parse, platform_of_config
from .source import ImageSource

MAX_DEPTH = 4
RECORD_WRITERS = 8  # variant records written to the sink at once
LIGHT_THREADS = 8  # variant lookups, and layers reused or carried, at once
# Layers to transcode beyond --jobs that may be in flight, each past the end of
# its source (its last frames, its upload, the registry's check): on a long
# link a small layer spends most of its time there, waiting on round trips.
TAIL_THREADS = 4
NAME_ANNOTATIONS = frozenset({ANNOTATION_REF_NAME, "io.containerd.image.name"})


@dataclass
class Platformed:
    """A manifest with its platform and its config bytes, all verified (in a
    plan from :func:`start_plan`, once :meth:`Plan.configs` has returned)."""

    desc: Descriptor
    manifest: Manifest
    raw: bytes
    config: bytes | None  # None while it is being read


@dataclass
class Plan:
    root: Descriptor
    tag: str | None
    index: Index | None
    manifests: list[Platformed] = field(default_factory=list)
    reads: Parallel[Platformed, None] | None = field(default=None, repr=False)  # configs being read

    def configs(self) -> None:
        """Wait until every manifest's config is read and verified, and its
        platform known; raise the first failure, in plan order (thread-safe)."""
        if self.reads is not None:
            self.reads.join()


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


def read_blob_verified(source: ImageSource, desc: Descriptor, what: str) -> bytes:
    if desc.size > MAX_MANIFEST_BYTES:  # before opening: a hostile size never costs a read
        raise ManifestError(f"{what}: {desc.size} bytes is over the {MAX_MANIFEST_BYTES} byte limit")
    with source.open_blob(desc) as f:
        return read_checked(f, desc, what)


def plan(source: ImageSource, platforms: list[str] | None) -> Plan:
    """The image's manifests that match ``platforms``, with their configs."""
    result = start_plan(source, platforms)
    result.configs()
    return result


def start_plan(source: ImageSource, platforms: list[str] | None) -> Plan:
    """:func:`plan`, returning once the manifests are read: the configs that
    need not be read to choose the platforms are still on their way
    (:meth:`Plan.configs` waits for them). On a long link the layers' first
    round trips (their blobs, their uploads) then overlap a config's instead
    of following it; nothing is written until the configs are verified."""
    root, tag = source.resolve()
    # Name annotations belong to the store's index.json, not to our documents.
    root = root.replace(annotations={k: v for k, v in root.annotations.items() if k not in NAME_ANNOTATIONS})
    result = Plan(root, tag, None)
    result.manifests = _visit(source, root, result, platforms, set(), 0)
    if not result.manifests:
        raise ManifestError(f"{source.name}: no manifest matches platform {platforms}")
    pending = [m for m in result.manifests if m.config is None]
    result.reads = Parallel(lambda m: _read_config(source, m), pending, LIGHT_THREADS, "config-read")
    return result


def _read_config(source: ImageSource, m: Platformed) -> None:
    """Fill in ``m``'s config, and its platform from it when the index gave none."""
    what = f"{source.name}: config {m.manifest.config.digest}"
    m.config = read_blob_verified(source, m.manifest.config, what)
    if m.desc.platform is None:
        m.desc = m.desc.replace(platform=platform_of_config(m.config, what) or None)


def _visit(source: ImageSource, desc: Descriptor, out: Plan, platforms: list[str] | None, seen: set[Digest],
           depth: int) -> list[Platformed]:
    """The manifests under ``desc`` that match ``platforms``, in index order.
    The root index's children are read at once: each is a manifest and a
    config to fetch, round trips that need not wait for each other (a
    multi-platform image has a dozen)."""
    if desc.digest in seen or depth > MAX_DEPTH:
        raise ManifestError(f"{source.name}: index {desc.digest} refers to itself (or nests too deep)")
    seen = seen | {desc.digest}
    raw = source.get_manifest(desc)
    doc = parse(raw, desc, source.name)
    if isinstance(doc, Index):
        if depth == 0:
            out.index = doc
        children = [c for c in doc.manifests
                    if c.media_type in INDEX_TYPES or matches_platform(c.platform, platforms) or c.platform is None]

        def visit(child: Descriptor) -> list[Platformed]:
            return _visit(source, child, out, platforms, seen, depth + 1)

        # Nested indexes are read in turn, so the threads stay bounded.
        found = each(visit, children, LIGHT_THREADS, "manifest") if depth == 0 else [visit(c) for c in children]
        return [m for ms in found for m in ms]
    if desc.platform or not platforms:  # the config is not needed to choose: read later (start_plan)
        return [Platformed(desc, doc, raw, None)] if matches_platform(desc.platform, platforms) else []
    config = read_blob_verified(source, doc.config, f"{source.name}: config {doc.config.digest}")
    platform = platform_of_config(config, f"{source.name}: config {doc.config.digest}")
    if not matches_platform(platform, platforms):
        return []
    return [Platformed(desc.replace(platform=platform or None), doc, raw, config)]


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
        outcomes = _run_layers(job, p, opts.jobs, early)
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


def _run_layers(job: LayerJob, p: Plan, jobs: int, early: _EarlyImage | None = None) -> dict[Digest, LayerOutcome]:
    """Every unique layer, each run to its end; then the first failure in plan
    order is raised.

    Lookups and the layers that need no transcode (reused, carried) cost round
    trips, not CPU, so they run all at once: an unchanged rerun of a
    many-layer image waits for one lookup, not one per layer in turn. Layers
    to transcode go through the admission below, beside them."""
    layers = list({x.digest: x for m in p.manifests for x in m.manifest.layers}.values())
    found = each(job.lookup, layers, LIGHT_THREADS, "lookup")
    heavy = [i for i, x in enumerate(layers) if job.needs_transcode(x, found[i])]
    light = sorted(set(range(len(layers))) - set(heavy))
    if early is not None:
        for i in light:  # what finish() will give: the variant found, or the layer carried as it is
            rec = found[i]
            early.known(layers[i], rec.target if rec is not None else layers[i])
    # Layers in flight share one group of compressing threads (each layer's
    # decode thread is one more), so cores are not oversubscribed while
    # several run and the last layer alone still gets them all.
    workers = job.workers or default_workers()
    with EncoderThreads(max(0, workers - 1) if heavy else 0) as threads:

        def finish(i: int) -> LayerOutcome:
            p.configs()
            return job.finish(layers[i], found[i])

        light_runs = Parallel(finish, light, LIGHT_THREADS, "layer-light")
        transcodes = _Transcodes(dataclasses.replace(job, threads=threads), p, [layers[i] for i in heavy], workers,
                                 jobs)
        heavy_runs = Parallel(transcodes.run, list(range(len(heavy))), max(1, jobs) + TAIL_THREADS, "layer")
        settled = dict(zip(light, light_runs.outcomes(), strict=True))
        settled.update(zip(heavy, heavy_runs.outcomes(), strict=True))
    done: dict[Digest, LayerOutcome] = {}
    for i, x in enumerate(layers):
        outcome, error = settled[i]
        if error is not None:
            raise error
        assert outcome is not None  # a call without an error returned one
        done[x.digest] = outcome
    return done


class _Transcodes:
    """The layers to transcode, in plan order, each through the admission.

    Every layer opens its blob (and its output's upload) before its turn, so
    on a long link those round trips overlap the wait instead of following
    it. The wait must stay short (a stream left idle for long is cut by load
    balancers, and a presigned URL expires): a small layer with no big one
    before it opens at once, since the layers before it are small too; any
    other once the layer before it is near the end of its source
    (``LayerJob.source_near``) or has ended."""

    def __init__(self, job: LayerJob, p: Plan, layers: list[Descriptor], workers: int, jobs: int) -> None:
        self._plan = p
        self._layers = layers
        self._workers = workers
        self._jobs = jobs
        self._admission = _Admission(max(1, jobs))
        self._near = {x.digest: threading.Event() for x in layers}
        self._first_big = next((pos for pos, x in enumerate(layers) if _big(x, workers)), len(layers))
        self._job = dataclasses.replace(job, source_read=self._admission.ease,
                                        source_near=lambda d: self._near[d.digest].set())

    def run(self, position: int) -> LayerOutcome:
        """The layer at ``position``, opened ahead, then transcoded in its turn."""
        try:
            return self._run(position, self._layers[position])
        finally:
            self._near[self._layers[position].digest].set()  # at the latest: the next layer never waits forever

    def _run(self, position: int, x: Descriptor) -> LayerOutcome:
        if position >= self._first_big and position > 0:
            self._near[self._layers[position - 1].digest].wait()
        opened: Opened | Exception
        taken = False
        try:
            opened = self._job.open(x)
        except Exception as exc:  # raised in the layer's turn, which the layers after it wait for
            opened = exc

        def work(d: Descriptor) -> LayerOutcome:
            nonlocal taken
            if isinstance(opened, Exception):
                raise opened
            self._plan.configs()  # nothing is written for an image whose config is bad
            taken = True  # convert owns what was opened from here on
            return self._job.convert(d, opened)

        try:
            return self._admission.run(position, _weight(x, self._workers, self._jobs), work, x,
                                       big=_big(x, self._workers))
        except BaseException:
            if not taken and not isinstance(opened, Exception):
                opened.close()  # the layer never got to it
            raise


def _weight(layer: Descriptor, workers: int, jobs: int) -> int:
    """Slots a layer takes: all of them when it has enough frames to keep every
    core busy by itself (two big layers at once only make five threads share
    two cores: measured 3.22 -> 3.17 s, 3 % less CPU, on the three-layer
    corpus image), one when it is small (many small layers overlap their
    serial parts: a one-frame layer decodes, then compresses)."""
    return jobs if _big(layer, workers) else 1


def _big(layer: Descriptor, workers: int) -> bool:
    """Enough frames to keep every core busy: such a layer's tail holds frames too."""
    return layer.size >= workers * FRAME_SIZE


class _Admission:
    """Layers start in plan order, each once its weight in slots is free. A
    layer whose source has been read to the end (``ease``) gives its slots
    back: what it has left (its last frames, the commit, for a registry the
    wait while the registry checks the upload) leaves cores idle, so the next
    layer, big or small, starts decoding meanwhile. Its frames queue behind
    the tail's on the shared compressing threads, so the cores are shared, not
    oversubscribed. Big layers (see ``_big``) also count until they end, at
    most ``slots`` at once: their tails hold frames, so memory stays bounded
    however many small layers the pool lets wait on round trips."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._big_free = slots  # big layers in flight, tails included, at most as many as slots
        self._next = 0  # the plan position admitted next
        self._cond = threading.Condition()
        self._held: dict[Digest, int] = {}  # slots each running, uneased layer holds

    def run(self, position: int, weight: int, work: Callable[[Descriptor], LayerOutcome], layer: Descriptor,
            big: bool = False) -> LayerOutcome:
        with self._cond:
            self._cond.wait_for(lambda: self._next == position and self._free >= weight
                                and (not big or self._big_free > 0))
            self._next += 1
            self._free -= weight
            self._big_free -= big
            self._held[layer.digest] = weight
            self._cond.notify_all()
        try:
            return work(layer)
        finally:
            self.ease(layer)
            if big:
                with self._cond:
                    self._big_free += 1
                    self._cond.notify_all()

    def ease(self, layer: Descriptor) -> None:
        """``layer`` (running) frees its slots; a second call does nothing."""
        with self._cond:
            self._free += self._held.pop(layer.digest, 0)
            self._cond.notify_all()


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
