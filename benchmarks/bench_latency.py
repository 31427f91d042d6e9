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
With ``--tls`` the registry serves HTTPS with a certificate made for the
run, and the proxy listens on this machine's own address (off loopback), so
every client speaks verified TLS only, as to a registry far away: each new
connection then also waits for its TLS handshake.

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
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_engine import CLI, installed_bytecode
from benchmarks.bench_registry import BLOB_INFO_CACHE, Registry, arguments, serving, timed
from benchmarks.corpus import MANY_LAYERS, build_image, build_index_image, layer_info
from benchmarks.installed import cli_for
from benchmarks.latencyproxy import LatencyProxy

KINDS = ("ours", "ours rerun", "skopeo")


@dataclass(frozen=True)
class Link:
    """Where the clients reach the registry: the proxy's ``host``, and with
    ``ca`` (a directory holding the registry's certificate as ``ca.crt``)
    over verified TLS."""

    host: str
    ca: Path | None = None


def one_run(kind: str, cli: str, registry: Registry, link: Link, dest: str, work: Path,
            mode: str = "replace") -> dict[str, Any]:
    """One conversion through the proxy: wall time and the registry's count of requests."""
    offset = registry.log_size()
    src = f"docker://{link.host}/corpus/src:gzip"
    if kind == "skopeo":
        BLOB_INFO_CACHE.unlink(missing_ok=True)
        trust = (["--src-cert-dir", str(link.ca), "--dest-cert-dir", str(link.ca)] if link.ca
                 else ["--src-tls-verify=false", "--dest-tls-verify=false"])
        argv = ["skopeo", "copy", "-q", "--all", *trust,
                "--dest-compress-format", "zstd", src, f"docker://{link.host}/{dest}-skopeo:v1"]
        env = None
    else:
        home = Path(tempfile.mkdtemp(dir=work))  # a new variant table: another machine
        argv = [cli, "convert", src, "--to", f"type=registry,ref={link.host}/{dest}:v1,mode={mode}", "--json"]
        env = dict(os.environ, TRANSCODER_HOME=str(home))
        if link.ca:
            env["SSL_CERT_FILE"] = str(link.ca / "ca.crt")
    run = timed(kind, argv, registry, env)
    if kind != "skopeo":
        statuses = {o["status"] for o in json.loads(run.report)["layers"]}
        assert statuses == ({"hit"} if kind == "ours rerun" else {"converted"}), (kind, statuses)
    counts, _ = registry.requests_since(offset)
    return {"wall": run.wall, "requests": sum(counts.values())}


def measure(cli: str, registry: Registry, work: Path, delays: list[float], reps: int, mode: str = "replace",
            handshake: bool = True, ca: Path | None = None) -> dict[float, dict[str, list[dict[str, Any]]]]:
    results: dict[float, dict[str, list[dict[str, Any]]]] = {}
    listen = own_address() if ca else "127.0.0.1"
    for delay in delays:
        results[delay] = {k: [] for k in KINDS}
        with LatencyProxy(("127.0.0.1", registry.port), delay / 1000, handshake, listen) as proxy:
            link = Link(proxy.host, ca)
            for rep in range(reps):
                dest = f"bench/d{delay:g}-r{rep}".replace(".", "_")
                # The rerun needs the first conversion's records, so only skopeo's place rotates.
                order = ["ours", "ours rerun"]
                order.insert(rep % 3, "skopeo")
                for kind in order:
                    print(f"delay {delay:g} ms, rep {rep + 1}/{reps}: {kind} ...", file=sys.stderr, flush=True)
                    results[delay][kind].append(one_run(kind, cli, registry, link, dest, work, mode))
    return results


def own_address() -> str:
    """This machine's address on its default route: a registry there is not on
    loopback, so clients speak verified TLS to it and nothing else."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # a UDP connect sends nothing: it picks the route
        except OSError as exc:
            raise SystemExit(f"--tls: no address off loopback to serve on ({exc})") from exc
        return str(probe.getsockname()[0])


@contextmanager
def certificate(address: str) -> Iterator[tuple[Path, Path]]:
    """A self-signed certificate and key for ``address``, in a directory that
    also holds the certificate as ``ca.crt`` (skopeo's --cert-dir layout)."""
    with tempfile.TemporaryDirectory(prefix="bench-latency-tls-") as tmp:
        cert, key = Path(tmp) / "ca.crt", Path(tmp) / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        f"/CN={address}", "-addext", f"subjectAltName=IP:{address}", "-keyout", str(key),
                        "-out", str(cert)], check=True, capture_output=True)
        yield cert, key


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
    ap.add_argument("--tls", action="store_true",
                    help="the registry serves verified HTTPS (a certificate made for the run), reached through "
                    "this machine's own address, off loopback")


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
    with contextlib.ExitStack() as stack:
        tls = stack.enter_context(certificate(own_address())) if args.tls else None
        registry, work = stack.enter_context(serving(layout, "bench-latency-", tls))
        ca = tls[0].parent if tls else None
        results = measure(cli, registry, work, delays, args.reps, args.mode, args.handshake, ca)
    report(results, args.json)

if __name__ == "__main__":
    main()
