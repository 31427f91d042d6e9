"""The emulator's Azure block-blob data plane and its v1 REST surface, over HTTP with httpx."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import pytest

from tests import peers
from transcoder.gha.emulator import COMMITTED, Emulator, ManualClock

HTTP = httpx.Client(verify=False, timeout=60)
SVC = "/twirp/github.actions.results.api.v1.CacheService/"
V1 = "_apis/artifactcache/"


def auth(emu: Emulator, scopes: list[tuple[str, int]] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {emu.mint_token(scopes)}"}


def reserve(emu: Emulator, key: str = "k") -> str:
    r = HTTP.post(emu.url + SVC + "CreateCacheEntry", json={"key": key, "version": "v"}, headers=auth(emu))
    assert r.status_code == 200, r.text
    return str(r.json()["signed_upload_url"])


def finalize(emu: Emulator, size: int, key: str = "k") -> httpx.Response:
    return HTTP.post(emu.url + SVC + "FinalizeCacheEntryUpload", headers=auth(emu),
                     json={"key": key, "version": "v", "size_bytes": str(size)})


def js_block_id(i: int, prefix: str = str(uuid.uuid4())) -> str:
    """The toolkit's form: base64 of a UUID and a 12-digit index (48 characters)."""
    return base64.b64encode(f"{prefix}{i:012d}".encode()).decode()


def go_block_id(i: int, prefix: bytes = uuid.uuid4().bytes) -> str:
    """azblob's form: base64 of 64 raw bytes (UUID, big-endian block number, zeros)."""
    return base64.b64encode(prefix + i.to_bytes(4, "big") + bytes(44)).decode()


def put_block(url: str, block_id: str, data: bytes) -> httpx.Response:
    return HTTP.put(f"{url}&comp=block&blockid={quote(block_id, safe='')}", content=data)


def block_list(url: str, items: list[tuple[str, str]]) -> httpx.Response:
    body = "".join(f"<{kind}>{bid}</{kind}>" for kind, bid in items)
    xml = f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><BlockList>{body}</BlockList>'
    return HTTP.put(f"{url}&comp=blocklist", content=xml.encode(), headers={"Content-Type": "application/xml"})


def download_url(emu: Emulator, key: str = "k") -> str:
    r = HTTP.post(emu.url + SVC + "GetCacheEntryDownloadURL", json={"key": key, "version": "v"}, headers=auth(emu))
    assert r.json()["ok"], r.text
    return str(r.json()["signed_download_url"])


# -- Put Blob / Put Block / Put Block List ---------------------------------------------


def test_put_blob_headers_and_blob_type(emu: Emulator) -> None:
    url = reserve(emu)
    r = HTTP.put(url, content=b"data")
    assert r.status_code == 400 and r.headers["x-ms-error-code"] == "MissingRequiredHeader"
    assert r.text.startswith('<?xml version="1.0" encoding="utf-8"?><Error><Code>MissingRequiredHeader</Code>')
    r = HTTP.put(url, content=b"data", headers={"x-ms-blob-type": "PageBlob"})
    assert r.status_code == 400 and r.headers["x-ms-error-code"] == "InvalidHeaderValue"
    r = HTTP.put(url, content=b"data", headers={"x-ms-blob-type": "BlockBlob", "x-ms-version": "2024-11-04"})
    assert r.status_code == 201
    for name in ("x-ms-request-id", "ETag", "Last-Modified", "Date"):
        assert r.headers.get(name), name
    assert r.headers["x-ms-version"] == "2024-11-04"


@pytest.mark.parametrize("make_id", [js_block_id, go_block_id])
def test_blocks_commit_in_list_order_not_arrival_order(emu: Emulator, make_id: object) -> None:
    url = reserve(emu)
    pieces = [os.urandom(1000 + i) for i in range(8)]
    ids = [make_id(i) for i in range(8)]  # type: ignore[operator]
    with ThreadPoolExecutor(8) as pool:  # concurrent and out of order, like the SDKs
        statuses = list(pool.map(lambda i: put_block(url, ids[i], pieces[i]).status_code, reversed(range(8))))
    assert statuses == [201] * 8
    assert emu.count("PutBlock") == 8
    r = block_list(url, [("Latest", bid) for bid in ids])
    assert r.status_code == 201 and r.headers["ETag"]
    assert finalize(emu, sum(map(len, pieces))).json()["ok"]
    assert HTTP.get(download_url(emu)).content == b"".join(pieces)


