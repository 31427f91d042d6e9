"""The registry client, source and sink against real peers: the distribution
registry (anonymous and htpasswd), skopeo and containerd."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.imagegen import make_tar, unzstd, write_layout
from tests.registry_support import repo_name
from transcoder.codecs import ZstdParams
from transcoder.descriptor import ANNOTATION_ZSTD, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST, Descriptor
from transcoder.digest import Digest
from transcoder.errors import AuthError, DigestMismatch, NotFound, SinkError, SizeMismatch, TransientError
from transcoder.images.convert import ConvertOptions, convert_image
from transcoder.images.layers import NEAR_END
from transcoder.images.plan import plan
from transcoder.images.source import open_source
from transcoder.records import ImageRecord, VariantRecord
from transcoder.registry.auth import Credentials
from transcoder.registry.source import RegistrySource
from transcoder.registry.upload import CHUNK
from transcoder.sinks.base import put_bytes
from transcoder.sinks.registry import RegistrySink

pytestmark = pytest.mark.peers
TARS = [make_tar(i, size=300_000, files=10) for i in (21, 22, 23)]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_layout(tmp_path_factory.mktemp("registry") / "src", {
        "app": TARS, "multi": {"amd64": [TARS[0]], "arm64": [TARS[1]]},
    })


def skopeo_run(skopeo: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    r = subprocess.run([skopeo, *args], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r


def skopeo_push(skopeo: str, layout: Path, name: str, dest: str) -> None:
    skopeo_run(skopeo, "copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:{name}", f"docker://{dest}")


def doc(data: bytes) -> Any:
    return json.loads(data)


def random_blob(size: int) -> bytes:
    return os.urandom(size)


# -- pulling what skopeo pushed --------------------------------------------------------


def test_pull_an_image_skopeo_pushed(registry: Any, skopeo: str, layout: Path) -> None:
    repo = repo_name()
    skopeo_push(skopeo, layout, "app", f"{registry.host}/{repo}:gzip")
    raw = skopeo_run(skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/{repo}:gzip").stdout
    with RegistrySource.from_ref(f"{registry.host}/{repo}:gzip") as src:
        root, tag = src.resolve()
        assert (root.digest, root.size, tag) == (Digest.of(raw), len(raw), "gzip")
        manifest = doc(src.get_manifest(root))
        layers = [Descriptor.from_json(d) for d in manifest["layers"]]
        for layer, tar in zip(layers, TARS, strict=True):
            with src.open_blob(layer) as f:
                data = f.read()
            assert Digest.of(data) == layer.digest and gzip.decompress(data) == tar
    with RegistrySource.from_ref(f"{registry.host}/{repo}@{root.digest}") as pinned:
        assert pinned.resolve() == (root, None)


def test_pull_an_index_by_tag_and_its_children(registry: Any, skopeo: str, layout: Path) -> None:
    repo = repo_name()
    skopeo_push(skopeo, layout, "multi", f"{registry.host}/{repo}:multi")
    with RegistrySource.from_ref(f"{registry.host}/{repo}:multi") as src:
        root, _ = src.resolve()
        children = [Descriptor.from_json(d) for d in doc(src.get_manifest(root))["manifests"]]
        archs = sorted(c.platform["architecture"] for c in children if c.platform)
        assert archs == ["amd64", "arm64"]
        for child in children:
            assert doc(src.get_manifest(child))["layers"]


# -- pushing, read back by skopeo and containerd -----------------------------------------


def convert_to(registry: Any, layout: Path, name: str, repo: str, tag: str, mode: str = "add") -> Any:
    sink = RegistrySink(registry.host, repo, tag=tag, mode=mode)
    try:
        return convert_image(open_source(f"oci:{layout}:{name}"), sink, ConvertOptions(mode=mode, tag=tag))
    finally:
        sink.close()


def test_skopeo_inspects_and_copies_what_we_push(registry: Any, skopeo: str, layout: Path, tmp_path: Path) -> None:
    repo = repo_name()
    result = convert_to(registry, layout, "app", repo, "v1")
    ref = f"docker://{registry.host}/{repo}:v1"
    raw = skopeo_run(skopeo, "inspect", "--raw", "--tls-verify=false", ref).stdout
    assert Digest.of(raw) == result.root.digest
    entries = doc(raw)["manifests"]
    assert [e.get("annotations", {}).get(ANNOTATION_ZSTD) for e in entries] == [None, "true"]
    skopeo_run(skopeo, "copy", "--all", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'copy'}:v1")
    blobs = tmp_path / "copy" / "blobs" / "sha256"
    zstd_manifest = doc((blobs / Digest.parse(entries[1]["digest"]).hex).read_bytes())
    assert [d["mediaType"] for d in zstd_manifest["layers"]] == [OCI_LAYER_ZSTD] * 3
    for layer, tar in zip(zstd_manifest["layers"], TARS, strict=True):
        data = (blobs / Digest.parse(layer["digest"]).hex).read_bytes()
        assert unzstd(data) == tar


def test_containerd_pulls_our_zstd_image_and_checks_diffids(registry: Any, containerd: Any, layout: Path) -> None:
    repo = repo_name()
    result = convert_to(registry, layout, "app", repo, "zstd", mode="replace")
    ns = containerd.fresh_namespace()
    containerd.ctr("-n", ns, "images", "pull", "--plain-http", "--snapshotter", "native", f"{registry.host}/{repo}:zstd")
    content = containerd.ctr("-n", ns, "content", "ls").stdout
    for layer, tar in zip(result.layers, TARS, strict=True):
        assert str(layer.target.digest) in content
        assert f"containerd.io/uncompressed={Digest.of(tar)}" in content
    check = containerd.ctr("-n", ns, "images", "check", "--snapshotter", "native").stdout
    assert "complete" in check


def test_second_run_transcodes_nothing(registry: Any, layout: Path, transcoder_home: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    repo = repo_name()
    first = convert_to(registry, layout, "app", repo, "v1")
    # A new home: no local variant table, so the hits come from the registry's records.
    monkeypatch.setenv("TRANSCODER_HOME", str(transcoder_home / "other-machine"))
    again = convert_to(registry, layout, "app", repo, "v1")
    assert [o.status for o in first.layers] == ["converted"] * 3
    assert [o.status for o in again.layers] == ["hit"] * 3
    assert again.root == first.root


def test_a_layers_own_blob_is_asked_for_beside_its_lookup(registry: Any, layout: Path) -> None:
    """In add mode a layer must know whether the registry holds its canonical
    blob, whatever its lookup finds (to tee it into a transcode, or to copy
    it beside a reused variant), so the HEAD goes out beside the lookup, not
    after it. The sink below answers a lookup only once the HEAD for that
    layer's blob has begun."""
    repo = repo_name()
    sink = RegistrySink(registry.host, repo, tag="v1", mode="add")
    asked: set[Digest] = set()
    changed = threading.Condition()
    head_blob, find_variants = sink.client.head_blob, sink.find_variants

    def head_and_tell(repo_: str, digest: Digest) -> int | None:
        with changed:
            asked.add(digest)
            changed.notify_all()
        return head_blob(repo_, digest)

    def find_once_asked(source: Any) -> list[VariantRecord]:
        with changed:
            assert changed.wait_for(lambda: source in asked, 10), "the layer's blob was asked for after its lookup"
        return find_variants(source)

    sink.client.head_blob = head_and_tell  # type: ignore[method-assign]
    sink.find_variants = find_once_asked  # type: ignore[method-assign]
    result = convert_image(open_source(f"oci:{layout}:app"), sink, ConvertOptions(mode="add", tag="v1"))
    sink.close()
    assert [o.status for o in result.layers] == ["converted"] * 3
    assert all(o.source.digest in asked for o in result.layers)


