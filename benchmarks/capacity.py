"""What two cores of this machine deliver to the limit's work, measured.

The 2-core limit (bench_engine.py) assumes two cores do twice the work of
one. On a shared virtual machine they may not: two busy vCPUs can share a
physical core's caches, memory bandwidth or clock with each other or with
other guests. This program measures that directly. A child process does
exactly the work the limit counts, on one thread, for one layer: ISA-L
inflate of the gzip blob, sha256 of the gzip, tar and zstd bytes (the tar
in one pass with each of the others, as the product hashes them:
``hash_as_the_product``), and zstd of the tar in the pipeline's one-shot
frames. It runs once alone, then as
two copies started at the same instant. Both copies take the same bytes, so

    ceiling = wall alone / mean wall of the pair

is the fraction of the 2-core limit that two perfectly parallel threads,
with no pipeline overhead at all, reach on this machine at this moment
(1.0 on two independent cores). No program doing that work can do better.

Children prepare (decode the layer into memory, compress it once for the
bytes to hash) before they report ready, so only the timed work overlaps.
Run alone: ``python benchmarks/capacity.py LAYER.tar.gz [--level 3] [--reps 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transcoder.codecs.constants import FRAME_SIZE
from transcoder.hashing import new_sha256, update_pair

MiB = 1 << 20


def hash_as_the_product(gz: bytes, frames: list[bytes], outputs: list[bytes]) -> None:
    """A layer's three hashes as ``transcode._write_frames`` does them: each
    frame's tar in one pass with the source bytes read for it (here the gzip
    in equal shares per frame), then with the previous frame's output
    (``hashing.update_pair``; with hashlib, one stream after the other)."""
    tar_hash, src_hash, out_hash = new_sha256(), new_sha256(), new_sha256()
    source = memoryview(gz)
    share = -(-len(gz) // len(frames))
    for i, frame in enumerate(frames):
        view, piece, prev = memoryview(frame), source[i * share : (i + 1) * share], outputs[i - 1] if i else b""
        update_pair(src_hash, piece, tar_hash, view[: len(piece)])
        update_pair(out_hash, prev, tar_hash, view[len(piece) : len(piece) + len(prev)])
        tar_hash.update(view[len(piece) + len(prev) :])
    out_hash.update(outputs[-1])


def limit_work(gz_path: Path, level: int) -> tuple[Callable[[], None], int]:
    """The limit's work on one layer as one call on one thread, and the layer's tar size."""
    import zstandard
    from isal import isal_zlib

    gz = gz_path.read_bytes()
    d = isal_zlib.decompressobj(31)
    tar = b"".join(d.decompress(gz[i : i + MiB]) for i in range(0, len(gz), MiB))
    frames = [tar[i : i + FRAME_SIZE] for i in range(0, len(tar), FRAME_SIZE)] or [b""]

    outputs = [zstandard.ZstdCompressor(level=level).compress(f) for f in frames]

    def work() -> None:
        inflate = isal_zlib.decompressobj(31)
        for i in range(0, len(gz), MiB):
            inflate.decompress(gz[i : i + MiB])
        hash_as_the_product(gz, frames, outputs)
        cctx = zstandard.ZstdCompressor(level=level)
        for frame in frames:
            cctx.compress(frame)

    return work, len(tar)


def child(gz_path: Path, level: int) -> None:
    """Prepare, say ready, wait for the go line, do the work once, report it."""
    work, tar = limit_work(gz_path, level)
    print("ready", flush=True)
    sys.stdin.readline()
    wall = time.perf_counter()
    work()
    print(json.dumps({"wall": time.perf_counter() - wall, "tar": tar}), flush=True)


def _together(gz_path: Path, level: int, copies: int) -> list[dict[str, Any]]:
    argv = [sys.executable, __file__, "--child", str(gz_path), "--level", str(level)]
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", "capacity child did not start"
        for p in procs:  # go: one write each, back to back
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        reports = [json.loads(p.communicate()[0]) for p in procs]
    finally:
        for p in procs:
            p.kill()
    if any(p.returncode not in (0, -9) for p in procs):
        raise RuntimeError("capacity child failed")
    return reports


def measure(gz_path: Path, level: int) -> dict[str, float]:
    """One alone, then two together: ns per tar byte (wall) of each, and the ceiling."""
    (alone,) = _together(gz_path, level, 1)
    pair = _together(gz_path, level, 2)
    tar = alone["tar"]
    solo = alone["wall"] / tar * 1e9
    paired = statistics.mean(r["wall"] for r in pair) / tar * 1e9
    return {"alone_ns": solo, "pair_ns": paired, "ceiling": solo / paired}


def stage_seconds(gz_paths: list[Path], level: int) -> float:
    """Seconds one thread takes to do the limit's work on every layer, each alone.

    Half of it is the wall time of a perfect two-core program built on these
    stages that starts instantly and never waits: the floor for any whole
    image conversion, which bench_image.py and bench_registry.py set beside
    their peer's wall time."""
    return sum(float(_together(path, level, 1)[0]["wall"]) for path in gz_paths)


def floor_summary(floors: list[float], peer: list[float], ours: list[float]) -> str:
    """Per repetition, the peer's wall over the floor (the best ratio any pipeline on
    these stages could show) and the floor over ours (how much of it we reach):
    medians and ranges, as bench_image.py and bench_registry.py print them."""
    best = sorted(k / f for k, f in zip(peer, floors, strict=True))
    reached = sorted(f / o for f, o in zip(floors, ours, strict=True))
    return (f"skopeo / floor, the best ratio any pipeline on these stages could show: median "
            f"{statistics.median(best):.2f}x, range {best[0]:.2f}-{best[-1]:.2f}x; floor / ours (replace): "
            f"median {statistics.median(reached):.2f}, range {reached[0]:.2f}-{reached[-1]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("layer", type=Path, help="a gzip layer blob (benchmarks/corpus.py builds some)")
    ap.add_argument("--level", type=int, default=3, help="zstd level (default %(default)s)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default %(default)s)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.layer, args.level)
        return
    print("| rep | alone ns/B | pair ns/B (mean of 2) | **ceiling** (÷ 2-core limit) |")
    print("|---|---:|---:|---:|")
    ceilings = []
    for rep in range(args.reps):
        m = measure(args.layer, args.level)
        ceilings.append(m["ceiling"])
        print(f"| {rep + 1} | {m['alone_ns']:.3f} | {m['pair_ns']:.3f} | **{m['ceiling']:.3f}** |", flush=True)
    print(f"\nmedian ceiling {statistics.median(ceilings):.3f}, best {max(ceilings):.3f}")


if __name__ == "__main__":
    main()
