"""One transcode to a file, as ``transcoder convert`` does it, in a process of
its own: ``python benchmarks/pipeline_child.py SRC OUT LEVEL``.

It imports only what the CLI would, so whole-process timings compare the
product's start-up, not the benchmark harness's. Timed from the start of the
decode (the command line starts it before loading the encoder side, whose
imports are therefore inside the timed part; ``imports`` says how long they
took) up to the durable, renamed output (fsync included, as skopeo and the shell pipeline sync
theirs); prints one JSON object: wall, CPU, digests, implementation, peak RSS;
then exits the way the command line does (``transcoder.cli.exit_now``).
"""

from __future__ import annotations

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


def main(src: str, out: str, level: int) -> None:
    # As the command line does: the decode starts, then the encoder side loads.
    from transcoder.codecs.constants import FRAME_SIZE
    from transcoder.decode import HeadStart

    cpu, t = time.process_time(), time.perf_counter()
    head = HeadStart.begin(src, frame_size=FRAME_SIZE)
    t_imports = time.perf_counter()
    from transcoder import accel
    from transcoder.codecs import ZstdParams
    from transcoder.transcode import transcode_stream
    from transcoder.writers import FileWriter

    imports = time.perf_counter() - t_imports
    with FileWriter(out) as w:
        r = transcode_stream(head, w, params=ZstdParams(level=level))
    head.close()
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(json.dumps({"wall": wall, "cpu": cpu, "digest": str(r.target.digest), "size": r.target.size,
                      "diff_id": str(r.diff_id), "source": str(r.source.digest), "impl": accel.IMPLEMENTATION,
                      "hwm": peak_rss(), "imports": imports}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    from transcoder.cli import exit_now

    exit_now(0)  # and ends as the command line does
