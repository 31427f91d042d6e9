"""Registry benchmark: a three-layer image converted registry to registry on
loopback, against ``skopeo copy --dest-compress-format zstd`` of the same
image, and the requests of a second, unchanged run.

Setup: the corpus image (benchmarks/corpus.py: ``bin``, ``py``, ``small``,
gzip -6) is pushed with skopeo into a docker-registry (distribution) started
here on a free loopback port with its storage in a temporary directory.

Per repetition, in an order that rotates between repetitions, each a child
process timed for wall and CPU (the registry's own CPU is shown apart):

1. ``ours replace``: ``transcoder convert docker://SRC --to
   type=registry,ref=DST,mode=replace``: zstd layers only, the same output
   set as skopeo's;
2. ``ours add``: the default mode: the gzip layers are copied too and an index
   offers both;
3. ``ours clog=13``: ``ours replace`` with ``--zstd clog=13``, level 3 with
   dfast's short-match table at 32 KiB instead of 256 KiB: output still no
   larger than skopeo's (the sizes are printed), for 6-9 % less zstd CPU
   (``bench_tuning.py``);
4. ``skopeo``: ``skopeo copy --dest-compress-format zstd docker://SRC
   docker://DST`` with its blob-info cache removed first (or it pushes the
   gzip blobs it knows instead of zstd; every manifest it writes is checked).

Every destination is a new repository and every ``convert`` a new variant
table, so nothing is reused between runs. Then two unchanged reruns of ``ours
add`` into the first repository: from another machine (new variant table,
the variants are found in the registry's records) and from the same one; the
registry's access log counts their requests, and none may upload a blob.

Each repetition also times the stage floor (benchmarks/capacity.py): the
work the 2-core limit counts (inflate, three sha256 passes, zstd frames) on
one thread for each layer. The registry shares the two cores, so the floor
of a conversion is that work plus the registry's CPU for the run, halved;
skopeo's wall over it is the best ratio any pipeline on these stages could
show in that repetition.

It also moves the same bytes with nothing else: a client of a few lines on
raw sockets GETs the three gzip layers into one reused buffer and pushes
that repetition's zstd layers (POST, then one PUT from memory) into a new
repository. Its CPU and the registry's are what any client, in any
language, pays the wire; the floor with transfers is the stage work plus
both, halved.

From the registry's log, each run's start-up (the process began, its first
request had not) and shutdown (its last answer was sent, the process had not
ended); the floor with transfers plus ours is what a run that starts and ends
as ours does, with both cores busy in between, would take.

Last, the runtime's own start and exit: the interpreter ``transcoder`` runs
on, importing httpx (the HTTP library the product is built on) and nothing
else, timed as a whole process. The floor with transfers plus that is the
least any Python program on httpx could take: skopeo's wall over it is the
best ratio such a program could show in that repetition.

The ``transcoder`` timed is this checkout pip-installed into a virtual
environment of its own (benchmarks/installed.py), as a user runs it;
``--cli here`` times the checkout in place instead.

Run from the repository: ``python benchmarks/bench_registry.py [--reps 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_engine import CLI, installed_bytecode
from benchmarks.capacity import floor_summary, stage_seconds
from benchmarks.corpus import DEFAULT_WORKDIR, build_image, layer_info
from benchmarks.installed import cli_for

BLOB_INFO_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
TARGET = 2.0  # skopeo wall / ours
_ACCESS = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/[0-9.]+" (\d+) \d+ "[^"]*" "([^"]*)"')
# distribution's own line per request: when the answer was done, and how long it took
_COMPLETED = re.compile(r'^time="([^"]+)"[^\n]* msg="response completed[^"]*"[^\n]* http\.response\.duration="?([^"\s]+)', re.M)
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class Run:
    name: str
    wall: float
    cpu: float
    registry_cpu: float
    lead: float  # from the start of the process to the start of its first request
    trail: float  # from the end of its last answer to the end of the process
    report: Any = None
    zstd_bytes: int = 0  # the zstd layers it wrote


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Registry:
    """A distribution registry of our own, stopped by its PID."""

    def __init__(self, workdir: Path, tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: the certificate and key it serves HTTPS with (else plain HTTP)."""
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = workdir / "registry.log"
        config = workdir / "config.yml"
        secure = f", tls: {{certificate: {tls[0]}, key: {tls[1]}}}" if tls else ""
        config.write_text(f"version: 0.1\nlog: {{level: info}}\nstorage:\n  filesystem: {{rootdirectory: {workdir / 'data'}}}\n"
                          f"http: {{addr: '{self.host}'{secure}}}\n")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"registry did not start; see {self.log}")

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def requests_since(self, offset: int) -> tuple[Counter[str], list[str]]:
        """Requests in the access log after ``offset`` by method and endpoint, and
        the digests of the blobs uploaded."""
        text = self.log_since(offset)
        counts: Counter[str] = Counter()
        uploaded = []
        for method, path, _status, _agent in _ACCESS.findall(text):
            kind = "upload" if "/blobs/uploads/" in path else path.split("/")[-2] if path.count("/") > 2 else "base"
            counts[f"{method} {kind}"] += 1
            if method == "PUT" and kind == "upload":
                uploaded += re.findall(r"digest=sha256(?::|%3A)([0-9a-f]{64})", path)
        return counts, uploaded

    def served_since(self, offset: int) -> tuple[float, float]:
        """When the first request after ``offset`` in the log began and the last
        answer was done, in seconds since the epoch (the registry's clock is
        this machine's)."""
        spans = [(done - go_seconds(took), done) for done, took in
                 ((datetime.fromisoformat(stamp).timestamp(), took)
                  for stamp, took in _COMPLETED.findall(self.log_since(offset)))]
        if not spans:
            raise SystemExit(f"no request in the registry's log after offset {offset}: {self.log}")
        return min(s for s, _ in spans), max(e for _, e in spans)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def go_seconds(text: str) -> float:
    """A Go duration as distribution logs it (``2.26ms``, ``850.1\u00b5s``, ``1m2.5s``) in seconds."""
    return sum(float(n) * _GO_UNITS[unit] for n, unit in re.findall(r"([0-9.]+)([^0-9.]+)", text))


