"""One transcode to a file, as ``transcoder convert`` does it, in a process of
its own: ``python benchmarks/pipeline_child.py SRC OUT LEVEL [command|library]``.

It imports only what the CLI would, so whole-process timings compare the
product's start-up, not the benchmark harness's. In ``command`` mode (the
default) the decode starts before the encoder side loads, as the command
line does, and the timing runs from that start (so those imports are inside
it; ``imports`` says how long they took); in ``library`` mode everything is
loaded first and the pipeline alone is timed. Either way the timing ends at
the durable, renamed output (fsync included, as skopeo and the shell pipeline sync
theirs); prints one JSON object: wall, CPU, digests, implementation, peak RSS;
then exits the way the command line does (``transcoder.cli.exit_now``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path


def peak_rss() -> int:
    """This process's own peak RSS in bytes (VmHWM is per address space, reset by exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main(src: str, out: str, level: int, mode: str) -> None:
    """``command``: as ``transcoder convert`` runs, the decode started before the
    encoder side loads, timed from that start. ``library``: everything loaded
    first, then the pipeline alone, timed from opening the source."""
    from transcoder.codecs.constants import FRAME_SIZE
    from transcoder.decode import HeadStart

    cpu, t = time.process_time(), time.perf_counter()
    head = HeadStart.begin(src, frame_size=FRAME_SIZE) if mode == "command" else None
    t_imports = time.perf_counter()
    from transcoder import accel
    from transcoder.codecs import ZstdParams
    from transcoder.transcode import transcode_stream
    from transcoder.writers import FileWriter

    imports = time.perf_counter() - t_imports
    if head is None:
        cpu, t = time.process_time(), time.perf_counter()
    with FileWriter(out) as w, (contextlib.nullcontext(head) if head else open(src, "rb", buffering=0)) as f:
        r = transcode_stream(f, w, params=ZstdParams(level=level), name=src)
    if head is not None:
        head.close()
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(json.dumps({"wall": wall, "cpu": cpu, "digest": str(r.target.digest), "size": r.target.size,
                      "diff_id": str(r.diff_id), "source": str(r.source.digest), "impl": accel.IMPLEMENTATION,
                      "hwm": peak_rss(), "imports": imports, "mode": mode}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "command")
    from transcoder.cli import exit_now

    exit_now(0)  # and ends as the command line does
