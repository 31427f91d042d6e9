"""SIGKILL at exact steps of a conversion: nothing half-done becomes visible,
a rerun succeeds, and gc removes what the crash left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.imagegen import gz, make_tar, write_layout
from transcoder.check import check_store
from transcoder.variants import VariantTable

POINTS = ["decode:1", "decode:6", "blob-committed:1", "blob-committed:4", "record-written:1", "record-written:2",
          "index-write:1"]


def convert(layout: Path, name: str, store: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "transcoder", "convert", f"oci:{layout}:{name}", "--to",
                           f"type=local,dest={store}", "--json", "--jobs", "1"], env=env, capture_output=True,
                          text=True, timeout=300)


def table_consistent(home: Path, store: Path) -> None:
    """Every variant the table places in the store is really there."""
    table = VariantTable(home / "variants.db")
    loc = f"local:{store.resolve()}"
    for rec in table.variants():
        if loc in table.locations(rec.target.digest):
            path = store / "blobs" / "sha256" / rec.target.digest.hex
            assert path.stat().st_size == rec.target.size


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_step(point: str, tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "src", {
        "base": [make_tar(300, size=300_000, files=6)],
        "app": [make_tar(301 + i, size=2_500_000, files=20) for i in range(3)],
    })
    store = tmp_path / "store"
    home = tmp_path / "home"
    env = {**os.environ, "TRANSCODER_HOME": str(home)}
    assert convert(layout, "base", store, env).returncode == 0
    before = json.loads((store / "index.json").read_text())

    crashed = convert(layout, "app", store, {**env, "TRANSCODER_CRASHPOINT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    report = check_store(store, deep=True)
    assert report.ok, report.problems
    assert json.loads((store / "index.json").read_text()) == before  # the image is not half there
    table_consistent(home, store)
    leftovers = list((store / ".transcoder" / "ingest").iterdir())
    if point.startswith("decode"):
        assert leftovers  # the partial blob stayed in the ingest area, invisible

    rerun = convert(layout, "app", store, env)
    assert rerun.returncode == 0, rerun.stderr
    assert check_store(store, deep=True).ok
    table_consistent(home, store)
    gc = subprocess.run([sys.executable, "-m", "transcoder", "gc", str(store), "--grace", "0", "--json"],
                        capture_output=True, text=True, env=env, check=True)
    assert json.loads(gc.stdout)["removed_ingest"] == len(leftovers)
    assert not list((store / ".transcoder" / "ingest").iterdir())
    final = check_store(store, deep=True)
    assert final.ok and final.images == 2 and final.variants == 4


NETWORK_POINTS = ["decode:3", "layer-done:1", "layer-done:2", "record-written:1", "record-written:3"]


def check_sink_consistent(spec: str) -> int:
    """Through the sink's own API: every image reaches only present blobs, every variant exists."""
    from transcoder.images.model import Index, parse
    from transcoder.sinks import open_sink

    sink = open_sink(spec)
    try:
        for rec in sink.images().values():
            todo = [rec.root]
            while todo:
                desc = todo.pop()
                assert sink.stat_blob(desc.digest) == desc.size, f"{rec.name}: {desc.digest} missing"
                if desc.media_type.endswith("+json") and "config" not in desc.media_type:
                    doc = parse(sink.get_manifest(desc), desc, rec.name)
                    todo += list(doc.manifests) if isinstance(doc, Index) else [doc.config, *doc.layers]
        return len(sink.images())
    finally:
        sink.close()


@pytest.mark.peers
@pytest.mark.parametrize("point", NETWORK_POINTS)
def test_kill_while_exporting_to_s3(point: str, tmp_path: Path, moto_s3: object) -> None:
    from tests.sink_contract import S3_KEY_ID, S3_REGION, new_bucket
    from transcoder.digest import Digest
    from transcoder.sinks import open_sink

    url = moto_s3.endpoint_url  # type: ignore[attr-defined]
    spec = (f"type=s3,bucket={new_bucket(url)},region={S3_REGION},endpoint_url={url},prefix=crash,"
            f"access_key_id={S3_KEY_ID},secret_access_key=crash-test")
    tars = [make_tar(320 + i, size=2_000_000, files=15) for i in range(3)]
    layout = write_layout(tmp_path / "src", {"base": [make_tar(319, 200_000, 4)], "app": tars})
    env = {**os.environ, "TRANSCODER_HOME": str(tmp_path / "home")}

    def run(name: str, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "transcoder", "convert", f"oci:{layout}:{name}", "--to", spec,
                               "--jobs", "1", "--json"], env={**env, **extra}, capture_output=True, text=True,
                              timeout=300)

    assert run("base", {}).returncode == 0
    crashed = run("app", {"TRANSCODER_CRASHPOINT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert check_sink_consistent(spec) == 1  # "app" is not visible, half or whole
    sink = open_sink(spec)
    try:
        for tar in tars:  # whatever variant records were written point at complete blobs
            for rec in sink.find_variants(Digest.of(gz(tar))):
                assert sink.stat_blob(rec.target.digest) == rec.target.size
    finally:
        sink.close()
    rerun = run("app", {})
    assert rerun.returncode == 0, rerun.stderr
    assert check_sink_consistent(spec) == 2
    out = json.loads(rerun.stdout)
    sink = open_sink(spec)
    try:
        for layer in out["layers"]:
            recs = sink.find_variants(Digest.parse(layer["source"]["digest"]))
            assert [r.target.digest.value for r in recs] == [layer["target"]["digest"]]
    finally:
        sink.close()
