"""Engine benchmark: the gzip -> zstd pipeline against its 2-core limit and peers.

One run measures, per corpus layer (benchmarks/corpus.py):

1. the single-core cost of each stage in this process, one thread: ISA-L
   inflate, sha256, zstd at the level used (threads=0), in CPU ns per tar
   byte, round-robin over --reps, best;
2. the limit: 2 cores / (inflate + sha256 x (tar+gz+zst)/tar + zstd), the
   baseline's definition; beside it, the limit with the hashing as the
   product does it (the tar in one pass with the gzip, then with the output:
   ``capacity.hash_as_the_product``, measured as such), stricter where the
   SHA extensions are used;
3. the pipeline (transcode_stream to a file, default workers) in a child
   process: wall, CPU, peak RSS; once with the C extension, once with
   TRANSCODER_NO_NATIVE=1;
4. the peers, each a child process timed the same way: ``skopeo copy
   --dest-compress-format zstd`` between OCI layouts (blob-info cache cleared
   first) and ``pigz -dc | zstd -T2`` with ``openssl dgst -sha256`` on the
   three streams; every digest is checked;
5. a variant-table hit against the transcode of the same blob
   (``convert_blob`` with a VariantTable in a temporary home, medians of
   misses and hits, and the CLI);
6. the C frame walker against its Python twin, alone and inside a zstd decode.

Stage costs and throughputs are the best of --reps repetitions (the ones
least disturbed by other load; peak RSS is the largest seen); ratios are the
median of the ratios taken within each repetition (best in brackets). Each
measurement runs in its own child process (the pipeline's is
``pipeline_child.py``). Throughput is MB/s of tar bytes (MB = 10^6 B). Ratios to the limit use the
pipeline's own wall time; ratios to peers use whole-process wall times, so
interpreter start-up counts against the pipeline. Run from the repository:
``python benchmarks/bench_engine.py [--reps 5] [--layers bin,py,small]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import capacity
from benchmarks.corpus import DEFAULT_WORKDIR, build_image, layer_info, sha256_file
from transcoder.codecs.constants import FRAME_SIZE

CORES = 2
MiB = 1 << 20
TIME = "/usr/bin/time"  # GNU time: peak RSS of a process tree, unaffected by our own size
BLOB_INFO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")
# The console script beside this interpreter: a version manager's shim on PATH
# (pyenv's is a shell script) would add its own start-up to every CLI timing.
_SCRIPT = Path(sys.executable).with_name("transcoder")
CLI = str(_SCRIPT) if _SCRIPT.exists() else "transcoder"
PIPELINE_CHILD = Path(__file__).with_name("pipeline_child.py")  # the pipeline's process: imports what the CLI does
HIT_ROUNDS = 3  # tables, and hits per table: the hit speed-up is median miss / median hit
# Layers whose machine ceiling is measured (benchmarks/capacity.py): the ones with a ÷ limit target.
CEILING_LAYERS = ("bin", "py")
TARGETS = {"limit": 0.95, "skopeo": 2.0, "shell": 1.8, "rss_mib": 150, "hit": 50.0}


@dataclass
class Proc:
    """One child process: whole-process wall, CPU (user+sys, all threads and children), peak RSS."""

    wall: float
    cpu: float
    rss: int
    report: dict[str, Any] = field(default_factory=dict)
    others: float = 0.0  # cores used by other processes meanwhile (0 on an idle machine)


def run_proc(argv: list[str], env: dict[str, str] | None = None) -> Proc:
    """Run to completion under GNU time; raise with its stderr if it fails.

    GNU time forks the command from a tiny process, so the peak RSS it reports
    is the command's own (the largest process of its tree), not inherited
    from this (large) process. stdout JSON, if any, becomes ``report``.
    """
    with tempfile.NamedTemporaryFile("r") as tf, tempfile.TemporaryFile() as err:
        busy, started = _busy_seconds(), time.perf_counter()
        p = subprocess.run([TIME, "-f", "%U %S %M", "-o", tf.name, *argv], stdout=subprocess.PIPE, stderr=err, env=env)
        wall, busy = time.perf_counter() - started, _busy_seconds() - busy
        if p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{argv[0]} exited {p.returncode}: {err.read().decode(errors='replace')[-2000:]}")
        user, sys_, rss_kib = tf.read().split()[-3:]
    out = p.stdout
    report = json.loads(out) if out.strip().startswith(b"{") else {"stdout": out.decode(errors="replace")}
    cpu = float(user) + float(sys_)
    return Proc(wall, cpu, int(rss_kib) * 1024, report, max(0.0, busy - cpu) / wall)


def _busy_seconds() -> float:
    """CPU seconds all processes have spent so far (from /proc/stat), to see who else ran."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_json(*args: str) -> dict[str, Any]:
    """Run this program in a child mode and return its JSON (keeps this process small)."""
    return run_proc([sys.executable, __file__, "--child", *args]).report



