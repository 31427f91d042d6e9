"""``transcoder convert SRC -o OUT`` and ``transcoder variants``, as a user runs them."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.imagegen import gz, make_tar, unzstd
from transcoder.digest import Digest

TAR = make_tar(11, size=1_500_000, files=20)


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "transcoder", *args], input=stdin.decode("latin-1") if stdin is not None else None,
        capture_output=True, text=True, env=os.environ.copy(), timeout=120,
    )


def variant_rows(home: Path) -> int:
    db = home / "variants.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        return int(con.execute("SELECT count(*) FROM variants").fetchone()[0])


@pytest.fixture
def layer(tmp_path: Path) -> Path:
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(gz(TAR))
    return path


def test_convert_json_contract(layer: Path, tmp_path: Path) -> None:
    out = tmp_path / "layer.tar.zst"
    r = cli("convert", str(layer), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["source"] == {"digest": str(Digest.of(layer.read_bytes())), "size": layer.stat().st_size,
                             "media_type": "application/vnd.oci.image.layer.v1.tar+gzip"}
    assert doc["target"]["digest"] == str(Digest.of(out.read_bytes()))
    assert doc["target"]["size"] == out.stat().st_size
    assert doc["target"]["media_type"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert doc["diff_id"] == str(Digest.of(TAR))
    assert doc["params"]["level"] == 3 and doc["params"]["codec"] == "zstd"
    assert doc["cached"] is False and isinstance(doc["seconds"], float)
    assert r.stderr == ""  # not a terminal: no progress bar
    assert unzstd(out.read_bytes()) == TAR


def test_second_convert_is_a_table_hit(layer: Path, tmp_path: Path, transcoder_home: Path) -> None:
    out = tmp_path / "a.zst"
    first = json.loads(cli("convert", str(layer), "-o", str(out), "--json").stdout)
    second = json.loads(cli("convert", str(layer), "-o", str(out), "--json").stdout)
    assert second["cached"] is True and second["target"] == first["target"]
    other = tmp_path / "b.zst"
    third = json.loads(cli("convert", str(layer), "-o", str(other), "--json").stdout)
    assert third["cached"] is True and other.read_bytes() == out.read_bytes()
    assert variant_rows(transcoder_home) == 1


def test_hit_needs_the_stored_output(layer: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.zst"
    cli("convert", str(layer), "-o", str(out))
    out.write_bytes(b"tampered")  # the recorded copy no longer holds the variant
    again = json.loads(cli("convert", str(layer), "-o", str(out), "--json").stdout)
    assert again["cached"] is False
    assert Digest.of(out.read_bytes()).value == again["target"]["digest"]


def test_level_is_part_of_identity(layer: Path, tmp_path: Path) -> None:
    a = json.loads(cli("convert", str(layer), "-o", str(tmp_path / "3.zst"), "--json").stdout)
    b = json.loads(cli("convert", str(layer), "-o", str(tmp_path / "9.zst"), "--level", "9", "--json").stdout)
    assert b["cached"] is False and a["target"]["digest"] != b["target"]["digest"]


def test_zstd_tuning_is_part_of_identity(layer: Path, tmp_path: Path, transcoder_home: Path) -> None:
    plain = json.loads(cli("convert", str(layer), "-o", str(tmp_path / "3.zst"), "--json").stdout)
    tuned = json.loads(cli("convert", str(layer), "-o", str(tmp_path / "t.zst"), "--zstd", "clog=13",
                           "--json").stdout)
    assert "tuning" not in plain["params"] and tuned["params"]["tuning"] == {"clog": 13}
    assert tuned["cached"] is False and tuned["target"]["digest"] != plain["target"]["digest"]
    assert unzstd((tmp_path / "t.zst").read_bytes()) == TAR
    # the same tuning spelled otherwise is the same variant: a hit
    again = json.loads(cli("convert", str(layer), "-o", str(tmp_path / "u.zst"), "--zstd", " clog=13 ,",
                           "--json").stdout)
    assert again["cached"] is True and again["target"] == tuned["target"]
    assert variant_rows(transcoder_home) == 2
    listing = cli("variants", "list").stdout
    assert "zstd-3 clog=13 " in listing and listing.count("zstd-3") == 2


@pytest.mark.parametrize(("value", "message"), [
    ("clog=40", "--zstd clog=40: clog must be 6 to "),
    ("hlog", "--zstd 'hlog': 'hlog' is not NAME=NUMBER"),
    ("ovlog=3", "--zstd ovlog=3: unknown parameter"),
    ("clog=13,clog=14", "--zstd clog: given twice"),
    ("strat=-1", "is not NAME=NUMBER"),
])
def test_bad_zstd_tuning_is_a_usage_error(value: str, message: str, layer: Path, tmp_path: Path,
                                          transcoder_home: Path) -> None:
    out = tmp_path / "x.zst"
    r = cli("convert", str(layer), "-o", str(out), "--zstd", value)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists() and variant_rows(transcoder_home) == 0


def test_stdin_pipe(layer: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.zst"
    with open(layer, "rb") as f:
        r = subprocess.run([sys.executable, "-m", "transcoder", "convert", "-", "-o", str(out), "--json"], stdin=f,
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["diff_id"] == str(Digest.of(TAR))


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[bytes, list[str], str]]:
    good = gz(TAR)
    crc_bad = good[:-8] + (zlib.crc32(TAR) ^ 0xFFFF).to_bytes(4, "little") + good[-4:]
    return {
        "empty": (b"", [], "empty input"),
        "truncated": (good[: len(good) // 2], [], "truncated gzip"),
        "crc": (crc_bad, [], "corrupt gzip"),
        "length": (good[:-4] + b"\x00\x00\x00\x00", [], "corrupt gzip"),
        "garbage": (good + b"\x00junk", [], "garbage after gzip member"),
        "unknown": (b"hello, this is not a layer at all\n" * 40, [], "not gzip, zstd or tar"),
        "expect": (good, ["--expect", "sha256:" + "ab" * 32], "expected sha256:abab"),
        "bomb": (gz(b"\0" * (8 << 20), 9), ["--max-size", "1MiB"], "exceeds --max-size 1048576"),
    }


@pytest.mark.parametrize("case", ["empty", "truncated", "crc", "length", "garbage", "unknown", "expect", "bomb"])
def test_bad_input_one_line_no_output_no_row(case: str, tmp_path: Path, transcoder_home: Path) -> None:
    data, extra, message = _bad_inputs(tmp_path)[case]
    src = tmp_path / f"{case}.gz"
    src.write_bytes(data)
    out = tmp_path / "out" / "result.zst"
    out.parent.mkdir()
    r = cli("convert", str(src), "-o", str(out), *extra)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert message in lines[0] and (str(src) in lines[0] or case == "expect"), lines[0]
    assert list(out.parent.iterdir()) == []  # no output, no leftover temp file
    assert variant_rows(transcoder_home) == 0


def test_unwritable_output(layer: Path, tmp_path: Path, transcoder_home: Path) -> None:
    r = cli("convert", str(layer), "-o", str(tmp_path / "no-such-dir" / "x.zst"))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert "cannot write" in r.stderr and "no-such-dir" in r.stderr
    assert variant_rows(transcoder_home) == 0


def test_missing_source_and_bad_options(tmp_path: Path) -> None:
    r = cli("convert", str(tmp_path / "nope.gz"), "-o", str(tmp_path / "x"))
    assert r.returncode != 0 and "nope.gz" in r.stderr and "No such file" in r.stderr
    r = cli("convert", str(tmp_path / "nope.gz"), "-o", str(tmp_path / "x"), "--level", "42")
    assert r.returncode == 2 and "--level 42" in r.stderr
    r = cli("convert", "x", "-o", "y", "--expect", "md5:abc")
    assert r.returncode == 2 and "--expect" in r.stderr


def test_version_and_help() -> None:
    assert cli("--version").stdout.startswith("transcoder ")
    h = cli("convert", "--help").stdout
    assert "--level" in h and "--expect" in h and "--max-size" in h


def test_variants_commands(layer: Path, tmp_path: Path, transcoder_home: Path) -> None:
    out = tmp_path / "a.zst"
    doc = json.loads(cli("convert", str(layer), "-o", str(out), "--json").stdout)
    listed = json.loads(cli("variants", "list", "--json").stdout)
    assert [v["target"]["digest"] for v in listed] == [doc["target"]["digest"]]
    for d in (doc["source"]["digest"], doc["target"]["digest"]):
        shown = json.loads(cli("variants", "show", d, "--json").stdout)
        assert shown[0]["diffID"] == doc["diff_id"]
        assert any(str(out) in loc for loc in shown[0]["locations"][doc["target"]["digest"]])
    verify = json.loads(cli("variants", "verify", "--json").stdout)
    assert verify[0]["status"] == "ok"
    export = tmp_path / "export.json"
    assert cli("variants", "export", "-o", str(export)).returncode == 0
    other_home = tmp_path / "elsewhere"
    env = {**os.environ, "TRANSCODER_HOME": str(other_home)}
    r = subprocess.run([sys.executable, "-m", "transcoder", "variants", "import", str(export)], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "imported 1" in r.stderr
    r = subprocess.run([sys.executable, "-m", "transcoder", "variants", "list", "--json"], env=env,
                       capture_output=True, text=True)
    assert json.loads(r.stdout)[0]["target"]["digest"] == doc["target"]["digest"]
    # A corrupted stored variant is caught by verify.
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    bad = cli("variants", "verify")
    assert bad.returncode == 1 and "bad" in bad.stdout
    assert cli("variants", "show", "sha256:../etc").returncode == 2


def _convert_worker(args: tuple[str, str, str]) -> int:
    src, out, home = args
    env = {**os.environ, "TRANSCODER_HOME": home}
    return subprocess.run([sys.executable, "-m", "transcoder", "convert", src, "-o", out], env=env,
                          capture_output=True, timeout=120).returncode


def test_table_shared_by_concurrent_processes(tmp_path: Path, transcoder_home: Path) -> None:
    jobs = []
    for i in range(6):
        src = tmp_path / f"l{i}.gz"
        src.write_bytes(gz(make_tar(100 + i, size=200_000, files=4)))
        jobs.append((str(src), str(tmp_path / f"l{i}.zst"), str(transcoder_home)))
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        assert pool.map(_convert_worker, jobs) == [0] * 6
    assert variant_rows(transcoder_home) == 6


# The console script ends with transcoder.cli.exit_now: atexit handlers run and
# the output is flushed, but the interpreter's teardown is skipped.
_EXIT_CHILD = """
import atexit, sys
from pathlib import Path
marker = Path(sys.argv[1])
atexit.register(lambda: marker.write_text("handlers ran"))
sys.argv = ["transcoder", *sys.argv[2:]]
from transcoder.cli import run
run()
"""


def run_console(marker: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _EXIT_CHILD, str(marker), *args], capture_output=True, text=True,
                          timeout=120)


def test_console_script_runs_exit_handlers_and_flushes_its_output(layer: Path, tmp_path: Path) -> None:
    marker, out = tmp_path / "marker", tmp_path / "out.zst"
    r = run_console(marker, "convert", str(layer), "-o", str(out), "--json", "--no-table")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["target"]["digest"] == str(Digest.of(out.read_bytes()))
    assert marker.read_text() == "handlers ran"


def test_console_script_keeps_the_error_exit_code(tmp_path: Path) -> None:
    marker, empty = tmp_path / "marker", tmp_path / "empty.gz"
    empty.write_bytes(b"")
    r = run_console(marker, "convert", str(empty), "-o", str(tmp_path / "out.zst"), "--no-table")
    assert r.returncode == 1 and r.stderr == f"transcoder: {empty}: empty input\n", (r.returncode, r.stderr)
    assert marker.read_text() == "handlers ran"
    assert not (tmp_path / "out.zst").exists()


def test_console_script_exits_141_when_the_reader_has_gone(tmp_path: Path) -> None:
    child = ("import sys\nfrom transcoder.cli import exit_now\nsys.stdin.readline()\n"
             "print('x' * 1000)\nexit_now(0)\n")  # buffered until exit_now flushes it
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.close()  # the reader goes before anything is written
    proc.stdin.write("go\n")
    proc.stdin.close()
    assert proc.wait(timeout=60) == 141
    assert proc.stderr is not None and proc.stderr.read() == ""


def test_exit_waits_for_a_thread_still_at_work(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    child = ("import sys, threading\nfrom pathlib import Path\nfrom transcoder.cli import exit_now\n"
             f"def work():\n    sys.stdin.readline()\n    Path({str(marker)!r}).write_text('finished')\n"
             "threading.Thread(target=work).start()\nprint('started', flush=True)\nexit_now(3)\n")
    proc = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == "started\n"
    proc.stdin.write("go\n")  # only now may the thread finish; exit_now has been called by then or soon
    proc.stdin.close()
    assert proc.wait(timeout=60) == 3
    assert marker.read_text() == "finished"


def test_version_loads_no_command() -> None:
    code = ("import sys\nfrom transcoder.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit as e:\n"
            "    print(e.code, sorted(m for m in ('numpy', 'zstandard', 'sqlite3') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    from transcoder import __version__

    assert r.stdout == f"transcoder {__version__}\n0 []\n", (r.stdout, r.stderr)


def test_help_lists_every_command_without_loading_numpy() -> None:
    code = ("import sys, contextlib, io\nfrom transcoder.cli import COMMANDS, main\nout = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "print(all(c in out.getvalue() for c in COMMANDS), 'numpy' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout == "True False\n", (r.stdout, r.stderr)


def test_blob_convert_skips_modules_it_does_not_need(layer: Path, tmp_path: Path) -> None:
    """Start-up is paid by every conversion, on one core while the other waits: a
    blob conversion (two workers, so the encoder threads run) loads neither
    ``concurrent.futures`` with ``logging`` nor ``tempfile`` with ``shutil`` and the
    compression modules, and its output is still right."""
    out = tmp_path / "out.zst"
    heavy = ("concurrent.futures", "logging", "tempfile", "shutil", "bz2", "lzma", "ssl", "httpx")
    # Only what the conversion loads counts: a site hook may have loaded some already.
    code = ("import sys; before = set(sys.modules); from transcoder.cli import main; "
            f"rc = main(['convert', '{layer}', '-o', '{out}', '--workers', '2', '--no-table']); "
            f"print(rc, sorted(m for m in {heavy!r} if m in sys.modules and m not in before))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split("\n")[-2] == "0 []", (r.stdout, r.stderr)
    assert unzstd(out.read_bytes()) == TAR
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".ingest")]
