"""The product as a user installs it, for the whole-process benchmarks.

A checkout run in place pays start-up that no installed copy pays: an
editable install's import hook (11 ms here) and whatever ``.pth`` files the
development interpreter's site-packages hold (9 ms more on these machines).
On a 2.7 s conversion whose first 0.15 s run on one core, that is most of a
percent. So ``installed_cli`` pip-installs this checkout (not editable) into
a virtual environment of its own, made once per source tree in the corpus
work directory and reused, and returns its console script. ``--cli here`` in
the benchmarks that use it times the checkout instead.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "transcoder/**/*.py", "native/*.c", "native/*.h")


def source_key() -> str:
    """A digest of everything an install is built from."""
    h = hashlib.sha256()
    for pattern in SOURCES:
        for path in sorted(ROOT.glob(pattern)):
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def installed_cli(workdir: str | Path) -> str:
    """The ``transcoder`` console script of this checkout, installed in a venv under ``workdir``."""
    venv = Path(workdir) / f"venv-{source_key()}"
    script = venv / "bin" / "transcoder"
    if not script.exists():
        print(f"installing this checkout into {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT)], check=True)
    return str(script)


def cli_for(choice: str, workdir: str | Path, here: str) -> str:
    """``installed`` (the default) or ``here``, the checkout's own console script."""
    return installed_cli(workdir) if choice == "installed" else here
