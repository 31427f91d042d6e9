"""One exporter of a load run: converts the named images of a layout into a
sink, one after another, and prints a JSON line per image (name, seconds,
converted, hits). Run as ``python -m tests.load_driver SPEC LAYOUT NAME...``;
``run_load`` starts many of them at once and gathers the lines."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.imagegen import make_tar, write_layout

REPO = Path(__file__).resolve().parent.parent


def build_layout(root: Path, images: int, layer_size: int = 60_000) -> list[str]:
    """``images`` images of two layers each: a base layer shared by all, and one of their own."""
    base = make_tar(7000, layer_size, 4)
    names = [f"img-{i:03d}" for i in range(images)]
    write_layout(root, {name: [base, make_tar(7001 + i, layer_size, 4)] for i, name in enumerate(names)})
    return names


def run_load(spec: str, layout: Path, names: list[str], processes: int, timeout: float = 900.0) -> dict[str, Any]:
    """Start ``processes`` exporters over round-robin shares of ``names``; return timings and results."""
    shares = [names[i::processes] for i in range(processes)]
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.load_driver", spec, str(layout), *share], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for share in shares]
    results, errors = [], []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            errors.append(err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
        results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    wall = time.perf_counter() - started
    slowest = max(results, key=lambda r: r["seconds"]) if results else None
    return {"processes": processes, "images": len(results), "errors": errors, "wall_s": round(wall, 3),
            "images_per_s": round(len(results) / wall, 2), "slowest": slowest, "results": results}


def main(argv: list[str]) -> int:
    from transcoder.images.convert import ConvertOptions, convert_image
    from transcoder.images.layout import LayoutSource
    from transcoder.sinks import open_sink

    spec, layout, names = argv[0], argv[1], argv[2:]
    sink = open_sink(spec)
    try:
        for name in names:
            t0 = time.perf_counter()
            res = convert_image(LayoutSource(layout, name), sink, ConvertOptions(jobs=2, workers=1))
            doc = res.to_json()
            print(json.dumps({"name": name, "seconds": round(time.perf_counter() - t0, 4),
                              "converted": doc["converted"], "hits": doc["hits"], "root": doc["root"]["digest"]}),
                  flush=True)
    finally:
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
