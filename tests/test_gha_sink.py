"""``type=gha`` against the project's emulator: options, blob keys shared with
BuildKit, streamed blobs published by alias, variant and image chains merged on
read, and whole images converted and restored through the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import peers
from tests.imagegen import make_tar, unzstd, write_layout
from transcoder.codecs import ZstdParams
from transcoder.descriptor import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST, Descriptor
from transcoder.digest import Digest
from transcoder.errors import DigestMismatch, InputError, NotFound, SizeMismatch, UsageError
from transcoder.gha import keys
from transcoder.gha.chain import RecordChain
from transcoder.gha.emulator import Emulator
from transcoder.gha.retry import RetryPolicy, UploadRateLimiter
from transcoder.records import ImageRecord, VariantRecord
from transcoder.sinks import open_sink
from transcoder.sinks.base import put_bytes
from transcoder.sinks.gha import GhaSink

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator() as e:
        yield e


def make_sink(emu: Emulator, scope: str = "main", protocol: int = 2, **opts: str) -> GhaSink:
    return GhaSink.from_options({"scope": scope, **opts}, env=emu.env(v2=protocol == 2), block_size=MiB,
                                policy=RetryPolicy(30, initial=0.05, max_wait=0.5), limiter=UploadRateLimiter(10_000))


def stream(sink: GhaSink, data: bytes, hint: str | None, piece: int = 256 * 1024) -> Digest:
    digest = Digest.of(data)
    w = sink.blob_writer(OCI_LAYER_ZSTD, key_hint=hint)
    for i in range(0, len(data), piece):
        w.write(data[i : i + piece])
    w.commit(len(data), digest)
    return digest


def read(sink: GhaSink, digest: Digest) -> bytes:
    with sink.open_blob(digest) as f:
        return f.read()


def variant(source: bytes, target: bytes, level: int = 3) -> VariantRecord:
    return VariantRecord(Descriptor(OCI_LAYER_GZIP, Digest.of(source), len(source)), Digest.of(b"tar" + source),
                         Descriptor(OCI_LAYER_ZSTD, Digest.of(target), len(target)), ZstdParams(level))


def keys_of(emu: Emulator) -> list[str]:
    return [e.key for e in emu.entries()]


# --- options -----------------------------------------------------------------------------------------------------


def test_options_are_checked_up_front(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in emu.env().items():
        monkeypatch.setenv(name, value)
    sink = open_sink("type=gha,scope=app-1,ignore-error=true,timeout=2m")
    assert isinstance(sink, GhaSink) and sink.ignore_errors and sink.location == "gha:app-1"
    assert sink.client.config.timeout == 120 and sink.client.protocol == 2
    assert not open_sink("type=gha").ignore_errors  # type: ignore[attr-defined]
    assert open_sink("type=gha,version=1").client.protocol == 1  # type: ignore[attr-defined]
    for spec, named in [("type=gha,scop=x", "'scop'"), ("type=gha,ignore-error=maybe", "ignore-error="),
                        ("type=gha,scope=a#b", "scope="), ("type=gha,timeout=forever", "timeout="),
                        ("type=gha,version=9", "version=")]:
        with pytest.raises(UsageError, match=named):
            open_sink(spec)
    monkeypatch.delenv("ACTIONS_RUNTIME_TOKEN")
    with pytest.raises(UsageError, match="ACTIONS_RUNTIME_TOKEN"):
        open_sink("type=gha,scope=x")


def test_repr_and_errors_hold_no_token(emu: Emulator) -> None:
    env = emu.env()
    sink = make_sink(emu)
    assert env["ACTIONS_RUNTIME_TOKEN"] not in repr(sink) + sink.location
    with pytest.raises(InputError):
        sink.stat_blob("sha256:../../etc")


# --- blobs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 1])
def test_known_digest_blob_uses_buildkit_key_and_dedupes(emu: Emulator, protocol: int) -> None:
    sink = make_sink(emu, protocol=protocol)
    data = os.urandom(3 * MiB + 5)
    desc = put_bytes(sink, data, OCI_LAYER_GZIP)
    entry = emu.entry(keys.blob_key(desc.digest))
    assert entry is not None and entry.version == keys.BUILDKIT_VERSION
    other = make_sink(emu, protocol=protocol)  # another job
    assert other.stat_blob(desc.digest) == len(data)
    assert read(other, desc.digest) == data
    with other.open_blob(str(desc.digest), 1000, 10) as f:
        assert f.read() == data[1000:1010]
    with other.open_blob(desc.digest, len(data)) as f:
        assert f.read() == b""
    emu.reset_counts()
    put_bytes(other, data, OCI_LAYER_GZIP)  # already there: checked, not uploaded
    assert emu.count("CreateCacheEntry", "v1.ReserveCache", "PutBlob", "PutBlock", "v1.UploadChunk") == 0


def test_blob_cached_by_buildkit_is_found_and_not_uploaded(emu: Emulator) -> None:
    sink = make_sink(emu)
    data = os.urandom(5000)
    digest = Digest.of(data)
    up = sink.client.reserve(keys.blob_key(digest), keys.BUILDKIT_VERSION)  # what BuildKit's exporter writes
    up.write(data)
    up.finish(len(data))
    emu.reset_counts()
    fresh = make_sink(emu)
    assert fresh.stat_blob(digest) == len(data)
    put_bytes(fresh, data, OCI_LAYER_GZIP)
    assert emu.count("CreateCacheEntry", "PutBlob") == 0


def test_streamed_blob_is_published_by_alias_only_when_complete(emu: Emulator) -> None:
    sink = make_sink(emu)
    data = os.urandom(3 * MiB)
    digest = Digest.of(data)
    hint = f"{Digest.of(b'src')}-zstd-3-abc"
    w = sink.blob_writer(OCI_LAYER_ZSTD, key_hint=hint)
    w.write(data[: 2 * MiB + 1])
    assert make_sink(emu).stat_blob(digest) is None  # half-written: invisible
    w.write(data[2 * MiB + 1 :])
    w.commit(len(data), digest)
    assert keys.stream_key(hint) in keys_of(emu) and keys.alias_key(digest) in keys_of(emu)
    fresh = make_sink(emu)
    assert fresh.stat_blob(digest) == len(data)
    assert read(fresh, digest) == data


@pytest.mark.parametrize("bad", ["digest", "size", "abort"])
def test_failed_writes_leave_nothing_findable(emu: Emulator, bad: str) -> None:
    sink = make_sink(emu)
    data = os.urandom(2 * MiB + 3)
    digest = Digest.of(data)
    for hint in (None, "sha256:" + "1" * 64 + "-zstd-3-x", str(digest)):
        w = sink.blob_writer(OCI_LAYER_ZSTD, key_hint=hint)
        w.write(data)
        if bad == "digest":
            with pytest.raises(DigestMismatch):
                w.commit(len(data), Digest.of(b"other"))
        elif bad == "size":
            with pytest.raises(SizeMismatch):
                w.commit(len(data) + 1, digest)
        else:
            w.abort()
    assert make_sink(emu).stat_blob(digest) is None
    with pytest.raises(NotFound):
        make_sink(emu).open_blob(digest)
    assert not any(e.state == "committed" for e in emu.entries())


def test_content_not_matching_its_promised_digest_is_refused(emu: Emulator) -> None:
    sink = make_sink(emu)
    w = sink.blob_writer(OCI_LAYER_GZIP, key_hint=str(Digest.of(b"promised")))
    w.write(b"delivered")
    with pytest.raises(DigestMismatch):
        w.commit(9, Digest.of(b"delivered"))
    assert sink.stat_blob(Digest.of(b"promised")) is None and sink.stat_blob(Digest.of(b"delivered")) is None


def test_keys_blocked_by_dead_reservations_use_fallbacks(emu: Emulator) -> None:
    sink = make_sink(emu)
    known, streamed = os.urandom(4000), os.urandom(6000)
    hint = "sha256:" + "2" * 64 + "-zstd-3-y"
    for key, version in [(keys.blob_key(Digest.of(known)), keys.BUILDKIT_VERSION), (keys.stream_key(hint), keys.VERSION)]:
        sink.client.reserve(key, version).abort()  # a crashed job: reserved, never finalized
    put_bytes(sink, known, OCI_LAYER_GZIP)
    stream(sink, streamed, hint)
    fresh = make_sink(emu)
    assert read(fresh, Digest.of(known)) == known and read(fresh, Digest.of(streamed)) == streamed
    assert any(keys.is_key_for(k, keys.blob_key(Digest.of(known))) and k.count("-t") for k in keys_of(emu))


def test_ambiguous_create_is_survived(emu: Emulator) -> None:
    sink = make_sink(emu)
    emu.drop_next("CreateCacheEntry", after=True)
    data = os.urandom(10_000)
    desc = put_bytes(sink, data, OCI_LAYER_GZIP)
    assert read(make_sink(emu), desc.digest) == data


def test_corrupt_entry_is_detected_on_read(emu: Emulator) -> None:
    sink = make_sink(emu)
    claimed = Digest.of(b"the real bytes")
    up = sink.client.reserve(keys.blob_key(claimed), keys.BUILDKIT_VERSION)
    up.write(b"the fake bytes")
    up.finish(14)
    with pytest.raises(DigestMismatch), sink.open_blob(claimed) as f:
        f.read()


def test_evicted_blob_is_missing(emu: Emulator) -> None:
    sink = make_sink(emu)
    digest = stream(sink, os.urandom(3000), "sha256:" + "3" * 64 + "-zstd-3-z")
    target = emu.entry(keys.stream_key("sha256:" + "3" * 64 + "-zstd-3-z"))
    assert target is not None
    emu.evict(target)
    assert make_sink(emu).stat_blob(digest) is None


def test_reads_right_after_writes_despite_visibility_delay() -> None:
    with Emulator(visibility_delay=1.0) as emu:
        sink = make_sink(emu)
        data = os.urandom(20_000)
        desc = put_bytes(sink, data, OCI_LAYER_GZIP)
        assert read(sink, desc.digest) == data
        sink.put_image(ImageRecord("app:1", desc))
        assert sink.images()["app:1"].root == desc


@pytest.mark.peers
@pytest.mark.parametrize("protocol", [2, 1])
def test_blob_plane_on_real_azurite(azurite: peers.Azurite, protocol: int) -> None:
    with Emulator(azurite=azurite.connection_string) as emu:
        sink = make_sink(emu, protocol=protocol)
        known, streamed = os.urandom(3 * MiB + 5), os.urandom(2 * MiB + 1)
        desc = put_bytes(sink, known, OCI_LAYER_GZIP)
        digest = stream(sink, streamed, f"{desc.digest}-zstd-3-azurite")
        entry = emu.entry(keys.blob_key(desc.digest))
        assert entry is not None and emu.plane.name != "builtin"
        fresh = make_sink(emu, protocol=protocol)
        assert read(fresh, desc.digest) == known and read(fresh, digest) == streamed
        with fresh.open_blob(desc.digest, MiB - 3, MiB + 7) as f:
            assert f.read() == known[MiB - 3 : 2 * MiB + 4]


# --- records -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 1])
def test_variants_are_found_by_other_jobs(emu: Emulator, protocol: int) -> None:
    a, b = make_sink(emu, protocol=protocol), make_sink(emu, protocol=protocol)
    r3, r9 = variant(b"src", b"t3"), variant(b"src", b"t9", level=9)
    a.put_variant(r3)
    b.put_variant(r9)
    found = make_sink(emu, protocol=protocol).find_variants(r3.source.digest)
    assert {(r.target.digest, r.params.level) for r in found} == {(r3.target.digest, 3), (r9.target.digest, 9)}
    assert make_sink(emu, protocol=protocol).find_variants(Digest.of(b"other")) == []
    creates = emu.count("CreateCacheEntry", "v1.ReserveCache")
    make_sink(emu, protocol=protocol).put_variant(variant(b"src", b"t3"))  # known already: no new entry
    assert emu.count("CreateCacheEntry", "v1.ReserveCache") == creates


def test_images_merge_and_newest_binding_wins(emu: Emulator) -> None:
    d1, d2 = (Descriptor(OCI_MANIFEST, Digest.of(x), 1) for x in (b"1", b"2"))
    a, b = make_sink(emu), make_sink(emu)
    a.put_image(ImageRecord("x", d1, created=100.0))
    b.put_image(ImageRecord("y", d1, created=101.0))
    b.put_image(ImageRecord("x", d2, created=102.0))
    a.put_image(ImageRecord("x", d1, created=99.0))  # an older binding arriving late loses
    images = make_sink(emu).images()
    assert {n: r.root.digest for n, r in images.items()} == {"x": d2.digest, "y": d1.digest}
    assert make_sink(emu, scope="other").images() == {}
    creates = emu.count("CreateCacheEntry")
    make_sink(emu).put_image(ImageRecord("y", d1))  # unchanged binding: nothing written
    assert emu.count("CreateCacheEntry") == creates


def test_racing_chain_writers_lose_nothing() -> None:
    # Entries become visible 1.5 s after they are finalized, so writers race on stale reads.
    with Emulator(visibility_delay=1.5) as emu:
        sinks = [make_sink(emu) for _ in range(4)]
        root = Descriptor(OCI_MANIFEST, Digest.of(b"m"), 1)

        def put(i: int) -> None:
            sinks[i].put_image(ImageRecord(f"img{i}", root))

        threads = [threading.Thread(target=put, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        chain = [k for k in keys_of(emu) if k.startswith(keys.images_chain("main") + "#")]
        assert len(chain) == 4
        emu.config.visibility_delay = 0
        assert sorted(make_sink(emu).images()) == ["img0", "img1", "img2", "img3"]


def test_dead_chain_numbers_are_given_up_after_a_while(emu: Emulator) -> None:
    sink = make_sink(emu)
    prefix = keys.images_chain("main")
    sink.client.reserve(f"{prefix}#1", keys.VERSION).abort()  # a writer that died mid-write
    chain = RecordChain(sink.client, prefix, keys.VERSION, lambda r: r, dead_after=0.0)
    patient = RecordChain(sink.client, prefix, keys.VERSION, lambda r: r, dead_after=3600.0)
    assert patient.append([{"n": 2}]) == 2
    st = patient.read()
    assert st.gaps == {1} and st.records == [{"n": 2}]
    assert chain.append([{"n": 3}]) == 3  # #2 is old enough to declare #1 dead
    st = patient.read()
    assert st.gaps == set() and 1 in st.covered and st.records == [{"n": 2}, {"n": 3}]


def test_a_broken_chain_entry_is_skipped_not_fatal(emu: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    sink = make_sink(emu)
    up = sink.client.reserve(f"{keys.images_chain('main')}#1", keys.VERSION)
    up.write(b"{not json")
    up.finish(9)
    root = Descriptor(OCI_MANIFEST, Digest.of(b"m"), 1)
    sink.put_image(ImageRecord("after", root))
    assert list(make_sink(emu).images()) == ["after"]
    assert "malformed JSON" in caplog.text


# --- whole images through the command line --------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "transcoder", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_convert_restore_and_unchanged_second_export(emu: Emulator, tmp_path: Path) -> None:
    tars = [make_tar(i, size=1_500_000, files=10) for i in (41, 42, 43)]
    layout = write_layout(tmp_path / "src", {"app": tars[:2], "multi": {"amd64": [tars[2]], "arm64": [tars[0]]}})
    env = {**emu.env(), "TRANSCODER_HOME": str(tmp_path / "home")}
    for name in ("app", "multi"):
        r = cli("convert", f"oci:{layout}:{name}", "--to", "type=gha,scope=ci", "--json", env=env)
        assert r.returncode == 0, r.stderr
    token = env["ACTIONS_RUNTIME_TOKEN"]
    for comp in ("zstd", "gzip"):
        out = tmp_path / f"restored-{comp}"
        r = cli("restore", "type=gha,scope=ci", "multi", "-o", f"oci:{out}", "--compression", comp, "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert token not in r.stdout + r.stderr
        blobs = {p.name: p.read_bytes() for p in (out / "blobs" / "sha256").iterdir()}
        assert all(Digest.of(b).hex == name for name, b in blobs.items())
        if comp == "zstd":
            decoded = {Digest.of(unzstd(b))
                       for b in blobs.values() if b[:4] == b"\x28\xb5\x2f\xfd"}
            assert decoded == {Digest.of(tars[2]), Digest.of(tars[0])}  # zstd layers decode to the diffIDs
    # Another job, nothing changed: no entry created, no byte uploaded.
    emu.reset_counts()
    env2 = {**env, "TRANSCODER_HOME": str(tmp_path / "home2")}
    r = cli("convert", f"oci:{layout}:app", "--to", "type=gha,scope=ci", "--json", env=env2)
    assert r.returncode == 0, r.stderr
    assert all(layer["status"] == "hit" for layer in json.loads(r.stdout)["layers"])
    assert emu.count("CreateCacheEntry", "PutBlob", "PutBlock", "PutBlockList", "FinalizeCacheEntryUpload") == 0


def test_ignore_error_turns_failures_into_warnings(emu: Emulator, tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "src", {"app": [make_tar(7, size=100_000)]})
    env = {**emu.env(), "TRANSCODER_HOME": str(tmp_path / "home")}
    emu.fail_next("*", 403, count=None)
    r = cli("convert", f"oci:{layout}:app", "--to", "type=gha,scope=ci,ignore-error=true", env=env)
    assert r.returncode == 0 and "warning" in r.stderr
    r = cli("convert", f"oci:{layout}:app", "--to", "type=gha,scope=ci", env=env)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and env["ACTIONS_RUNTIME_TOKEN"] not in r.stderr


def parse_github_env(text: str) -> dict[str, str]:
    """The runner's reading of $GITHUB_ENV: NAME=value lines and NAME<<DELIM heredocs."""
    out: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if "<<" in line:
            name, delim = line.split("<<", 1)
            body: list[str] = []
            for text in lines:
                if text == delim:
                    break
                body.append(text)
            out[name] = "\n".join(body)
        elif "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
    return out


