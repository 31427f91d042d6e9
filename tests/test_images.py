"""Whole images into a local store: structure, real skopeo and containerd,
concurrency, gc, and hostile layouts."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.imagegen import make_tar, unzstd, write_docker_archive, write_layout
from transcoder.check import check_store
from transcoder.descriptor import ANNOTATION_REF_NAME, ANNOTATION_ZSTD, OCI_LAYER_ZSTD, OCI_MANIFEST
from transcoder.digest import Digest

TARS = [make_tar(i, size=400_000, files=10) for i in range(1, 6)]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "transcoder", *args], capture_output=True, text=True,
                          env=env or os.environ.copy(), timeout=300)


def blob(store: Path, digest: str) -> bytes:
    return (store / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def doc(store: Path, digest: str) -> Any:
    return json.loads(blob(store, digest))


def index(store: Path) -> list[dict[str, Any]]:
    return json.loads((store / "index.json").read_text())["manifests"]


def entry(store: Path, name: str) -> dict[str, Any]:
    return next(e for e in index(store) if e["annotations"][ANNOTATION_REF_NAME] == name)


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return write_layout(tmp_path / "src", {
        "app": [TARS[0], TARS[1], TARS[0]],  # the same layer twice
        "multi": {"amd64": [TARS[2]], "arm64": [TARS[3]]},
    })


def convert(layout: Path, name: str, store: Path, *extra: str) -> dict[str, Any]:
    r = cli("convert", f"oci:{layout}:{name}", "--to", f"type=local,dest={store}", "--json", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_add_mode_structure(layout: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = convert(layout, "app", store)
    assert result["converted"] == 2 and len(result["layers"]) == 2  # duplicate layer done once
    assert result["bytes_before"] > 0 and result["bytes_after"] > 0
    root = doc(store, entry(store, "app")["digest"])
    gzip_desc, zstd_desc = root["manifests"]
    assert ANNOTATION_ZSTD not in gzip_desc.get("annotations", {})
    assert zstd_desc["annotations"][ANNOTATION_ZSTD] == "true"
    assert gzip_desc["platform"] == zstd_desc["platform"] == {"architecture": "amd64", "os": "linux"}
    original = blob(layout, json.loads((layout / "index.json").read_text())["manifests"][0]["digest"])
    assert blob(store, gzip_desc["digest"]) == original  # canonical manifest byte for byte
    gzm, zm = json.loads(original), doc(store, zstd_desc["digest"])
    assert zm["mediaType"] == OCI_MANIFEST and zm["config"]["digest"] == gzm["config"]["digest"]
    assert zm["annotations"] == {"test.unknown": "kept"}
    for g, z, tar in zip(gzm["layers"], zm["layers"], [TARS[0], TARS[1], TARS[0]], strict=True):
        assert z["mediaType"] == OCI_LAYER_ZSTD and z["annotations"] == g["annotations"]
        data = blob(store, z["digest"])
        assert len(data) == z["size"] and str(Digest.of(data)) == z["digest"]
        assert unzstd(data) == tar
        assert blob(store, g["digest"]) == blob(layout, g["digest"])  # gzip kept


def test_multi_platform_index_and_filter(layout: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    convert(layout, "multi", store)
    root = doc(store, entry(store, "multi")["digest"])
    assert root["annotations"] == {"test.index": "kept"}
    plats = [(m["platform"]["architecture"], m.get("annotations", {}).get(ANNOTATION_ZSTD)) for m in root["manifests"]]
    assert plats == [("amd64", None), ("amd64", "true"), ("arm64", None), ("arm64", "true")]
    only = tmp_path / "only"
    convert(layout, "multi", only, "--platform", "linux/arm64", "--tag", "arm")
    assert [m["platform"]["architecture"] for m in doc(only, entry(only, "arm")["digest"])["manifests"]] == ["arm64"] * 2


def test_the_platforms_of_an_index_are_read_at_once(tmp_path: Path) -> None:
    """Each platform of an index is a manifest and a config to fetch, round
    trips that need not wait for each other: the source below gives out a
    platform's manifest only once all three are being asked for (a barrier,
    not a clock), and the plan keeps the index's order."""
    import threading

    from transcoder.images.plan import plan
    from transcoder.images.source import open_source

    src = write_layout(tmp_path / "src", {"multi": {"amd64": [TARS[0]], "arm64": [TARS[1]], "s390x": [TARS[2]]}})
    source = open_source(f"oci:{src}:multi")
    together = threading.Barrier(3, timeout=10)
    get_manifest = source.get_manifest

    def manifest_when_all_are_asked(desc: Any) -> bytes:
        if desc.platform is not None:  # a platform's manifest, not the index
            together.wait()
        return get_manifest(desc)

    source.get_manifest = manifest_when_all_are_asked  # type: ignore[method-assign]
    p = plan(source, None)
    assert [m.desc.platform["architecture"] for m in p.manifests] == ["amd64", "arm64", "s390x"]  # type: ignore[index]


