"""Parallel jobs exporting into one ``type=gha`` scope at once, through the
emulator with a visibility delay: nothing any job wrote is lost, everything
reads back byte for byte, and an unchanged second export uploads nothing."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.imagegen import make_tar, unzstd, write_layout
from transcoder.codecs import ZstdParams
from transcoder.descriptor import OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST, Descriptor
from transcoder.digest import Digest
from transcoder.gha.emulator import Emulator
from transcoder.images.restore import restore
from transcoder.records import ImageRecord, VariantRecord
from transcoder.sinks.base import put_bytes
from transcoder.sinks.gha import GhaSink

SCOPE = "parallel"
SHARED_LAYER = 999
UPLOADS = ("CreateCacheEntry", "PutBlob", "PutBlock", "PutBlockList", "FinalizeCacheEntryUpload")
# job -> (image name, layer seeds); jobs 8 and 9 export the same image as job 0.
JOBS = [(f"img-{i}", [i, 100 + i, SHARED_LAYER]) for i in range(8)] + [("img-0", [0, 100, SHARED_LAYER])] * 2


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(visibility_delay=0.5) as e:
        yield e


def layer_tar(seed: int) -> bytes:
    rnd = random.Random(seed)
    words = [b"alpha ", b"beta ", b"gamma ", str(seed).encode() + b" "]
    return b"".join(rnd.choice(words) for _ in range(150_000)) + rnd.randbytes(300_000)


def canonical(seed: int) -> bytes:
    return gzip.compress(layer_tar(seed), 6, mtime=0)


def sink_for(env: dict[str, str]) -> GhaSink:
    # 256 KiB blocks, so layers go up as several blocks and block lists.
    return GhaSink.from_options({"scope": SCOPE}, env=env, block_size=256 << 10)


def export(sink: GhaSink, name: str, seeds: list[int], params: ZstdParams) -> dict[str, Any]:
    """What ``convert`` does, driven through the sink contract only."""
    layers = []
    for seed in seeds:
        src = put_bytes(sink, canonical(seed), OCI_LAYER_GZIP)
        known = [r for r in sink.find_variants(src.digest)
                 if r.params.key == params.key and sink.stat_blob(r.target.digest) == r.target.size]
        if known:
            layers.append(known[0].target)
            continue
        tar = layer_tar(seed)
        out = zstandard.ZstdCompressor(level=params.level).compress(tar)
        writer = sink.blob_writer(OCI_LAYER_ZSTD, key_hint=f"{src.digest}-{params.key}")
        for i in range(0, len(out), 100_000):
            writer.write(out[i : i + 100_000])
        target = Descriptor(OCI_LAYER_ZSTD, Digest.of(out), len(out))
        writer.commit(target.size, target.digest)
        sink.put_variant(VariantRecord(src, Digest.of(tar), target, params))
        layers.append(target)
    config = put_bytes(sink, json.dumps({"name": name, "seeds": seeds}).encode(), OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(),
                "layers": [d.to_json() for d in layers]}
    root = sink.put_manifest(json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST)
    sink.put_image(ImageRecord(name, root))
    return {"name": name, "root": str(root.digest)}


def job(args: tuple[dict[str, str], str, list[int]]) -> dict[str, Any]:
    env, name, seeds = args
    sink = sink_for(env)
    try:
        return export(sink, name, seeds, ZstdParams())
    finally:
        sink.close()


def run_jobs(env: dict[str, str]) -> list[dict[str, Any]]:
    with multiprocessing.get_context("spawn").Pool(len(JOBS)) as pool:
        return pool.map(job, [(env, name, seeds) for name, seeds in JOBS])


def check_everything_reads_back(sink: GhaSink, results: list[dict[str, Any]]) -> None:
    images = sink.images()
    assert sorted(images) == sorted({name for name, _ in JOBS})
    for res in results:
        assert str(images[res["name"]].root.digest) == res["root"]  # same content, same root, whoever won
    for name, seeds in dict(JOBS).items():
        manifest = json.loads(sink.get_manifest(images[name].root))
        for seed, layer in zip(seeds, manifest["layers"], strict=True):
            with sink.open_blob(Digest.parse(layer["digest"])) as f:
                data = f.read()
            assert unzstd(data) == layer_tar(seed)
            src = Digest.of(canonical(seed))
            with sink.open_blob(src) as f:
                assert f.read() == canonical(seed)
            assert [str(r.target.digest) for r in sink.find_variants(src)] == [layer["digest"]]


def test_parallel_jobs_through_the_sink_contract(emu: Emulator) -> None:
    env = emu.env()
    results = run_jobs(env)
    time.sleep(emu.config.visibility_delay + 0.2)
    reader = sink_for(env)
    check_everything_reads_back(reader, results)
    # The same exports again, all at once: nothing is uploaded, no entry is created.
    emu.reset_counts()
    again = run_jobs(env)
    assert emu.count(*UPLOADS) == 0, emu.counts
    assert again == results or {r["root"] for r in again} == {r["root"] for r in results}


def cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "transcoder", *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def convert_all(layout: Path, names: list[str], env: dict[str, str], home: Path) -> list[dict[str, Any]]:
    procs = [cli(["convert", f"oci:{layout}:{name}", "--to", f"type=gha,scope={SCOPE}", "--json"],
                 {**env, "TRANSCODER_HOME": str(home / str(i))}) for i, name in enumerate(names)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    return outs


def test_parallel_convert_end_to_end(emu: Emulator, tmp_path: Path) -> None:
    tars = {i: make_tar(i, size=800_000, files=8) for i in range(60, 66)}
    images = {f"app{i}": [tars[60], tars[61 + i]] for i in range(5)}  # a base layer every image shares
    layout = write_layout(tmp_path / "src", images)
    names = [*images, "app0", "app1", "app0"]  # 8 jobs, three of them repeating an image
    env = emu.env()
    convert_all(layout, names, env, tmp_path / "home")
    time.sleep(emu.config.visibility_delay + 0.2)
    sink = sink_for(env)
    for name, layer_tars in images.items():
        for comp in ("gzip", "zstd"):
            out = tmp_path / f"out-{name}-{comp}"
            restore(sink, name, str(out), comp)
            blobs = {p.name: p.read_bytes() for p in (out / "blobs" / "sha256").iterdir()}
            layers = [b for b in blobs.values() if b[:2] == b"\x1f\x8b" or b[:4] == b"\x28\xb5\x2f\xfd"]
            if comp == "gzip":  # the canonical blobs, exactly as published
                source = {p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}
                assert all(source[Digest.of(b).hex] == b for b in layers) and len(layers) == 2
            else:
                decoded = sorted(unzstd(b) for b in layers)
                assert decoded == sorted(layer_tars)
    emu.reset_counts()
    second = convert_all(layout, names, env, tmp_path / "home2")
    assert emu.count(*UPLOADS) == 0, emu.counts
    assert all(layer["status"] == "hit" for out in second for layer in out["layers"])
