"""When each layer of an image runs: lookups and reused layers all at once,
transcodes through an admission that keeps the cores busy without
oversubscribing them or holding more than a few layers' frames.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from ..codecs.constants import FRAME_SIZE
from ..codecs.framepool import EncoderThreads
from ..descriptor import Descriptor
from ..digest import Digest
from ..parallel import Parallel, each
from ..transcode import default_workers
from .layers import LayerJob, LayerOutcome, Opened
from .plan import LIGHT_THREADS, Plan

# Layers to transcode beyond --jobs that may be in flight, each past the end of
# its source (its last frames, its upload, the registry's check): on a long
# link a small layer spends most of its time there, waiting on round trips.
TAIL_THREADS = 4


def run_layers(job: LayerJob, p: Plan, jobs: int,
               known: Callable[[Descriptor, Descriptor], None] | None = None) -> dict[Digest, LayerOutcome]:
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
    if known is not None:
        for i in light:  # what finish() will give: the variant found, or the layer carried as it is
            rec = found[i]
            known(layers[i], rec.target if rec is not None else layers[i])
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
        self._admission = Admission(max(1, jobs))
        self._near = {x.digest: threading.Event() for x in layers}
        self._first_big = next((pos for pos, x in enumerate(layers) if is_big(x, workers)), len(layers))
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
            return self._admission.run(position, weight(x, self._workers, self._jobs), work, x,
                                       big=is_big(x, self._workers))
        except BaseException:
            if not taken and not isinstance(opened, Exception):
                opened.close()  # the layer never got to it
            raise


def weight(layer: Descriptor, workers: int, jobs: int) -> int:
    """Slots a layer takes: all of them when it has enough frames to keep every
    core busy by itself (two big layers at once only make five threads share
    two cores: measured 3.22 -> 3.17 s, 3 % less CPU, on the three-layer
    corpus image), one when it is small (many small layers overlap their
    serial parts: a one-frame layer decodes, then compresses)."""
    return jobs if is_big(layer, workers) else 1


def is_big(layer: Descriptor, workers: int) -> bool:
    """Enough frames to keep every core busy: such a layer's tail holds frames too."""
    return layer.size >= workers * FRAME_SIZE


class Admission:
    """Layers start in plan order, each once its weight in slots is free. A
    layer whose source has been read to the end (``ease``) gives its slots
    back: what it has left (its last frames, the commit, for a registry the
    wait while the registry checks the upload) leaves cores idle, so the next
    layer, big or small, starts decoding meanwhile. Its frames queue behind
    the tail's on the shared compressing threads, so the cores are shared, not
    oversubscribed. Big layers (see ``is_big``) also count until they end, at
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


__all__ = ["Admission", "is_big", "run_layers", "weight"]