def test_the_platforms_manifests_are_pushed_at_once_and_the_index_last(tmp_path: Path) -> None:
    """Each platform's manifest names only blobs already stored, so they go
    out together: the sink below takes one only once all three are being
    pushed (a barrier, not a clock), and the index only after them."""
    import threading

    from transcoder.images.convert import ConvertOptions, convert_image
    from transcoder.images.source import open_source
    from transcoder.sinks import open_sink

    src = write_layout(tmp_path / "src", {"multi": {"amd64": [TARS[0]], "arm64": [TARS[1]], "s390x": [TARS[2]]}})
    sink = open_sink(f"type=local,dest={tmp_path / 'store'}")
    together = threading.Barrier(3, timeout=10)
    put_manifest = sink.put_manifest
    pushed: list[str] = []

    def manifest_when_all_are_pushed(data: bytes, media_type: str) -> Any:
        if media_type == OCI_MANIFEST:
            together.wait()
        pushed.append(media_type)
        return put_manifest(data, media_type)

    sink.put_manifest = manifest_when_all_are_pushed  # type: ignore[method-assign]
    result = convert_image(open_source(f"oci:{src}:multi"), sink, ConvertOptions(mode="replace"))
    assert pushed == [OCI_MANIFEST] * 3 + [result.root.media_type] and result.root.media_type != OCI_MANIFEST


