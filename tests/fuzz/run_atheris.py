"""Coverage-guided fuzzing of the parsers with atheris (libFuzzer).

    python tests/fuzz/run_atheris.py layer -max_total_time=600
    python tests/fuzz/run_atheris.py manifest -runs=200000 corpus-dir/

Targets: layer, manifest, records, docker-archive (see targets.py). A crash
writes crash-<hash>; turn it into a regression case in tests/test_fuzz.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from tests.fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