def test_action_exposes_the_runtime_to_later_steps(emu: Emulator, tmp_path: Path) -> None:
    node = peers.require_tool("node")
    github_env = tmp_path / "github_env"
    github_env.write_text("EARLIER=kept\n")
    runner_env = {"PATH": os.environ["PATH"], "GITHUB_ENV": str(github_env), **emu.env()}
    r = subprocess.run([node, str(REPO / "action" / "index.js")], env=runner_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert runner_env["ACTIONS_RUNTIME_TOKEN"] not in r.stdout + r.stderr
    exported = parse_github_env(github_env.read_text())
    assert exported == {"EARLIER": "kept", **emu.env(token=runner_env["ACTIONS_RUNTIME_TOKEN"])}
    # A later `run:` step sees only what the action exported, and the sink works with it.
    layout = write_layout(tmp_path / "src", {"app": [make_tar(5, size=50_000)]})
    step_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TRANSCODER_HOME": str(tmp_path / "th"), **exported}
    r = subprocess.run([sys.executable, "-m", "transcoder", "convert", f"oci:{layout}:app", "--to", "type=gha,scope=ci"],
                       env=step_env, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "app" in make_sink(emu, scope="ci").images()
    # Outside a job the action fails with one clear line.
    r = subprocess.run([node, str(REPO / "action" / "index.js")], env={"PATH": os.environ["PATH"]},
                       capture_output=True, text=True)
    assert r.returncode == 1 and "GITHUB_ENV" in r.stdout


def test_action_metadata_points_at_its_script() -> None:
    text = (REPO / "action.yml").read_text()
    runs = re.search(r"^runs:\n  using: (\S+)\n  main: (\S+)$", text, re.M)
    assert runs is not None and runs.group(1) == "node20"
    assert (REPO / runs.group(2)).is_file()


@pytest.mark.peers
def test_readme_workflow(emu: Emulator, registry: peers.Registry, skopeo: str, tmp_path: Path) -> None:
    """The README's two jobs: convert from a registry into the cache, restore in another job, use it."""
    node = peers.require_tool("node")
    tars = [make_tar(i, size=200_000, files=6) for i in (81, 82)]
    layout = write_layout(tmp_path / "src", {"base": tars})
    ref = f"{registry.host}/readme/base:1"
    r = subprocess.run([skopeo, "copy", "--dest-tls-verify=false", f"oci:{layout}:base", f"docker://{ref}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    def job(name: str, *steps: list[str]) -> None:
        github_env = tmp_path / f"{name}.env"
        runner = {"PATH": os.environ["PATH"], "GITHUB_ENV": str(github_env), **emu.env()}
        assert subprocess.run([node, str(REPO / "action" / "index.js")], env=runner, capture_output=True).returncode == 0
        step_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TRANSCODER_HOME": str(tmp_path / name),
                    **parse_github_env(github_env.read_text())}
        for step in steps:
            done = subprocess.run([sys.executable, "-m", "transcoder", *step], env=step_env, capture_output=True,
                                  text=True, cwd=REPO, timeout=300)
            assert done.returncode == 0, done.stderr

    job("cache", ["convert", f"docker://{ref}", "--to", "type=gha,scope=base-images", "--tag", "base:1"])
    job("build", ["restore", "type=gha,scope=base-images", "base:1", "-o", f"oci:{tmp_path / 'base'}"])
    # skopeo reads the restored layout (what buildx gets as an oci-layout:// context), zstd layers and all.
    r = subprocess.run([skopeo, "copy", f"oci:{tmp_path / 'base'}:base:1", f"oci:{tmp_path / 'check'}:base:1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    restored = [p.read_bytes() for p in (tmp_path / "base" / "blobs" / "sha256").iterdir()]
    decoded = {unzstd(b) for b in restored if b[:4] == b"\x28\xb5\x2f\xfd"}
    assert decoded == set(tars)
