"""zstd tuning: what ``--zstd NAME=N,...`` trades against the level alone,
and where the output lands against skopeo's.

For each corpus layer (default ``bin`` and ``py``) the tar is cut into the
pipeline's 8 MiB frames and compressed one-shot on one thread, as the
zstd workers do, at level 3 untuned and with each tuning given (default
``clog=13``). The settings take turns within every repetition; the CPU time
is each one's best, and the ratio to level 3 is taken in the same run. The
output sizes are compared with ``skopeo copy --dest-compress-format zstd``
of the same layers (an OCI-to-OCI copy of the corpus image, when skopeo is
on PATH).

Run from the repository: ``python benchmarks/bench_tuning.py [--zstd clog=13]
[--zstd hlog=16,clog=14] [--reps 3]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isal import igzip

from benchmarks.corpus import DEFAULT_WORKDIR, build_image, layer_info
from transcoder.codecs import ZstdParams
from transcoder.codecs.constants import FRAME_SIZE


def frames_of(gz_path: Path) -> list[bytes]:
    tar: bytes = igzip.decompress(gz_path.read_bytes())  # type: ignore[no-untyped-call]
    return [tar[i : i + FRAME_SIZE] for i in range(0, len(tar), FRAME_SIZE)] or [b""]


def compress_once(params: ZstdParams, frames: list[bytes]) -> tuple[float, int]:
    """CPU seconds and output bytes of one pass over the frames, on this thread."""
    cctx = params.frame_compressor()
    started = time.process_time()
    size = sum(len(cctx.compress(f)) for f in frames)
    return time.process_time() - started, size


def skopeo_sizes(workdir: Path, names: tuple[str, ...]) -> dict[str, int] | None:
    """Each layer's size as skopeo writes it in zstd, by the layer's name."""
    if shutil.which("skopeo") is None:
        return None
    layout = build_image(workdir, names)
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        subprocess.run(["skopeo", "copy", "-q", "--dest-compress-format", "zstd", "--dest-compress",
                        f"oci:{layout}:latest", f"oci:{tmp}:latest"], check=True)
        index = json.loads(Path(tmp, "index.json").read_text())
        manifest = json.loads(Path(tmp, "blobs", *index["manifests"][0]["digest"].split(":")).read_text())
    return {name: int(layer["size"]) for name, layer in zip(names, manifest["layers"], strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zstd", action="append", default=[], help="a tuning to measure (repeatable; default clog=13)")
    ap.add_argument("--layers", default="bin,py", help="corpus layers (default %(default)s)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args()
    names = tuple(args.layers.split(","))
    settings = [ZstdParams()] + [ZstdParams(tuning=ZstdParams.parse_tuning(t)) for t in args.zstd or ["clog=13"]]
    peer = skopeo_sizes(args.workdir, names)
    print("| layer | setting | zstd CPU s (best) | ÷ level 3 | MB | ÷ level 3 | ÷ skopeo's |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        frames = frames_of(Path(str(layer_info(args.workdir, name)["path"])))
        best = {p: float("inf") for p in settings}
        sizes = {}
        for _ in range(args.reps):
            for p in settings:
                cpu, sizes[p] = compress_once(p, frames)
                best[p] = min(best[p], cpu)
        base = settings[0]
        for p in settings:
            against = f"{sizes[p] / peer[name]:.4f}" if peer else "(no skopeo)"
            print(f"| {name} | {p.label} | {best[p]:.3f} | {best[p] / best[base]:.3f} | {sizes[p] / 1e6:.2f} | "
                  f"{sizes[p] / sizes[base]:.4f} | {against} |")


if __name__ == "__main__":
    main()