def test_block_list_kinds_and_errors(emu: Emulator) -> None:
    url = reserve(emu)
    a, b, c = js_block_id(0), js_block_id(1), js_block_id(2)
    put_block(url, a, b"AAA")
    put_block(url, b, b"BBB")
    assert block_list(url, [("Uncommitted", a), ("Latest", b)]).status_code == 201
    put_block(url, a, b"aaa")  # a new uncommitted version of a committed block
    put_block(url, c, b"CCC")
    assert block_list(url, [("Committed", a), ("Latest", a), ("Uncommitted", c), ("Committed", b)]).status_code == 201
    assert emu.plane.read_all(emu.entries()[0].blob_name) == b"AAAaaaCCCBBB"
    r = block_list(url, [("Uncommitted", a)])  # uncommitted blocks were discarded by the last commit
    assert r.status_code == 400 and r.headers["x-ms-error-code"] == "InvalidBlockList"
    r = HTTP.put(f"{url}&comp=blocklist", content=b"<BlockList><Latest>")
    assert r.status_code == 400 and r.headers["x-ms-error-code"] == "InvalidXmlDocument"
    r = put_block(url, go_block_id(3), b"x")  # ids of one blob must have one length
    assert r.status_code == 400 and r.headers["x-ms-error-code"] == "InvalidBlobOrBlock"
    r = HTTP.put(f"{url}&comp=block&blockid=%%%", content=b"x")
    assert r.status_code == 400 and r.headers["x-ms-error-code"] == "InvalidQueryParameterValue"


# -- signed URLs -----------------------------------------------------------------------