def test_a_mountable_canonical_blob_holds_nothing_up(registry: Any, skopeo: str, layout: Path) -> None:
    """In add mode from another repository of the same host, the canonical
    blob needs none of our bytes: a layer's read starts without waiting for
    the HEAD that asks whether the blob is there, and its mount goes out
    beside the output's commit, not after it. The clients below answer that
    HEAD only once the layer's source is open, and commit a layer's output
    only once its mount has begun."""
    src_repo, repo = repo_name(), repo_name()
    skopeo_push(skopeo, layout, "app", f"{registry.host}/{src_repo}:gzip")
    source = RegistrySource.from_ref(f"{registry.host}/{src_repo}:gzip")
    sink = RegistrySink(registry.host, repo, tag="v1", mode="add")
    seen: dict[str, set[Digest]] = {"opened": set(), "mounting": set()}
    changed = threading.Condition()
    open_blob, head_blob, mount_blob, blob_writer = (source.open_blob, sink.client.head_blob, sink.client.mount_blob,
                                                     sink.blob_writer)

    def tell(what: str, digest: Digest) -> None:
        with changed:
            seen[what].add(digest)
            changed.notify_all()

    def wait(what: str, digest: Digest, why: str) -> None:
        with changed:
            assert changed.wait_for(lambda: digest in seen[what], 10), why

    def open_and_tell(desc: Descriptor) -> Any:
        tell("opened", desc.digest)
        return open_blob(desc)

    def head_once_opened(repo_: str, digest: Digest) -> int | None:
        if digest in layers:
            wait("opened", digest, "the layer's read waited for the HEAD of its canonical blob")
        return head_blob(repo_, digest)

    def mount_and_tell(repo_: str, digest: Digest, from_repo: str) -> bool:
        tell("mounting", digest)
        return mount_blob(repo_, digest, from_repo)

    def committing_once_mounting(media_type: str, **hints: Any) -> Any:
        writer = blob_writer(media_type, **hints)
        if media_type == OCI_LAYER_ZSTD:
            commit, layer = writer.commit, Digest.parse(str(hints["key_hint"]).split("-")[0])

            def gated(size: int, digest: Digest) -> None:
                wait("mounting", layer, "the canonical blob was mounted only after the output's commit")
                commit(size, digest)

            writer.commit = gated
        return writer

    (platformed,) = plan(source, None).manifests
    layers = {x.digest for x in platformed.manifest.layers}
    source.open_blob = open_and_tell  # type: ignore[method-assign]
    sink.client.head_blob = head_once_opened  # type: ignore[method-assign]
    sink.client.mount_blob = mount_and_tell  # type: ignore[method-assign]
    sink.blob_writer = committing_once_mounting  # type: ignore[method-assign]
    result = convert_image(source, sink, ConvertOptions(mode="add", tag="v1"))
    sink.close()
    source.close()
    assert [o.status for o in result.layers] == ["converted"] * 3
    assert seen["mounting"] == layers | {platformed.manifest.config.digest}  # the config is mounted too
    reader = RegistrySink(registry.host, repo)
    assert all(reader.stat_blob(d) is not None for d in layers)
    reader.close()


def test_a_transcodes_upload_session_opens_before_its_bytes_exist(registry: Any, tmp_path: Path) -> None:
    """A transcode's output is sent whatever its size, so its writer opens
    the upload session (the POST) at once, beside the read, instead of once
    the first buffer is full or, for a small blob, at the commit. The source
    below is read only once a POST has begun; the image's config is in the
    repository already, so no other POST is due."""
    src = write_layout(tmp_path / "one", {"one": [TARS[0]]})
    source = open_source(f"oci:{src}:one")
    (platformed,) = plan(source, None).manifests
    (layer,) = platformed.manifest.layers
    sink = RegistrySink(registry.host, repo_name(), tag="v1", mode="replace")
    put_bytes(sink, platformed.config, platformed.manifest.config.media_type)
    posting = threading.Event()
    start_upload, open_blob = sink.client.start_upload, source.open_blob

    def start_and_tell(repo: str) -> str:
        posting.set()
        return start_upload(repo)

    def open_once_posting(desc: Descriptor) -> Any:
        blob = open_blob(desc)
        if desc.digest == layer.digest:
            return _ReadsOnce(blob, posting, "the upload session opened only after the layer was read")
        return blob

    sink.client.start_upload = start_and_tell  # type: ignore[method-assign]
    source.open_blob = open_once_posting  # type: ignore[method-assign]
    result = convert_image(source, sink, ConvertOptions(mode="replace", tag="v1"))
    sink.close()
    (outcome,) = result.layers
    reader = RegistrySink(registry.host, sink.repository)
    with reader.open_blob(outcome.target.digest) as f:
        assert unzstd(f.read()) == TARS[0]
    assert reader.client.head_manifest(sink.repository, "v1") == result.root
    reader.close()


class _ReadsOnce:
    """A blob stream whose first read waits until ``event`` is set (failing,
    with ``why``, if that takes 10 s)."""

    def __init__(self, blob: Any, event: threading.Event, why: str) -> None:
        self._blob, self._event, self._why = blob, event, why

    def read(self, *args: Any) -> Any:
        assert self._event.wait(10), self._why
        return self._blob.read(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._blob, name)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self._blob.close()