# -- 1. stage costs ----------------------------------------------------------


def stage_costs(gz_path: Path, level: int, reps: int) -> dict[str, float]:
    """Single-thread CPU ns per tar byte of each stage: round-robin, best of ``reps``."""
    import zstandard
    from isal import isal_zlib

    gz = gz_path.read_bytes()
    d = isal_zlib.decompressobj(31)
    tar = [d.decompress(gz[i : i + MiB]) for i in range(0, len(gz), MiB)]
    n = sum(map(len, tar))

    def inflate() -> None:
        d = isal_zlib.decompressobj(31)
        for i in range(0, len(gz), MiB):
            d.decompress(gz[i : i + MiB])

    def sha() -> None:
        h = hashlib.sha256()
        for chunk in tar:
            h.update(chunk)

    def zstd(threads: int) -> Callable[[], None]:
        def run() -> None:
            c = zstandard.ZstdCompressor(level=level, threads=threads).compressobj()
            for chunk in tar:
                c.compress(chunk)
            c.flush()

        return run

    whole = b"".join(tar)
    frames = [whole[i : i + FRAME_SIZE] for i in range(0, n, FRAME_SIZE)]
    del whole
    outputs = [zstandard.ZstdCompressor(level=level).compress(f) for f in frames]

    def zstd_frames() -> None:
        c = zstandard.ZstdCompressor(level=level)
        for frame in frames:
            c.compress(frame)

    stages: dict[str, tuple[Callable[[], None], Callable[[], float]]] = {
        "inflate": (inflate, time.thread_time),
        "sha256": (sha, time.thread_time),
        "sha256_product": (lambda: capacity.hash_as_the_product(gz, frames, outputs), time.thread_time),
        # Two ways to make zstd on one core: one streamed frame, and the
        # pipeline's one-shot frames; the limit takes the cheaper.
        "zstd_stream": (zstd(0), time.thread_time),
        "zstd_frames": (zstd_frames, time.thread_time),
        # libzstd's own multi-threading with one worker (not used in the limit).
        "zstd_mt1": (zstd(1), time.process_time),
    }
    samples: dict[str, list[float]] = {k: [] for k in stages}
    for _ in range(reps):
        for name, (fn, clock) in stages.items():
            t = clock()
            fn()
            samples[name].append((clock() - t) / n * 1e9)
    costs = {k: min(v) for k, v in samples.items()}
    return costs | {"zstd": min(costs["zstd_stream"], costs["zstd_frames"])}


def limit(costs: dict[str, float], tar: int, gz: int, zst: int) -> tuple[float, float]:
    """(ns per tar byte on one core, 2-core limit in MB/s of tar), the baseline's
    definition: three sha256 passes at hashlib's single-stream cost."""
    per_byte = costs["inflate"] + costs["sha256"] * (tar + gz + zst) / tar + costs["zstd"]
    return per_byte, CORES * 1e3 / per_byte


def limit_paired(costs: dict[str, float]) -> float:
    """The 2-core limit in MB/s of tar with the hashing as the product does it
    (the tar in one pass with each other stream): stricter wherever the SHA extensions are used."""
    return CORES * 1e3 / (costs["inflate"] + costs["sha256_product"] + costs["zstd"])


# -- 2. children: pipeline and peers -------------------------------------------


