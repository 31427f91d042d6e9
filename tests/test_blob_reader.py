"""The registry blob reader's file semantics, on responses built in memory.

Downloads against the real registry (resets resumed with Range, redirects,
digests checked) are in test_registry_faults.py and test_registry_transport.py;
these tests pin down how received chunks become reads.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from transcoder.errors import TransientError
from transcoder.registry.stream import BlobReader

BLOB = b"".join(bytes([i]) * (1000 + i) for i in range(40))  # 40 chunks of different sizes
CHUNKS = [bytes([i]) * (1000 + i) for i in range(40)]


class Server:
    """Answers a blob request from ``first``; the first answer may break after ``break_after`` chunks."""

    def __init__(self, break_after: int | None = None, honour_range: bool = True) -> None:
        self.break_after = break_after
        self.honour_range = honour_range
        self.asked: list[tuple[int, int | None]] = []

    def __call__(self, first: int, last: int | None) -> httpx.Response:
        self.asked.append((first, last))
        start = first if self.honour_range else 0
        end = len(BLOB) if last is None or not self.honour_range else last + 1
        broken, self.break_after = self.break_after, None
        return httpx.Response(206 if self.honour_range and first else 200, content=self._body(start, end, broken))

    @staticmethod
    def _body(start: int, end: int, broken: int | None) -> Iterator[bytes]:
        at = 0
        for n, chunk in enumerate(CHUNKS):
            if broken is not None and n == broken:
                raise httpx.ReadError("connection reset")
            piece = chunk[max(0, start - at): max(0, end - at)]
            at += len(chunk)
            if piece:
                yield piece


def test_read1_hands_over_each_received_chunk_itself() -> None:
    reader = BlobReader(Server(), "blob")
    first = reader.read1(1 << 20)
    assert first is CHUNKS[0]  # not a copy
    second = reader.read1(-1)
    assert second is CHUNKS[1]
    part = reader.read1(10)
    assert part == CHUNKS[2][:10]
    assert reader.read1(1 << 20) == CHUNKS[2][10:]  # the rest of that chunk, nothing of the next


def test_read_view_hands_over_parts_of_a_chunk_as_views_of_it() -> None:
    reader = BlobReader(Server(), "blob")
    assert reader.read_view(1 << 20) is CHUNKS[0]  # a whole chunk: the chunk itself
    parts = [reader.read_view(300) for _ in range(4)]
    assert all(isinstance(p, memoryview) and p.obj is CHUNKS[1] for p in parts)  # no copy
    assert b"".join(parts) == CHUNKS[1] and [len(p) for p in parts] == [300, 300, 300, 101]
    rest = bytearray()
    while piece := reader.read_view(777):
        rest += piece
    assert bytes(rest) == BLOB[len(CHUNKS[0]) + len(CHUNKS[1]):]


def test_read_returns_exactly_what_was_asked_across_chunks() -> None:
    reader = BlobReader(Server(), "blob")
    assert reader.read(2500) == BLOB[:2500]
    assert reader.read(0) == b""
    assert reader.read(7) == BLOB[2500:2507]
    assert reader.read() == BLOB[2507:]
    assert reader.read(10) == b"" and reader.read1(10) == b""


def test_readinto_fills_the_buffer_and_readinto1_takes_one_chunk() -> None:
    reader = BlobReader(Server(), "blob")
    buffer = bytearray(3000)
    assert reader.readinto(buffer) == 3000 and bytes(buffer) == BLOB[:3000]
    assert reader.readinto1(buffer) == len(CHUNKS[0]) + len(CHUNKS[1]) + len(CHUNKS[2]) - 3000
    assert bytes(buffer[: len(BLOB[3000:3003])]) == BLOB[3000:3003]
    rest = bytearray(len(BLOB))
    n = reader.readinto(rest)
    assert bytes(rest[:n]) == BLOB[sum(map(len, CHUNKS[:3])):]


def test_a_length_bounds_the_read_even_if_the_server_sends_more() -> None:
    server = Server(honour_range=False)
    reader = BlobReader(server, "blob", offset=1500, length=2000)
    assert reader.read() == BLOB[1500:3500]
    assert server.asked == [(1500, 3499)]  # a server that ignores Range is skipped into place


def test_a_reset_is_resumed_from_the_last_byte_handed_out() -> None:
    server = Server(break_after=5)
    reader = BlobReader(server, "blob")
    got = b"".join(iter(lambda: reader.read1(4096), b""))
    assert got == BLOB
    assert server.asked == [(0, None), (sum(map(len, CHUNKS[:5])), None)]


def test_resets_past_the_allowance_fail_with_the_blob_named() -> None:
    class AlwaysBreaks(Server):
        def __call__(self, first: int, last: int | None) -> httpx.Response:
            self.break_after = 1
            return super().__call__(first, last)

    reader = BlobReader(AlwaysBreaks(), "registry r, repository x: blob sha256:00")
    with pytest.raises(TransientError, match=r"^registry r, repository x: blob sha256:00: download broke off after"):
        reader.read()