def test_small_layers_open_their_blobs_before_their_turn(registry: Any, skopeo: str, layout: Path) -> None:
    """Of an image of small layers, one waiting for a slot (two layers run at
    once) opens its blob before its turn, so on a long link the layers do not
    start a round trip apart. The source below lets the first two layers read
    their blobs only once the third one's has been opened: in turn, it would
    be opened only once one of them had read its blob to the end."""
    src_repo, repo = repo_name(), repo_name()
    skopeo_push(skopeo, layout, "app", f"{registry.host}/{src_repo}:gzip")
    source = RegistrySource.from_ref(f"{registry.host}/{src_repo}:gzip")
    first, second, third = plan(source, None).manifests[0].manifest.layers
    opened = threading.Event()
    open_blob = source.open_blob

    def open_gated(desc: Descriptor) -> Any:
        blob = open_blob(desc)
        if desc.digest == third.digest:
            opened.set()
        if desc.digest in (first.digest, second.digest):
            return _ReadsOnce(blob, opened, "the third layer's blob was opened only in its turn")
        return blob

    source.open_blob = open_gated  # type: ignore[method-assign]
    sink = RegistrySink(registry.host, repo, tag="v1", mode="replace")
    result = convert_image(source, sink, ConvertOptions(mode="replace", tag="v1", jobs=2))
    sink.close()
    source.close()
    assert [o.status for o in result.layers] == ["converted"] * 3
    reader = RegistrySink(registry.host, repo)
    for outcome, tar in zip(result.layers, TARS, strict=True):
        with reader.open_blob(outcome.target.digest) as f:
            assert unzstd(f.read()) == tar
    reader.close()


def _random_tar(seed: int, size: int) -> bytes:
    """A tar of one incompressible file: its gzip is as big as it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"random{seed}.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(random.Random(seed).randbytes(size)))
    return buf.getvalue()


def test_a_layer_after_a_big_one_opens_its_blob_as_the_big_one_nears_its_end(registry: Any, tmp_path: Path) -> None:
    """The layer after a big one opens its blob (and its upload) before its
    turn, so on a long link that round trip overlaps the big layer's end, but
    not before the big layer is within NEAR_END bytes of the end of its
    source: a stream opened long before it is read could sit idle past a
    server's timeout. The source below lets the big layer read on past that
    point only once the next layer's blob has been opened, and notes how far
    the big layer had read then."""
    src = write_layout(tmp_path / "app", {"app": [_random_tar(5, 24 << 20), TARS[0]]})
    source = open_source(f"oci:{src}:app")
    first, second = plan(source, None).manifests[0].manifest.layers
    near = first.size - NEAR_END
    state = {"read": 0, "read_when_second_opened": -1}
    second_opened = threading.Event()
    open_blob = source.open_blob

    class Gated:
        """The big layer's blob, read through ``read`` only (no ``read_view`` or ``read1``)."""

        def __init__(self, blob: Any) -> None:
            self._blob = blob

        def read(self, *args: Any) -> Any:
            if state["read"] >= near:
                assert second_opened.wait(10), "the layer after the big one opened its blob only in its turn"
            data = self._blob.read(*args)
            state["read"] += len(data)
            return data

        def close(self) -> None:
            self._blob.close()

        def __enter__(self) -> Gated:
            return self

        def __exit__(self, *exc: object) -> None:
            self._blob.close()

    def open_gated(desc: Descriptor) -> Any:
        blob = open_blob(desc)
        if desc.digest == first.digest:
            return Gated(blob)
        if desc.digest == second.digest:
            state["read_when_second_opened"] = state["read"]
            second_opened.set()
        return blob

    source.open_blob = open_gated  # type: ignore[method-assign]
    sink = RegistrySink(registry.host, repo_name(), tag="v1", mode="replace")
    result = convert_image(source, sink, ConvertOptions(mode="replace", tag="v1", jobs=1, workers=2))
    sink.close()
    assert [o.status for o in result.layers] == ["converted"] * 2
    assert state["read_when_second_opened"] >= near, state
    reader = RegistrySink(registry.host, sink.repository)
    with reader.open_blob(result.layers[1].target.digest) as f:
        assert unzstd(f.read()) == TARS[0]
    reader.close()


def test_a_layer_opened_before_its_turn_opens_its_upload_beside_its_blob(registry: Any, tmp_path: Path) -> None:
    """A small layer that opens its blob before its turn opens its output's
    upload session (the POST) first, on a thread of its own, so on a long link
    the two round trips overlap instead of the POST following the blob's
    answer. The source below answers the k-th layer blob opened only once k
    POSTs have begun; the image's config is in the repository already, so no other
    POST is due before the layers are read."""
    src = write_layout(tmp_path / "app", {"app": TARS})
    source = open_source(f"oci:{src}:app")
    (platformed,) = plan(source, None).manifests
    sink = RegistrySink(registry.host, repo_name(), tag="v1", mode="replace")
    put_bytes(sink, platformed.config, platformed.manifest.config.media_type)
    counts = {"posts": 0, "opens": 0}
    changed = threading.Condition()
    start_upload, open_blob = sink.client.start_upload, source.open_blob

    def start_and_count(repo: str) -> str:
        with changed:
            counts["posts"] += 1
            changed.notify_all()
        return start_upload(repo)

    layers = {x.digest for x in platformed.manifest.layers}

    def open_after_its_post(desc: Descriptor) -> Any:
        if desc.digest not in layers:  # the config, read by the plan
            return open_blob(desc)
        with changed:
            counts["opens"] += 1
            wanted = counts["opens"]
            assert changed.wait_for(lambda: counts["posts"] >= wanted, 10), "a blob was opened before its upload"
        return open_blob(desc)

    sink.client.start_upload = start_and_count  # type: ignore[method-assign]
    source.open_blob = open_after_its_post  # type: ignore[method-assign]
    result = convert_image(source, sink, ConvertOptions(mode="replace", tag="v1", jobs=2))
    sink.close()
    assert [o.status for o in result.layers] == ["converted"] * 3
    reader = RegistrySink(registry.host, sink.repository)
    for outcome, tar in zip(result.layers, TARS, strict=True):
        with reader.open_blob(outcome.target.digest) as f:
            assert unzstd(f.read()) == tar
    reader.close()


