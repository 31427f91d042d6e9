"""Hostile and broken image layouts: one clear error naming the image and the
descriptor, a non-zero exit, and the destination left as it was."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.imagegen import make_tar, write_layout
from transcoder.descriptor import ANNOTATION_REF_NAME, OCI_INDEX

TARS = [make_tar(40 + i, size=200_000, files=5) for i in range(2)]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "transcoder", *args], capture_output=True, text=True, timeout=300)


def snapshot(store: Path) -> dict[str, str]:
    """Everything visible in a store: index.json, records, and blob names."""
    out = {}
    for path in sorted(store.rglob("*")):
        if path.is_file() and "ingest" not in path.parts:
            rel = str(path.relative_to(store))
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if not rel.startswith("blobs/") else "blob"
    return out


def manifest_of(layout: Path) -> tuple[dict, Path]:  # type: ignore[type-arg]
    d = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"].split(":")[1]
    path = layout / "blobs" / "sha256" / d
    return json.loads(path.read_text()), path


def layer_path(layout: Path, i: int = 0) -> tuple[Path, dict]:  # type: ignore[type-arg]
    m, _ = manifest_of(layout)
    d = m["layers"][i]
    return layout / "blobs" / "sha256" / d["digest"].split(":")[1], d


def rewrite_manifest(layout: Path, change: Callable[[dict], None]) -> None:  # type: ignore[type-arg]
    """Edit the manifest and re-point index.json at its new digest."""
    m, _old = manifest_of(layout)
    change(m)
    data = json.dumps(m).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    idx = json.loads((layout / "index.json").read_text())
    idx["manifests"][0].update(digest=f"sha256:{digest}", size=len(data))
    (layout / "index.json").write_text(json.dumps(idx))


def missing_blob(layout: Path) -> str:
    layer_path(layout)[0].unlink()
    return "is missing"


def wrong_bytes(layout: Path) -> str:
    path, _ = layer_path(layout)
    data = bytearray(path.read_bytes())
    data[4:8] = b"\x01\x02\x03\x04"  # the gzip header's mtime: still valid gzip, same size, other digest
    path.write_bytes(bytes(data))
    return "source digest is"


def lying_size(layout: Path) -> str:
    rewrite_manifest(layout, lambda m: m["layers"][0].update(size=m["layers"][0]["size"] + 5))
    return "descriptor says"


def traversal_digest(layout: Path) -> str:
    rewrite_manifest(layout, lambda m: m["layers"][0].update(digest="sha256:../../../../etc/passwd"))
    return "invalid digest"


def symlink_out(layout: Path, tmp: Path) -> str:
    path, _ = layer_path(layout)
    outside = tmp / "outside.bin"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)
    return "link out of the layout"


def malformed_json(layout: Path) -> str:
    _, _path = manifest_of(layout)
    data = b"{not json"
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    idx = json.loads((layout / "index.json").read_text())
    idx["manifests"][0].update(digest=f"sha256:{digest}", size=len(data))
    (layout / "index.json").write_text(json.dumps(idx))
    return "malformed JSON"


CASES = ["missing_blob", "wrong_bytes", "lying_size", "traversal_digest", "symlink_out", "malformed_json"]


@pytest.mark.parametrize("case", CASES)
def test_hostile_layout(case: str, tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "src", {"app": TARS})
    store = tmp_path / "store"
    ok = cli("convert", f"oci:{write_layout(tmp_path / 'good', {'good': [make_tar(99, 100_000, 3)]})}:good",
             "--to", f"type=local,dest={store}")
    assert ok.returncode == 0, ok.stderr
    before = snapshot(store)
    fn = globals()[case]
    expected = fn(layout, tmp_path) if case == "symlink_out" else fn(layout)
    r = cli("convert", f"oci:{layout}:app", "--to", f"type=local,dest={store}")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert expected in lines[0] and str(layout) in lines[0], lines[0]
    if case != "traversal_digest":  # the bad digest never became a descriptor, so nothing names it
        assert "sha256:" in lines[0]
    after = snapshot(store)
    assert {k: v for k, v in after.items() if not k.startswith("blobs/")} == \
        {k: v for k, v in before.items() if not k.startswith("blobs/")}
    assert not any(p.name == "passwd" for p in store.rglob("*"))


def test_index_that_refers_to_itself(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "src", {"app": TARS})
    digest = "e" * 64
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": f"sha256:{digest}", "size": 0}]}
    # Content addressing makes a true self-loop impossible to hash, so the
    # loop is detected on the descriptor before the bytes are compared.
    data = json.dumps(doc).encode()
    doc["manifests"][0]["size"] = len(data)
    data = json.dumps(doc).encode()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_INDEX, "digest": f"sha256:{digest}", "size": len(data), "annotations": {ANNOTATION_REF_NAME: "app"}}]}))
    store = tmp_path / "store"
    r = cli("convert", f"oci:{layout}:app", "--to", f"type=local,dest={store}")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert "sha256:" + digest in r.stderr and str(layout) in r.stderr


def test_missing_layout_and_unknown_ref(tmp_path: Path) -> None:
    r = cli("convert", f"oci:{tmp_path / 'nothing'}:x", "--to", f"type=local,dest={tmp_path / 's'}")
    assert r.returncode != 0 and "not an OCI layout" in r.stderr
    layout = write_layout(tmp_path / "src", {"app": TARS[:1]})
    r = cli("convert", f"oci:{layout}:nope", "--to", f"type=local,dest={tmp_path / 's'}")
    assert r.returncode != 0 and "no image named 'nope'" in r.stderr
    # The store did not exist and nothing was written to it: it is not created.
    assert not (tmp_path / "s").exists()


def test_a_store_that_cannot_be_created_fails_before_the_source_is_read(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "src", {"app": TARS[:1]})
    (tmp_path / "file").write_bytes(b"x")
    r = cli("convert", f"oci:{layout}:app", "--to", f"type=local,dest={tmp_path / 'file' / 'store'}")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"type=local,dest={tmp_path / 'file' / 'store'}: {tmp_path / 'file'} is not a directory" in r.stderr
    assert (tmp_path / "file").read_bytes() == b"x"


def test_bad_sink_spec() -> None:
    r = cli("convert", "oci:/tmp:x", "--to", "type=local")
    assert r.returncode == 2 and "type=local requires dest=DIR" in r.stderr
    r = cli("convert", "oci:/tmp:x", "--to", "type=nope,x=1")
    assert r.returncode == 2 and "unknown type 'nope'" in r.stderr
    r = cli("convert", "oci:/tmp:x", "--to", "type=local,dest=/tmp/x,bogus=1")
    assert r.returncode == 2 and "'bogus'" in r.stderr
    assert os.path.exists("/tmp") is True
