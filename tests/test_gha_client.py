"""The GitHub Actions cache client (v1 and v2) against the project's emulator:
configuration from the environment, streamed uploads, ranged downloads,
conflicts, retries, rate limits, expired URLs, and secrets kept out of text."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from transcoder.errors import AuthError, Conflict, NotFound, SinkError, TransientError, UsageError
from transcoder.gha import CacheClient, Secret, config_from, open_client, parse_duration, redact_url, scrub
from transcoder.gha.chunks import ChunkPipe
from transcoder.gha.emulator import Emulator, ManualClock
from transcoder.gha.keys import BUILDKIT_VERSION
from transcoder.gha.retry import RetryPolicy, UploadRateLimiter

VERSION = "v-test"
MiB = 1 << 20


@pytest.fixture(params=[2, 1], ids=["v2", "v1"])
def protocol(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator() as e:
        yield e


def client_for(emu: Emulator, protocol: int = 2, *, timeout: float = 30.0, **kwargs: object) -> CacheClient:
    config = config_from({"timeout": str(timeout)}, emu.env(v2=protocol == 2))
    kwargs.setdefault("policy", RetryPolicy(timeout, initial=0.05, max_wait=0.5))
    kwargs.setdefault("limiter", UploadRateLimiter(10_000))
    return open_client(config, **kwargs)


def save(client: CacheClient, key: str, data: bytes, version: str = VERSION) -> None:
    upload = client.reserve(key, version)
    for i in range(0, len(data), 300_000):
        upload.write(data[i : i + 300_000])
    upload.finish(len(data))


# --- configuration -----------------------------------------------------------------------------------------------


def test_version_follows_the_toolkit_rules() -> None:
    base = {"ACTIONS_RUNTIME_TOKEN": "t0ken", "ACTIONS_RESULTS_URL": "http://r.example/x/", "ACTIONS_CACHE_URL": "http://c.example/p/"}
    assert config_from({}, base).version == 1
    v2 = config_from({}, {**base, "ACTIONS_CACHE_SERVICE_V2": "True"})
    assert (v2.version, v2.url, v2.api_root) == (2, "http://r.example/x/", "http://r.example/")  # Twirp at the root
    # Any non-empty value selects v2 (the toolkit's rule), but GHES always speaks v1.
    assert config_from({}, {**base, "ACTIONS_CACHE_SERVICE_V2": "false"}).version == 2
    ghes = config_from({}, {**base, "ACTIONS_CACHE_SERVICE_V2": "1", "GITHUB_SERVER_URL": "https://ghe.corp.example"})
    assert (ghes.version, ghes.api_root) == (1, "http://c.example/p/")
    assert config_from({}, {**base, "ACTIONS_CACHE_SERVICE_V2": "1", "GITHUB_SERVER_URL": "https://x.ghe.com"}).version == 2
    # v1 falls back to the results URL; a missing trailing slash is added.
    only_results = {"ACTIONS_RUNTIME_TOKEN": "t0ken", "ACTIONS_RESULTS_URL": "http://r.example/base"}
    assert config_from({}, only_results).api_root == "http://r.example/base/"


def test_options_override_the_environment() -> None:
    env = {"ACTIONS_RUNTIME_TOKEN": "envtoken", "ACTIONS_RESULTS_URL": "http://r.example/", "ACTIONS_CACHE_SERVICE_V2": "1"}
    cfg = config_from({"version": "1", "url": "http://other.example/", "token": "opttoken", "timeout": "1m30s"}, env)
    assert (cfg.version, cfg.url, cfg.token.reveal(), cfg.timeout) == (1, "http://other.example/", "opttoken", 90.0)
    assert config_from({"url_v2": "http://v2.example/"}, {"ACTIONS_RUNTIME_TOKEN": "x"}).version == 2


@pytest.mark.parametrize(("opts", "env", "names"), [
    ({}, {"ACTIONS_RESULTS_URL": "http://r/", "ACTIONS_CACHE_SERVICE_V2": "1"}, "ACTIONS_RUNTIME_TOKEN"),
    ({}, {"ACTIONS_RUNTIME_TOKEN": "x"}, "ACTIONS_CACHE_URL"),
    ({"version": "3"}, {"ACTIONS_RUNTIME_TOKEN": "x"}, "version="),
    ({"timeout": "soon"}, {"ACTIONS_RUNTIME_TOKEN": "x", "ACTIONS_CACHE_URL": "http://c/"}, "timeout="),
    ({"url": "ftp://c/"}, {"ACTIONS_RUNTIME_TOKEN": "x"}, "url="),
])
def test_bad_configuration_is_a_usage_error_naming_it(opts: dict[str, str], env: dict[str, str], names: str) -> None:
    with pytest.raises(UsageError, match=re.escape(names)):
        config_from(opts, env)


def test_durations() -> None:
    assert parse_duration("10m") == 600
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5
    assert parse_duration("45") == 45
    for bad in ("", "10 m", "-1s", "0", "1x"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def test_secrets_do_not_show() -> None:
    token = Secret("eyJhbGciOi.secret-part.sig")
    assert "secret-part" not in repr(token) + str(token)
    cfg = config_from({}, {"ACTIONS_RUNTIME_TOKEN": token.reveal(), "ACTIONS_CACHE_URL": "http://c/?sig=abc"})
    assert "secret-part" not in repr(cfg) and "abc" not in repr(cfg)
    url = "https://a.blob.core.windows.net/c/b?sv=2025&se=x&sp=r&sig=Zm9v%2Bbar%3D"
    assert redact_url(url) == "https://a.blob.core.windows.net/c/b?…"
    text = scrub(f"GET {url} failed; Authorization: Bearer {token.reveal()}", token)
    assert "Zm9v" not in text and "secret-part" not in text


# --- round trips -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1000, 3 * MiB + 17])
def test_save_lookup_and_ranged_read(emu: Emulator, protocol: int, size: int) -> None:
    data = os.urandom(size)
    with client_for(emu, protocol, block_size=MiB) as client:
        assert client.lookup("k-round", VERSION) is None
        save(client, "k-round", data)
        entry = client.lookup("k-round", VERSION)
        assert entry is not None and entry.key == "k-round"
        assert client.size(entry) == size
        with client.open(entry, 0, size) as f:
            assert f.read() == data
        if size > 10:
            with client.open(entry, 7, size - 3) as f:
                assert f.read() == data[7:-3]
    blob_ops = ("PutBlob", "PutBlock") if protocol == 2 else ("v1.UploadChunk",)
    assert emu.count(*blob_ops) == (0 if protocol == 1 and size == 0 else max(1, -(-size // MiB)))


def test_small_blob_is_one_put_blob_and_large_one_is_block_list(emu: Emulator) -> None:
    with client_for(emu, block_size=MiB) as client:
        save(client, "small", os.urandom(MiB))
        assert (emu.count("PutBlob"), emu.count("PutBlock")) == (1, 0)
        save(client, "large", os.urandom(MiB + 1))
        assert (emu.count("PutBlob"), emu.count("PutBlock"), emu.count("PutBlockList")) == (1, 2, 1)


def test_blocks_go_up_while_the_stream_is_still_written(emu: Emulator, protocol: int) -> None:
    with client_for(emu, protocol, block_size=MiB, in_flight=2) as client:
        upload = client.reserve("streamed", VERSION)
        op = "PutBlock" if protocol == 2 else "v1.UploadChunk"
        for _ in range(6):
            upload.write(os.urandom(MiB))
        deadline = time.monotonic() + 10
        while emu.count(op) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert emu.count(op) >= 4  # sent before finish(): no temporary file, no whole-blob buffer
        assert client.lookup("streamed", VERSION) is None  # nothing visible before finish
        upload.finish(6 * MiB)
        assert client.lookup("streamed", VERSION) is not None


def test_chunk_pipe_bounds_what_is_in_flight() -> None:
    gate = threading.Event()
    started: list[int] = []

    def send(index: int, offset: int, data: bytes | bytearray) -> None:
        started.append(index)
        gate.wait(10)

    pipe = ChunkPipe(send, lambda data: None, chunk_size=10, in_flight=2, name="t")
    blocked = threading.Event()

    def writer() -> None:
        for _ in range(6):
            pipe.write(b"x" * 10)
        blocked.set()

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.3)
    # Two chunks in flight, the third queued behind them, so the writer waits: back-pressure.
    assert not blocked.is_set() and len(started) == 2
    gate.set()
    t.join(10)
    assert pipe.finish() == 6 and sorted(started) == list(range(6))


def test_a_sender_error_reaches_the_writer() -> None:
    def send(index: int, offset: int, data: bytes | bytearray) -> None:
        raise SinkError("block refused")

    pipe = ChunkPipe(send, lambda data: None, chunk_size=4, in_flight=1, name="t")
    with pytest.raises(SinkError, match="block refused"):
        for _ in range(50):
            pipe.write(b"abcd")
            time.sleep(0.01)
        pipe.finish()
    pipe.close()


def test_lookup_exact_and_prefix(emu: Emulator, protocol: int) -> None:
    with client_for(emu, protocol) as client:
        save(client, "chain#1", b"one")
        save(client, "chain#12", b"twelve")
        hit = client.lookup("chain#", VERSION)
        assert hit is not None and hit.key == "chain#12"  # newest under the prefix
        assert client.lookup("chain#1", VERSION, exact=True) is not None
        assert client.lookup("chain#2", VERSION) is None
        assert client.lookup("chain#", VERSION, exact=True) is None
        assert client.lookup("chain#1", "other-version") is None


def test_reserve_conflicts_while_reserved_and_after_commit(emu: Emulator, protocol: int) -> None:
    with client_for(emu, protocol) as client:
        upload = client.reserve("once", BUILDKIT_VERSION)
        with pytest.raises(Conflict):
            client.reserve("once", BUILDKIT_VERSION)
        upload.write(b"data")
        upload.finish(4)
        with pytest.raises(Conflict):
            client.reserve("once", BUILDKIT_VERSION)


def test_read_only_token_cannot_write(emu: Emulator, protocol: int) -> None:
    env = emu.env([("refs/heads/main", 1)], v2=protocol == 2)
    with open_client(config_from({}, env), policy=RetryPolicy(5, initial=0.01)) as client, pytest.raises(AuthError):
        client.reserve("ro", VERSION)


# --- retries -----------------------------------------------------------------------------------------------------


def test_5xx_and_non_json_answers_are_retried(emu: Emulator) -> None:
    emu.fail_next("CreateCacheEntry", 503, count=2)
    emu.fail_next("GetCacheEntryDownloadURL", "non_json", count=1)
    emu.fail_next("PutBlob", 500, count=1)
    with client_for(emu) as client:
        save(client, "retried", b"payload")
        assert client.lookup("retried", VERSION) is not None
    assert emu.count("CreateCacheEntry") == 3 and emu.count("PutBlob") == 2


def test_client_errors_are_not_retried(emu: Emulator) -> None:
    emu.fail_next("FinalizeCacheEntryUpload", 400, count=1)
    with client_for(emu) as client, pytest.raises(SinkError) as info:
        save(client, "bad", b"x")
    assert not isinstance(info.value, TransientError)
    assert emu.count("FinalizeCacheEntryUpload") == 1


def test_quota_message_fails_without_retry(emu: Emulator) -> None:
    emu.fail_next("CreateCacheEntry", "quota", count=1)
    with client_for(emu) as client, pytest.raises(SinkError, match="quota"):
        client.reserve("q", VERSION)
    assert emu.count("CreateCacheEntry") == 1


def test_retry_after_is_honoured_within_the_budget(emu: Emulator) -> None:
    slept: list[float] = []
    emu.fail_next("CreateCacheEntry", 429, retry_after=7, count=1)
    with client_for(emu, policy=RetryPolicy(60, sleep=slept.append)) as client:
        client.reserve("limited", VERSION).abort()
    assert slept == [7.0]


def test_retry_after_beyond_the_budget_fails_at_once(emu: Emulator) -> None:
    slept: list[float] = []
    emu.fail_next("CreateCacheEntry", 429, retry_after=120, count=1)
    with client_for(emu, policy=RetryPolicy(30, sleep=slept.append)) as client, \
            pytest.raises(TransientError, match="exceeds the remaining timeout"):
        client.reserve("limited", VERSION)
    assert slept == []


def test_server_rate_limit_and_client_limiter() -> None:
    clock = ManualClock()
    with Emulator(clock=clock, uploads_per_minute=3) as emu:
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            clock.advance(seconds)

        # Without a client-side limit the 4th create gets 429 + Retry-After, and waits it out.
        with client_for(emu, policy=RetryPolicy(120, sleep=sleep), limiter=UploadRateLimiter(1000)) as client:
            for i in range(4):
                client.reserve(f"r{i}", VERSION).abort()
        assert emu.count("CreateCacheEntry") == 5 and len(slept) == 1 and slept[0] >= 1
        # With the limiter at 3/min, the client waits by itself and the server never says 429.
        emu.reset_counts()
        clock.advance(60)
        limiter = UploadRateLimiter(3, clock=clock, sleep=sleep)
        with client_for(emu, policy=RetryPolicy(120, sleep=sleep), limiter=limiter) as client:
            for i in range(4):
                client.reserve(f"s{i}", VERSION).abort()
        assert emu.count("CreateCacheEntry") == 4 and limiter.waited > 0


def test_persistent_5xx_gives_up_within_the_timeout(emu: Emulator) -> None:
    emu.fail_next("GetCacheEntryDownloadURL", 503, count=None)
    with client_for(emu, policy=RetryPolicy(1.0, initial=0.05, max_wait=0.2, max_attempts=1000)) as client, \
            pytest.raises(TransientError, match="timeout reached"):  # the budget ends it, not the attempt count
        client.lookup("down", VERSION)
    assert emu.count("GetCacheEntryDownloadURL") > 2


def test_ambiguous_create_then_conflict(emu: Emulator, protocol: int) -> None:
    op = "CreateCacheEntry" if protocol == 2 else "v1.ReserveCache"
    emu.drop_next(op, after=True)  # the server reserved it, the client never heard
    with client_for(emu, protocol) as client, pytest.raises(Conflict, match="earlier attempt may have reserved it"):
        client.reserve("ambiguous", VERSION)
    assert emu.count(op) == 2


# --- downloads ---------------------------------------------------------------------------------------------------


def test_expired_download_url_is_requested_again() -> None:
    clock = ManualClock()
    with Emulator(clock=clock, download_url_ttl=600) as emu, client_for(emu) as client:
        data = os.urandom(2 * MiB)
        save(client, "expiring", data)
        entry = client.lookup("expiring", VERSION)
        assert entry is not None
        clock.advance(601)
        lookups = emu.count("GetCacheEntryDownloadURL")
        with client.open(entry, 0, len(data)) as f:
            assert f.read() == data
        assert emu.count("GetCacheEntryDownloadURL") == lookups + 1
        assert client.calls["refresh"] == 1


class _Truncating(httpx.BaseTransport):
    """Fault injection: the first blob download breaks off after ``cut`` bytes."""

    def __init__(self, cut: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.cut = cut
        self.fired = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.handle_request(request)
        if request.method != "GET" or "/twirp/" in request.url.path or self.fired:
            return resp
        self.fired += 1
        body = resp.read()[: self.cut]

        def broken() -> Iterator[bytes]:
            yield body
            raise httpx.ReadError("connection reset by peer")

        return httpx.Response(resp.status_code, headers=resp.headers, stream=_Stream(broken()))


class _Stream(httpx.SyncByteStream):
    def __init__(self, it: Iterator[bytes]) -> None:
        self.it = it

    def __iter__(self) -> Iterator[bytes]:
        return self.it


def test_broken_download_resumes_where_it_stopped(emu: Emulator) -> None:
    data = os.urandom(3 * MiB)
    with client_for(emu) as client:
        save(client, "resumed", data)
    transport = _Truncating(MiB + 5)
    with client_for(emu, transport=transport) as client:
        entry = client.lookup("resumed", VERSION)
        assert entry is not None
        with client.open(entry, 0, len(data)) as f:
            assert f.read() == data
    assert transport.fired == 1
    ranges = [r for r in emu.requests if r.operation == "GetBlob"]
    assert len(ranges) == 2  # the broken GET and the one resuming at its offset


# --- secrets -----------------------------------------------------------------------------------------------------


def test_no_token_or_signature_in_errors_or_logs(emu: Emulator, caplog: pytest.LogCaptureFixture,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level("DEBUG")
    env = emu.env()
    token = env["ACTIONS_RUNTIME_TOKEN"]
    texts: list[str] = []
    with client_for(emu) as client:
        save(client, "secret-test", b"x" * 100)
        entry = client.lookup("secret-test", VERSION)
        assert entry is not None
        sig = re.search(r"sig=([^&]+)", entry.url.reveal())
        assert sig is not None
        texts += [repr(entry), str(entry), repr(client), repr(client.config)]
        for fault in (403, 404, 500):
            emu.fail_next("GetBlob", fault, count=None)
            with pytest.raises((SinkError, NotFound)) as info, client.open(entry, 0, 100) as f:
                f.read()
            texts += [str(info.value), repr(info.value), str(info.value.__cause__)]
            emu.faults.clear()
        with pytest.raises(Conflict) as conflict:
            client.reserve("secret-test", VERSION)
        texts.append(str(conflict.value))
    bad = config_from({"token": token + "x"}, env)
    with open_client(bad, policy=RetryPolicy(5, initial=0.01)) as client, pytest.raises(AuthError) as auth:
        client.lookup("secret-test", VERSION)
    texts.append(str(auth.value))
    out = capsys.readouterr()
    texts += [out.out, out.err, caplog.text]
    blob = "\n".join(texts)
    assert token not in blob and token[-20:] not in blob
    assert sig.group(1) not in blob