def test_the_layers_blobs_are_opened_while_the_config_is_read(registry: Any, skopeo: str, layout: Path) -> None:
    """The config is not needed to start the layers (an image without an
    index, and no platform asked for), so its round trip overlaps theirs
    instead of coming first. The source below answers the config only once
    a layer's blob has been opened."""
    src_repo, repo = repo_name(), repo_name()
    skopeo_push(skopeo, layout, "app", f"{registry.host}/{src_repo}:gzip")
    source = RegistrySource.from_ref(f"{registry.host}/{src_repo}:gzip")
    (platformed,) = plan(source, None).manifests
    config = platformed.manifest.config
    layer_opened = threading.Event()
    open_blob = source.open_blob

    def open_gated(desc: Descriptor) -> Any:
        if desc.digest == config.digest:
            assert layer_opened.wait(10), "the config was read before any layer's blob was opened"
        else:
            layer_opened.set()
        return open_blob(desc)

    source.open_blob = open_gated  # type: ignore[method-assign]
    sink = RegistrySink(registry.host, repo, tag="v1", mode="add")
    result = convert_image(source, sink, ConvertOptions(mode="add", tag="v1"))
    sink.close()
    source.close()
    assert [o.status for o in result.layers] == ["converted"] * 3
    reader = RegistrySink(registry.host, repo)
    index = json.loads(reader.client.get_manifest(repo, "v1").data)
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "amd64"]  # from the config
    with reader.open_blob(config.digest) as f:
        assert f.read() == platformed.config
    reader.close()


def test_a_configs_head_goes_beside_its_read_and_once(registry: Any, tmp_path: Path) -> None:
    """Whether the sink has the config is asked while the config is read, not
    after; the upload that follows a no does not ask again. The source below
    answers the config only once the HEAD for it has gone out."""
    src = write_layout(tmp_path / "app", {"app": TARS})
    source = open_source(f"oci:{src}:app")
    config = plan(source, None).manifests[0].manifest.config
    sink = RegistrySink(registry.host, repo_name(), tag="v1", mode="replace")
    heads: list[Digest] = []
    asked = threading.Event()
    head_blob, open_blob = sink.client.head_blob, source.open_blob

    def head_and_tell(repo: str, digest: Digest) -> int | None:
        heads.append(digest)
        if digest == config.digest:
            asked.set()
        return head_blob(repo, digest)

    def open_gated(desc: Descriptor) -> Any:
        if desc.digest == config.digest:
            assert asked.wait(10), "the config was read before the sink was asked for it"
        return open_blob(desc)

    sink.client.head_blob = head_and_tell  # type: ignore[method-assign]
    source.open_blob = open_gated  # type: ignore[method-assign]
    convert_image(source, sink, ConvertOptions(mode="replace", tag="v1"))
    sink.close()
    assert heads.count(config.digest) == 1, heads
    reader = RegistrySink(registry.host, sink.repository)
    with reader.open_blob(config.digest) as f:
        assert Digest.of(f.read()) == config.digest
    reader.close()


def test_a_config_from_the_same_host_is_mounted(registry: Any, skopeo: str, layout: Path) -> None:
    """A config the registry holds in the source's repository is mounted, one
    round trip after its read, not uploaded."""
    src_repo, repo = repo_name(), repo_name()
    skopeo_push(skopeo, layout, "app", f"{registry.host}/{src_repo}:gzip")
    source = RegistrySource.from_ref(f"{registry.host}/{src_repo}:gzip")
    config = plan(source, None).manifests[0].manifest.config
    sink = RegistrySink(registry.host, repo, tag="v1", mode="add")
    mounts: list[Digest] = []
    uploads: list[Digest] = []
    mount_blob, complete_upload = sink.client.mount_blob, sink.client.complete_upload

    def mount_and_log(repo: str, digest: Digest, source_repo: str) -> bool:
        mounts.append(digest)
        return mount_blob(repo, digest, source_repo)

    def complete_and_log(repo: str, location: str, digest: Digest, data: bytes) -> None:
        uploads.append(digest)
        complete_upload(repo, location, digest, data)

    sink.client.mount_blob = mount_and_log  # type: ignore[method-assign]
    sink.client.complete_upload = complete_and_log  # type: ignore[method-assign]
    convert_image(source, sink, ConvertOptions(mode="add", tag="v1"))
    sink.close()
    source.close()
    assert config.digest in mounts and config.digest not in uploads, (mounts, uploads)
    reader = RegistrySink(registry.host, repo)
    with reader.open_blob(config.digest) as f:
        assert Digest.of(f.read()) == config.digest
    reader.close()


