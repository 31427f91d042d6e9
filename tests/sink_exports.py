"""Many processes exporting images into one sink at once, then every image
restored and compared byte for byte.

``parallel_exports(spec, tmp_path, processes)`` starts the processes (this
module run as a script is one of them); ``check_exports`` restores each image
from the sink, both as gzip (must equal the source layout's blobs exactly) and
as zstd (every layer must decode, with the ``zstd`` command line tool, to the
very tar it came from), and checks every variant record.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.imagegen import make_tar, write_layout
from tests.peers import require_tool
from transcoder.descriptor import ANNOTATION_REF_NAME, ZSTD_LAYER_TYPES
from transcoder.digest import Digest
from transcoder.images.convert import ConvertOptions, convert_image
from transcoder.images.layout import Layout, LayoutSource
from transcoder.images.model import Manifest, parse
from transcoder.images.restore import restore
from transcoder.sinks import open_sink
from transcoder.sinks.base import Sink

REPO = Path(__file__).resolve().parent.parent
BASE_SEED = 1  # a layer every image shares
LAYER_SIZE = 150_000


def plan(tmp_path: Path, processes: int) -> list[dict[str, Any]]:
    """Jobs for ``processes`` exporters: each exports its own image and one of a few shared names
    (same name, same content), all on a common base layer."""
    shared = max(2, processes // 3)
    return [{"dir": str(tmp_path / f"src-{i}"),
             "images": {f"own-{i}": [BASE_SEED, 100 + i], f"shared-{i % shared}": [BASE_SEED, 200 + i % shared]}}
            for i in range(processes)]


def export(spec: str, job: dict[str, Any]) -> None:
    """One exporter: build its OCI layout, convert every image into the sink."""
    root = Path(job["dir"])
    write_layout(root, {name: [make_tar(s, LAYER_SIZE) for s in seeds] for name, seeds in job["images"].items()})
    sink = open_sink(spec)
    try:
        for name in job["images"]:
            convert_image(LayoutSource(str(root), name), sink, ConvertOptions(jobs=2, workers=1))
    finally:
        sink.close()


def parallel_exports(spec: str, tmp_path: Path, processes: int = 8, timeout: float = 600.0) -> list[dict[str, Any]]:
    jobs = plan(tmp_path, processes)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.sink_exports", spec, json.dumps(job)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for job in jobs]
    for proc in procs:
        _, stderr = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, stderr[-3000:]
    return jobs


def check_exports(sink: Sink, jobs: list[dict[str, Any]], tmp_path: Path) -> int:
    """Restore and compare every exported image; returns the number of blobs compared."""
    zstd = require_tool("zstd")
    expected = {name: (Path(job["dir"]), seeds) for job in jobs for name, seeds in job["images"].items()}
    assert set(sink.images()) == set(expected)
    compared = 0
    for name, (source_dir, seeds) in sorted(expected.items()):
        gzip_dir = tmp_path / "restored" / f"{name}-gzip"
        restore(sink, name, str(gzip_dir), "gzip")
        compared += _same_blobs(gzip_dir, source_dir)
        zstd_dir = tmp_path / "restored" / f"{name}-zstd"
        restore(sink, name, str(zstd_dir), "zstd")
        compared += _zstd_layers_decode(zstd_dir, [make_tar(s, LAYER_SIZE) for s in seeds], zstd)
        compared += _variants_recorded(sink, source_dir, name)
    return compared


def _manifests(layout: Layout) -> list[tuple[bytes, Manifest]]:
    """The image's manifests (raw and parsed), through its index if it has one."""
    (entry,) = layout.index_entries()
    raw = layout.read_blob(entry, "root")
    doc = parse(raw, entry, str(layout.root))
    if isinstance(doc, Manifest):
        return [(raw, doc)]
    out = []
    for child in doc.manifests:
        child_raw = layout.read_blob(child, "manifest")
        child_doc = parse(child_raw, child, str(layout.root))
        assert isinstance(child_doc, Manifest)
        out.append((child_raw, child_doc))
    return out


def _same_blobs(restored: Path, source: Path) -> int:
    """The gzip restore's manifest, config and layers are byte for byte the source's."""
    ((raw, doc),) = _manifests(Layout(restored))
    ours, theirs = Layout(restored), Layout(source)
    assert raw == theirs.blob_path(Digest.of(raw)).read_bytes()
    for desc in (doc.config, *doc.layers):
        assert ours.blob_path(desc.digest).read_bytes() == theirs.blob_path(desc.digest).read_bytes()
    return 1 + 1 + len(doc.layers)


def _zstd_layers_decode(restored: Path, tars: list[bytes], zstd: str) -> int:
    layout = Layout(restored)
    ((_, doc),) = _manifests(layout)
    assert [layer.media_type in ZSTD_LAYER_TYPES for layer in doc.layers] == [True] * len(tars)
    for layer, tar in zip(doc.layers, tars, strict=True):
        blob = layout.blob_path(layer.digest)
        decoded = subprocess.run([zstd, "-dc", str(blob)], capture_output=True, check=True).stdout
        assert decoded == tar, f"{restored}: layer {layer.digest} does not decode to its source tar"
    return len(tars)


def _variants_recorded(sink: Sink, source: Path, name: str) -> int:
    """Each gzip layer of the source image has a variant record whose zstd blob is in the sink."""
    count = 0
    for entry in Layout(source).index_entries():
        if entry.annotations.get(ANNOTATION_REF_NAME) != name:
            continue
        doc = parse(Layout(source).read_blob(entry, "root"), entry, str(source))
        assert isinstance(doc, Manifest)
        for layer in doc.layers:
            (rec,) = sink.find_variants(layer.digest)
            assert rec.source.size == layer.size
            assert sink.stat_blob(rec.target.digest) == rec.target.size
            count += 1
    return count


if __name__ == "__main__":
    export(sys.argv[1], json.loads(sys.argv[2]))