def test_replace_mode_and_tag(layout: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    convert(layout, "app", store, "--mode", "replace", "--tag", "app-zstd")
    root = entry(store, "app-zstd")
    assert root["mediaType"] == OCI_MANIFEST
    assert all(x["mediaType"] == OCI_LAYER_ZSTD for x in doc(store, root["digest"])["layers"])


def test_docker_schema2_becomes_oci(tmp_path: Path) -> None:
    from tests.imagegen import write_manifest

    src = tmp_path / "src"
    src.mkdir()
    (src / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    data, mt = write_manifest(src, [TARS[4]], docker=True)
    (src / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": mt, "digest": str(Digest.of(data)), "size": len(data), "annotations": {ANNOTATION_REF_NAME: "d"}}]}))
    store = tmp_path / "store"
    convert(src, "d", store)
    gzip_desc, zstd_desc = doc(store, entry(store, "d")["digest"])["manifests"]
    assert gzip_desc["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    zm = doc(store, zstd_desc["digest"])
    assert zm["mediaType"] == OCI_MANIFEST and zm["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"


def test_docker_archive_classic_and_oci_forms(tmp_path: Path) -> None:
    archive = write_docker_archive(tmp_path / "classic.tar", [TARS[0], TARS[1]])
    store = tmp_path / "store"
    r = cli("convert", f"docker-archive:{archive}", "--to", f"type=local,dest={store}", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["name"] == "example/app:1.0" and out["converted"] == 2
    # The newer form: an OCI layout inside the archive.
    layout = write_layout(tmp_path / "inner", {"latest": [TARS[2]]})
    newer = tmp_path / "newer.tar"
    with tarfile.open(newer, "w") as tar:
        for p in ("oci-layout", "index.json", "blobs"):
            tar.add(layout / p, arcname=p)
        tar.addfile(tarfile.TarInfo("manifest.json"))
    r = cli("convert", f"docker-archive:{newer}", "--to", f"type=local,dest={store}", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "latest"


def test_records_travel_with_the_directory(layout: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    convert(layout, "app", store)
    moved = tmp_path / "elsewhere"
    shutil.copytree(store, moved)
    env = {**os.environ, "TRANSCODER_HOME": str(tmp_path / "fresh-home")}  # no local table
    r = cli("convert", f"oci:{layout}:app", "--to", f"type=local,dest={moved}", "--json", env=env)
    out = json.loads(r.stdout)
    assert out["converted"] == 0 and out["hits"] == 2


def test_tuned_variants_travel_and_match_only_the_same_tuning(layout: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = convert(layout, "app", store, "--zstd", "clog=13")
    assert first["converted"] == 2 and first["params"]["tuning"] == {"clog": 13}
    zstd_manifest = next(d for d in doc(store, entry(store, "app")["digest"])["manifests"]
                         if d.get("annotations", {}).get(ANNOTATION_ZSTD) == "true")
    layers = doc(store, zstd_manifest["digest"])["layers"]
    assert [unzstd(blob(store, d["digest"])) for d in layers] == [TARS[0], TARS[1], TARS[0]]
    fresh = {**os.environ, "TRANSCODER_HOME": str(tmp_path / "fresh-home")}  # another machine: the store's records
    same = json.loads(cli("convert", f"oci:{layout}:app", "--to", f"type=local,dest={store}", "--json",
                          "--zstd", "clog=13", env=fresh).stdout)
    assert same["converted"] == 0 and same["hits"] == 2
    plain = json.loads(cli("convert", f"oci:{layout}:app", "--to", f"type=local,dest={store}", "--json",
                           env=fresh).stdout)
    assert plain["converted"] == 2 and "tuning" not in plain["params"]


def test_skopeo_reads_and_copies_the_store(layout: Path, tmp_path: Path, skopeo: str) -> None:
    store = tmp_path / "store"
    convert(layout, "multi", store)
    raw = subprocess.run([skopeo, "inspect", "--raw", f"oci:{store}:multi"], capture_output=True, text=True, check=True)
    assert json.loads(raw.stdout)["manifests"][1]["annotations"][ANNOTATION_ZSTD] == "true"
    copy = subprocess.run([skopeo, "copy", "--all", f"oci:{store}:multi", f"oci:{tmp_path / 'copy'}:m"],
                          capture_output=True, text=True)
    assert copy.returncode == 0, copy.stderr
    cfg = subprocess.run([skopeo, "inspect", "--config", "--override-arch", "arm64", f"oci:{store}:multi"],
                         capture_output=True, text=True, check=True)
    assert json.loads(cfg.stdout)["rootfs"]["diff_ids"] == [str(Digest.of(TARS[3]))]


def _layout_tar(store: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        for p in ("oci-layout", "index.json", "blobs"):
            tar.add(store / p, arcname=p)
    return dest


def test_containerd_unpacks_zstd_and_checks_diffids(layout: Path, tmp_path: Path, containerd: Any) -> None:
    store = tmp_path / "store"
    convert(layout, "app", store, "--mode", "replace")
    ns = containerd.fresh_namespace()
    containerd.ctr("-n", ns, "images", "import", "--base-name", "local/app", "--snapshotter", "native",
                   str(_layout_tar(store, tmp_path / "img.tar")))
    check = containerd.ctr("-n", ns, "images", "check", "--snapshotter", "native").stdout
    assert "complete" in check and "true" in check.lower(), check
    content = containerd.ctr("-n", ns, "content", "ls").stdout
    for tar in (TARS[0], TARS[1]):  # containerd decompressed the zstd layers and found each diffID
        assert f"containerd.io/uncompressed={Digest.of(tar)}" in content


def _convert_one(args: tuple[str, str, str]) -> int:
    layout, name, store = args
    return subprocess.run([sys.executable, "-m", "transcoder", "convert", f"oci:{layout}:{name}", "--to",
                           f"type=local,dest={store}"], capture_output=True, timeout=300).returncode


def test_two_processes_into_one_store(tmp_path: Path) -> None:
    names = {f"img{i}": [make_tar(200 + i, size=300_000, files=6)] for i in range(6)}
    layout = write_layout(tmp_path / "src", names)
    store = tmp_path / "store"
    jobs = [(str(layout), n, str(store)) for n in names] + [(str(layout), "img0", str(store))]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_convert_one, jobs) == [0] * len(jobs)
    assert sorted(e["annotations"][ANNOTATION_REF_NAME] for e in index(store)) == sorted(names)
    assert not list((store / ".transcoder" / "ingest").iterdir())


def test_creating_a_store_never_replaces_what_another_process_wrote(tmp_path: Path) -> None:
    """A converter creates the store at its first write, around an
    index.json another converter wrote after this one opened the store."""
    from transcoder.sinks.local import LocalSink

    store = tmp_path / "store"
    late = LocalSink(store)  # store absent: nothing is created yet
    assert not store.exists() and late.images() == {}
    store.mkdir()
    entry = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 1}
    (store / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    before = (store / "index.json").read_bytes()
    late.blob_writer(OCI_MANIFEST).abort()  # the first write creates the layout around it
    assert (store / "index.json").read_bytes() == before
    assert json.loads((store / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert sorted(p.name for p in store.iterdir()) == [".transcoder", "blobs", "index.json", "oci-layout"]


def test_gc_removes_garbage_and_evicts_lru(layout: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    convert(layout, "app", store)
    time.sleep(0.05)
    convert(layout, "multi", store)
    junk = store / "blobs" / "sha256" / ("0" * 64)
    junk.write_bytes(b"orphan")
    stale = store / ".transcoder" / "ingest" / ".blob.crashed.ingest"
    stale.write_bytes(b"half")
    dry = json.loads(cli("gc", str(store), "--dry-run", "--grace", "0", "--json").stdout)
    assert dry["removed_blobs"] == ["sha256:" + "0" * 64] and junk.exists() and stale.exists()
    r = json.loads(cli("gc", str(store), "--grace", "0", "--json").stdout)
    assert r["removed_ingest"] == 1 and not junk.exists() and not stale.exists()
    size_all = r["kept_bytes"]
    # Budget for about one image: the least recently used (app) goes.
    r = json.loads(cli("gc", str(store), "--grace", "0", "--max-size", str(size_all - 1), "--json").stdout)
    assert r["evicted_images"] == ["app"] and [e["annotations"][ANNOTATION_REF_NAME] for e in index(store)] == ["multi"]
    assert r["removed_records"] >= 2
    assert check_store(store, deep=True).ok
    # A store that does not exist is an error, and gc does not create it.
    for target in (str(tmp_path / "none"), f"type=local,dest={tmp_path / 'none'}"):
        r2 = cli("gc", target)
        assert r2.returncode != 0 and "not an OCI layout" in r2.stderr and not (tmp_path / "none").exists(), r2.stderr


def test_restore_from_local_sink(layout: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    convert(layout, "multi", store)
    for comp in ("zstd", "gzip"):
        out = tmp_path / f"restored-{comp}"
        r = cli("restore", f"type=local,dest={store}", "multi", "-o", f"oci:{out}", "--compression", comp, "--json")
        assert r.returncode == 0, r.stderr
        root = doc(out, entry(out, "multi")["digest"])
        layers = [x["mediaType"] for m in root["manifests"] for x in doc(out, m["digest"])["layers"]]
        assert all(t.endswith(comp) for t in layers) and len(root["manifests"]) == 2


def test_layer_admission_runs_big_layers_alone_and_small_ones_together() -> None:
    """A layer big enough to busy every core runs beside no other until its
    source is read (``ease``); then the next layer, big or small, starts during
    its tail; small layers overlap; plan order is kept."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from transcoder.codecs.constants import FRAME_SIZE
    from transcoder.descriptor import OCI_LAYER_GZIP, Descriptor
    from transcoder.images.schedule import Admission, weight

    def layer(i: int, size: int) -> Descriptor:
        return Descriptor(OCI_LAYER_GZIP, Digest.of(bytes([i])), size)

    workers, jobs = 2, 2
    big, small = workers * FRAME_SIZE, workers * FRAME_SIZE - 1
    plan = [layer(0, small), layer(1, small), layer(2, big), layer(3, small), layer(4, big), layer(5, small), layer(6, small)]
    assert [weight(x, workers, jobs) for x in plan] == [1, 1, 2, 1, 2, 1, 1]
    admission = Admission(jobs)
    running: set[int] = set()
    eased: set[int] = set()
    seen_at_start: list[tuple[int, frozenset[int], frozenset[int]]] = []
    lock = threading.Lock()

    def work(x: Descriptor) -> Any:
        i = plan.index(x)
        with lock:
            seen_at_start.append((i, frozenset(running), frozenset(eased)))
            running.add(i)
        time.sleep(0.05)
        if x.size == big:  # its source is read: the rest may overlap the next layer
            with lock:
                eased.add(i)
            admission.ease(x)
            time.sleep(0.05)
        with lock:
            running.discard(i)
        return i

    with ThreadPoolExecutor(jobs) as pool:
        results = [pool.submit(admission.run, i, weight(x, workers, jobs), work, x) for i, x in enumerate(plan)]
        assert [f.result() for f in results] == list(range(len(plan)))
    assert [i for i, _, _ in seen_at_start] == list(range(len(plan)))
    for i, others, eased_then in seen_at_start:
        if plan[i].size == big:
            assert others <= eased_then, f"big layer {i} started beside uneased {set(others - eased_then)}"
        assert all(j in eased_then for j in others if plan[j].size == big), f"layer {i} started beside a big one"
    assert any(others for _, others, _ in seen_at_start), "no two layers ever overlapped"
    assert any(j in (2, 4) for _, others, _ in seen_at_start for j in others), "an eased big layer was never overlapped"


def test_layer_admission_starts_a_big_layer_during_the_tail_of_another() -> None:
    """Two big layers: the second starts once the first has read its source,
    while the first still compresses and commits (no idle core in between)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from transcoder.codecs.constants import FRAME_SIZE
    from transcoder.descriptor import OCI_LAYER_GZIP, Descriptor
    from transcoder.images.schedule import Admission, weight

    big = [Descriptor(OCI_LAYER_GZIP, Digest.of(bytes([i])), 2 * FRAME_SIZE) for i in range(2)]
    admission = Admission(2)
    in_tail = threading.Event()
    started_during_tail: list[bool] = []

    def work(x: Descriptor) -> int:
        started_during_tail.append(in_tail.is_set())
        if x is big[0]:
            admission.ease(x)
            in_tail.set()
            time.sleep(0.2)  # the tail: last frames, commit
            in_tail.clear()
        return big.index(x)

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(admission.run, i, weight(x, 2, 2), work, x) for i, x in enumerate(big)]
        assert [f.result(timeout=10) for f in futures] == [0, 1]
    assert started_during_tail == [False, True]


def test_layer_admission_lets_small_layers_wait_on_round_trips_but_bounds_big_ones() -> None:
    """With more threads than slots, small layers past the end of their
    source (waiting on uploads) do not hold the next ones back, while big
    layers, whose tails hold frames, stay at most two in flight."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from transcoder.codecs.constants import FRAME_SIZE
    from transcoder.descriptor import OCI_LAYER_GZIP, Descriptor
    from transcoder.images.schedule import Admission, is_big, weight

    small = [Descriptor(OCI_LAYER_GZIP, Digest.of(bytes([i])), 1000) for i in range(4)]
    big = [Descriptor(OCI_LAYER_GZIP, Digest.of(bytes([10 + i])), 2 * FRAME_SIZE) for i in range(4)]
    admission = Admission(2)
    lock = threading.Lock()
    in_flight: dict[bool, int] = {False: 0, True: 0}
    most: dict[bool, int] = {False: 0, True: 0}
    all_small = threading.Barrier(4, timeout=10)  # every small layer in its tail at once

    def work(x: Descriptor) -> int:
        kind = is_big(x, 2)
        with lock:
            in_flight[kind] += 1
            most[kind] = max(most[kind], in_flight[kind])
        admission.ease(x)  # its source is read: the slots go back
        if kind:
            time.sleep(0.05)  # the tail: last frames, commit
        else:
            all_small.wait()  # the tail: round trips
        with lock:
            in_flight[kind] -= 1
        return 0

    plan = small + big
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(admission.run, i, weight(x, 2, 2), work, x, big=is_big(x, 2))
                   for i, x in enumerate(plan)]
        assert [f.result(timeout=20) for f in futures] == [0] * len(plan)
    assert most == {False: 4, True: 2}


def test_local_image_convert_does_not_load_the_network_stack(layout: Path, tmp_path: Path) -> None:
    """Start-up is paid per run: a local image conversion imports no HTTP client,
    nor ``concurrent.futures`` and the ``logging`` it brings (transcoder.parallel)."""
    code = ("import sys; from transcoder.cli import main; "
            f"rc = main(['convert', 'oci:{layout}:app', '--to', 'type=local,dest={tmp_path / 'out'}', '--no-table']); "
            "print(rc, sorted(m for m in ('httpx', 'httpcore', 'numpy', 'ssl', 'concurrent.futures', 'logging')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[-2] == "0 []", out


def test_registry_convert_skips_the_http_stack_extras(tmp_path: Path) -> None:
    """A registry conversion loads httpx, but not trio or httpx's own command line
    (start-up paid on one core while the other waits), and still works: here it
    reaches the network layer and fails with a one-line connection error."""
    code = ("import sys; from transcoder.cli import main; "
            f"rc = main(['convert', 'docker://127.0.0.1:9/none/such:tag', '--to', 'type=local,dest={tmp_path / 'out'}']); "
            "print(rc, [m for m in ('httpx', 'trio', 'click', 'pygments') if sys.modules.get(m) is not None])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rc, loaded = p.stdout.split("\n")[-2].split(" ", 1)
    assert loaded == "['httpx']", p.stdout
    assert rc != "0" and p.stderr.startswith("transcoder: ") and p.stderr.count("\n") == 1, p.stderr


def test_variant_records_are_written_to_the_sink_concurrently(tmp_path: Path) -> None:
    """Each new variant's record is its own request on a remote sink: they go
    out together. The sink below takes a record only once three are being
    written at the same time (a barrier, not a clock), and the local table
    still gets every one."""
    import threading

    from transcoder.images.convert import ConvertOptions, convert_image
    from transcoder.images.source import open_source
    from transcoder.sinks import open_sink
    from transcoder.variants import VariantTable

    src = write_layout(tmp_path / "src", {"three": TARS[:3]})
    sink = open_sink(f"type=local,dest={tmp_path / 'store'}")
    together = threading.Barrier(3, timeout=10)
    sink.put_variant = _once_together(together, sink.put_variant)  # type: ignore[method-assign]
    table = VariantTable(tmp_path / "home" / "variants.db")
    result = convert_image(open_source(f"oci:{src}:three"), sink, ConvertOptions(mode="replace", table=table))
    assert [o.status for o in result.layers] == ["converted"] * 3
    assert len(sink.all_variants()) == 3 and len(table.variants()) == 3  # type: ignore[attr-defined]


def test_variant_records_and_manifests_are_written_at_once(tmp_path: Path) -> None:
    """The records and the manifests are independent round trips on a remote
    sink, so they go out together: the sink below takes the three records and
    the first manifest only once all four are being written (a barrier, not a
    clock; one after the other, the barrier breaks)."""
    import threading

    from transcoder.images.convert import ConvertOptions, convert_image
    from transcoder.images.source import open_source
    from transcoder.sinks import open_sink

    src = write_layout(tmp_path / "src", {"three": TARS[:3]})
    sink = open_sink(f"type=local,dest={tmp_path / 'store'}")
    together = threading.Barrier(4, timeout=10)
    put_variant, put_manifest = sink.put_variant, sink.put_manifest
    first_manifest = threading.Lock()

    def manifest_when_all_are_writing(data: bytes, media_type: str) -> Any:
        if first_manifest.acquire(blocking=False):
            together.wait()
        return put_manifest(data, media_type)

    sink.put_variant = _once_together(together, put_variant)  # type: ignore[method-assign]
    sink.put_manifest = manifest_when_all_are_writing  # type: ignore[method-assign]
    result = convert_image(open_source(f"oci:{src}:three"), sink, ConvertOptions(mode="replace"))
    assert [o.status for o in result.layers] == ["converted"] * 3
    assert len(sink.all_variants()) == 3  # type: ignore[attr-defined]
    with sink.open_blob(result.root.digest) as f:
        assert {x["mediaType"] for x in json.load(f)["layers"]} == {OCI_LAYER_ZSTD}


def test_the_image_record_is_written_beside_the_variant_records(tmp_path: Path) -> None:
    """The image record names only the root manifest, already stored, so it
    does not wait for the variant records: the sink below takes the three
    records and the image record only once all four are being written (a
    barrier, not a clock; image record last, the barrier breaks)."""
    import threading

    from transcoder.images.convert import ConvertOptions, convert_image
    from transcoder.images.source import open_source
    from transcoder.sinks import open_sink

    src = write_layout(tmp_path / "src", {"three": TARS[:3]})
    sink = open_sink(f"type=local,dest={tmp_path / 'store'}")
    together = threading.Barrier(4, timeout=10)
    sink.put_variant = _once_together(together, sink.put_variant)  # type: ignore[method-assign]
    sink.put_image = _once_together(together, sink.put_image)  # type: ignore[method-assign]
    result = convert_image(open_source(f"oci:{src}:three"), sink, ConvertOptions(mode="replace"))
    assert [o.status for o in result.layers] == ["converted"] * 3
    assert len(sink.all_variants()) == 3  # type: ignore[attr-defined]
    assert sink.images()["three"].root.digest == result.root.digest  # type: ignore[attr-defined]


def test_configs_are_written_while_the_layers_transcode(tmp_path: Path) -> None:
    """A config is known from the start, so it is written while the layers
    transcode, not among the round trips after them: the sink below commits a
    zstd layer only once the config has been committed (an event, not a
    clock; with the config written after the layers, the wait times out)."""
    import threading

    from transcoder.descriptor import OCI_CONFIG
    from transcoder.images.convert import ConvertOptions, convert_image
    from transcoder.images.source import open_source
    from transcoder.sinks import open_sink

    src = write_layout(tmp_path / "src", {"two": TARS[:2]})
    sink = open_sink(f"type=local,dest={tmp_path / 'store'}")
    config_in = threading.Event()
    blob_writer = sink.blob_writer

    def ordered_writer(media_type: str, **kw: Any) -> Any:
        writer = blob_writer(media_type, **kw)
        commit = writer.commit

        def ordered_commit(size: int, digest: Any) -> None:
            if media_type == OCI_LAYER_ZSTD:
                assert config_in.wait(10), "a layer was committed before the config was written"
            commit(size, digest)
            if media_type == OCI_CONFIG:
                config_in.set()

        writer.commit = ordered_commit
        return writer

    sink.blob_writer = ordered_writer  # type: ignore[method-assign]
    result = convert_image(open_source(f"oci:{src}:two"), sink, ConvertOptions(mode="replace"))
    assert [o.status for o in result.layers] == ["converted"] * 2
    assert check_store(tmp_path / "store").ok


def test_a_failed_config_write_is_raised_after_the_layers(tmp_path: Path) -> None:
    """A config the sink refuses fails the conversion with the sink's error,
    once the layers have ended; no image is recorded."""
    from transcoder.descriptor import OCI_CONFIG
    from transcoder.errors import SinkError
    from transcoder.images.convert import ConvertOptions, convert_image
    from transcoder.images.source import open_source
    from transcoder.sinks import open_sink

    src = write_layout(tmp_path / "src", {"two": TARS[:2]})
    sink = open_sink(f"type=local,dest={tmp_path / 'store'}")
    blob_writer = sink.blob_writer

    def refusing_writer(media_type: str, **kw: Any) -> Any:
        if media_type == OCI_CONFIG:
            raise SinkError("store: config refused")
        return blob_writer(media_type, **kw)

    sink.blob_writer = refusing_writer  # type: ignore[method-assign]
    with pytest.raises(SinkError, match="config refused"):
        convert_image(open_source(f"oci:{src}:two"), sink, ConvertOptions(mode="replace"))
    assert sink.images() == {}  # type: ignore[attr-defined]


def test_a_failed_manifest_write_waits_for_the_records_and_is_raised(tmp_path: Path) -> None:
    """A manifest write that fails is raised once every record write has ended;
    no image is recorded."""
    from transcoder.errors import SinkError
    from transcoder.images.convert import ConvertOptions, convert_image
    from transcoder.images.source import open_source
    from transcoder.sinks import open_sink

    src = write_layout(tmp_path / "src", {"three": TARS[:3]})
    sink = open_sink(f"type=local,dest={tmp_path / 'store'}")
    put_variant = sink.put_variant
    written: list[Any] = []

    def slow_variant(rec: Any) -> None:
        time.sleep(0.2)
        put_variant(rec)
        written.append(rec)

    def refuse_manifest(data: bytes, media_type: str) -> Any:
        raise SinkError("store: manifest refused")

    sink.put_variant = slow_variant  # type: ignore[method-assign]
    sink.put_manifest = refuse_manifest  # type: ignore[method-assign]
    with pytest.raises(SinkError, match="manifest refused"):
        convert_image(open_source(f"oci:{src}:three"), sink, ConvertOptions(mode="replace"))
    assert len(written) == 3
    assert sink.images() == {}  # type: ignore[attr-defined]


def test_variant_lookups_of_every_layer_go_out_at_once(tmp_path: Path) -> None:
    """A lookup costs round trips on a remote sink, not CPU: the lookups of
    all the layers go out together, before any transcode. The sink below
    answers a lookup only once all four are being made (a barrier, not a
    clock; with one lookup per layer in turn, the barrier breaks)."""
    import threading

    from transcoder.images.convert import ConvertOptions, convert_image
    from transcoder.images.source import open_source
    from transcoder.sinks import open_sink

    src = write_layout(tmp_path / "src", {"four": TARS[:4]})
    sink = open_sink(f"type=local,dest={tmp_path / 'store'}")
    together = threading.Barrier(4, timeout=10)
    sink.find_variants = _once_together(together, sink.find_variants)  # type: ignore[method-assign]
    result = convert_image(open_source(f"oci:{src}:four"), sink, ConvertOptions(mode="replace"))
    assert [o.status for o in result.layers] == ["converted"] * 4


def test_reused_layers_are_finished_at_once_beside_a_transcode(tmp_path: Path) -> None:
    """Layers whose variant is known need round trips only (in add mode, the
    canonical blob's check or copy), so they do not queue behind the layers
    in flight: three reused layers and the one new layer's transcode run at
    the same time. The source below opens the new layer's blob, and the sink
    takes a canonical blob's check, only once all four are under way."""
    import threading

    from transcoder.images.convert import ConvertOptions, convert_image
    from transcoder.images.source import open_source
    from transcoder.sinks import open_sink
    from transcoder.variants import VariantTable

    table = VariantTable(tmp_path / "home" / "variants.db")
    store = f"type=local,dest={tmp_path / 'store'}"
    first = write_layout(tmp_path / "first", {"three": TARS[:3]})
    convert_image(open_source(f"oci:{first}:three"), open_sink(store), ConvertOptions(mode="replace", table=table))
    src = write_layout(tmp_path / "src", {"four": TARS[:4]})
    source, sink = open_source(f"oci:{src}:four"), open_sink(store)
    together = threading.Barrier(4, timeout=10)
    stat_blob, open_blob = sink.stat_blob, source.open_blob
    new_layer = {layer.digest for layer in _layers(src, "four")} - {layer.digest for layer in _layers(first, "three")}

    def stat_when_all_are_running(digest: Any) -> Any:
        if digest in canonical:
            together.wait()
        return stat_blob(digest)

    def open_when_all_are_running(desc: Any) -> Any:
        if desc.digest in new_layer:
            together.wait()
        return open_blob(desc)

    canonical = {layer.digest for layer in _layers(first, "three")}
    sink.stat_blob = stat_when_all_are_running  # type: ignore[method-assign]
    source.open_blob = open_when_all_are_running  # type: ignore[method-assign]
    result = convert_image(source, sink, ConvertOptions(mode="add", table=table))
    assert sorted(o.status for o in result.layers) == ["converted", "hit", "hit", "hit"]


def _layers(layout: Path, ref: str) -> list[Any]:
    from transcoder.images.plan import plan
    from transcoder.images.source import open_source

    return [x for m in plan(open_source(f"oci:{layout}:{ref}"), None).manifests for x in m.manifest.layers]


def _once_together(together: Any, fn: Any) -> Any:
    """``fn``, called only once ``together`` (a barrier) has all its parties."""

    def wrapped(*args: Any) -> Any:
        together.wait()
        return fn(*args)

    return wrapped