def test_a_bad_config_writes_nothing_though_the_layers_were_opened(registry: Any, tmp_path: Path) -> None:
    """Fault injection: the config's bytes do not match its digest, and they
    arrive only once the layers' blobs and uploads have been opened. The
    conversion fails naming the config; no blob is committed or mounted, no
    manifest or tag is written, and every upload session opened is cancelled."""
    src = write_layout(tmp_path / "app", {"app": TARS})
    source = open_source(f"oci:{src}:app")
    (platformed,) = plan(source, None).manifests
    config = platformed.manifest.config
    sink = RegistrySink(registry.host, repo_name(), tag="v1", mode="add")
    sent: list[tuple[str, str]] = []
    request, open_blob = sink.client.request, source.open_blob
    opened = threading.Event()

    def logged(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((method, path))
        return request(method, path, *args, **kwargs)

    def open_tampered(desc: Descriptor) -> Any:
        if desc.digest == config.digest:
            assert opened.wait(10), "the config was read before any layer's blob was opened"
            return io.BytesIO(platformed.config.replace(b"amd64", b"arm64"))
        blob = open_blob(desc)
        opened.set()
        return blob

    started: list[str] = []
    cancelled: list[str] = []
    start_upload, cancel_upload = sink.client.start_upload, sink.client.cancel_upload

    def start_and_log(repo: str) -> str:
        started.append(start_upload(repo))
        return started[-1]

    def cancel_and_log(repo: str, location: str) -> None:
        cancelled.append(location)
        cancel_upload(repo, location)

    sink.client.request = logged  # type: ignore[method-assign]
    sink.client.start_upload = start_and_log  # type: ignore[method-assign]
    sink.client.cancel_upload = cancel_and_log  # type: ignore[method-assign]
    source.open_blob = open_tampered  # type: ignore[method-assign]
    with pytest.raises(DigestMismatch, match=f"config {config.digest}"):
        convert_image(source, sink, ConvertOptions(mode="add", tag="v1"))
    sink.close()
    assert started and sorted(cancelled) == sorted(started), (started, cancelled)
    assert not any("mount=" in p for m, p in sent if m == "POST"), sent
    assert not [(m, p) for m, p in sent if m in ("PUT", "PATCH")], "something was uploaded, committed or tagged"
    for location in started:  # the registry knows none of them
        assert httpx.get(urljoin(f"http://{registry.host}/", location)).status_code == 404


def test_a_layer_whose_blob_fails_to_open_cancels_its_upload(registry: Any, tmp_path: Path) -> None:
    """Fault injection: the second layer's blob cannot be opened. The
    conversion fails with that error, and in bounded time (the layers after it
    do not wait forever for its turn); the upload session opened ahead for its
    output is cancelled, and every other one was committed before the call
    returned, the record blobs staged by the layers that succeeded included
    (the registry knows none of them: none is left to expire there); no tag
    is written."""
    src = write_layout(tmp_path / "app", {"app": TARS})
    source = open_source(f"oci:{src}:app")
    (platformed,) = plan(source, None).manifests
    _, second, _ = platformed.manifest.layers
    sink = RegistrySink(registry.host, repo_name(), tag="v1", mode="replace")
    started: list[str] = []
    cancelled: list[str] = []
    start_upload, cancel_upload, open_blob = sink.client.start_upload, sink.client.cancel_upload, source.open_blob

    def start_and_log(repo: str) -> str:
        location = start_upload(repo)
        started.append(location)
        return location

    def cancel_and_log(repo: str, location: str) -> None:
        cancelled.append(location)
        cancel_upload(repo, location)

    def open_or_fail(desc: Descriptor) -> Any:
        if desc.digest == second.digest:
            raise NotFound(f"{source.name}: layer {desc.digest} is missing")
        return open_blob(desc)

    sink.client.start_upload = start_and_log  # type: ignore[method-assign]
    sink.client.cancel_upload = cancel_and_log  # type: ignore[method-assign]
    source.open_blob = open_or_fail  # type: ignore[method-assign]
    raised: list[BaseException] = []

    def run() -> None:
        try:
            convert_image(source, sink, ConvertOptions(mode="replace", tag="v1", jobs=2))
        except BaseException as exc:
            raised.append(exc)

    converting = threading.Thread(target=run, daemon=True)
    converting.start()
    converting.join(60)
    assert not converting.is_alive(), "the layers after the failed one wait forever for its turn"
    assert len(raised) == 1 and isinstance(raised[0], NotFound), raised
    assert f"layer {second.digest} is missing" in str(raised[0])
    sink.close()
    assert cancelled, "the failed layer's upload session was not cancelled"
    for location in started:  # each was committed or cancelled: the registry knows none of them
        status = httpx.get(urljoin(f"http://{registry.host}/", location)).status_code
        assert status == 404, f"upload session {location} is still open ({status})"
    reader = RegistrySink(registry.host, sink.repository)
    assert reader.client.list_tags(sink.repository) == []
    reader.close()


def test_an_unchanged_rerun_writes_nothing_for_the_image(registry: Any, layout: Path) -> None:
    """A rerun that binds the name to the root it has already (its newest
    record says so, and so does the tag) leaves the binding as it is: no
    record blob, no record, no tag, no deletion; only the manifests are pushed
    again, which changes nothing. A tag moved meanwhile by another tool is
    moved back, with a new record."""
    repo = repo_name()
    first = convert_to(registry, layout, "app", repo, "v1", mode="replace")
    reader = RegistrySink(registry.host, repo)

    def records() -> list[str]:
        return sorted(t for t in reader.client.list_tags(repo) if ".image-" in t)

    before, created = records(), reader.images()["v1"].created
    sink = RegistrySink(registry.host, repo, tag="v1", mode="replace")
    sent: list[tuple[str, str]] = []
    request = sink.client.request

    def logged(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((method, path))
        return request(method, path, *args, **kwargs)

    sink.client.request = logged  # type: ignore[method-assign]
    again = convert_image(open_source(f"oci:{layout}:app"), sink, ConvertOptions(mode="replace", tag="v1"))
    sink.close()
    assert again.root == first.root and [o.status for o in again.layers] == ["hit"] * 3
    writes = [(m, p) for m, p in sent if m not in ("GET", "HEAD")]
    assert writes == [("PUT", f"/v2/{repo}/manifests/{first.root.digest}")], writes
    assert records() == before and reader.images()["v1"].created == created
    external, _ = _other_image(reader, 11)
    reader.client.put_manifest(repo, "v1", external, OCI_MANIFEST)  # as docker push would
    convert_to(registry, layout, "app", repo, "v1", mode="replace")
    assert reader.client.head_manifest(repo, "v1").digest == first.root.digest  # type: ignore[union-attr]
    assert len(records()) == 1 and records() != before  # a new record, the old one pruned
    reader.close()


# -- the sink against the registry -------------------------------------------------------


@pytest.fixture
def sink(registry: Any) -> Any:
    s = RegistrySink(registry.host, repo_name())
    yield s
    s.close()


@pytest.mark.parametrize("size", [0, 1000, CHUNK - 1, 2 * CHUNK + 12345])
def test_blob_round_trip_small_and_chunked(sink: RegistrySink, size: int) -> None:
    data = random_blob(size)
    digest = Digest.of(data)
    with sink.blob_writer("application/octet-stream") as w:
        for i in range(0, size, 700_000):
            w.write(data[i : i + 700_000])
        w.commit(size, digest)
    assert sink.stat_blob(digest) == size and sink.stat_blob(str(digest)) == size
    with sink.open_blob(digest) as f:
        assert f.read() == data
    if size:
        with sink.open_blob(digest, size // 3, 1000) as f:
            assert f.read() == data[size // 3 : size // 3 + 1000]
        with sink.open_blob(digest, size - 5, 100) as f:
            assert f.read() == data[-5:]
        with sink.open_blob(digest, size) as f:
            assert f.read() == b""


def test_bad_commit_and_abort_leave_nothing(sink: RegistrySink) -> None:
    data = random_blob(CHUNK + 100)
    digest = Digest.of(data)
    w = sink.blob_writer("application/octet-stream")
    w.write(data)
    with pytest.raises(DigestMismatch, match="do not match"):  # found by the registry, which hashed the stream
        w.commit(len(data), Digest.of(b"other"))
    w3 = sink.blob_writer("application/octet-stream")
    w3.write(data)
    with pytest.raises(SizeMismatch):
        w3.commit(len(data) + 1, digest)
    with sink.blob_writer("application/octet-stream") as w2:
        w2.write(data)  # leaves the block without a commit: aborted
    assert sink.stat_blob(digest) is None
    with pytest.raises(NotFound, match=f"repository {sink.repository}"):
        sink.open_blob(digest)


def test_two_writers_of_one_blob_both_succeed(sink: RegistrySink) -> None:
    data = random_blob(CHUNK * 2)
    digest = Digest.of(data)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with sink.blob_writer("application/octet-stream") as w:
                w.write(data)
                w.commit(len(data), digest)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sink.stat_blob(digest) == len(data)


def test_small_blob_already_there_is_not_sent_again(sink: RegistrySink) -> None:
    data = b'{"config": true}'
    put_bytes(sink, data, OCI_CONFIG)
    before = sink.client.requests
    put_bytes(sink, data, OCI_CONFIG)
    assert sink.client.requests - before == 1  # one HEAD


def _image(sink: RegistrySink) -> tuple[bytes, Descriptor]:
    layer = gzip.compress(TARS[0])
    ldesc = put_bytes(sink, layer, OCI_LAYER_GZIP)
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [str(Digest.of(TARS[0]))]}}).encode()
    cdesc = put_bytes(sink, config, OCI_CONFIG)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc.to_json(),
                           "layers": [ldesc.to_json()]}).encode()
    return manifest, sink.put_manifest(manifest, OCI_MANIFEST)