def run_pipeline(info: dict[str, Any], out: Path, level: int, native: bool, mode: str = "library") -> Proc:
    """``pipeline_child.py`` in ``mode``: ``library`` times the pipeline alone (the ÷ limit figures),
    ``command`` runs as ``transcoder convert`` does (the whole-process figures against peers)."""
    env = {k: v for k, v in os.environ.items() if k != "TRANSCODER_NO_NATIVE"}
    if not native:
        env["TRANSCODER_NO_NATIVE"] = "1"
    # Every contender writes a new file: replacing an old one makes ext4 flush
    # it on the spot (auto_da_alloc), which would time the previous run's I/O.
    out.unlink(missing_ok=True)
    proc = run_proc([sys.executable, str(PIPELINE_CHILD), info["path"], str(out), str(level), mode], env)
    r = proc.report
    assert r["source"] == info["digest"] and r["diff_id"] == info["diff_id"], r
    assert r["digest"] == sha256_file(out) and r["size"] == out.stat().st_size, r
    return proc


SHELL = r"""
set -euo pipefail
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
mkfifo "$d/gz" "$d/tar" "$d/zst"
openssl dgst -sha256 -r < "$d/gz" > "$d/h1" & a=$!
openssl dgst -sha256 -r < "$d/tar" > "$d/h2" & b=$!
openssl dgst -sha256 -r < "$d/zst" > "$d/h3" & c=$!
tee "$d/gz" < "$1" | pigz -dc | tee "$d/tar" | zstd -"$3" -T2 -q -c | tee "$d/zst" > "$2"
wait $a $b $c
sync "$2"  # durable output, as skopeo's OCI layout writer and the pipeline's commit
cut -d' ' -f1 "$d/h1" "$d/h2" "$d/h3"
"""


def run_shell(info: dict[str, Any], out: Path, level: int) -> Proc:
    out.unlink(missing_ok=True)
    proc = run_proc(["bash", "-c", SHELL, "shell", info["path"], str(out), str(level)])
    gz, tar, zst = ("sha256:" + h for h in proc.report["stdout"].split())
    assert (gz, tar) == (info["digest"], info["diff_id"]), proc.report
    assert zst == sha256_file(out), "shell pipeline: zst digest differs from its output file"
    return proc