def timed(name: str, argv: list[str], registry: Registry, env: dict[str, str] | None = None) -> Run:
    """Run ``argv`` to its end: wall, CPU, the registry's CPU, and how long the
    process ran before its first request and after its last answer (from the
    registry's log: what start-up and shutdown cost, when the registry idles)."""
    before, reg_before, offset = resource.getrusage(resource.RUSAGE_CHILDREN), registry.cpu(), registry.log_size()
    began, started = time.time(), time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=3600)
    wall, ended = time.perf_counter() - started, time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    time.sleep(0.1)  # the log line follows the answer
    first, last = registry.served_since(offset)
    return Run(name, wall, cpu, registry.cpu() - reg_before, first - began, ended - last, proc.stdout)


TUNED = "clog=13"  # the ``--zstd`` of the ``ours clog=13`` run


def ours(cli: str, registry: Registry, src: str, dest: str, mode: str, home: Path, zstd: str = "") -> Run:
    env = dict(os.environ, TRANSCODER_HOME=str(home))
    spec = f"type=registry,ref={registry.host}/{dest}:v1,mode={mode}"
    tuning = ["--zstd", zstd] if zstd else []
    run = timed(f"ours {zstd or mode}", [cli, "convert", f"docker://{registry.host}/{src}", "--to", spec, "--json",
                                         *tuning], registry, env)
    run.report = json.loads(run.report)
    run.zstd_bytes = sum(int(o["target"]["size"]) for o in run.report["layers"])
    return run


def skopeo(registry: Registry, src: str, dest: str) -> Run:
    BLOB_INFO_CACHE.unlink(missing_ok=True)
    run = timed("skopeo", ["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
                           "--dest-compress-format", "zstd", f"docker://{registry.host}/{src}",
                           f"docker://{registry.host}/{dest}:v1"], registry)
    manifest = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                          f"docker://{registry.host}/{dest}:v1"], capture_output=True, check=True).stdout)
    kinds = {layer["mediaType"] for layer in manifest["layers"]}
    assert kinds == {ZSTD}, f"skopeo wrote {kinds}"
    run.zstd_bytes = sum(int(layer["size"]) for layer in manifest["layers"])
    return run


def check_ours(run: Run, tars: list[dict[str, Any]]) -> None:
    report = run.report
    assert [o["status"] for o in report["layers"]] == ["converted"] * len(tars), report["layers"]
    assert [o["diff_id"] for o in report["layers"]] == [t["diff_id"] for t in tars]