def test_manifests_by_digest_and_images_by_tag(sink: RegistrySink, registry: Any) -> None:
    manifest, desc = _image(sink)
    assert desc == Descriptor(OCI_MANIFEST, Digest.of(manifest), len(manifest))
    other = RegistrySink(registry.host, sink.repository)
    assert other.get_manifest(desc) == manifest
    assert other.images() == {}
    sink.put_image(ImageRecord("v1", desc))
    sink.put_image(ImageRecord("v2", desc))
    other.close()
    fresh = RegistrySink(registry.host, sink.repository)
    assert {k: v.root for k, v in fresh.images().items()} == {"v1": desc, "v2": desc}
    fresh.close()


def _other_image(sink: RegistrySink, seed: int) -> tuple[bytes, Descriptor]:
    config = put_bytes(sink, json.dumps({"seed": seed}).encode(), OCI_CONFIG)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(),
                           "layers": []}).encode()
    return manifest, sink.put_manifest(manifest, OCI_MANIFEST)


def test_image_records_settle_the_tag_and_yield_to_other_tools(sink: RegistrySink, registry: Any) -> None:
    (_, old), (_, new) = _other_image(sink, 1), _other_image(sink, 2)
    sink.put_image(ImageRecord("app", new, created=2000.0))
    sink.put_image(ImageRecord("app", old, created=1000.0))  # written last, but older
    assert sink.client.head_manifest(sink.repository, "app") == new  # the tag follows the newest record
    tags = sink.client.list_tags(sink.repository)
    assert len([t for t in tags if ".image-" in t]) == 1  # the superseded record was pruned
    sink.put_image(ImageRecord("team/app:v1 (nightly)", old, created=5.0))  # not a tag: a record only
    assert "team/app:v1 (nightly)" not in sink.client.list_tags(sink.repository)
    images = RegistrySink(registry.host, sink.repository).images()
    assert {k: (v.root, v.created) for k, v in images.items()} == {
        "app": (new, 2000.0), "team/app:v1 (nightly)": (old, 5.0)}
    external, ext_desc = _other_image(sink, 3)
    sink.client.put_manifest(sink.repository, "app", external, OCI_MANIFEST)  # as docker push would
    assert RegistrySink(registry.host, sink.repository).images()["app"].root == ext_desc


def test_a_manifest_with_a_missing_blob_is_not_pushed(sink: RegistrySink) -> None:
    ghost = Descriptor(OCI_LAYER_GZIP, Digest.of(b"never uploaded"), 14)
    cdesc = put_bytes(sink, b"{}", OCI_CONFIG)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc.to_json(),
                           "layers": [ghost.to_json()]}).encode()
    with pytest.raises(SinkError, match=f"blob {ghost.digest}"):
        sink.put_manifest(manifest, OCI_MANIFEST)
    assert sink.client.head_manifest(sink.repository, Digest.of(manifest)) is None


def test_cross_repository_mount(sink: RegistrySink, registry: Any) -> None:
    data = random_blob(5000)
    digest = Digest.of(data)
    put_bytes(sink, data, OCI_LAYER_GZIP)
    target = RegistrySink(registry.host, repo_name())
    source = RegistrySource.from_ref(f"{registry.host}/{sink.repository}:x")
    assert target.mount_blob(Descriptor(OCI_LAYER_GZIP, digest, len(data)), source)
    assert target.stat_blob(digest) == len(data)
    missing = Descriptor(OCI_LAYER_GZIP, Digest.of(b"absent"), 6)
    assert not target.mount_blob(missing, source)
    assert target.stat_blob(missing.digest) is None
    target.close()
    source.close()


def test_records_take_no_head_and_no_read_back(sink: RegistrySink) -> None:
    """A record's blob is new bytes (it carries its creation time), so no HEAD
    asks for it first, and settling a tag reads back no record this sink has
    just written. A variant record: POST, PUT, its tag. An image record that
    names a tag: POST, PUT, the record's tag, the tags listed, the image's tag,
    the tags listed again (nothing newer: settled)."""
    _, desc = _other_image(sink, 3)
    source = Descriptor(OCI_LAYER_GZIP, Digest.of(b"gzip source 3"), 13)
    rec = _variant(sink, source, 3, b"zstd bytes 3")
    before = sink.client.requests
    sink.put_variant(rec)
    assert sink.client.requests - before == 3
    before = sink.client.requests
    sink.put_image(ImageRecord("app", desc))
    assert sink.client.requests - before == 6
    assert sink.client.head_manifest(sink.repository, "app") == desc
    other = RegistrySink(sink.host, sink.repository)
    assert other.find_variants(source.digest) == [rec]
    assert other.images()["app"].root == desc
    other.close()


def _settled(sink: RegistrySink, before: int, count: int) -> None:
    """Wait (10 s at most) until ``count`` requests have been made since ``before``."""
    deadline = time.monotonic() + 10
    while sink.client.requests - before < count and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sink.client.requests - before == count


def test_a_staged_variant_record_is_invisible_until_put(sink: RegistrySink) -> None:
    """stage_variant pushes the record's blob on a thread of its own, so a
    layer's end does not wait for it, and tags nothing; put_variant is then
    one request, the tag that publishes it."""
    source = Descriptor(OCI_LAYER_GZIP, Digest.of(b"gzip source 4"), 13)
    rec = _variant(sink, source, 3, b"zstd bytes 4")
    before = sink.client.requests
    sink.stage_variant(rec)
    _settled(sink, before, 2)  # POST, PUT
    other = RegistrySink(sink.host, sink.repository)
    assert other.find_variants(source.digest) == []
    before = sink.client.requests
    sink.put_variant(rec)
    assert sink.client.requests - before == 1
    assert RegistrySink(sink.host, sink.repository).find_variants(source.digest) == [rec]
    other.close()


