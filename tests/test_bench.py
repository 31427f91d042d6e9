"""``transcoder bench``: figures checked against real sizes and independent
tools, the pull-time model against hand-worked cases, outputs (table, JSON,
CSV, PNG, SVG) parsed back, and bad input refused with one line.

No timing is asserted beyond "positive and finite": speed belongs to
benchmarks, not tests.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests import peers
from tests.imagegen import gz, make_tar, write_docker_archive, write_layout
from transcoder.bench import (
    Case,
    break_even,
    load_layers,
    parse_bandwidth,
    parse_codecs,
    parse_levels,
    pull_seconds,
    run_bench,
)
from transcoder.bench.codecs import CODECS
from transcoder.bench.measure import measure
from transcoder.bench.model import fastest
from transcoder.bench.report import busy_warning, table, to_csv
from transcoder.cli import main
from transcoder.codecs import ZstdParams
from transcoder.errors import FormatError, UsageError
from transcoder.transcode import transcode_stream
from transcoder.writers import NullWriter

TAR = make_tar(21, size=400_000, files=16)
TAR2 = make_tar(22, size=250_000, files=10)
LEVELS = ["isal=1", "zlib=6", "zstd=1,3"]


@pytest.fixture
def layer(tmp_path: Path) -> Path:
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(gz(TAR))
    return path


def bench_json(*args: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["bench", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def rows_by_label(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["label"]: r for r in doc["rows"]}


# --- figures against real sizes and independent tools ---------------------------------------------


def test_ratios_are_real_sizes(layer: Path) -> None:
    layers = load_layers([str(layer)])
    codecs = parse_codecs("gzip,zstd")
    result = run_bench(layers, codecs, parse_levels(LEVELS, codecs), repeat=2, workers=2)
    rows = {r.case.label: r for r in result.rows}
    assert set(rows) == {"as published (isal)", "as published (zlib)", "gzip/isal-1", "gzip/zlib-6", "zstd-1", "zstd-3"}
    published = rows["as published (isal)"]
    assert published.size == layer.stat().st_size and published.tar_bytes == len(TAR)
    assert published.ratio == pytest.approx(len(TAR) / layer.stat().st_size)
    # zlib-6 is the same deflate stream as Python's gzip module at level 6 (same zlib), header for header.
    assert rows["gzip/zlib-6"].size == len(gzip.compress(TAR, 6, mtime=0))
    assert rows["gzip/isal-1"].size == len(CODECS["isal"].compress(TAR, 1, 1))
    # zstd sizes are what the transcode pipeline (`convert`) produces with the same parameters.
    for level in (1, 3):
        made = transcode_stream(io.BytesIO(layer.read_bytes()), NullWriter("zstd"), params=ZstdParams(level), workers=2)
        assert rows[f"zstd-{level}"].size == made.target.size
        assert rows[f"zstd-{level}"].ratio == pytest.approx(len(TAR) / made.target.size)


def test_a_zstd_tuning_is_measured_as_convert_makes_it(layer: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = bench_json(str(layer), "--codecs", "zstd", "--levels", "zstd=1,3", "--zstd", "clog=13", "--zstd",
                     "clog=13 ", "--repeat", "1", capsys=capsys)
    rows = rows_by_label(doc)
    assert set(rows) == {"as published (isal)", "as published (zlib)", "zstd-1", "zstd-3", "zstd-1 clog=13",
                         "zstd-3 clog=13"}  # the same tuning twice is measured once
    tuned = ZstdParams(3, tuning=ZstdParams.parse_tuning("clog=13"))
    made = transcode_stream(io.BytesIO(layer.read_bytes()), NullWriter("zstd"), params=tuned, workers=2)
    assert rows["zstd-3 clog=13"]["size"] == made.target.size != rows["zstd-3"]["size"]
    assert rows["zstd-3 clog=13"]["tuning"] == "clog=13" and rows["zstd-3"]["tuning"] is None
    assert rows["zstd-3 clog=13"]["library"] == "libzstd clog=13"
    assert doc["comparison"]["zstd"] == "zstd-3"  # the summary speaks of the default
    gzip_only = bench_json(str(layer), "--codecs", "gzip", "--levels", "zlib=6", "--zstd", "clog=13", "--repeat", "1",
                           capsys=capsys)
    assert [r["label"] for r in gzip_only["rows"] if r["codec"] == "zstd"] == ["zstd-3 clog=13"]


def test_sizes_agree_with_command_line_tools(tmp_path: Path) -> None:
    """gzip -6 and zstd -3 (other deflate and libzstd builds) land within a few percent."""
    gzip_cli, zstd_cli = peers.require_tool("gzip"), peers.require_tool("zstd")
    (tmp_path / "l.tar").write_bytes(TAR)
    gz6 = subprocess.run([gzip_cli, "-6", "-n", "-c", str(tmp_path / "l.tar")], capture_output=True, check=True).stdout
    zs3 = subprocess.run([zstd_cli, "-3", "-q", "-c", str(tmp_path / "l.tar")], capture_output=True, check=True).stdout
    codecs = parse_codecs("zlib,zstd")
    rows = {r.case.label: r for r in run_bench(load_layers([str(tmp_path / "l.tar")]), codecs,
                                               parse_levels(["zlib=6", "zstd=3"], codecs), repeat=1, workers=1).rows}
    assert rows["gzip/zlib-6"].size == pytest.approx(len(gz6), rel=0.03)
    assert rows["zstd-3"].size == pytest.approx(len(zs3), rel=0.05)


@pytest.mark.parametrize("name,level,tool", [("isal", 0, "gzip"), ("isal", 3, "gzip"), ("zlib", 9, "gzip"),
                                             ("zstd", 1, "zstd"), ("zstd", 19, "zstd")])
def test_every_codec_round_trips_through_an_independent_decoder(name: str, level: int, tool: str) -> None:
    blob = CODECS[name].compress(TAR, level, 2)
    out = subprocess.run([peers.require_tool(tool), "-d", "-c"], input=blob, capture_output=True, check=True).stdout
    assert out == TAR
    assert b"".join(CODECS[name].decode(blob)) == TAR


def test_multi_member_published_gzip_is_decoded_whole(tmp_path: Path) -> None:
    path = tmp_path / "pigz-like.gz"
    path.write_bytes(gz(TAR[:100_000]) + gz(TAR[100_000:]))
    doc = run_bench(load_layers([str(path)]), [], {}, repeat=1, workers=1).to_json()
    assert [r["label"] for r in doc["rows"]] == ["as published (isal)", "as published (zlib)"]
    assert all(r["tar_bytes"] == len(TAR) for r in doc["rows"])


def test_timings_are_sane(layer: Path) -> None:
    codecs = parse_codecs("zstd")
    result = run_bench(load_layers([str(layer)]), codecs, {"zstd": [3]}, repeat=3, workers=2)
    for row in result.to_json()["rows"]:
        parts = [row["decode"]] + ([row["compress"]] if row["compress"] else [])
        for stats in parts:
            assert len(stats["samples_wall_s"]) == 3 and len(stats["samples_cpu_s"]) == 3
            assert all(s > 0 and math.isfinite(s) for s in stats["samples_wall_s"])
            assert stats["mb_per_s_min"] <= stats["mb_per_s"] <= stats["mb_per_s_max"]
            assert stats["spread_pct"] >= 0 and stats["cpu_s"] >= 0
            # The median speed is the speed of the median time (odd K).
            assert stats["mb_per_s"] == pytest.approx(len(TAR) / stats["wall_s"] / 1e6)
    assert result.by_label("zstd-3").workers == 2


def test_a_decoder_that_loses_bytes_is_caught(layer: Path) -> None:
    def lossy(blob: bytes) -> Any:
        for piece in CODECS["zstd"].decode(blob):
            yield piece[:-1] if piece else piece

    broken = dataclasses.replace(CODECS["zstd"], decode=lossy)
    with pytest.raises(FormatError, match="does not round-trip"):
        measure(load_layers([str(layer)]), [Case(broken, 3)], repeat=1, workers=1)


def test_several_sources_add_up(tmp_path: Path) -> None:
    (tmp_path / "a.gz").write_bytes(gz(TAR))
    (tmp_path / "b.tar").write_bytes(TAR2)
    layers = load_layers([str(tmp_path / "a.gz"), str(tmp_path / "b.tar")])
    assert [la.published for la in layers] == ["gzip", "tar"]
    codecs = parse_codecs("zstd")
    row = run_bench(layers, codecs, {"zstd": [3]}, repeat=1, workers=1).rows[0]
    # Mixed formats: no "as published" row; sizes are summed over both layers.
    assert row.case.label == "zstd-3" and row.tar_bytes == len(TAR) + len(TAR2)
    expect = sum(len(CODECS["zstd"].compress(t, 3, 1)) for t in (TAR, TAR2))
    assert row.size == expect


def test_level_lists_go_to_the_codecs_that_have_them() -> None:
    codecs = parse_codecs("gzip,zstd")
    assert parse_levels(["gzip=6", "zstd=2-4"], codecs) == {"isal": [], "zlib": [6], "zstd": [2, 3, 4]}
    assert parse_levels(["3,19"], codecs) == {"isal": [3], "zlib": [3], "zstd": [3, 19]}
    assert parse_levels(["all"], codecs)["isal"] == [0, 1, 2, 3]
    assert parse_levels(["zstd=all", "zstd=5"], codecs)["zstd"] == [5]  # later specs win
    assert parse_levels([], codecs)["zlib"] == [1, 6, 9]


# --- pull-time model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text,rate", [("100Mbit", 12.5e6), ("1Gbit", 125e6), ("1Gbps", 125e6), ("10 Mbit", 1.25e6),
                                       ("50MB/s", 50e6), ("12.5MiB/s", 12.5 * 2**20), ("800kbit/s", 1e5)])
def test_parse_bandwidth(text: str, rate: float) -> None:
    assert parse_bandwidth(text) == pytest.approx(rate)


def test_pull_model_by_hand() -> None:
    gzip_cost, zstd_cost = (100e6, 1.0), (60e6, 2.0)  # zstd smaller but (here) slower to decode
    assert pull_seconds(100_000_000, 1.0, 12.5e6) == pytest.approx(9.0)
    assert pull_seconds(100_000_000, 1.0, 12.5e6, "streamed") == pytest.approx(8.0)
    # serial: 100e6/r + 1 = 60e6/r + 2  ->  r = 40e6 B/s (320 Mbit)
    assert break_even(gzip_cost, zstd_cost) == [pytest.approx(40e6, rel=1e-6)]
    # streamed: max(100e6/r, 1) = max(60e6/r, 2)  ->  r = 50e6 B/s
    assert break_even(gzip_cost, zstd_cost, "streamed") == [pytest.approx(50e6, rel=1e-6)]
    costs = {"gzip": gzip_cost, "zstd": zstd_cost}
    assert fastest(costs, 12.5e6) == "zstd" and fastest(costs, 125e6) == "gzip"
    # Smaller and faster to decode: no crossing anywhere.
    assert break_even((100e6, 1.0), (60e6, 0.5)) == []


def test_summary_states_fastest_and_break_even(layer: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = bench_json(str(layer), "--codecs", "zstd", "--levels", "1,3", "--repeat", "1",
                     "--bandwidth", "100Mbit,1Gbit", "--bandwidth", "10Gbit", capsys=capsys)
    rows = rows_by_label(doc)
    assert set(rows["zstd-3"]["pull_s"]) == {"100Mbit", "1Gbit", "10Gbit"}
    assert [bw["rate"] for bw in doc["pull"]["bandwidths"]] == ["100Mbit", "1Gbit", "10Gbit"]
    for bw in doc["pull"]["bandwidths"]:
        times = {label: r["pull_s"][bw["rate"]] for label, r in rows.items()}
        assert bw["fastest"] == min(times, key=lambda k: times[k])
        assert bw["fastest_s"] == pytest.approx(min(times.values()))
    r = rows["zstd-3"]
    assert r["pull_s"]["100Mbit"] == pytest.approx(r["size"] / 12.5e6 + r["decode"]["wall_s"])
    comp = doc["comparison"]
    assert comp["gzip"] == "as published (isal)" and comp["zstd"] == "zstd-3"
    assert comp["smaller_pct"] == pytest.approx((1 - r["size"] / rows["as published (isal)"]["size"]) * 100)
    assert doc["pull"]["break_even"]["gzip"] == "as published (isal)"
    assert set(doc["pull"]["break_even"]["zstd"]) == {"zstd-1", "zstd-3"}


def test_busy_machine_is_flagged() -> None:
    quiet = {"usable_cores": 2, "load_average_1min": [0.2, 2.1]}
    assert busy_warning(quiet) is None
    assert "busy" in (busy_warning({"usable_cores": 2, "load_average_1min": [1.5, 2.0]}) or "")
    assert "busy" in (busy_warning({"usable_cores": 2, "load_average_1min": [0.1, 3.5]}) or "")


# --- outputs ----------------------------------------------------------------------------------------


def test_json_names_the_machine_and_libraries(layer: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import isal
    import zstandard

    doc = bench_json(str(layer), "--levels", "isal=2", "--levels", "zlib=1", "--levels", "zstd=3", "--repeat", "1",
                     capsys=capsys)
    m = doc["machine"]
    assert m["cores"] >= 1 and m["usable_cores"] >= 1 and m["cpu"]
    assert len(m["load_average_1min"]) == 2
    assert m["libraries"]["libzstd"] == ".".join(map(str, zstandard.ZSTD_VERSION))
    assert m["libraries"]["isa-l"] == isal.ISAL_VERSION and m["libraries"]["zlib"] == zlib.ZLIB_RUNTIME_VERSION
    assert doc["settings"]["repeat"] == 1
    assert doc["layers"] == [{"name": str(layer), "published": "gzip", "size": layer.stat().st_size,
                              "tar_bytes": len(TAR), "tar_sha256": __import__("hashlib").sha256(TAR).hexdigest()}]


def test_table_and_csv(layer: Path, capsys: pytest.CaptureFixture[str]) -> None:
    codecs = parse_codecs("gzip,zstd")
    result = run_bench(load_layers([str(layer)]), codecs, parse_levels(LEVELS, codecs), repeat=1, workers=1,
                       bandwidths=[parse_bandwidth("1Gbit")])
    doc = result.to_json()
    text = table(doc)
    assert text.startswith("machine: ") and "libzstd" in text and "ISA-L" in text and "zlib" in text
    assert "pull 1Gbit s" in text and "published" in text
    assert "zstd-3 is " in text and "fastest to pull at 1Gbit" in text
    rows = list(csv.DictReader(io.StringIO(to_csv(doc))))
    assert [r["label"] for r in rows] == [r["label"] for r in doc["rows"]]
    for got, want in zip(rows, doc["rows"], strict=True):
        assert int(got["size"]) == want["size"]
        assert float(got["decode_mb_per_s"]) == pytest.approx(want["decode"]["mb_per_s"])
        assert float(got["pull_s_1Gbit"]) == pytest.approx(want["pull_s"]["1Gbit"])
        assert (got["compress_wall_s"] == "") == want["published"]


def test_plot_png_is_a_valid_image(layer: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from matplotlib.image import imread

    out = tmp_path / "bench.png"
    bench_json(str(layer), "--levels", "isal=1", "--levels", "zlib=6", "--levels", "zstd=1,3", "--repeat", "1",
               "--plot", str(out), capsys=capsys)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 100_000
    pixels = imread(str(out))
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bench-")] == []


def test_plot_svg_parses_as_xml(layer: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.svg"
    bench_json(str(layer), "--codecs", "zstd", "--levels", "3", "--repeat", "1", "--plot", str(out), "--zstd", "clog=13",
               "--zstd", "hlog=16", capsys=capsys)
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    # a series per library: zstd, and each tuning in a style of its own
    assert {"tab:red", "tab:orange", "tab:purple"} <= set(_styles_of(root))


def _styles_of(root: ET.Element) -> list[str]:
    """The named matplotlib colours a plot's markers were drawn in."""
    from matplotlib import colors

    fills = {el.get("style", "") for el in root.iter() if "fill: #" in el.get("style", "")}
    hexes = {part.split("fill: ")[1][:7] for part in fills}
    return [name for name in ("tab:red", "tab:orange", "tab:purple", "tab:green") if colors.to_hex(name) in hexes]


