"""The official ``@actions/cache`` client (npm, 6.3.0) against the emulator.

Each test runs node with the real toolkit: v2 (Twirp + Azure SDK uploads,
single Put Blob and, over 128 MiB, Put Block + Put Block List), v1 in GHES
mode (chunked PATCH uploads), restore keys, misses, conflicts, retries, and
the Azurite data plane. The toolkit's own tar/zstd archives are checked by
restoring them into a fresh workspace and comparing bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import peers
from transcoder.gha.emulator import COMMITTED, Emulator

pytestmark = pytest.mark.peers
SCRIPT = Path(__file__).parent / "node" / "cache_roundtrip.mjs"
MAIN = [("refs/heads/main", 3)]


@dataclass
class Toolkit:
    """Runs tests/node/cache_roundtrip.mjs with a clean environment."""

    script: Path
    tmp: Path

    def run(self, env: dict[str, str], workspace: Path, *args: str, expect_ok: bool = True) -> dict[str, Any]:
        runner_temp = self.tmp / "runner-temp"
        runner_temp.mkdir(exist_ok=True)
        base = {"PATH": os.environ["PATH"], "HOME": str(self.tmp), "RUNNER_TEMP": str(runner_temp),
                "GITHUB_WORKSPACE": str(workspace)}
        proc = subprocess.run(["node", str(self.script), *args], cwd=workspace, env={**base, **env},
                              capture_output=True, text=True, timeout=600)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        result: dict[str, Any] = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
        result["log"] = proc.stdout + proc.stderr
        if expect_ok:
            assert proc.returncode == 0 and "error" not in result, result["log"]
        return result

    def save(self, env: dict[str, str], workspace: Path, key: str, *paths: str) -> dict[str, Any]:
        return self.run(env, workspace, "save", key, *paths)

    def restore(self, env: dict[str, str], workspace: Path, key: str, restore_keys: list[str], *paths: str) -> dict[str, Any]:
        return self.run(env, workspace, "restore", key, json.dumps(restore_keys), *paths)


@pytest.fixture
def toolkit(node_peers: Path, tmp_path: Path) -> Toolkit:
    # ESM resolves bare imports from the script's own directory: give it a node_modules beside it.
    here = tmp_path / "node"
    here.mkdir()
    (here / "node_modules").symlink_to(node_peers / "node_modules")
    shutil.copy(SCRIPT, here / SCRIPT.name)
    return Toolkit(here / SCRIPT.name, tmp_path)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


def make_tree(root: Path, seed: int, files: int = 3, size: int = 50_000) -> dict[str, str]:
    """A directory ``root/data`` of random files; returns {relative path: sha256}."""
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    digests = {}
    for i in range(files):
        path = data / ("sub" if i % 2 else ".") / f"f{i}.bin"
        path.write_bytes(hashlib.shake_256(f"{seed}-{i}".encode()).digest(size + i))
        digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def tree_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "data").rglob("*")) if p.is_file()}


def fresh(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.mkdir()
    return path


def v1_env(emu: Emulator, scopes: list[tuple[str, int]] | None = None) -> dict[str, str]:
    # GHES: the toolkit always speaks v1 there.
    return {**emu.env(scopes, v2=False), "GITHUB_SERVER_URL": "https://ghes.example.com"}


def test_v2_save_and_restore(emu: Emulator, toolkit: Toolkit, tmp_path: Path) -> None:
    saved = make_tree(fresh(tmp_path, "a"), seed=1)
    env = emu.env(MAIN)
    result = toolkit.save(env, tmp_path / "a", "build-v2-1", "data")
    entry = emu.entry("build-v2-1")
    assert entry is not None and entry.state == COMMITTED and entry.scope == "refs/heads/main"
    assert result["cacheId"] == entry.id
    assert emu.count("CreateCacheEntry") == emu.count("PutBlob") == emu.count("FinalizeCacheEntryUpload") == 1
    assert emu.count("PutBlock", "PutBlockList") == 0
    restored = toolkit.restore(env, fresh(tmp_path, "b"), "build-v2-1", [], "data")
    assert restored["matchedKey"] == "build-v2-1"
    assert tree_digests(tmp_path / "b") == saved


def test_v2_restore_key_prefix_hit_takes_newest(emu: Emulator, toolkit: Toolkit, tmp_path: Path) -> None:
    env = emu.env(MAIN)
    make_tree(fresh(tmp_path, "old"), seed=2)
    toolkit.save(env, tmp_path / "old", "deps-linux-aaa", "data")
    newest = make_tree(fresh(tmp_path, "new"), seed=3)
    toolkit.save(env, tmp_path / "new", "deps-linux-bbb", "data")
    result = toolkit.restore(env, fresh(tmp_path, "b"), "deps-linux-zzz", ["deps-windows-", "deps-linux-"], "data")
    assert result["matchedKey"] == "deps-linux-bbb"
    assert "Cache hit for restore-key" in result["log"]
    assert tree_digests(tmp_path / "b") == newest


def test_v2_miss(emu: Emulator, toolkit: Toolkit, tmp_path: Path) -> None:
    result = toolkit.restore(emu.env(MAIN), fresh(tmp_path, "b"), "never-saved", ["nor-this-"], "data")
    assert result["matchedKey"] is None
    assert emu.count("GetCacheEntryDownloadURL") == 1 and emu.count("GetBlob") == 0
    assert not (tmp_path / "b" / "data").exists()


def test_v2_second_save_of_a_key_is_refused_not_overwritten(emu: Emulator, toolkit: Toolkit, tmp_path: Path) -> None:
    env = emu.env(MAIN)
    first = make_tree(fresh(tmp_path, "a"), seed=4)
    toolkit.save(env, tmp_path / "a", "immutable", "data")
    make_tree(fresh(tmp_path, "c"), seed=5)
    second = toolkit.save(env, tmp_path / "c", "immutable", "data")
    assert second["cacheId"] == -1
    assert "another job may be creating this cache" in second["log"]
    assert emu.count("CreateCacheEntry") == 2 and emu.count("PutBlob") == 1
    toolkit.restore(env, fresh(tmp_path, "b"), "immutable", [], "data")
    assert tree_digests(tmp_path / "b") == first


def test_v2_pull_request_reads_base_branch_but_writes_own_scope(emu: Emulator, toolkit: Toolkit, tmp_path: Path) -> None:
    on_main = make_tree(fresh(tmp_path, "a"), seed=6)
    toolkit.save(emu.env(MAIN), tmp_path / "a", "pr-deps", "data")
    pr = emu.env([("refs/pull/7/merge", 3), ("refs/heads/main", 1)])
    assert toolkit.restore(pr, fresh(tmp_path, "b"), "pr-deps", [], "data")["matchedKey"] == "pr-deps"
    assert tree_digests(tmp_path / "b") == on_main
    toolkit.save(pr, tmp_path / "a", "pr-only", "data")
    entry = emu.entry("pr-only")
    assert entry is not None and entry.scope == "refs/pull/7/merge"
    result = toolkit.restore(emu.env(MAIN), fresh(tmp_path, "c"), "pr-only", [], "data")
    assert result["matchedKey"] is None  # main cannot read a PR's scope


def test_v2_read_only_token_cannot_save(emu: Emulator, toolkit: Toolkit, tmp_path: Path) -> None:
    make_tree(fresh(tmp_path, "a"), seed=7)
    result = toolkit.save(emu.env([("refs/heads/main", 1)]), tmp_path / "a", "ro", "data")
    assert result["cacheId"] == -1
    assert "cache write denied" in result["log"]
    assert emu.entries() == []


def test_v2_retries_5xx_and_non_json_then_succeeds(emu: Emulator, toolkit: Toolkit, tmp_path: Path) -> None:
    env = emu.env(MAIN)
    saved = make_tree(fresh(tmp_path, "a"), seed=8)
    emu.fail_next("CreateCacheEntry", 503)
    toolkit.save(env, tmp_path / "a", "flaky", "data")
    assert emu.count("CreateCacheEntry") == 2 and emu.entry("flaky") is not None
    emu.fail_next("GetCacheEntryDownloadURL", "non_json", message="proxy page")
    emu.faults.pending()[0].status = 200  # a 200 with an HTML body is retried too
    assert toolkit.restore(env, fresh(tmp_path, "b"), "flaky", [], "data")["matchedKey"] == "flaky"
    assert emu.count("GetCacheEntryDownloadURL") == 2
    assert tree_digests(tmp_path / "b") == saved


def test_v2_rate_limit_is_not_retried(emu: Emulator, toolkit: Toolkit, tmp_path: Path) -> None:
    make_tree(fresh(tmp_path, "a"), seed=9)
    emu.config.uploads_per_minute = 1
    env = emu.env(MAIN)
    toolkit.save(env, tmp_path / "a", "budget-1", "data")
    result = toolkit.save(env, tmp_path / "a", "budget-2", "data")
    assert result["cacheId"] == -1
    assert "rate limit will reset in" in result["log"]
    assert emu.count("CreateCacheEntry") == 2 and emu.entry("budget-2") is None


def test_v1_ghes_save_and_restore(emu: Emulator, toolkit: Toolkit, tmp_path: Path) -> None:
    saved = make_tree(fresh(tmp_path, "a"), seed=10)
    env = v1_env(emu)
    result = toolkit.save(env, tmp_path / "a", "build-v1-1", "data")
    entry = emu.entry("build-v1-1")
    assert entry is not None and entry.state == COMMITTED and result["cacheId"] == entry.id
    assert emu.count("v1.ReserveCache") == emu.count("v1.CommitCache") == 1 and emu.count("v1.UploadChunk") >= 1
    assert emu.count("CreateCacheEntry", "PutBlob") == 0
    restored = toolkit.restore(env, fresh(tmp_path, "b"), "build-v1-zzz", ["build-v1-"], "data")
    assert restored["matchedKey"] == "build-v1-1"
    assert tree_digests(tmp_path / "b") == saved
    assert toolkit.restore(env, fresh(tmp_path, "c"), "nothing", [], "data")["matchedKey"] is None


def test_v1_chunked_upload_in_parallel_pieces(emu: Emulator, toolkit: Toolkit, tmp_path: Path) -> None:
    # 1 MiB chunks x 4 workers: several concurrent, chunked-encoded PATCH bodies that may arrive out of order.
    saved = make_tree(fresh(tmp_path, "a"), seed=11, files=2, size=3_000_000)
    env = {**v1_env(emu), "CACHE_UPLOAD_CHUNK_SIZE": "1"}
    toolkit.save(env, tmp_path / "a", "chunky", "data")
    assert emu.count("v1.UploadChunk") >= 6
    toolkit.restore(env, fresh(tmp_path, "b"), "chunky", [], "data")
    assert tree_digests(tmp_path / "b") == saved


def test_v2_archive_over_128_mib_uses_blocks(emu: Emulator, toolkit: Toolkit, tmp_path: Path) -> None:
    work = fresh(tmp_path, "big")
    data = work / "data"
    data.mkdir()
    with open(data / "random.bin", "wb") as f:  # incompressible, so the archive stays over 128 MiB
        for _ in range(136):
            f.write(os.urandom(1 << 20))
    want = hashlib.sha256((data / "random.bin").read_bytes()).hexdigest()
    env = emu.env(MAIN)
    try:
        toolkit.save(env, work, "big-archive", "data")
        assert emu.count("PutBlob") == 0
        assert emu.count("PutBlock") == 3 and emu.count("PutBlockList") == 1
        entry = emu.entry("big-archive")
        assert entry is not None and entry.size is not None and entry.size > 128 << 20
        shutil.rmtree(data)
        assert toolkit.restore(env, work, "big-archive", [], "data")["matchedKey"] == "big-archive"
        assert hashlib.sha256((data / "random.bin").read_bytes()).hexdigest() == want
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp_path / "runner-temp", ignore_errors=True)


@pytest.fixture
def azurite_emu(azurite: peers.Azurite) -> Iterator[Emulator]:
    with Emulator(azurite=azurite.connection_string) as emulator:
        yield emulator


def test_azurite_plane_v2_and_v1(azurite_emu: Emulator, azurite: peers.Azurite, toolkit: Toolkit, tmp_path: Path) -> None:
    emu = azurite_emu
    saved = make_tree(fresh(tmp_path, "a"), seed=12)
    env = emu.env(MAIN)
    toolkit.save(env, tmp_path / "a", "az-v2", "data")
    assert emu.count("PutBlob", "PutBlock") == 0  # bytes went to Azurite, not through the emulator
    entry = emu.entry("az-v2")
    assert entry is not None and entry.state == COMMITTED
    assert emu.plane.committed_size(entry.blob_name) == entry.size
    result = toolkit.restore(env, fresh(tmp_path, "b"), "az-v2", [], "data")
    assert result["matchedKey"] == "az-v2" and tree_digests(tmp_path / "b") == saved
    toolkit.save(v1_env(emu), tmp_path / "a", "az-v1", "data")
    v1_entry = emu.entry("az-v1")
    assert v1_entry is not None and emu.plane.committed_size(v1_entry.blob_name) == v1_entry.size
    toolkit.restore(v1_env(emu), fresh(tmp_path, "c"), "az-v1", [], "data")
    assert tree_digests(tmp_path / "c") == saved
