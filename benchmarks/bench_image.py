"""Whole-image conversion: the three-layer corpus image (bin, py, small) into a
local store, against the sum of its single-layer transcodes and against
``skopeo copy --dest-compress-format zstd`` of the same image, in one run.

    python benchmarks/bench_image.py [--reps 3] [--workdir DIR]

Ratios are of medians measured round-robin in this run (and, for skopeo, the
median of the ratios within each repetition, which cancels slow drifts in load); the load average and
the CPU other processes used meanwhile are printed, since on a shared machine
wall-clock ratios are only as good as the quiet they were taken in.

Each repetition also times the stage floor (benchmarks/capacity.py): the
work the 2-core limit counts (inflate, three sha256 passes, zstd frames) on
one thread for each layer, halved. No conversion built on these stages can
beat it on two cores, so skopeo's wall over it is the best ratio any
pipeline could show in that repetition, and the floor over our wall is how
much of that best we reach.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_engine import CLI, Proc, installed_bytecode, run_proc, run_skopeo
from benchmarks.capacity import floor_summary, stage_seconds
from benchmarks.corpus import DEFAULT_WORKDIR, build_corpus, build_image, layer_info
from benchmarks.installed import cli_for

NAMES = ("bin", "py", "small")


def ours(cli: str, layout: Path, dest: Path, mode: str) -> Proc:
    shutil.rmtree(dest, ignore_errors=True)
    return run_proc([cli, "convert", f"oci:{layout}:latest", "--to",
                     f"type=local,dest={dest}", "--mode", mode, "--no-table", "--json"])


def singles(cli: str, layers: dict[str, Path], out: Path) -> list[Proc]:
    return [run_proc([cli, "convert", str(path), "-o", str(out / f"{name}.zst"),
                      "--no-table", "--json"]) for name, path in layers.items()]


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    ap.add_argument("--cli", choices=("installed", "here"), default="installed",
                    help="time this checkout pip-installed in a venv of its own (default), or run in place")
    args = ap.parse_args()
    installed_bytecode()
    cli = cli_for(args.cli, args.workdir, CLI)
    print(f"timing {cli}", file=sys.stderr)
    layers = build_corpus(args.workdir, NAMES)
    layout = build_image(args.workdir, NAMES)
    rows: dict[str, list[Proc]] = {"ours (replace)": [], "ours (add)": [], "sum of single layers": [], "skopeo": []}
    floors: list[float] = []  # per repetition: the stage work on one thread, halved
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        for _ in range(args.reps):
            rows["ours (replace)"].append(ours(cli, layout, work / "replace", "replace"))
            rows["ours (add)"].append(ours(cli, layout, work / "add", "add"))
            parts = singles(cli, layers, work)
            rows["sum of single layers"].append(Proc(sum(p.wall for p in parts), sum(p.cpu for p in parts),
                                                     max(p.rss for p in parts), {}, max(p.others for p in parts)))
            rows["skopeo"].append(run_skopeo(layout, work / "skopeo", 3))
            floors.append(stage_seconds(list(layers.values()), 3) / 2)
    tar = sum(int(layer_info(args.workdir, n)["tar_size"]) for n in NAMES)
    print(f"image: {', '.join(NAMES)} ({tar / 1e6:.1f} MB of tar), {args.reps} reps, load average "
          f"{load_before:.2f} before / {os.getloadavg()[0]:.2f} after, 2-core machine\n")
    print(f"{'run':24} {'wall s':>8} {'CPU s':>8} {'peak RSS MiB':>13} {'MB/s of tar':>12} {'others (cores)':>15}")
    for name, procs in rows.items():
        wall = median([p.wall for p in procs])
        print(f"{name:24} {wall:8.2f} {median([p.cpu for p in procs]):8.2f} {max(p.rss for p in procs) / 2**20:13.0f} "
              f"{tar / 1e6 / wall:12.1f} {median([p.others for p in procs]):15.2f}")
    ours_wall = median([p.wall for p in rows["ours (replace)"]])
    skopeo_wall = median([p.wall for p in rows["skopeo"]])
    single_wall = median([p.wall for p in rows["sum of single layers"]])
    paired = sorted(k.wall / o.wall for k, o in zip(rows["skopeo"], rows["ours (replace)"], strict=True))
    print(f"\nskopeo / ours (replace): {skopeo_wall / ours_wall:.2f}x  (target >= 2.0x); per repetition, "
          f"side by side: median {median(paired):.2f}x, range {paired[0]:.2f}-{paired[-1]:.2f}x")
    print(f"skopeo / ours (add, keeps gzip too): {skopeo_wall / median([p.wall for p in rows['ours (add)']]):.2f}x")
    print(f"ours / sum of single-layer transcodes: {ours_wall / single_wall:.2f}")
    print_floor(floors, rows["skopeo"], rows["ours (replace)"])


def print_floor(floors: list[float], skopeo: list[Proc], ours: list[Proc]) -> None:
    """The stage floor beside skopeo and us, each a median of per-repetition ratios."""
    print(f"stage floor (the limit's work on one thread, halved): {median(floors):.2f} s; "
          + floor_summary(floors, [k.wall for k in skopeo], [o.wall for o in ours]))


if __name__ == "__main__":
    main()
