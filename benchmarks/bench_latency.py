"""Latency benchmark: registry-to-registry conversions over a long link,
against ``skopeo copy --dest-compress-format zstd``, and how many round
trips each waits for one after another.

A registry far away makes every request wait a round trip, and a conversion
is a few dozen requests around the layers. So on a long link what counts is
how many of them wait for each other, not how many there are.
``benchmarks/latencyproxy.py`` stands between the clients and a
docker-registry (distribution) on loopback and delays every byte by the same
time in each direction, with no bandwidth limit; a new connection costs a
round trip before its first bytes go, as a TCP handshake does
(``--no-handshake``: it costs nothing, as in runs before this option).

For each one-way delay (``--delays``, default 0, 5 and 20 ms: round trips
of 0, 10 and 40 ms), in an order that rotates between repetitions:

1. ``ours``: ``transcoder convert docker://SRC --to type=registry,ref=DST,mode=replace``
   with a new variant table (``--mode add``: the default mode, which keeps
   the gzip layers too and pushes an index offering both);
2. ``ours rerun``: the same again, from another machine (a new variant
   table): every layer is found in the registry's records;
3. ``skopeo``: ``skopeo copy --all --dest-compress-format zstd`` of the same
   image, every platform (its blob-info cache removed first).

Printed: each run's median wall time and requests (from the registry's
access log), and the round trips on its critical path: the wall time a
round trip adds, (wall at this delay - wall at no delay) / round trip.

The image has six small layers by default (``--layers``: ``small`` and the
corpus's ``MANY_LAYERS``, 8 MiB of files each), so the requests, not the
bytes, make the time; with ``--platforms K`` it is an index of K platforms,
the layers dealt out among them. Run from the repository:
``python benchmarks/bench_latency.py [--reps 3] [--delays 0,5,20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_engine import CLI, installed_bytecode
from benchmarks.bench_registry import BLOB_INFO_CACHE, Registry, arguments, serving, timed
from benchmarks.corpus import MANY_LAYERS, build_image, build_index_image, layer_info
from benchmarks.installed import cli_for
from benchmarks.latencyproxy import LatencyProxy

KINDS = ("ours", "ours rerun", "skopeo")


def one_run(kind: str, cli: str, registry: Registry, host: str, dest: str, work: Path,
            mode: str = "replace") -> dict[str, Any]:
    """One conversion through ``host`` (the proxy): wall time and the registry's count of requests."""
    offset = registry.log_size()
    src = f"docker://{host}/corpus/src:gzip"
    if kind == "skopeo":
        BLOB_INFO_CACHE.unlink(missing_ok=True)
        argv = ["skopeo", "copy", "-q", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
                "--dest-compress-format", "zstd", src, f"docker://{host}/{dest}-skopeo:v1"]
        env = None
    else:
        home = Path(tempfile.mkdtemp(dir=work))  # a new variant table: another machine
        argv = [cli, "convert", src, "--to", f"type=registry,ref={host}/{dest}:v1,mode={mode}", "--json"]
        env = dict(os.environ, TRANSCODER_HOME=str(home))
    run = timed(kind, argv, registry, env)
    if kind != "skopeo":
        statuses = {o["status"] for o in json.loads(run.report)["layers"]}
        assert statuses == ({"hit"} if kind == "ours rerun" else {"converted"}), (kind, statuses)
    counts, _ = registry.requests_since(offset)
    return {"wall": run.wall, "requests": sum(counts.values())}


def measure(cli: str, registry: Registry, work: Path, delays: list[float], reps: int, mode: str = "replace",
            handshake: bool = True) -> dict[float, dict[str, list[dict[str, Any]]]]:
    results: dict[float, dict[str, list[dict[str, Any]]]] = {}
    for delay in delays:
        results[delay] = {k: [] for k in KINDS}
        with LatencyProxy(("127.0.0.1", registry.port), delay / 1000, handshake) as proxy:
            for rep in range(reps):
                dest = f"bench/d{delay:g}-r{rep}".replace(".", "_")
                # The rerun needs the first conversion's records, so only skopeo's place rotates.
                order = ["ours", "ours rerun"]
                order.insert(rep % 3, "skopeo")
                for kind in order:
                    print(f"delay {delay:g} ms, rep {rep + 1}/{reps}: {kind} ...", file=sys.stderr, flush=True)
                    results[delay][kind].append(one_run(kind, cli, registry, proxy.host, dest, work, mode))
    return results


def report(results: dict[float, dict[str, list[dict[str, Any]]]], out: Path | None) -> None:
    base = min(results)
    med = {d: {k: statistics.median(r["wall"] for r in runs) for k, runs in by.items()} for d, by in results.items()}
    print("\n| one-way delay | round trip | run | wall s (median) | requests | round trips waited for | skopeo / this |")
    print("|---|---|---|---|---|---|---|")
    for delay, by in results.items():
        for kind, runs in by.items():
            rtt = 2 * delay / 1000
            waited = f"{(med[delay][kind] - med[base][kind]) / rtt:.0f}" if delay != base else "-"
            requests = statistics.median(r["requests"] for r in runs)
            print(f"| {delay:g} ms | {2 * delay:g} ms | {kind} | {med[delay][kind]:.3f} | {requests:.0f} | {waited} | "
                  f"{med[delay]['skopeo'] / med[delay][kind]:.2f}x |")
    if out:
        out.write_text(json.dumps({str(d): by for d, by in results.items()}, indent=1))


def _options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--delays", default="0,5,20", help="one-way delays in ms, the first the baseline "
                    "(default %(default)s)")
    ap.add_argument("--layers", default=",".join(("small", *MANY_LAYERS)),
                    help="corpus layers of the image (default %(default)s)")
    ap.add_argument("--platforms", type=int, default=1,
                    help="more than 1: an index of this many platforms, the layers dealt out among them")
    ap.add_argument("--mode", choices=("replace", "add"), default="replace",
                    help="our conversions' mode (default %(default)s: the same output set as skopeo's)")
    ap.add_argument("--no-handshake", dest="handshake", action="store_false",
                    help="new connections cost no round trip (the proxy's connect is local)")


def main() -> None:
    args = arguments(__doc__, _options)
    delays = [float(d) for d in args.delays.split(",")]
    if not delays or min(delays) < 0 or delays[0] != min(delays):
        raise SystemExit("--delays: non-negative milliseconds, the smallest first")
    installed_bytecode()
    cli = cli_for(args.cli, args.workdir, CLI)
    names = tuple(args.layers.split(","))
    for name in names:
        layer_info(args.workdir, name)  # builds the layer if needed
    layout = build_image(args.workdir, names) if args.platforms <= 1 else \
        build_index_image(args.workdir, names, args.platforms)
    print(f"timing {cli}; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    with serving(layout, "bench-latency-") as (registry, work):
        results = measure(cli, registry, work, delays, args.reps, args.mode, args.handshake)
    report(results, args.json)

if __name__ == "__main__":
    main()