def run_skopeo(layout: Path, dest: Path, level: int) -> Proc:
    subprocess.run(["rm", "-rf", str(dest)], check=True)
    # A cached gzip -> zstd mapping would let skopeo skip the work (or reuse gzip).
    BLOB_INFO_CACHE.unlink(missing_ok=True)
    proc = run_proc(["skopeo", "--insecure-policy", "copy", "-q", "--dest-compress", "--dest-compress-format", "zstd",
                     "--dest-compress-level", str(level), f"oci:{layout}:latest", f"oci:{dest}:latest"])
    index = json.loads((dest / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((dest / "blobs" / "sha256" / mdigest).read_text())
    kinds = {layer["mediaType"] for layer in manifest["layers"]}
    assert kinds == {"application/vnd.oci.image.layer.v1.tar+zstd"}, f"skopeo wrote {kinds}"
    return proc


# -- 3. variant table hit ----------------------------------------------------------


def variant_hit(info: dict[str, Any], work: Path, level: int) -> dict[str, float]:
    """Seconds for a miss (transcode + record) and a hit, in the library and with the CLI."""
    from transcoder.blobs import convert_blob
    from transcoder.codecs import ZstdParams
    from transcoder.variants import VariantTable

    work.mkdir(parents=True, exist_ok=True)
    misses: list[float] = []
    hits: list[float] = []
    for round_ in range(HIT_ROUNDS):  # each round a new table: one miss, then hits
        table = VariantTable(work / f"home-lib-{round_}" / "variants.db")
        out = work / f"lib-{round_}.zst"
        for attempt in range(1 + HIT_ROUNDS):
            t = time.perf_counter()
            r = convert_blob(info["path"], out, params=ZstdParams(level=level), table=table)
            (hits if attempt else misses).append(time.perf_counter() - t)
            assert r.cached == bool(attempt), "convert_blob: a hit where a miss was due, or the reverse"
        table.close()
    env = {**os.environ, "TRANSCODER_HOME": str(work / "home-cli")}
    argv = [CLI, "convert", info["path"], "-o", str(work / "cli.zst"), "--level", str(level), "--json"]
    cli = [run_proc(argv, env) for _ in range(2)]
    assert cli[1].report["cached"] and not cli[0].report["cached"], "second CLI convert was not a hit"
    return {"lib_miss": statistics.median(misses), "lib_hit": statistics.median(hits),
            "cli_miss": cli[0].wall, "cli_hit": cli[1].wall}


# -- 4. C extension against the Python twin ---------------------------------------


def tiny_block_stream(blocks: int) -> bytes:
    """One valid zstd frame of empty raw blocks: the frame walker's worst case."""
    return b"\x28\xb5\x2f\xfd\x00\x00" + (0).to_bytes(3, "little") * blocks + (1).to_bytes(3, "little")


def native_vs_python(zst_path: Path, reps: int) -> dict[str, dict[str, float]]:
    """Best-of-``reps`` CPU ns per input byte of the frame walk (real and worst-case streams) and of a whole zstd decode."""
    from transcoder import accel
    from transcoder.transcode import decode_stream

    real, tiny = zst_path.read_bytes(), tiny_block_stream(1_000_000)
    res: dict[str, dict[str, list[float]]] = {}

    def walk(make: Callable[[str], accel.FrameWalker], data: bytes) -> None:
        w, view = make("bench"), memoryview(data)
        for i in range(0, len(data), MiB):
            w.feed(view[i : i + MiB])
        w.finish()

    def decode(native: bool) -> None:
        accel.NATIVE = native
        with open(zst_path, "rb", buffering=0) as f:
            decode_stream(f, name="bench")

    for _ in range(reps):
        for impl, make in accel.frame_walkers().items():
            row = res.setdefault(impl, {"walk_real": [], "walk_tiny": [], "decode": []})
            cases: list[tuple[str, Callable[[], None], int]] = [
                ("walk_real", partial(walk, make, real), len(real)),
                ("walk_tiny", partial(walk, make, tiny), len(tiny)),
                ("decode", partial(decode, impl == "native"), len(real)),
            ]
            for key, fn, n in cases:
                t = time.process_time()
                fn()
                row[key].append((time.process_time() - t) / n * 1e9)
    return {impl: {k: min(v) for k, v in row.items()} for impl, row in res.items()}


# -- driver and report --------------------------------------------------------------


def bench_layer(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    info = layer_info(args.workdir, name)
    tar, gz = info["tar_size"], info["size"]
    layout = build_image(args.workdir, (name,))
    runs: dict[str, list[Proc]] = {"native": [], "command": [], "python": [], "shell": [], "skopeo": [],
                                   "interpreter": []}
    stage_reps: list[dict[str, float]] = []
    ceilings: list[float] = []
    for rep in range(args.reps):
        # Stage costs and pipeline side by side in every repetition, so a
        # change in the machine's load moves both.
        print(f"[{name}] rep {rep + 1}/{args.reps}: stages, pipeline, shell, skopeo ...", file=sys.stderr, flush=True)
        stage_reps.append(run_json("stages", info["path"], str(args.level), "1"))
        if name in CEILING_LAYERS:
            ceilings.append(capacity.measure(Path(info["path"]), args.level)["ceiling"])
        runs["native"].append(run_pipeline(info, work / f"{name}.zst", args.level, native=True))
        runs["python"].append(run_pipeline(info, work / f"{name}.py.zst", args.level, native=False))
        if not args.no_peers:
            runs["command"].append(run_pipeline(info, work / f"{name}.cmd.zst", args.level, native=True,
                                                mode="command"))
            runs["shell"].append(run_shell(info, work / f"{name}.sh.zst", args.level))
            runs["skopeo"].append(run_skopeo(layout, work / f"{name}-skopeo", args.level))
        # What any Python program pays before its first line: the bare interpreter, site included.
        runs["interpreter"].append(run_proc([sys.executable, "-c", "pass"]))
    zst = runs["native"][0].report["size"]
    costs = {k: min(c[k] for c in stage_reps) for k in stage_reps[0]}
    per_byte, lim = limit(costs, tar, gz, zst)
    row: dict[str, Any] = {"layer": name, "tar": tar, "gz": gz, "zst": zst, "costs": costs, "ns_per_byte": per_byte,
                           "limit_mbs": lim, "ceilings": ceilings}
    for kind, procs in runs.items():
        if procs:
            row[kind] = summarize(procs, tar, per_byte)
    for kind in ("native", "python"):
        row[kind]["paired"] = paired_ratios(runs[kind], stage_reps, tar, gz, zst)
    if runs["command"]:  # peak RSS: the larger of the two ways of running (the command holds early frames)
        row["native"]["rss_mib"] = max(row["native"]["rss_mib"], row["command"]["rss_mib"])
    for peer in ("skopeo", "shell"):
        if runs[peer]:
            # Whole processes: the peer against the pipeline run as the command line runs it.
            row[peer]["paired"] = [p.wall / c.wall for c, p in zip(runs["command"], runs[peer], strict=True)]
            # The same ratio against the pipeline alone, and against that plus a bare
            # interpreter's start: how far process start-up alone sets the whole-process ratio.
            row[peer]["bounds"] = [(p.wall / float(n.report["wall"]), p.wall / (float(n.report["wall"]) + i.wall))
                                   for n, p, i in zip(runs["native"], runs[peer], runs["interpreter"], strict=True)]
            # And against the limit itself: the wall time of a perfect two-core program built on
            # these stages that never starts, waits or exits; no program can show more than this.
            row[peer]["vs_limit"] = [p.wall / (tar / 1e6 / limit(c, tar, gz, zst)[1])
                                     for p, c in zip(runs[peer], stage_reps, strict=True)]
    print(f"[{name}] variant table hit, native vs python ...", file=sys.stderr, flush=True)
    row["hit"] = variant_hit(info, work / f"hit-{name}", args.level)
    row["native_vs_python"] = run_json("native", str(work / f"{name}.zst"), str(args.reps))
    return row


def paired_ratios(procs: list[Proc], stage_reps: list[dict[str, float]], tar: int, gz: int, zst: int) -> list[float]:
    """Each repetition's pipeline throughput over the limit measured in the same repetition."""
    return [tar / float(p.report["wall"]) / 1e6 / limit(c, tar, gz, zst)[1] for p, c in zip(procs, stage_reps, strict=True)]


def summarize(procs: list[Proc], tar: int, per_byte: float) -> dict[str, Any]:
    """The fastest repetition (least disturbed by other load); RSS is the largest seen."""
    best = min(procs, key=lambda p: p.wall)
    out = {"wall": best.wall, "cpu": best.cpu, "rss_mib": max(p.rss for p in procs) / MiB, "mbs": tar / best.wall / 1e6,
           "others": best.others}
    if "wall" in best.report:  # the pipeline times itself, without interpreter start-up
        best = min(procs, key=lambda p: float(p.report["wall"]))
        inner, cpu = float(best.report["wall"]), float(best.report["cpu"])
        out |= {"inner_wall": inner, "inner_mbs": tar / inner / 1e6, "inner_cpu": cpu,
                "efficiency": per_byte * tar / 1e9 / cpu, "hwm_mib": max(p.report["hwm"] for p in procs) / MiB}
    return out


def fmt_paired(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f} ({max(ratios):.2f})"


def ok(flag: bool) -> str:
    return "yes" if flag else "**no**"


def print_report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    level = meta["level"]
    print(f"\n### Engine benchmark ({meta['machine']}; load before/after {meta['load_before']} / {meta['load_after']})\n")
    print(f"Stage costs, single core, CPU ns per tar byte (best of {meta['reps']}); zstd-{level} is the cheaper of one "
          f"streamed frame and one-shot {FRAME_SIZE >> 20} MiB frames; limit = {CORES} cores / total.\n")
    print(f"| layer | tar MB | gz MB | zst MB | inflate (ISA-L) | sha256 x(tar+gz+zst)/tar | zstd-{level} stream / frames "
          f"| total ns/B | **2-core limit MB/s** | hashing as the product: ns/B, limit MB/s | libzstd MT, 1 worker (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        c = r["costs"]
        sha = c["sha256"] * (r["tar"] + r["gz"] + r["zst"]) / r["tar"]
        print(f"| {r['layer']} | {r['tar'] / 1e6:.1f} | {r['gz'] / 1e6:.1f} | {r['zst'] / 1e6:.1f} | {c['inflate']:.3f} "
              f"| {sha:.3f} | {c['zstd_stream']:.3f} / {c['zstd_frames']:.3f} | {r['ns_per_byte']:.3f} "
              f"| **{r['limit_mbs']:.1f}** | {c['sha256_product']:.3f}, "
              f"{limit_paired(c):.1f} | {c['zstd_mt1']:.3f} |")
    print("\nPipeline (transcode_stream to a file, C extension) and peers; MB/s of tar, best of "
          f"{meta['reps']}. Ratios are medians of the repetitions, each against the stage costs or peers measured in "
          "the same repetition (best repetition in brackets); RSS = peak of the largest process; other load = cores "
          "other processes used during the pipeline's best run. Pipeline and ÷ limit: the pipeline alone, everything "
          "loaded first; x skopeo and x shell: whole processes, ours run as `transcoder convert` runs it (the decode "
          "started, then the encoder side loaded).\n")
    print("| layer | pipeline MB/s | **÷ limit** | CPU s (cores) | other load (cores) | CPU efficiency | peak RSS MiB "
          "| Python twin ÷ limit | skopeo MB/s (RSS) | **x skopeo** | pigz\\|zstd+openssl MB/s (RSS) | **x shell** |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        n, p = r["native"], r["python"]
        peers = ""
        for peer in (r.get("skopeo"), r.get("shell")):
            peers += f" {peer['mbs']:.1f} ({peer['rss_mib']:.0f}) | {fmt_paired(peer['paired'])} |" if peer else " - | - |"
        print(f"| {r['layer']} | {n['inner_mbs']:.1f} | **{fmt_paired(n['paired'])}** "
              f"| {n['inner_cpu']:.2f} ({n['inner_cpu'] / n['inner_wall']:.2f}) | {n['others']:.2f} | {n['efficiency']:.2f} "
              f"| {n['rss_mib']:.0f} | {fmt_paired(p['paired'])} |{peers}")
    print("\nVariant-table hit against transcoding the same blob (seconds; library = convert_blob, median of "
          f"{HIT_ROUNDS} misses, each into a new table, and {HIT_ROUNDS} hits after each; CLI = "
          "`transcoder convert SRC -o OUT` once each, interpreter start-up included).\n")
    print("| layer | library miss | library hit | **hit speed-up** | CLI miss | CLI hit | CLI speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        h = r["hit"]
        print(f"| {r['layer']} | {h['lib_miss']:.3f} | {h['lib_hit']:.4f} | **{h['lib_miss'] / h['lib_hit']:.0f}x** "
              f"| {h['cli_miss']:.3f} | {h['cli_hit']:.3f} | {h['cli_miss'] / h['cli_hit']:.1f}x |")
    print_ceiling(rows)
    print_native(rows)
    print_targets(rows)


def print_ceiling(rows: list[dict[str, Any]]) -> None:
    rows = [r for r in rows if r["ceilings"]]
    if not rows:
        return
    print("\nMachine ceiling (benchmarks/capacity.py): the limit's work, one thread, no pipeline, run alone and then as "
          "two copies side by side in each repetition; ceiling = wall alone / wall of the pair, the fraction of the 2-core "
          "limit that two perfectly parallel threads reach on this machine at that moment.\n")
    print("| layer | ceiling, median (range) | pipeline ÷ limit | **pipeline ÷ ceiling** |")
    print("|---|---:|---:|---:|")
    for r in rows:
        c, p = r["ceilings"], r["native"]["paired"]
        own = [x / y for x, y in zip(p, c, strict=True)]
        print(f"| {r['layer']} | {statistics.median(c):.2f} ({min(c):.2f}-{max(c):.2f}) | {fmt_paired(p)} "
              f"| **{fmt_paired(own)}** |")


def print_native(rows: list[dict[str, Any]]) -> None:
    print("\nC extension against its Python twin: zstd frame walk and whole zstd decode (decode_stream), "
          "CPU ns per zstd byte.\n")
    print("| layer | walk, real stream: Python / C | walk, 3-byte blocks: Python / C | decode: Python / C | decode gain |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        nv = r["native_vs_python"]
        py, c = nv["python"], nv.get("native")
        if c is None:
            print(f"| {r['layer']} | {py['walk_real']:.3f} / - | {py['walk_tiny']:.1f} / - | {py['decode']:.3f} / - | - |")
            continue
        print(f"| {r['layer']} | {py['walk_real']:.3f} / {c['walk_real']:.4f} ({py['walk_real'] / c['walk_real']:.0f}x) "
              f"| {py['walk_tiny']:.1f} / {c['walk_tiny']:.2f} ({py['walk_tiny'] / c['walk_tiny']:.0f}x) "
              f"| {py['decode']:.3f} / {c['decode']:.3f} | {(py['decode'] / c['decode'] - 1) * 100:+.1f} % |")


def print_targets(rows: list[dict[str, Any]]) -> None:
    print("\nTargets (2-core machine):\n")
    for r in rows:
        n = r["native"]
        checks = []
        if r["layer"] in ("bin", "py"):
            x = statistics.median(n["paired"])
            ceiling = f" (machine ceiling {statistics.median(r['ceilings']):.2f})" if r["ceilings"] else ""
            checks.append(f"÷ limit {x:.2f} ≥ {TARGETS['limit']}: {ok(x >= TARGETS['limit'])}{ceiling}")
        for peer in ("skopeo", "shell"):
            # On a layer of a few MB, start-up (interpreter, Go runtime, shell) is the whole cost.
            if peer in r and r["layer"] in ("bin", "py"):
                x = statistics.median(r[peer]["paired"])
                checks.append(f"x {peer} {x:.2f} ≥ {TARGETS[peer]}: {ok(x >= TARGETS[peer])}")
        if r["layer"] == "bin":
            checks.append(f"RSS {n['rss_mib']:.0f} MiB ≤ {TARGETS['rss_mib']}: {ok(n['rss_mib'] <= TARGETS['rss_mib'])}")
        hit = r["hit"]["lib_miss"] / r["hit"]["lib_hit"]
        checks.append(f"hit {hit:.0f}x ≥ {TARGETS['hit']:.0f}x: {ok(hit >= TARGETS['hit'])}")
        print(f"- {r['layer']}: " + "; ".join(checks))
    bounded = [r for r in rows if "skopeo" in r and r["layer"] in ("bin", "py")]
    if bounded:
        print("\nx skopeo without our process (medians of the repetitions): against the time of the 2-core limit "
              "(a perfect program on these stages with no start-up: the most any program can show), against the "
              "pipeline's own wall, and against it plus the start of a bare interpreter (`python -c pass`), the least "
              "any Python command adds:\n")
    for r in bounded:
        alone, bare = (statistics.median(b[k] for b in r["skopeo"]["bounds"]) for k in (0, 1))
        # The command's own process outside its timed part: interpreter, the imports before the decode starts, exit.
        outside = r["command"]["wall"] - r["command"]["inner_wall"]
        best = statistics.median(r["skopeo"]["vs_limit"])
        print(f"- {r['layer']}: the 2-core limit itself {best:.2f}x ({min(r['skopeo']['vs_limit']):.2f}-"
              f"{max(r['skopeo']['vs_limit']):.2f}x); "
              f"pipeline alone {alone:.2f}x; plus a bare interpreter {bare:.2f}x; our whole process "
              f"{statistics.median(r['skopeo']['paired']):.2f}x (start-up before the decode, and exit: {outside * 1e3:.0f} ms "
              f"in the fastest run, a bare interpreter {r['interpreter']['wall'] * 1e3:.0f} ms)")


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import isal
    import zstandard

    return (f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}, isal {isal.__version__}, "
            f"libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="corpus cache (default %(default)s)")
    ap.add_argument("--layers", default="bin,py,small", help="comma-separated corpus layers (default %(default)s)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per measurement; the best counts (default %(default)s)")
    ap.add_argument("--level", type=int, default=3, help="zstd level (default %(default)s)")
    ap.add_argument("--no-peers", action="store_true", help="skip skopeo and the shell pipeline")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args.child)
        return
    installed_bytecode()
    meta = {"machine": machine(), "reps": args.reps, "level": args.level, "load_before": _load()}
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        rows = [bench_layer(name, args, Path(tmp)) for name in args.layers.split(",")]
    meta["load_after"] = _load()
    print_report(rows, meta)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=lambda o: asdict(o)))


def run_child(argv: list[str]) -> None:
    """Child modes: each measurement runs in its own process, so none inherits another's memory."""
    kind, *rest = argv
    if kind == "stages":
        print(json.dumps(stage_costs(Path(rest[0]), int(rest[1]), int(rest[2]))))
    elif kind == "native":
        print(json.dumps(native_vs_python(Path(rest[0]), int(rest[1]))))
    else:
        raise SystemExit(f"unknown child mode {kind!r}")


def installed_bytecode() -> None:
    """Compile the package's bytecode, as ``pip install`` does for an installed copy.

    A checkout run in place (an editable install) caches bytecode only when
    Python may write it; with PYTHONDONTWRITEBYTECODE set, every module edited
    since it was last compiled is compiled again at each start: 35-45 ms of
    start-up for the whole package, which no installed copy pays."""
    import compileall

    import transcoder

    compileall.compile_dir(str(Path(transcoder.__file__).parent), quiet=1)


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