# --- images -----------------------------------------------------------------------------------------


def test_oci_layout_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_layout(tmp_path / "layout", {"app": [TAR, TAR2]})
    doc = bench_json(f"oci:{root}:app", "--codecs", "zstd", "--levels", "3", "--repeat", "1", capsys=capsys)
    assert [la["tar_bytes"] for la in doc["layers"]] == [len(TAR), len(TAR2)]
    published = rows_by_label(doc)["as published (isal)"]
    assert published["size"] == len(gz(TAR)) + len(gz(TAR2))
    assert published["ratio"] == pytest.approx((len(TAR) + len(TAR2)) / published["size"])


def test_index_picks_the_platform(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_layout(tmp_path / "layout", {"multi": {"amd64": [TAR], "arm64": [TAR2]}})
    doc = bench_json(f"oci:{root}:multi", "--platform", "linux/arm64", "--codecs", "zstd", "--levels", "1",
                     "--repeat", "1", capsys=capsys)
    assert [la["tar_bytes"] for la in doc["layers"]] == [len(TAR2)]
    assert main(["bench", f"oci:{root}:multi", "--platform", "linux/s390x", "--codecs", "zstd", "--levels", "1"]) == 1
    assert "no manifest for linux/s390x" in capsys.readouterr().err


def test_corrupt_layer_in_layout_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_layout(tmp_path / "layout", {"app": [TAR]})
    blob = root / "blobs" / "sha256" / __import__("hashlib").sha256(gz(TAR)).hexdigest()
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert main(["bench", f"oci:{root}:app", "--codecs", "zstd", "--levels", "1"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hashes to sha256:" in err


def test_docker_archive_with_plain_tar_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = write_docker_archive(tmp_path / "image.tar", [TAR])
    doc = bench_json(f"docker-archive:{archive}", "--levels", "zlib=6", "--levels", "isal=1", "--levels", "zstd=3",
                     "--repeat", "1", capsys=capsys)
    assert not any(r["published"] for r in doc["rows"])  # uncompressed layers: nothing to decode as published
    assert doc["comparison"]["gzip"] == "gzip/zlib-6"


@pytest.mark.peers
def test_registry_image(tmp_path: Path, registry: peers.Registry, skopeo: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_layout(tmp_path / "layout", {"app": [TAR, TAR2]})
    ref = f"{registry.host}/bench/app:1"
    subprocess.run([skopeo, "copy", "--dest-tls-verify=false", f"oci:{root}:app", f"docker://{ref}"],
                   check=True, capture_output=True, timeout=120)
    doc = bench_json(f"docker://{ref}", "--codecs", "zstd", "--levels", "3", "--repeat", "1", capsys=capsys)
    hashlib = __import__("hashlib")
    assert [la["tar_sha256"] for la in doc["layers"]] == [hashlib.sha256(TAR).hexdigest(), hashlib.sha256(TAR2).hexdigest()]
    assert rows_by_label(doc)["as published (isal)"]["size"] == len(gz(TAR)) + len(gz(TAR2))


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["--codecs", "brotli"], "--codecs 'brotli': unknown codec"),
    (["--levels", "zstd=20"], "level 20 is out of range for zstd (zstd 1-19)"),
    (["--levels", "isal=7"], "level 7 is out of range for isal (isal 0-3)"),
    (["--levels", "gzip=12"], "level 12 is out of range for any of isal, zlib (isal 0-3, zlib 1-9)"),
    (["--levels", "25"], "level 25 is out of range for any of isal, zlib, zstd"),
    (["--levels", "fast"], "'fast' is not a level"),
    (["--codecs", "zstd", "--levels", "zlib=6"], "codec 'zlib' is not among --codecs"),
    (["--bandwidth", "fast"], "--bandwidth 'fast'"),
    (["--repeat", "0"], "--repeat 0: must be at least 1"),
    (["--workers", "0"], "--workers 0: must be at least 1"),
    (["--zstd", "clog=99"], "--zstd clog=99: clog must be 6 to"),
    (["--zstd", ","], "--zstd ',': no parameters given"),
    (["--plot", "out.jpg"], "must end in .png or .svg"),
    (["--plot", "no/such/dir/out.png"], "does not exist"),
])
def test_bad_options(layer: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(layer), *args]) == UsageError.exit_code
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and needle in captured.err, captured.err


def test_missing_matplotlib_gives_the_install_hint(layer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError, as when not installed
    assert main(["bench", str(layer), "--plot", str(tmp_path / "p.png")]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'transcoder[plot]'" in err
    assert not (tmp_path / "p.png").exists()


def test_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    truncated = tmp_path / "cut.gz"
    truncated.write_bytes(gz(TAR)[:5000])
    for path, needle in [(tmp_path / "missing.gz", "No such file or directory"),
                         (junk, "not gzip, zstd or tar"), (truncated, "truncated gzip")]:
        assert main(["bench", str(path), "--codecs", "zstd", "--levels", "1"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"transcoder: {path}") and needle in err, err


def test_command_line_error_is_one_line_and_writes_no_plot(tmp_path: Path) -> None:
    plot = tmp_path / "p.png"
    r = subprocess.run([sys.executable, "-m", "transcoder", "bench", str(tmp_path / "missing.gz"), "--plot", str(plot)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == f"transcoder: {tmp_path / 'missing.gz'}: No such file or directory\n"
    assert list(tmp_path.iterdir()) == []
