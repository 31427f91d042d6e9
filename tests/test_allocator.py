"""glibc arenas: the command line has its threads share them; the library leaves them alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.imagegen import make_tar, write_layout

GLIBC = hasattr(os, "confstr") and os.confstr("CS_GNU_LIBC_VERSION") is not None

# Runs a conversion in this child process, through the command line or the
# library, then prints how many arenas glibc's malloc_info reports.
CHILD = r"""
import ctypes, os, re, sys, tempfile
how, src, dest = sys.argv[1:]
if how == "cli":
    from transcoder.cli import main
    assert main(["convert", src, "--to", f"type=local,dest={dest}", "--no-table"]) == 0
else:
    from transcoder import ConvertOptions, convert_image, open_sink, open_source
    source = open_source(src)
    convert_image(source, open_sink(f"type=local,dest={dest}"), ConvertOptions())
    source.close()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
fd, path = tempfile.mkstemp()
os.close(fd)
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(fp))
libc.fclose(ctypes.c_void_p(fp))
print(len(re.findall(r'<heap nr="', open(path).read())))
os.unlink(path)
"""


def arenas(how: str, tmp_path: Path, env: dict[str, str] | None = None) -> int:
    """Arenas after a three-layer image conversion into a new store, ``how`` = cli or lib."""
    layout = tmp_path / "src"
    if not layout.exists():
        write_layout(layout, {"app": [make_tar(60 + i, size=3_000_000, files=20) for i in range(3)]})
    dest = tmp_path / f"store-{how}-{(env or {}).get('TRANSCODER_MALLOC_TUNING', 'on')}"
    r = subprocess.run([sys.executable, "-c", CHILD, how, f"oci:{layout}:app", str(dest)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's arenas only")
def test_the_command_line_has_its_threads_share_one_arena(tmp_path: Path) -> None:
    assert arenas("cli", tmp_path) == 1
    # The same conversion with the tuning turned off: each thread that allocates has its own.
    assert arenas("cli", tmp_path, {"TRANSCODER_MALLOC_TUNING": "0"}) > 1


@pytest.mark.skipif(not GLIBC, reason="glibc's arenas only")
def test_the_library_leaves_the_arenas_of_its_host_alone(tmp_path: Path) -> None:
    assert arenas("lib", tmp_path) > 1