def test_an_image_record_is_staged_before_its_root_is_pushed(sink: RegistrySink) -> None:
    """The record's blob may go up before the root manifest (nothing points
    to it yet); put_image then takes it and pushes no blob."""
    config = put_bytes(sink, b'{"seed": 5}', OCI_CONFIG)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(),
                           "layers": []}).encode()
    rec = ImageRecord("staged", Descriptor(OCI_MANIFEST, Digest.of(manifest), len(manifest)))
    before = sink.client.requests
    sink.stage_image(rec)
    _settled(sink, before, 2)  # POST, PUT
    assert "staged" not in sink.images()
    assert sink.client.head_manifest(sink.repository, rec.root.digest) is None
    sink.put_manifest(manifest, OCI_MANIFEST)
    before = sink.client.requests
    sink.put_image(rec)
    assert sink.client.requests - before == 4  # the record's tag, list, the image's tag, list
    other = RegistrySink(sink.host, sink.repository)
    assert other.images()["staged"].root == rec.root
    other.close()


def test_records_go_up_beside_the_last_layers_commit(registry: Any, tmp_path: Path) -> None:
    """Once a transcode is verified, before its output is committed, its
    variant record's blob is staged, and so is the image record's once every
    layer's output is known: their pushes overlap the registry's check of the
    upload, and after it only the manifests and tags remain. The sink below
    commits a zstd layer only once both have been staged (one layer: the
    last)."""
    src = write_layout(tmp_path / "one", {"one": [TARS[2]]})
    sink = RegistrySink(registry.host, repo_name(), tag="v1", mode="replace")
    staged = {"variant": threading.Event(), "image": threading.Event()}
    stage_variant, stage_image, blob_writer = sink.stage_variant, sink.stage_image, sink.blob_writer

    def variant_and_tell(rec: VariantRecord) -> None:
        staged["variant"].set()
        stage_variant(rec)

    def image_and_tell(rec: ImageRecord) -> None:
        staged["image"].set()
        stage_image(rec)

    def committing_once_staged(media_type: str, **hints: Any) -> Any:
        writer = blob_writer(media_type, **hints)
        if media_type == OCI_LAYER_ZSTD:
            commit = writer.commit

            def gated(size: int, digest: Digest) -> None:
                for what, event in staged.items():
                    assert event.wait(10), f"the {what} record was staged only after the layer's commit"
                commit(size, digest)

            writer.commit = gated
        return writer

    sink.stage_variant = variant_and_tell  # type: ignore[method-assign]
    sink.stage_image = image_and_tell  # type: ignore[method-assign]
    sink.blob_writer = committing_once_staged  # type: ignore[method-assign]
    result = convert_image(open_source(f"oci:{src}:one"), sink, ConvertOptions(mode="replace", tag="v1"))
    sink.close()
    (layer,) = result.layers
    reader = RegistrySink(registry.host, sink.repository)
    assert reader.images()["v1"].root == result.root
    assert [r.target for r in reader.find_variants(layer.source.digest)] == [layer.target]
    assert reader.client.head_manifest(sink.repository, "v1") == result.root
    reader.close()


def test_a_settle_lists_the_tags_beside_the_records_own_tag(sink: RegistrySink) -> None:
    """put_image pushes the record's tag and, at the same time, the settling's
    first listing, which counts the record in: one round trip less between
    the root and the image's tag. The client below answers the record's tag
    only once a listing has begun."""
    _, root = _other_image(sink, 10)
    listing = threading.Event()
    list_tags, put_manifest = sink.client.list_tags, sink.client.put_manifest

    def list_and_tell(repo: str) -> list[str]:
        listing.set()
        return list_tags(repo)

    def put_once_listing(repo: str, ref: Any, data: bytes, media_type: str) -> Digest:
        if ".image-" in str(ref):
            assert listing.wait(10), "the tags were listed only after the record's tag was pushed"
        return put_manifest(repo, ref, data, media_type)

    sink.client.list_tags = list_and_tell  # type: ignore[method-assign]
    sink.client.put_manifest = put_once_listing  # type: ignore[method-assign]
    sink.put_image(ImageRecord("beside", root))
    assert sink.client.head_manifest(sink.repository, "beside") == root
    assert RegistrySink(sink.host, sink.repository).images()["beside"].root == root


def test_warming_lists_the_tags_once_for_every_lookup(sink: RegistrySink) -> None:
    """warm_lookups lists the repository's tags on a thread of its own (a
    conversion starts it before reading the source); lookups then make no
    request of their own for a source with no record."""
    assert sink.stat_blob(Digest.of(b"absent")) is None  # the client's first contact, behind us
    before = sink.client.requests
    sink.warm_lookups()
    _settled(sink, before, 1)
    for n in range(3):
        assert sink.find_variants(Digest.of(b"no record %d" % n)) == []
    assert sink.client.requests - before == 1


def test_a_failed_staging_is_pushed_again_by_the_put(sink: RegistrySink, monkeypatch: pytest.MonkeyPatch) -> None:
    """A staged push that failed costs nothing but the retry: put_variant
    pushes the blob itself, and the record is published whole."""
    source = Descriptor(OCI_LAYER_GZIP, Digest.of(b"gzip source 6"), 13)
    rec = _variant(sink, source, 3, b"zstd bytes 6")
    real = sink.records._push_record_blob
    calls: list[str] = []

    def flaky(body: bytes, media_type: str) -> Descriptor:
        calls.append(media_type)
        if len(calls) == 1:
            raise TransientError("injected: the staged push broke off")
        return real(body, media_type)

    monkeypatch.setattr(sink.records, "_push_record_blob", flaky)
    sink.stage_variant(rec)
    sink.put_variant(rec)
    assert len(calls) == 2
    assert RegistrySink(sink.host, sink.repository).find_variants(source.digest) == [rec]


# -- variant records ----------------------------------------------------------------------


def _variant(sink: RegistrySink, source: Descriptor, level: int, payload: bytes) -> VariantRecord:
    target = put_bytes(sink, payload, OCI_LAYER_ZSTD)
    return VariantRecord(source, Digest.of(b"diff"), target, ZstdParams(level=level))


def test_variant_records_are_found_from_another_machine(sink: RegistrySink, registry: Any) -> None:
    source = Descriptor(OCI_LAYER_GZIP, Digest.of(b"gzip source"), 11)
    rec = _variant(sink, source, 3, b"zstd bytes")
    sink.put_variant(rec)
    sink.put_variant(rec)  # again: fine
    other = RegistrySink(registry.host, sink.repository)
    assert other.find_variants(source.digest) == [rec]
    assert other.find_variants(str(source.digest)) == [rec]
    assert other.find_variants(Digest.of(b"unknown")) == []
    assert other.images() == {}  # record tags are not images
    other.close()