def rerun(cli: str, registry: Registry, src: str, dest: str, home: Path, label: str) -> dict[str, Any]:
    """An unchanged ``ours add``: every layer a hit, and nothing uploaded, not even
    an image record (the name is bound to the same root already)."""
    offset = registry.log_size()
    run = ours(cli, registry, src, dest, "add", home)  # waits for the registry's log
    counts, uploaded = registry.requests_since(offset)
    statuses = [o["status"] for o in run.report["layers"]]
    image_blobs = {o[k]["digest"].split(":")[1] for o in run.report["layers"] for k in ("source", "target")}
    assert statuses == ["hit"] * len(statuses), statuses
    assert not image_blobs & set(uploaded) and counts["PATCH upload"] == 0, (counts, uploaded)
    assert not uploaded and counts["DELETE manifests"] == 0, (counts, uploaded)
    return {"label": label, "wall": run.wall, "requests": sum(counts.values()), "by_kind": dict(counts),
            "statuses": statuses, "uploads": len(uploaded)}


def arguments(doc: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The options every registry benchmark takes (and ``extra``'s), parsed;
    exits unless docker-registry and skopeo are on PATH."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="corpus cache (default %(default)s)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--cli", choices=("installed", "here"), default="installed",
                    help="time this checkout pip-installed in a venv of its own (default), or run in place")
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    for tool in ("docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found on PATH")
    return args


@contextmanager
def serving(layout: Path, prefix: str, tls: tuple[Path, Path] | None = None) -> Iterator[tuple[Registry, Path]]:
    """A registry of our own in a new work directory, holding ``layout``'s
    image as ``corpus/src:gzip`` (pushed by skopeo); stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        registry = Registry(work, tls)
        try:
            subprocess.run(["skopeo", "copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{layout}:latest",
                            f"docker://{registry.host}/corpus/src:gzip"], check=True)
            yield registry, work
        finally:
            registry.stop()


def main() -> None:
    args = arguments(__doc__)
    installed_bytecode()
    cli = cli_for(args.cli, args.workdir, CLI)
    print(f"timing {cli}", file=sys.stderr)
    names = ("bin", "py", "small")
    tars = [layer_info(args.workdir, n) for n in names]
    tar_bytes = sum(int(t["tar_size"]) for t in tars)
    layout = build_image(args.workdir, names)
    print(f"load average {os.getloadavg()[0]:.2f}; image: {len(tars)} layers, {tar_bytes / 1e6:.1f} MB of tar, "
          f"{sum(int(t['size']) for t in tars) / 1e6:.1f} MB gzip", file=sys.stderr)
    with serving(layout, "bench-registry-") as (registry, work):
        results = measure(cli, registry, work, args.reps, tars)
        results["unchanged"] = [
            rerun(cli, registry, "corpus/src:gzip", "bench/r0-ours-add", work / "home-other", "another machine"),
            rerun(cli, registry, "corpus/src:gzip", "bench/r0-ours-add", work / "home-r0-ours-add", "same machine"),
        ]
    report(results, tar_bytes, args.json)


def _exchange(registry: Registry, head: str, body: memoryview | None = None,
              into: bytearray | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a new connection, the least a client can do:
    send it (and its body, from memory), read the answer (into ``into``,
    reused, when given: then the body is not kept). Status, headers, body."""
    with socket.create_connection(("127.0.0.1", registry.port)) as s:
        length = f"Content-Length: {len(body)}\r\n" if body is not None else ""
        s.sendall(f"{head} HTTP/1.1\r\nHost: {registry.host}\r\n{length}Connection: close\r\n\r\n".encode())
        if body is not None:
            s.sendall(body)
        raw = b""
        while b"\r\n\r\n" not in raw:
            more = s.recv(65536)
            if not more:
                raise SystemExit(f"registry closed the connection: {head}")
            raw += more
        top, rest = raw.split(b"\r\n\r\n", 1)
        lines = top.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        left = int(headers.get("content-length", "0")) - len(rest)
        kept = [rest]
        buf = memoryview(into) if into is not None else None
        while left > 0:
            if buf is not None:
                n = s.recv_into(buf, min(left, len(buf)))
            else:
                kept.append(s.recv(min(left, 1 << 20)))
                n = len(kept[-1])
            if not n:
                raise SystemExit(f"registry ended the body early: {head}")
            left -= n
        return int(lines[0].split()[1]), headers, b"".join(kept) if buf is None else b""


def wire_cost(registry: Registry, src: str, layers: list[str], outputs: list[str], dest: str,
              scratch: str) -> tuple[float, float]:
    """CPU seconds (client, registry) of moving these bytes and nothing else:
    GET the ``layers`` of ``src``, push the ``outputs`` (read from ``dest``
    first, untimed) into the new repository ``scratch``."""
    blobs = []
    for digest in outputs:
        status, _, data = _exchange(registry, f"GET /v2/{dest}/blobs/{digest}")
        assert status == 200, (status, digest)
        blobs.append((digest, data))
    buf = bytearray(1 << 20)
    reg, cpu = registry.cpu(), resource.getrusage(resource.RUSAGE_THREAD)
    for digest in layers:
        assert _exchange(registry, f"GET /v2/{src}/blobs/{digest}", into=buf)[0] == 200
    for digest, data in blobs:
        status, headers, _ = _exchange(registry, f"POST /v2/{scratch}/blobs/uploads/")
        assert status == 202, status
        where = headers["location"].split(registry.host, 1)[-1]
        sep = "&" if "?" in where else "?"
        status, _, _ = _exchange(registry, f"PUT {where}{sep}digest={digest}", body=memoryview(data))
        assert status == 201, (status, digest)
    after = resource.getrusage(resource.RUSAGE_THREAD)
    return after.ru_utime - cpu.ru_utime + after.ru_stime - cpu.ru_stime, registry.cpu() - reg


def measure(cli: str, registry: Registry, work: Path, reps: int, tars: list[dict[str, Any]]) -> dict[str, Any]:
    runs: dict[str, list[Run]] = {"ours replace": [], "ours add": [], f"ours {TUNED}": [], "skopeo": []}
    order = list(runs)
    stage: list[float] = []  # per repetition: the layers' stage work on one thread
    wire: list[tuple[float, float]] = []  # per repetition: (client, registry) CPU of the transfers alone
    runtime: list[float] = []  # per repetition: the interpreter's start and exit with httpx imported
    python = interpreter_of(cli)
    for rep in range(reps):
        stage.append(stage_seconds([Path(str(t["path"])) for t in tars], 3))
        runtime.append(runtime_seconds(python))
        for name in order[rep % len(order):] + order[: rep % len(order)]:
            print(f"rep {rep + 1}/{reps}: {name} ...", file=sys.stderr, flush=True)
            slug = re.sub(r"[^a-z0-9]+", "-", name)  # a repository name: ours-clog-13
            dest = f"bench/r{rep}-{slug}"
            if name == "skopeo":
                run = skopeo(registry, "corpus/src:gzip", dest)
            else:
                mode, zstd = ("replace", TUNED) if name.endswith(TUNED) else (name.split()[1], "")
                run = ours(cli, registry, "corpus/src:gzip", dest, mode, work / f"home-r{rep}-{slug}", zstd)
                check_ours(run, tars)
            runs[name].append(run)
        outputs = [o["target"]["digest"] for o in runs["ours replace"][-1].report["layers"]]
        wire.append(wire_cost(registry, "corpus/src", [str(t["digest"]) for t in tars], outputs,
                              f"bench/r{rep}-ours-replace", f"bench/r{rep}-wire"))
    return {"runs": runs, "stage": stage, "wire": wire, "runtime": runtime}


def interpreter_of(cli: str) -> str:
    """The interpreter a console script runs on: its ``#!`` line's (else this one)."""
    path = shutil.which(cli) or cli
    with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as f:
        first = f.readline()
        if first.startswith("#!") and Path(first[2:].strip()).exists():
            return first[2:].strip()
    return sys.executable


def runtime_seconds(python: str, times: int = 7) -> float:
    """Median wall of a whole process of ``python`` that imports httpx and ends:
    what any program on this runtime and HTTP library pays before its first
    request and after its last answer, together."""
    walls = []
    for _ in range(times):
        began = time.perf_counter()
        subprocess.run([python, "-c", "import httpx"], check=True)
        walls.append(time.perf_counter() - began)
    return statistics.median(walls)


def report(results: dict[str, Any], tar_bytes: int, out: Path | None) -> None:
    runs: dict[str, list[Run]] = results["runs"]
    med = {k: statistics.median(r.wall for r in v) for k, v in runs.items()}
    sizes = {k: v[-1].zstd_bytes for k, v in runs.items()}
    print("\n| run | wall s (median) | MB/s of tar | CPU s | registry CPU s | zstd layers MB (÷ skopeo's) "
          "| skopeo wall / this |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        cpu = statistics.median(r.cpu for r in rs)
        reg = statistics.median(r.registry_cpu for r in rs)
        walls = ", ".join(f"{r.wall:.2f}" for r in rs)
        print(f"| {name} | {med[name]:.2f} ({walls}) | {tar_bytes / 1e6 / med[name]:.0f} | {cpu:.2f} | {reg:.2f} | "
              f"{sizes[name] / 1e6:.1f} ({sizes[name] / sizes['skopeo']:.3f}) | **{med['skopeo'] / med[name]:.2f}x** |")
    ratio = med["skopeo"] / med["ours replace"]
    tuned = med["skopeo"] / med[f"ours {TUNED}"]
    total = {k: statistics.median(r.cpu + r.registry_cpu for r in v) for k, v in runs.items()}
    print(f"\nskopeo / ours (replace, same output set): wall {ratio:.2f}x (target >= {TARGET}x: "
          f"{'met' if ratio >= TARGET else 'NOT met'}); ours add: {med['skopeo'] / med['ours add']:.2f}x; "
          f"--zstd {TUNED}: {tuned:.2f}x (target {'met' if tuned >= TARGET else 'NOT met'}, output "
          f"{'no larger' if sizes[f'ours {TUNED}'] <= sizes['skopeo'] else 'LARGER'} than skopeo's)")
    print(f"CPU (client + registry) skopeo / ours: replace {total['skopeo'] / total['ours replace']:.2f}x, "
          f"add {total['skopeo'] / total['ours add']:.2f}x, --zstd {TUNED} "
          f"{total['skopeo'] / total[f'ours {TUNED}']:.2f}x (the figure to trust when the load average is high; "
          f"now {os.getloadavg()[0]:.2f})")
    print_floor(results["stage"], runs)
    print_wire_floor(results["stage"], results["wire"], runs)
    print_edges(results["stage"], results["wire"], runs)
    print_runtime_floor(results["stage"], results["wire"], results["runtime"], runs)
    print_budget(results["stage"], results["wire"], runs)
    print("\n| unchanged rerun (ours add) | wall s | layers | requests | by kind | blobs uploaded |")
    print("|---|---|---|---|---|---|")
    for u in results["unchanged"]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(u["by_kind"].items()))
        print(f"| {u['label']} | {u['wall']:.2f} | {', '.join(u['statuses'])} | {u['requests']} | {kinds} | "
              f"{u['uploads']} |")
    if out:
        data = {"runs": {k: [{"wall": r.wall, "cpu": r.cpu, "registry_cpu": r.registry_cpu, "lead": r.lead,
                              "trail": r.trail, "zstd_bytes": r.zstd_bytes} for r in v]
                         for k, v in runs.items()},
                "stage_seconds": results["stage"], "wire_cpu": results["wire"], "runtime_seconds": results["runtime"],
                "ratio_replace": ratio, "unchanged": results["unchanged"],
                "tar_bytes": tar_bytes}
        out.write_text(json.dumps(data, indent=1))


def print_floor(stage: list[float], runs: dict[str, list[Run]]) -> None:
    """The floor (stage work plus the registry's CPU, halved) beside skopeo and us, per repetition."""
    floors = [(w + r.registry_cpu) / 2 for w, r in zip(stage, runs["ours replace"], strict=True)]
    print(f"floor (stage work {statistics.median(stage):.2f} s on one thread, plus the registry's CPU, halved): "
          f"{statistics.median(floors):.2f} s; "
          + floor_summary(floors, [k.wall for k in runs["skopeo"]], [o.wall for o in runs["ours replace"]]))


def print_wire_floor(stage: list[float], wire: list[tuple[float, float]], runs: dict[str, list[Run]]) -> None:
    """The floor with the transfers: stage work plus what moving the bytes alone costs both sides, halved."""
    client = statistics.median(c for c, _ in wire)
    served = statistics.median(r for _, r in wire)
    floors = wire_floors(stage, wire)
    print(f"moving the bytes alone (raw sockets: the gzip layers pulled, the zstd layers pushed): client "
          f"{client:.2f} CPU-s, registry {served:.2f} CPU-s; floor with transfers (stage work plus both, halved): "
          f"{statistics.median(floors):.2f} s; " + floor_summary(floors, [k.wall for k in runs["skopeo"]],
                                                               [o.wall for o in runs["ours replace"]]))

def wire_floors(stage: list[float], wire: list[tuple[float, float]]) -> list[float]:
    """Per repetition, the floor with transfers: stage work plus both sides' CPU of moving the bytes, halved."""
    return [(w + c + r) / 2 for w, (c, r) in zip(stage, wire, strict=True)]


def print_edges(stage: list[float], wire: list[tuple[float, float]], runs: dict[str, list[Run]]) -> None:
    """Each run's start-up and shutdown as the registry sees them, and the floor
    with transfers plus ours: what a run that starts and ends as ours does and
    keeps both cores busy in between would take."""
    print("\n| run | before its first request, s (median; range) | after its last answer, s |")
    print("|---|---|---|")
    for name, rs in runs.items():
        leads, trails = sorted(r.lead for r in rs), sorted(r.trail for r in rs)
        print(f"| {name} | {statistics.median(leads):.3f} ({leads[0]:.3f}-{leads[-1]:.3f}) | "
              f"{statistics.median(trails):.3f} ({trails[0]:.3f}-{trails[-1]:.3f}) |")
    edged = [f + o.lead + o.trail for f, o in zip(wire_floors(stage, wire), runs["ours replace"], strict=True)]
    print(f"floor with transfers plus ours' own start-up and shutdown: {statistics.median(edged):.2f} s; "
          + against(edged, runs, "a run starting and ending as ours does"))


def against(floors: list[float], runs: dict[str, list[Run]], who: str) -> str:
    """Per repetition, skopeo's wall over ``floors`` (the best ratio ``who``
    could show) and ``floors`` over ours (how much of it we reach): medians
    and ranges."""
    best = sorted(k.wall / f for k, f in zip(runs["skopeo"], floors, strict=True))
    reached = sorted(f / o.wall for f, o in zip(floors, runs["ours replace"], strict=True))
    return (f"skopeo / that, the best ratio {who} could show: median {statistics.median(best):.2f}x, range "
            f"{best[0]:.2f}-{best[-1]:.2f}x; that / ours (replace): median {statistics.median(reached):.2f}, range "
            f"{reached[0]:.2f}-{reached[-1]:.2f}")


def print_runtime_floor(stage: list[float], wire: list[tuple[float, float]], runtime: list[float],
                        runs: dict[str, list[Run]]) -> None:
    """The floor with transfers plus the runtime's start and exit: the least any
    Python program on httpx could take, beside skopeo and us."""
    floors = [f + r for f, r in zip(wire_floors(stage, wire), runtime, strict=True)]
    print(f"floor with transfers plus the runtime's start and exit (the interpreter importing httpx and nothing "
          f"else, {statistics.median(runtime):.3f} s): {statistics.median(floors):.2f} s; "
          + against(floors, runs, "any Python program on httpx"))


def print_budget(stage: list[float], wire: list[tuple[float, float]], runs: dict[str, list[Run]]) -> None:
    """The CPU a run may spend and still meet the target: skopeo's wall over
    the target, on every core. Ours (client plus registry, every cost counted)
    and the floor with transfers (the stage work and both sides' CPU of
    moving the bytes) are given as shares of it, per repetition; above 1, no
    scheduling can meet the target without spending less."""
    cores = os.cpu_count() or 1
    budgets = [k.wall / TARGET * cores for k in runs["skopeo"]]
    spent = sorted((o.cpu + o.registry_cpu) / b for o, b in zip(runs["ours replace"], budgets, strict=True))
    floor = sorted((w + c + r) / b for w, (c, r), b in zip(stage, wire, budgets, strict=True))
    print(f"CPU budget at {TARGET}x skopeo (its wall / {TARGET} on {cores} cores): {statistics.median(budgets):.2f} "
          f"CPU-s; ours (replace, client + registry) spent {statistics.median(spent):.2f} of it (range "
          f"{spent[0]:.2f}-{spent[-1]:.2f}); the stage work and moving the bytes alone take "
          f"{statistics.median(floor):.2f} ({floor[0]:.2f}-{floor[-1]:.2f})")


if __name__ == "__main__":
    main()