def test_sas_is_checked(emu: Emulator, clock: ManualClock) -> None:
    url = reserve(emu)
    tampered = url.replace("sp=cw", "sp=rcw")
    r = HTTP.put(tampered, content=b"x", headers={"x-ms-blob-type": "BlockBlob"})
    assert r.status_code == 403 and r.headers["x-ms-error-code"] == "AuthenticationFailed"
    assert b"<AuthenticationErrorDetail>Signature did not match" in r.content
    other = url.replace("/actions-cache/1-1?", "/actions-cache/1-2?")
    assert HTTP.put(other, content=b"x", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 403
    assert HTTP.get(url).headers["x-ms-error-code"] == "AuthorizationPermissionMismatch"  # upload URL cannot read
    assert HTTP.put(url, content=b"x", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 201
    assert finalize(emu, 1).json()["ok"]
    down = download_url(emu)
    r = HTTP.put(down, content=b"y", headers={"x-ms-blob-type": "BlockBlob"})
    assert r.status_code == 403 and r.headers["x-ms-error-code"] == "AuthorizationPermissionMismatch"
    assert HTTP.get(down.split("?")[0]).status_code == 403  # no SAS at all
    clock.advance(emu.config.download_url_ttl + 1)
    r = HTTP.get(down)
    assert r.status_code == 403 and r.headers["x-ms-error-code"] == "AuthenticationFailed"
    assert b"Signed expiry time" in r.content
    assert HTTP.get(download_url(emu)).content == b"x"  # a fresh URL works


def test_url_ttl_knob(clock: ManualClock) -> None:
    with Emulator(clock=clock, upload_url_ttl=5) as emu:
        url = reserve(emu)
        clock.advance(6)
        r = HTTP.put(url, content=b"x", headers={"x-ms-blob-type": "BlockBlob"})
        assert r.status_code == 403 and r.headers["x-ms-error-code"] == "AuthenticationFailed"


def test_writes_need_a_live_reservation(emu: Emulator) -> None:
    url = reserve(emu)
    emu.evict(emu.entries()[0])
    r = HTTP.put(url, content=b"x", headers={"x-ms-blob-type": "BlockBlob"})
    assert r.status_code == 403 and r.headers["x-ms-error-code"] == "AuthorizationFailure"


# -- reads -----------------------------------------------------------------------------


def test_head_and_ranged_reads(emu: Emulator) -> None:
    data = os.urandom(3 << 20)
    url = reserve(emu)
    ids = [js_block_id(i) for i in range(3)]
    for i, bid in enumerate(ids):
        put_block(url, bid, data[i << 20:(i + 1) << 20])
    block_list(url, [("Latest", bid) for bid in ids])
    assert HTTP.get(emu.plane.download_url(emu.entries()[0].blob_name, 60)).status_code == 200  # before finalize too
    finalize(emu, len(data))
    down = download_url(emu)
    head = HTTP.head(down)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
    assert head.headers["x-ms-blob-type"] == "BlockBlob" and head.headers["accept-ranges"] == "bytes"
    r = HTTP.get(down, headers={"Range": "bytes=1048570-1048585"})  # crosses a block boundary
    assert r.status_code == 206 and r.content == data[1048570:1048586]
    assert r.headers["content-range"] == f"bytes 1048570-1048585/{len(data)}"
    r = HTTP.get(down, headers={"x-ms-range": f"bytes={len(data) - 10}-", "Range": "bytes=0-0"})
    assert r.status_code == 206 and r.content == data[-10:]  # x-ms-range wins over Range
    r = HTTP.get(down, headers={"Range": f"bytes=5-{len(data) + 100}"})
    assert r.content == data[5:]
    r = HTTP.get(down, headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"
    assert HTTP.get(down, headers={"x-ms-range": "bytes=oops"}).status_code == 400
    assert HTTP.get(down, headers={"Range": "bytes=oops"}).content == data  # a bad Range is ignored
    assert hashlib.sha256(HTTP.get(down).content).digest() == hashlib.sha256(data).digest()


def test_missing_blob_is_blob_not_found(emu: Emulator) -> None:
    reserve(emu)
    r = HTTP.get(emu.plane.download_url(emu.entries()[0].blob_name, 60))
    assert r.status_code == 404 and r.headers["x-ms-error-code"] == "BlobNotFound"


def test_blob_plane_faults_use_azure_errors(emu: Emulator) -> None:
    url = reserve(emu)
    emu.fail_next("PutBlob", 503, retry_after=2)
    r = HTTP.put(url, content=b"x", headers={"x-ms-blob-type": "BlockBlob"})
    assert r.status_code == 503 and r.headers["x-ms-error-code"] == "ServerBusy" and r.headers["retry-after"] == "2"
    assert HTTP.put(url, content=b"x", headers={"x-ms-blob-type": "BlockBlob"}).status_code == 201


# -- v1 REST ---------------------------------------------------------------------------


def v1(emu: Emulator, method: str, resource: str, prefix: str = "", **kwargs: object) -> httpx.Response:
    headers = {**auth(emu), "Accept": "application/json;api-version=6.0-preview.1", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return HTTP.request(method, f"{emu.cache_url}{prefix}{V1}{resource}", headers=headers, **kwargs)  # type: ignore[arg-type]


def test_v1_round_trip_with_chunked_out_of_order_patches(emu: Emulator) -> None:
    data = os.urandom(300_000)
    r = v1(emu, "POST", "caches", json={"key": "v1-key", "version": "v", "cacheSize": len(data)})
    assert r.status_code == 201
    cache_id = r.json()["cacheId"]
    spans = [(200_000, 299_999), (0, 99_999), (100_000, 199_999)]

    def patch(span: tuple[int, int]) -> int:
        start, end = span
        body = iter([data[start:start + 7], data[start + 7:end + 1]])  # a generator body goes out chunked
        return v1(emu, "PATCH", f"caches/{cache_id}", content=body,
                  headers={"Content-Type": "application/octet-stream", "Content-Range": f"bytes {start}-{end}/*"}).status_code

    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(patch, spans)) == [204, 204, 204]
    assert v1(emu, "GET", "cache?keys=v1-key&version=v").status_code == 204  # not committed yet
    r = v1(emu, "POST", f"caches/{cache_id}", json={"size": len(data) + 1})
    assert r.status_code == 400 and "does not match" in r.json()["message"]
    assert v1(emu, "POST", f"caches/{cache_id}", json={"size": len(data)}).status_code == 204
    r = v1(emu, "GET", "cache?keys=" + quote("nomatch,v1-") + "&version=v")
    assert r.status_code == 200 and r.json()["cacheKey"] == "v1-key" and r.json()["scope"] == "refs/heads/main"
    assert HTTP.get(r.json()["archiveLocation"]).content == data
    listing = v1(emu, "GET", "caches?key=v1").json()
    assert listing["totalCount"] == 1 and listing["artifactCaches"][0]["cacheKey"] == "v1-key"
    assert emu.entry("v1-key").state == COMMITTED  # type: ignore[union-attr]


def test_v1_validation_and_conflicts(clock: ManualClock) -> None:
    with Emulator(clock=clock, max_entry_size=1000) as emu:
        r = v1(emu, "POST", "caches", json={"key": "a,b", "version": "v"})
        assert r.status_code == 400 and "cannot contain commas" in r.json()["message"]
        r = v1(emu, "POST", "caches", json={"key": "big", "version": "v", "cacheSize": 5000})
        assert r.status_code == 400 and "over the data cap limit" in r.json()["message"]
        cache_id = v1(emu, "POST", "caches", json={"key": "k", "version": "v"}).json()["cacheId"]
        r = v1(emu, "POST", "caches", json={"key": "k", "version": "v"})
        assert r.status_code == 409 and r.json()["typeKey"] == "ArtifactCacheItemAlreadyExistsException"
        assert r.json()["message"] == "Cache already exists. Scope: refs/heads/main, Key: k, Version: v"
        assert {"$id", "innerException", "typeName", "errorCode", "eventId"} <= set(r.json())
        r = v1(emu, "PATCH", f"caches/{cache_id}", content=b"abc")
        assert r.status_code == 400 and "Content-Range" in r.json()["message"]
        r = v1(emu, "PATCH", f"caches/{cache_id}", content=b"abc", headers={"Content-Range": "bytes 0-9/*"})
        assert r.status_code == 400 and "announces 10" in r.json()["message"]
        v1(emu, "PATCH", f"caches/{cache_id}", content=b"abc", headers={"Content-Range": "bytes 4-6/*"})
        r = v1(emu, "POST", f"caches/{cache_id}", json={"size": 7})
        assert r.status_code == 400 and "contiguous" in r.json()["message"]  # bytes 0-3 never arrived
        assert v1(emu, "PATCH", "caches/999", content=b"a", headers={"Content-Range": "bytes 0-0/*"}).status_code == 400
        assert v1(emu, "GET", "cache?keys=" + ",".join(f"k{i}" for i in range(11)) + "&version=v").status_code == 400
        assert v1(emu, "DELETE", "caches").status_code == 404
        r = HTTP.get(f"{emu.cache_url}{V1}cache?keys=k&version=v")
        assert r.status_code == 401 and r.json()["typeKey"] == "VssUnauthorizedException"


def test_v1_base_url_may_carry_a_path(emu: Emulator) -> None:
    r = v1(emu, "POST", "caches", prefix="opaque-id-123/", json={"key": "k", "version": "v"})
    assert r.status_code == 201


def test_v1_rate_limit_body_has_the_bom(emu: Emulator) -> None:
    emu.config.uploads_per_minute = 1
    v1(emu, "POST", "caches", json={"key": "a", "version": "v"})
    r = v1(emu, "POST", "caches", json={"key": "b", "version": "v"})
    assert r.status_code == 429 and r.headers["retry-after"] == "60"
    assert r.content.startswith(b"\xef\xbb\xbf")
    assert json.loads(r.content.decode("utf-8-sig"))["typeKey"] == "RequestBlockedException"


# -- Azurite data plane ----------------------------------------------------------------


@pytest.mark.peers
def test_azurite_plane_finalize_checks_the_blob_in_azurite(azurite: peers.Azurite) -> None:
    clock = ManualClock(time.time() - 3600)  # SAS times an hour behind Azurite's clock: download URLs are born expired
    with Emulator(clock=clock, azurite=azurite.connection_string, download_url_ttl=600,
                  upload_url_ttl=7200) as emu:
        url = reserve(emu)
        assert url.startswith(azurite.blob_endpoint + "/actions-cache-") and "sp=cw" in url
        assert "no blob" in finalize(emu, 3).json()["message"]
        assert put_block(url, js_block_id(0), b"abc").status_code == 201
        assert "no blob" in finalize(emu, 3).json()["message"]  # uncommitted blocks are not a blob
        assert block_list(url, [("Latest", js_block_id(0))]).status_code == 201
        assert "does not match" in finalize(emu, 4).json()["message"]
        assert finalize(emu, 3).json()["ok"]
        entry = emu.entries()[0]
        assert emu.blob_bytes(entry) == b"abc"
        r = HTTP.get(download_url(emu))
        # Azure says AuthenticationFailed; Azurite 3.35 says AuthorizationFailure. Both are an expired SAS.
        assert r.status_code == 403 and r.headers["x-ms-error-code"] in ("AuthenticationFailed", "AuthorizationFailure")
        emu.evict(entry)
        assert emu.plane.committed_size(entry.blob_name) is None