def test_a_lookup_asks_for_the_target_while_it_reads_the_record(sink: RegistrySink, registry: Any) -> None:
    """A record's manifest names the variant's blob: the HEAD that checks the
    blob is still there goes out while the record's own blob is read, and the
    check then uses its answer (the same three requests, two round trips).
    The client below reads the record blob only once the HEAD has begun."""
    source = Descriptor(OCI_LAYER_GZIP, Digest.of(b"gzip source 7"), 13)
    rec = _variant(sink, source, 3, b"zstd bytes 7")
    sink.put_variant(rec)
    other = RegistrySink(registry.host, sink.repository)
    asked = threading.Event()
    head_blob, open_blob = other.client.head_blob, other.client.open_blob

    def head_and_tell(repo: str, digest: Digest) -> int | None:
        asked.set()
        return head_blob(repo, digest)

    def open_once_asked(repo: str, digest: Digest, *args: Any) -> Any:
        assert asked.wait(10), "the record's blob was read before its target was asked for"
        return open_blob(repo, digest, *args)

    other.client.head_blob = head_and_tell  # type: ignore[method-assign]
    other.client.open_blob = open_once_asked  # type: ignore[method-assign]
    assert other.find_variants(source.digest) == [rec]
    before = other.client.requests
    assert other.stat_blob(rec.target.digest) == rec.target.size
    assert other.client.requests == before  # the answer asked ahead
    assert other.stat_blob(rec.target.digest) == rec.target.size
    assert other.client.requests == before + 1  # used once: a later check asks again
    other.close()


def test_superseded_image_records_go_while_the_tags_are_listed_again(sink: RegistrySink) -> None:
    """Settling a tag lists the tags, pushes the tag, lists again; the older
    records are dropped meanwhile, not after. The client below answers the
    second listing only once the drop has begun."""
    (_, first), (_, second) = _other_image(sink, 8), _other_image(sink, 9)
    sink.put_image(ImageRecord("pruned", first, created=1000.0))
    dropping = threading.Event()
    listings = 0
    head_manifest, list_tags = sink.client.head_manifest, sink.client.list_tags

    def head_and_tell(repo: str, ref: Any) -> Any:
        dropping.set()
        return head_manifest(repo, ref)

    def list_once_dropping(repo: str) -> list[str]:
        nonlocal listings
        listings += 1
        if listings == 2:
            assert dropping.wait(10), "the older record was dropped only after the tags were listed again"
        return list_tags(repo)

    sink.client.head_manifest = head_and_tell  # type: ignore[method-assign]
    sink.client.list_tags = list_once_dropping  # type: ignore[method-assign]
    sink.put_image(ImageRecord("pruned", second, created=2000.0))
    assert listings == 2
    assert len([t for t in list_tags(sink.repository) if ".image-" in t]) == 1
    assert head_manifest(sink.repository, "pruned") == second


def test_concurrent_writers_of_one_source_lose_no_record(registry: Any) -> None:
    repo = repo_name()
    source = Descriptor(OCI_LAYER_GZIP, Digest.of(b"shared source"), 13)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    written: list[VariantRecord] = []

    def writer(level: int) -> None:
        s = RegistrySink(registry.host, repo)
        try:
            rec = _variant(s, source, level, f"variant at level {level}".encode())
            s.find_variants(source.digest)  # each writer lists before any of them writes
            barrier.wait()
            s.put_variant(rec)
            written.append(rec)
        except BaseException as exc:
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=writer, args=(level,)) for level in (1, 3, 3, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    reader = RegistrySink(registry.host, repo)
    found = reader.find_variants(source.digest)
    assert sorted(r.params.level for r in found) == [1, 3, 9]
    assert {r.target.digest for r in found} == {r.target.digest for r in written}
    reader.close()


def test_a_corrupt_record_is_skipped_and_replaced(sink: RegistrySink, registry: Any) -> None:
    source = Descriptor(OCI_LAYER_GZIP, Digest.of(b"src"), 3)
    rec = _variant(sink, source, 3, b"payload")
    sink.put_variant(rec)
    tag = next(t for t in sink.client.list_tags(sink.repository) if t.startswith(f"sha256-{source.digest.hex}"))
    manifest, _desc = _image(sink)  # an ordinary image manifest under the record's tag
    sink.client.put_manifest(sink.repository, tag, manifest, OCI_MANIFEST)
    other = RegistrySink(registry.host, sink.repository)
    assert other.find_variants(source.digest) == []
    other.put_variant(rec)
    assert RegistrySink(registry.host, sink.repository).find_variants(source.digest) == [rec]
    other.close()


# -- htpasswd basic auth ---------------------------------------------------------------------


def test_basic_auth_with_options_and_docker_config(registry_auth: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    creds = Credentials(registry_auth.username, registry_auth.password)
    repo = repo_name()
    sink = RegistrySink(registry_auth.host, repo, credentials=creds)
    manifest, desc = _image(sink)
    sink.put_image(ImageRecord("v1", desc))
    sink.close()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {registry_auth.host: {
        "username": registry_auth.username, "password": registry_auth.password}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    with RegistrySource.from_ref(f"{registry_auth.host}/{repo}:v1") as src:
        assert src.resolve()[0] == desc and src.get_manifest(desc) == manifest


def test_basic_auth_failures_name_registry_and_repository(registry_auth: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))  # no config file: anonymous
    repo = repo_name()
    with pytest.raises(AuthError) as anon:
        RegistrySource.from_ref(f"{registry_auth.host}/{repo}:v1").resolve()
    assert "401" in str(anon.value) and registry_auth.host in str(anon.value) and repo in str(anon.value)
    assert "no credentials" in str(anon.value)
    wrong = Credentials(registry_auth.username, "wrong-password-xyzzy")
    sink = RegistrySink(registry_auth.host, repo, credentials=wrong)
    with pytest.raises(AuthError) as bad:
        put_bytes(sink, b"data", OCI_CONFIG)
    message = str(bad.value)
    assert "401" in message and "rejected" in message and repo in message
    assert "xyzzy" not in message and registry_auth.password not in message
    sink.close()


def test_not_found_names_what_is_missing(registry: Any) -> None:
    repo = repo_name()
    with pytest.raises(NotFound) as err:
        RegistrySource.from_ref(f"{registry.host}/{repo}:nope").resolve()
    assert f"repository {repo}" in str(err.value) and "manifest nope" in str(err.value)
