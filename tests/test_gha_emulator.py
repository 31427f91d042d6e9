"""The cache-service emulator over HTTP: auth, Twirp v2 rules, state machine, lookups, faults, CLI.

Every test talks to a running emulator with httpx; time-dependent rules
(TTLs, visibility, expiry) use a ManualClock instead of sleeping. The blob
plane and the v1 REST surface are in test_gha_emulator_wire.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import peers
from transcoder.errors import UsageError
from transcoder.gha.emulator import COMMITTED, RESERVED, Emulator, ManualClock, mint, parse_fault

BLOB = httpx.Client(verify=False, timeout=30)  # plain http; one client avoids re-reading CA bundles per call
SVC = "/twirp/github.actions.results.api.v1.CacheService/"
EXISTS_MSG = "cache entry with the same key, version, and scope already exists"


def client(emu: Emulator, scopes: list[tuple[str, int]] | None = None, token: str | None = None) -> httpx.Client:
    token = token or emu.mint_token(scopes)
    return httpx.Client(base_url=emu.url, headers={"Authorization": f"Bearer {token}"}, timeout=30,
                        verify=False)


def call(c: httpx.Client, method: str, body: Any) -> httpx.Response:
    r = c.post(SVC + method, json=body)
    assert r.headers["content-type"].startswith("application/json"), r.text  # Twirp: always JSON
    return r


def save(c: httpx.Client, key: str, data: bytes, version: str = "v1") -> httpx.Response:
    """Create, Put Blob, Finalize; returns the finalize response."""
    created = call(c, "CreateCacheEntry", {"key": key, "version": version})
    assert created.status_code == 200 and created.json()["ok"], created.text
    put = BLOB.put(created.json()["signed_upload_url"], content=data, headers={"x-ms-blob-type": "BlockBlob"})
    assert put.status_code == 201, put.text
    return call(c, "FinalizeCacheEntryUpload", {"key": key, "version": version, "size_bytes": str(len(data))})


def lookup(c: httpx.Client, key: str, restore: list[str] | None = None, version: str = "v1") -> str | None:
    body: dict[str, Any] = {"key": key, "version": version}
    if restore:
        body["restore_keys"] = restore
    r = call(c, "GetCacheEntryDownloadURL", body)
    assert r.status_code == 200, r.text
    return r.json()["matched_key"] if r.json()["ok"] else None


# -- authentication ---------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Basic Zm9vOmJhcg==", "Bearer not-a-jwt", "Bearer a.b.c"])
def test_bad_or_missing_bearer_is_unauthenticated(emu: Emulator, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    r = BLOB.post(emu.url + SVC + "CreateCacheEntry", json={"key": "k", "version": "v"}, headers=headers)
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"


def test_token_time_and_signature_checks(emu: Emulator, clock: ManualClock) -> None:
    body = {"key": "k", "version": "v"}
    foreign = mint(b"another-secret", [("refs/heads/main", 3)], now=clock())
    future = mint(emu.secret, [("refs/heads/main", 3)], now=clock() + 3600)
    no_ac = mint(emu.secret, [], now=clock(), extra={"ac": None})
    for token, why in [(foreign, "signature"), (future, "nbf"), (no_ac, "'ac'")]:
        r = call(client(emu, token=token), "CreateCacheEntry", body)
        assert r.status_code == 401 and why in r.json()["msg"], (why, r.text)
    short = emu.mint_token(ttl=60)
    assert call(client(emu, token=short), "CreateCacheEntry", body).status_code == 200
    clock.advance(61)
    r = call(client(emu, token=short), "CreateCacheEntry", {"key": "k2", "version": "v"})
    assert r.status_code == 401 and "expired" in r.json()["msg"]


def test_signature_check_can_be_disabled(clock: ManualClock) -> None:
    with Emulator(clock=clock, verify_signature=False) as emu:
        foreign = mint(b"another-secret", [("refs/heads/main", 3)], now=clock())
        assert call(client(emu, token=foreign), "CreateCacheEntry", {"key": "k", "version": "v"}).json()["ok"]


def test_secrets_stay_out_of_repr_and_records(emu: Emulator) -> None:
    c = client(emu)
    url = call(c, "CreateCacheEntry", {"key": "k", "version": "v"}).json()["signed_upload_url"]
    BLOB.put(url, content=b"x", headers={"x-ms-blob-type": "BlockBlob"})
    assert "sig=" not in repr(emu.requests) and "sig=" not in repr(emu)
    assert emu.secret.hex() not in repr(emu)


# -- Twirp routing and request decoding ---------------------------------------------


def test_unknown_routes_are_bad_route(emu: Emulator) -> None:
    c = client(emu)
    for r in [c.post(SVC + "LookupCacheEntryX", json={}), c.get(SVC + "CreateCacheEntry"),
              c.post("/twirp/other.Service/CreateCacheEntry", json={}),
              c.post(SVC + "CreateCacheEntry", content=b"\x0a\x01k", headers={"Content-Type": "application/protobuf"})]:
        assert r.status_code == 404 and r.json()["code"] == "bad_route", r.text
    assert c.get("/nothing-here").status_code == 404


@pytest.mark.parametrize(("body", "code"), [
    (b"{not json", "malformed"), (b"[1, 2]", "malformed"),
    (b'{"version": "v"}', "invalid_argument"), (b'{"key": "k"}', "invalid_argument"),
    (b'{"key": 5, "version": "v"}', "invalid_argument"),
    (json.dumps({"key": "k" * 513, "version": "v"}).encode(), "invalid_argument"),
])
def test_bad_create_requests(emu: Emulator, body: bytes, code: str) -> None:
    r = client(emu).post(SVC + "CreateCacheEntry", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == code


def test_key_limits_on_lookup(emu: Emulator) -> None:
    c = client(emu)
    assert lookup(c, "k" * 512) is None
    nine = [f"r{i}" for i in range(9)]
    assert lookup(c, "k", nine) is None  # 10 keys: the maximum
    assert lookup(c, "k", ["k", *nine]) is None  # Go clients repeat the primary key: still 10 distinct
    r = call(c, "GetCacheEntryDownloadURL", {"key": "k", "restore_keys": [*nine, "r9"], "version": "v1"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    r = call(c, "GetCacheEntryDownloadURL", {"key": "k", "restore_keys": "k", "version": "v1"})
    assert r.status_code == 400


def test_camel_case_and_int64_forms_are_accepted(emu: Emulator) -> None:
    c = client(emu)
    call(c, "CreateCacheEntry", {"key": "camel", "version": "v1", "metadata": {"repositoryId": "9"}})
    url = emu.plane.upload_url(emu.entries()[0].blob_name, 60)
    BLOB.put(url, content=b"12345", headers={"x-ms-blob-type": "BlockBlob"})
    r = call(c, "FinalizeCacheEntryUpload", {"key": "camel", "version": "v1", "sizeBytes": 5})
    assert r.json() == {"ok": True, "entry_id": "1"}  # int64 answered as a string
    r = call(c, "GetCacheEntryDownloadURL", {"key": "x", "restoreKeys": ["cam"], "version": "v1"})
    assert r.json()["ok"] and r.json()["matched_key"] == "camel" and "signed_download_url" in r.json()
    r = call(c, "FinalizeCacheEntryUpload", {"key": "camel", "version": "v1", "size_bytes": "five"})
    assert r.status_code == 400


# -- reserve / finalize state machine ------------------------------------------------


def test_create_conflicts_while_reserved_and_after_commit(emu: Emulator) -> None:
    c = client(emu)
    assert call(c, "CreateCacheEntry", {"key": "k", "version": "v"}).status_code == 200
    r = call(c, "CreateCacheEntry", {"key": "k", "version": "v"})
    assert r.status_code == 409 and r.json() == {"code": "already_exists", "msg": EXISTS_MSG}
    assert call(c, "CreateCacheEntry", {"key": "k", "version": "other"}).status_code == 200
    assert call(client(emu, [("refs/heads/dev", 3)]), "CreateCacheEntry", {"key": "k", "version": "v"}).status_code == 200
    assert save(c, "done", b"abc").json()["ok"]
    assert call(c, "CreateCacheEntry", {"key": "done", "version": "v1"}).status_code == 409


def test_reservation_expires_after_its_ttl(clock: ManualClock) -> None:
    with Emulator(clock=clock, reservation_ttl=3600) as emu:
        c = client(emu, token=emu.mint_token(ttl=10 * 86400))
        assert call(c, "CreateCacheEntry", {"key": "k", "version": "v"}).status_code == 200
        clock.advance(3599)
        assert call(c, "CreateCacheEntry", {"key": "k", "version": "v"}).status_code == 409
        clock.advance(2)
        assert call(c, "CreateCacheEntry", {"key": "k", "version": "v"}).status_code == 200
        assert [e.id for e in emu.entries()] == [2]


def test_finalize_refusals(emu: Emulator) -> None:
    c = client(emu)
    fin = {"key": "k", "version": "v", "size_bytes": "3"}
    r = call(c, "FinalizeCacheEntryUpload", fin)
    assert r.status_code == 200 and r.json()["ok"] is False and "no reserved" in r.json()["message"]
    url = call(c, "CreateCacheEntry", {"key": "k", "version": "v"}).json()["signed_upload_url"]
    assert "no blob" in call(c, "FinalizeCacheEntryUpload", fin).json()["message"]
    BLOB.put(url, content=b"abcd", headers={"x-ms-blob-type": "BlockBlob"})
    r = call(c, "FinalizeCacheEntryUpload", fin)
    assert r.json()["ok"] is False and "does not match" in r.json()["message"]
    assert emu.entry("k").state == RESERVED  # type: ignore[union-attr]
    assert call(c, "FinalizeCacheEntryUpload", {**fin, "size_bytes": "4"}).json()["ok"]
    assert "already finalized" in call(c, "FinalizeCacheEntryUpload", {**fin, "size_bytes": "4"}).json()["message"]
    r = BLOB.put(url, content=b"evil", headers={"x-ms-blob-type": "BlockBlob"})
    assert r.status_code == 409 and r.headers["x-ms-error-code"] == "BlobImmutableDueToPolicy"
    assert emu.blob_bytes(emu.entry("k")) == b"abcd"  # type: ignore[arg-type]


def test_size_check_can_be_switched_off(clock: ManualClock) -> None:
    with Emulator(clock=clock, check_finalize_size=False) as emu:
        c = client(emu)
        url = call(c, "CreateCacheEntry", {"key": "k", "version": "v"}).json()["signed_upload_url"]
        BLOB.put(url, content=b"abcd", headers={"x-ms-blob-type": "BlockBlob"})
        assert call(c, "FinalizeCacheEntryUpload", {"key": "k", "version": "v"}).json()["ok"]
        assert emu.entry("k").size == 4  # type: ignore[union-attr]


def test_write_denied_forms(clock: ManualClock) -> None:
    with Emulator(clock=clock) as emu:
        r = call(client(emu, [("refs/heads/main", 1)]), "CreateCacheEntry", {"key": "k", "version": "v"})
        assert r.status_code == 200 and r.json() == {"ok": False, "message": "cache write denied: token has no writable scopes"}
        emu.config.write_denied = "permission_denied"
        r = call(client(emu, [("refs/heads/main", 1)]), "CreateCacheEntry", {"key": "k", "version": "v"})
        assert r.status_code == 403 and r.json()["code"] == "permission_denied"
        assert emu.entries() == []


# -- lookups -------------------------------------------------------------------------


def test_exact_and_newest_prefix_matching(emu: Emulator) -> None:
    c = client(emu)
    for key in ["prefix-foo22", "prefix-fo", "prefix-foo1"]:  # go-actions-cache's test vectors
        assert save(c, key, key.encode()).json()["ok"]
    assert lookup(c, "prefix-foo") == "prefix-foo1"
    assert lookup(c, "prefix-") == "prefix-foo1"
    assert lookup(c, "prefix-fo") == "prefix-fo"  # exact wins over newer prefix matches
    assert lookup(c, "prefix-foo3") is None
    assert lookup(c, "prefix-foo2") == "prefix-foo22"
    assert lookup(c, "nope", ["also-nope", "prefix-foo2"]) == "prefix-foo22"
    assert lookup(c, "prefix-foo1", version="v2") is None  # versions never mix


def test_scopes_are_searched_in_token_order(emu: Emulator) -> None:
    save(client(emu, [("refs/heads/main", 3)]), "deps-exact", b"main")
    save(client(emu, [("refs/heads/feature", 3)]), "deps-e", b"feature")
    reader = client(emu, [("refs/heads/feature", 3), ("refs/heads/main", 1)])
    assert lookup(reader, "deps-e") == "deps-e"
    assert lookup(reader, "deps-ex") == "deps-exact"  # no hit in the first scope: the second answers
    assert lookup(reader, "deps-") == "deps-e"  # the first scope's prefix hit beats the second scope
    assert lookup(client(emu, [("refs/heads/other", 3)]), "deps-") is None
    assert lookup(client(emu, [("refs/heads/main", 2)]), "deps-exact") is None  # write-only cannot read


def test_reserved_entries_are_invisible(emu: Emulator) -> None:
    c = client(emu)
    call(c, "CreateCacheEntry", {"key": "pending", "version": "v1"})
    assert lookup(c, "pending") is None


def test_visibility_delay(clock: ManualClock) -> None:
    with Emulator(clock=clock, visibility_delay=2.0) as emu:
        c = client(emu)
        assert save(c, "k", b"x").json()["ok"]
        assert lookup(c, "k") is None
        clock.advance(1.9)
        assert lookup(c, "k") is None
        clock.advance(0.2)
        assert lookup(c, "k") == "k"


def test_size_cap_evicts_least_recently_used(clock: ManualClock) -> None:
    with Emulator(clock=clock, size_cap=100) as emu:
        c = client(emu)
        for key in ("a", "b"):
            save(c, key, b"x" * 40)
            clock.advance(1)
        old_url = call(c, "GetCacheEntryDownloadURL", {"key": "b", "version": "v1"}).json()["signed_download_url"]
        clock.advance(1)
        assert lookup(c, "a") == "a"  # now "b" is the least recently used
        clock.advance(1)
        save(c, "c", b"x" * 40)
        assert sorted(e.key for e in emu.entries()) == ["a", "c"]
        assert lookup(c, "b") is None
        r = BLOB.get(old_url)
        assert r.status_code == 404 and r.headers["x-ms-error-code"] == "BlobNotFound"
        save(c, "huge", b"x" * 150)  # over the cap alone: stored, everything older goes
        assert [e.key for e in emu.entries()] == ["huge"]


def test_idle_entries_expire(clock: ManualClock) -> None:
    with Emulator(clock=clock, idle_ttl=7 * 86400) as emu:
        c = client(emu, token=emu.mint_token(ttl=30 * 86400))
        save(c, "stale", b"1")
        save(c, "fresh", b"2")
        clock.advance(6 * 86400)
        assert lookup(c, "fresh") == "fresh"
        clock.advance(2 * 86400)
        assert lookup(c, "stale") is None and lookup(c, "fresh") == "fresh"
        assert [e.key for e in emu.entries()] == ["fresh"]
        assert emu.entries()[0].state == COMMITTED


# -- faults --------------------------------------------------------------------------


def test_next_n_calls_fail_then_recover(emu: Emulator) -> None:
    c = client(emu)
    emu.fail_next("CreateCacheEntry", 503, count=2)
    statuses = [call(c, "CreateCacheEntry", {"key": f"k{i}", "version": "v"}).status_code for i in range(3)]
    assert statuses == [503, 503, 200]
    assert emu.count("CreateCacheEntry") == 3 and [e.key for e in emu.entries()] == ["k2"]
    emu.fail_next("*", 502, count=1)
    r = call(c, "GetCacheEntryDownloadURL", {"key": "x", "version": "v"})
    assert r.status_code == 502 and r.json()["code"] == "unavailable"


def test_rate_limit_and_quota_faults(emu: Emulator) -> None:
    c = client(emu)
    emu.fail_next("CreateCacheEntry", 429, retry_after=7)
    r = call(c, "CreateCacheEntry", {"key": "k", "version": "v"})
    assert r.status_code == 429 and r.headers["retry-after"] == "7" and r.json()["code"] == "resource_exhausted"
    emu.fail_next("CreateCacheEntry", "quota")
    assert "insufficient usage" in call(c, "CreateCacheEntry", {"key": "k", "version": "v"}).json()["msg"]
    emu.fail_next("FinalizeCacheEntryUpload", "non_json")
    r = c.post(SVC + "FinalizeCacheEntryUpload", json={"key": "k", "version": "v"})
    assert r.status_code == 502 and r.headers["content-type"] == "text/html"
    assert emu.entries() == []


def test_upload_budget_per_repository(emu: Emulator, clock: ManualClock) -> None:
    emu.config.uploads_per_minute = 2
    c = client(emu)
    assert [call(c, "CreateCacheEntry", {"key": f"k{i}", "version": "v"}).status_code for i in range(2)] == [200, 200]
    r = call(c, "CreateCacheEntry", {"key": "k2", "version": "v"})
    assert r.status_code == 429 and r.headers["retry-after"] == "60"
    other_repo = client(emu, token=emu.mint_token(repository="2"))
    assert call(other_repo, "CreateCacheEntry", {"key": "k2", "version": "v"}).status_code == 200
    clock.advance(30)
    assert call(c, "CreateCacheEntry", {"key": "k2", "version": "v"}).headers["retry-after"] == "30"
    clock.advance(31)
    assert call(c, "CreateCacheEntry", {"key": "k2", "version": "v"}).status_code == 200


def test_ambiguous_create_reproduces_the_409_trap(emu: Emulator) -> None:
    c = client(emu)
    emu.drop_next("CreateCacheEntry", after=True)
    with pytest.raises(httpx.RemoteProtocolError):
        c.post(SVC + "CreateCacheEntry", json={"key": "k", "version": "v"})
    assert emu.entry("k").state == RESERVED  # type: ignore[union-attr]
    assert call(c, "CreateCacheEntry", {"key": "k", "version": "v"}).status_code == 409


def test_slow_create_after_commit_times_out_then_conflicts(emu: Emulator) -> None:
    emu.delay_next("CreateCacheEntry", 3.0, after=True)
    impatient = client(emu)
    impatient.timeout = httpx.Timeout(1.0)
    with pytest.raises(httpx.ReadTimeout):
        impatient.post(SVC + "CreateCacheEntry", json={"key": "slow", "version": "v"})
    assert call(client(emu), "CreateCacheEntry", {"key": "slow", "version": "v"}).status_code == 409


def test_slow_create_before_commit_lets_the_retry_win(emu: Emulator) -> None:
    emu.delay_next("CreateCacheEntry", 2.0)
    impatient = client(emu)
    impatient.timeout = httpx.Timeout(0.5)
    with pytest.raises(httpx.ReadTimeout):
        impatient.post(SVC + "CreateCacheEntry", json={"key": "slow", "version": "v"})
    assert emu.entries() == []  # the delayed call has not reserved yet
    assert call(client(emu), "CreateCacheEntry", {"key": "slow", "version": "v"}).status_code == 200
    deadline = time.monotonic() + 10
    while emu.counts["CreateCacheEntry"] < 2 or len(emu.requests) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    while not [r for r in emu.requests if r.status == 409]:  # the late original now loses
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_parse_fault_cli_forms() -> None:
    f = parse_fault("CreateCacheEntry=503,count=2")
    assert (f.operation, f.kind, f.status, f.count) == ("CreateCacheEntry", "error", 503, 2)
    f = parse_fault("*=429,retry_after=5,count=*")
    assert (f.status, f.retry_after, f.count) == (429, 5.0, None)
    f = parse_fault("CreateCacheEntry=delay_after,delay=35")
    assert (f.kind, f.delay, f.status) == ("delay_after", 35.0, 500)
    assert parse_fault("GetCacheEntryDownloadURL=non_json").status == 502
    for bad in ["CreateCacheEntry", "=503", "X=explode", "X=503,count=two", "X=503,colour=red"]:
        with pytest.raises(UsageError):
            parse_fault(bad)


# -- command line ----------------------------------------------------------------------


@contextmanager
def cli_emulator(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[tuple[dict[str, str], list[str]]]:
    """Run `transcoder emulator serve`; yields (exports, [stdout, stderr] filled after SIGTERM)."""
    env_file = tmp_path / "gha.env"
    proc = subprocess.Popen([sys.executable, "-m", "transcoder", "emulator", "serve", "--env-file", str(env_file), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    output: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not env_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.05)
        yield dict(line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines()), output
    finally:
        proc.send_signal(signal.SIGTERM)
        output.extend(proc.communicate(timeout=60))
    assert proc.returncode == 0, output[1]


def test_cli_prints_env_and_serves_until_terminated(tmp_path: Path) -> None:
    with cli_emulator(tmp_path, "--scope", "refs/pull/3/merge=3", "--scope", "refs/heads/main=1",
                      "--fault", "GetCacheEntryDownloadURL=503") as (exports, output):
        assert exports["ACTIONS_CACHE_SERVICE_V2"] == "1" and exports["ACTIONS_CACHE_URL"].endswith("/")
        assert exports["ACTIONS_RESULTS_URL"] == exports["ACTIONS_CACHE_URL"]
        api = httpx.Client(base_url=exports["ACTIONS_RESULTS_URL"], verify=False,
                           headers={"Authorization": "Bearer " + exports["ACTIONS_RUNTIME_TOKEN"]})
        assert call(api, "GetCacheEntryDownloadURL", {"key": "k", "version": "v"}).status_code == 503
        r = call(api, "CreateCacheEntry", {"key": "k", "version": "v"})
        assert r.json()["ok"] and "/devstoreaccount1/actions-cache/" in r.json()["signed_upload_url"]
        state = BLOB.get(exports["ACTIONS_RESULTS_URL"] + "_emulator/state").json()
        assert state["counts"] == {"GetCacheEntryDownloadURL": 1, "CreateCacheEntry": 1}
        assert [(e["key"], e["state"], e["scope"]) for e in state["entries"]] == [("k", "reserved", "refs/pull/3/merge")]
    out, err = output
    assert out.splitlines()[0].startswith("export ACTIONS_CACHE_URL=")
    assert "sig=" not in out + err and exports["ACTIONS_RUNTIME_TOKEN"] not in err


@pytest.mark.peers
def test_cli_azurite_plane_from_the_environment(tmp_path: Path, azurite: peers.Azurite) -> None:
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    with cli_emulator(tmp_path, "--azurite", "--v1", env=env) as (exports, output):
        assert "ACTIONS_CACHE_SERVICE_V2" not in exports and "ACTIONS_RESULTS_URL" not in exports
        api = httpx.Client(base_url=exports["ACTIONS_CACHE_URL"], verify=False,
                           headers={"Authorization": "Bearer " + exports["ACTIONS_RUNTIME_TOKEN"]})
        created = call(api, "CreateCacheEntry", {"key": "k", "version": "v"})  # Twirp is served whatever was printed
        assert created.json()["signed_upload_url"].startswith(azurite.blob_endpoint + "/actions-cache-")
        assert api.post("_apis/artifactcache/caches", json={"key": "k1", "version": "v"}).status_code == 201
    assert azurite.key not in output[0] + output[1]


def test_concurrent_creates_of_one_key_have_one_winner(emu: Emulator) -> None:
    # The design relies on Create as a compare-and-swap: exactly one racer gets the key.
    token = emu.mint_token()

    def create(_: int) -> int:
        with httpx.Client(base_url=emu.url, verify=False, headers={"Authorization": f"Bearer {token}"}) as c:
            return c.post(SVC + "CreateCacheEntry", json={"key": "index-#1", "version": "v"}).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = sorted(pool.map(create, range(16)))
    assert statuses == [200] + [409] * 15
    assert len(emu.entries()) == 1


def test_hostile_framing_is_refused(emu: Emulator) -> None:
    import socket

    url = call(client(emu), "CreateCacheEntry", {"key": "k", "version": "v"}).json()["signed_upload_url"]
    target = url.removeprefix(emu.url).encode()
    host, port = emu.url.removeprefix("http://").split(":")
    for head, body in [(b"Content-Length: -5\r\n", b""), (b"Transfer-Encoding: chunked\r\n", b"zz\r\n")]:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"PUT " + target + b" HTTP/1.1\r\nHost: x\r\nx-ms-blob-type: BlockBlob\r\n" + head + b"\r\n" + body)
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 400"), reply
    assert emu.plane.committed_size(emu.entries()[0].blob_name) is None


def test_public_names() -> None:
    import transcoder.gha.emulator as package

    # Submodules appear as attributes once anything imported them; they are not exports.
    assert sorted(package.__all__) == sorted(name for name, value in vars(package).items() if not name.startswith("_")
                                             and name != "annotations" and not isinstance(value, types.ModuleType))
