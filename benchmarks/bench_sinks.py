"""Object-store sinks benchmark: one corpus layer transcoded into S3 (moto
server) and Azure Blob (Azurite), end to end, against transcode-only.

The layer is ``bin`` from benchmarks/corpus.py (``/usr/lib/x86_64-linux-gnu``,
about 525 MB of tar, gzip -6) unless ``--layer`` says otherwise. Each case
is ``transcode_stream`` over the gzip file, in this process:

1. ``transcode-only``: into a NullWriter (hashes and counts, stores nothing):
   the baseline;
2. ``local``: into a ``type=local`` store on disk (a rename at commit);
3. ``s3``: into ``type=s3`` on a moto server started here: parts stream to
   ``ingest/`` while the pipeline runs; commit completes that upload and
   publishes it with a server-side copy;
4. ``azblob``: into ``type=azblob`` on an Azurite started here: blocks are
   staged while the pipeline runs; commit commits them and publishes with a
   server-side copy;
5. ``s3 hinted`` / ``azblob hinted``: the canonical gzip blob copied in with
   its digest as ``key_hint`` (what ``convert`` does for the original layer):
   straight to the final name, no copy at commit.

Repetitions are interleaved, each into a new prefix (so no "already exists"
shortcut), which is deleted afterwards to keep the servers' memory flat.
Printed per case: median wall seconds, this process's CPU seconds, the
server's CPU seconds, the seconds spent in ``commit`` (publication), and the
wall time over transcode-only. Both servers run on the same two cores as the
pipeline, so their CPU competes with it: read the ratio with the server CPU
beside it. Every stored blob is checked by size after commit.

    python benchmarks/bench_sinks.py [--reps 3] [--layer bin] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.corpus import DEFAULT_WORKDIR, layer_info
from transcoder.descriptor import OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from transcoder.digest import Digest
from transcoder.sinks import open_sink
from transcoder.sinks.base import Sink
from transcoder.transcode import default_workers, transcode_stream
from transcoder.writers import BlobWriter, NullWriter

AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="  # public dev key
PEERS_DIR = Path(os.environ.get("PEERS_DIR", "/opt/transcoder-peers"))
CHUNK = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A peer started here, in its own process group, stopped by its PID."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str

    def cpu(self) -> float:
        """User + system CPU seconds of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _wait_http(url: str, proc: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited while starting")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is up (Azurite answers 403)
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{name} not ready after 60 s")


@contextmanager
def servers(workdir: Path) -> Iterator[dict[str, Server]]:
    moto_port, az_port = free_port(), free_port()
    started: dict[str, Server] = {}
    try:
        log = open(workdir / "moto.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started["s3"] = Server("moto", proc, f"http://127.0.0.1:{moto_port}")
        _wait_http(started["s3"].url + "/moto-api/", proc, "moto")
        azurite = PEERS_DIR / "node_modules" / ".bin" / "azurite-blob"
        if not azurite.exists():
            raise SystemExit(f"Azurite not found at {azurite} (set PEERS_DIR)")
        log = open(workdir / "azurite.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([str(azurite), "--blobHost", "127.0.0.1", "--blobPort", str(az_port), "--inMemoryPersistence",
                                 "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started["azblob"] = Server("azurite", proc, f"http://127.0.0.1:{az_port}/devstoreaccount1")
        _wait_http(started["azblob"].url + "?comp=list", proc, "azurite")
        yield started
    finally:
        for server in started.values():
            server.stop()


def prepare(peers: dict[str, Server]) -> dict[str, str]:
    """Create the bucket and the container; the spec (without prefix) of each sink."""
    import boto3
    from azure.storage.blob import BlobServiceClient

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    boto3.client("s3", endpoint_url=peers["s3"].url, region_name="us-east-1").create_bucket(Bucket="bench")
    BlobServiceClient(peers["azblob"].url, credential={"account_name": "devstoreaccount1", "account_key": AZURITE_KEY}
                      ).create_container("bench")
    return {"s3": f"type=s3,bucket=bench,region=us-east-1,endpoint_url={peers['s3'].url},prefix={{new}}",
            "azblob": f"type=azblob,account_url={peers['azblob'].url},name=bench,account_key={AZURITE_KEY},prefix={{new}}"}


class TimedWriter:
    """Passes everything to ``inner``; remembers how long ``commit`` took."""

    def __init__(self, inner: BlobWriter) -> None:
        self.inner, self.commit_seconds = inner, 0.0

    def write(self, data: bytes | memoryview) -> None:
        self.inner.write(data)

    def commit(self, size: int, digest: Digest) -> None:
        started = time.perf_counter()
        self.inner.commit(size, digest)
        self.commit_seconds = time.perf_counter() - started

    def abort(self) -> None:
        self.inner.abort()


@dataclass
class Sample:
    wall: float
    cpu: float
    server_cpu: float = 0.0
    commit: float = 0.0
    stored: int = 0


@dataclass
class Case:
    name: str
    run: Callable[[], tuple[float, int]]  # -> (commit seconds, stored bytes)
    server: Server | None = None
    samples: list[Sample] = field(default_factory=list)


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(case: Case) -> None:
    server_before = case.server.cpu() if case.server else 0.0
    cpu0, wall0 = cpu_now(), time.perf_counter()
    commit, stored = case.run()
    wall, cpu = time.perf_counter() - wall0, cpu_now() - cpu0
    server = (case.server.cpu() - server_before) if case.server else 0.0
    case.samples.append(Sample(wall, cpu, server, commit, stored))


def transcode_into(layer: dict[str, Any], writer: BlobWriter) -> int:
    with open(layer["path"], "rb", buffering=0) as f:
        result = transcode_stream(f, writer, workers=default_workers(), expect=Digest.parse(layer["digest"]))
    return result.target.size


def sink_case(spec: str, layer: dict[str, Any], hinted: bool) -> Callable[[], tuple[float, int]]:
    """A run into a fresh namespace of the sink ``spec`` names: ``{new}`` in it becomes a new name."""
    def run() -> tuple[float, int]:
        sink = open_sink(spec.format(new="bench-" + secrets.token_hex(4)))
        try:
            if hinted:
                return copy_into(sink, layer)
            writer = TimedWriter(sink.blob_writer(OCI_LAYER_ZSTD))
            size = transcode_into(layer, writer)
            return writer.commit_seconds, size
        finally:
            clear(sink)
            sink.close()

    return run


def copy_into(sink: Sink, layer: dict[str, Any]) -> tuple[float, int]:
    digest = Digest.parse(layer["digest"])
    writer = TimedWriter(sink.blob_writer(OCI_LAYER_GZIP, key_hint=str(digest), size_hint=layer["size"]))
    with open(layer["path"], "rb", buffering=0) as f:
        while block := f.read(CHUNK):
            writer.write(block)
    writer.commit(layer["size"], digest)
    assert sink.stat_blob(digest) == layer["size"]
    return writer.commit_seconds, layer["size"]


def clear(sink: Sink) -> None:
    """Delete what the run stored (object stores: every key under the prefix)."""
    store = getattr(sink, "store", None)
    if store is not None:
        for key in list(store.keys(sink.prefix)):  # type: ignore[attr-defined]
            store.delete(key)
    elif hasattr(sink, "layout"):
        shutil.rmtree(sink.layout.root)


def report(cases: list[Case], layer: dict[str, Any]) -> dict[str, Any]:
    base = statistics.median(s.wall for s in cases[0].samples)
    print(f"\nlayer {layer['name']}: tar {layer['tar_size'] / 1e6:.1f} MB, gzip {layer['size'] / 1e6:.1f} MB; "
          f"{default_workers()} workers; load average {os.getloadavg()[0]:.2f}")
    print(f"{'case':<16} {'MB':>7} {'wall s':>8} {'cpu s':>8} {'server cpu s':>13} {'commit s':>9} {'÷ transcode-only':>17}")
    out = {}
    for case in cases:
        med = {k: statistics.median(getattr(s, k) for s in case.samples) for k in ("wall", "cpu", "server_cpu", "commit")}
        ratio = med["wall"] / base
        print(f"{case.name:<16} {case.samples[0].stored / 1e6:>7.1f} {med['wall']:>8.2f} {med['cpu']:>8.2f} "
              f"{med['server_cpu']:>13.2f} {med['commit']:>9.2f} {ratio:>17.2f}")
        out[case.name] = {**med, "ratio": ratio, "samples": [s.__dict__ for s in case.samples]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--layer", default="bin")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    layer = layer_info(args.workdir, args.layer)
    with tempfile.TemporaryDirectory(prefix="bench-sinks-") as tmp, servers(Path(tmp)) as peers:
        specs = prepare(peers)
        local = f"type=local,dest={tmp}/{{new}}"

        def null() -> tuple[float, int]:
            return 0.0, transcode_into(layer, NullWriter("null"))

        cases = [Case("transcode-only", null), Case("local", sink_case(local, layer, False)),
                 Case("s3", sink_case(specs["s3"], layer, False), peers["s3"]),
                 Case("azblob", sink_case(specs["azblob"], layer, False), peers["azblob"]),
                 Case("s3 hinted", sink_case(specs["s3"], layer, True), peers["s3"]),
                 Case("azblob hinted", sink_case(specs["azblob"], layer, True), peers["azblob"])]
        for rep in range(args.reps):
            for case in cases[rep % len(cases):] + cases[:rep % len(cases)]:
                measure(case)
                print(f"rep {rep + 1} {case.name}: {case.samples[-1].wall:.2f} s", file=sys.stderr, flush=True)
        results = report(cases, layer)
    if args.json:
        Path(args.json).write_text(json.dumps({"layer": layer, "cases": results}, indent=1))


if __name__ == "__main__":
    main()
