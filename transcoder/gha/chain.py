"""Append-only record logs on a cache that only offers immutable entries.

A chain is entries ``<prefix>#1``, ``#2``, ... Each holds the union of the
records its writer had read plus its own, and ``covers``: the numbers whose
records it includes. A writer reads, merges, and reserves the next number; a
409 there is a lost compare-and-swap: re-read, merge again, take the next
number. Nobody replaces anybody's entry, so parallel writers lose nothing.

Reading finds the newest entry (the service's prefix lookup), probes forward
for entries that are finalized but not yet the newest it reports, then fetches
any lower number its entries do not cover (a racing writer's entry). A number
that stays invisible is a reservation that never finished (a crashed writer);
it is given up as dead once an entry above it is ``DEAD_AFTER`` old, so the
cost of a crash is bounded. Numbers are reserved in order, one after another,
so every number below the newest was reserved by someone before it.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..descriptor import MAX_MANIFEST_BYTES
from ..errors import Conflict, ManifestError, SinkError
from .client import CacheClient, CacheEntry

log = logging.getLogger("transcoder.gha")
DEAD_AFTER = 900.0  # seconds; a record entry takes well under a second to upload
MAX_ATTEMPTS = 100
Merge = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


@dataclass
class ChainState:
    records: list[dict[str, Any]] = field(default_factory=list)
    covered: set[int] = field(default_factory=set)
    top: int = 0
    gaps: set[int] = field(default_factory=set)
    lookups: int = 0


def _ranges(nums: set[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for n in sorted(nums):
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


def _unranges(obj: Any, what: str) -> set[int]:
    nums: set[int] = set()
    if not isinstance(obj, list):
        raise ManifestError(f"{what}: 'covers' is not a list")
    for pair in obj:
        ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int) for x in pair)
        if not ok or not 0 < pair[0] <= pair[1] < pair[0] + (1 << 20):
            raise ManifestError(f"{what}: bad 'covers' range {pair!r:.40}")
        nums.update(range(pair[0], pair[1] + 1))
    return nums


class RecordChain:
    def __init__(self, client: CacheClient, prefix: str, version: str, merge: Merge, *, dead_after: float = DEAD_AFTER) -> None:
        self.client = client
        self.prefix = prefix
        self.version = version
        self.merge = merge
        self.dead_after = dead_after
        self._number = re.compile(re.escape(prefix) + r"#([1-9][0-9]{0,9})")

    def key(self, n: int) -> str:
        return f"{self.prefix}#{n}"

    def read(self) -> ChainState:
        st = ChainState()
        newest = self._get(f"{self.prefix}#", st)
        if newest is None:
            return st
        n, entry = newest
        created = {n: self._absorb(st, n, entry)}
        while (nxt := self._get(self.key(st.top + 1), st, exact=True)) is not None:
            created[nxt[0]] = self._absorb(st, nxt[0], nxt[1])
        self._backfill(st, created)
        st.records = self.merge(st.records)
        return st

    def append(self, records: list[dict[str, Any]], *, known: Callable[[list[dict[str, Any]]], bool] | None = None) -> int:
        """Add ``records``; returns the number written, 0 if ``known(current records)`` says they are in already.

        Raises SinkError when the budget runs out.
        """
        deadline = time.monotonic() + self.client.config.timeout
        taken = 0
        for attempt in range(MAX_ATTEMPTS):
            st = self.read()
            if known is not None and known(st.records):
                return 0
            n = max(st.top, taken) + 1
            body = self._encode(self.merge(st.records + records), st.covered)
            try:
                upload = self.client.reserve(self.key(n), self.version, size_hint=len(body))
            except Conflict:
                taken = n  # someone else's entry, maybe not visible yet: read again, then go past it
                if time.monotonic() > deadline:
                    break
                # Writers that collided would collide again in lockstep; a little jitter spreads them.
                time.sleep(random.uniform(0, min(1.0, 0.05 * (attempt + 1))))
                continue
            try:
                upload.write(body)
                upload.finish(len(body))
            except BaseException:
                upload.abort()
                raise
            return n
        raise SinkError(f"{self.prefix}: could not append a record after {MAX_ATTEMPTS} tries (too many writers?)")

    def _encode(self, records: list[dict[str, Any]], covered: set[int]) -> bytes:
        obj = {"chain": 1, "created": time.time(), "covers": _ranges(covered), "records": records}
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

    def _get(self, key: str, st: ChainState, *, exact: bool = False) -> tuple[int, dict[str, Any]] | None:
        st.lookups += 1
        entry = self.client.lookup(key, self.version, exact=exact)
        if entry is None:
            return None
        m = self._number.fullmatch(entry.key)
        if m is None:
            return None  # not one of ours (a key that merely shares the prefix)
        try:
            return int(m.group(1)), self._load(entry)
        except ManifestError as exc:
            # Entries are immutable: a broken one would break the chain forever if it were fatal.
            log.warning("skipping %s", exc)
            return int(m.group(1)), {"records": [], "covers": set(), "created": time.time()}

    def _load(self, entry: CacheEntry) -> dict[str, Any]:
        what = f"cache entry {entry.key}"
        try:
            obj = json.loads(self.client.read_small(entry, MAX_MANIFEST_BYTES))
        except ValueError as exc:
            raise ManifestError(f"{what}: malformed JSON") from exc
        if not isinstance(obj, dict) or obj.get("chain") != 1 or not isinstance(obj.get("records"), list):
            raise ManifestError(f"{what}: not a record chain entry")
        obj["covers"] = _unranges(obj.get("covers", []), what)
        return obj

    def _absorb(self, st: ChainState, n: int, entry: dict[str, Any]) -> float:
        st.records.extend(r for r in entry["records"] if isinstance(r, dict))
        st.covered |= entry["covers"] | {n}
        st.top = max(st.top, n)
        created = entry.get("created")
        return float(created) if isinstance(created, int | float) else time.time()

    def _backfill(self, st: ChainState, created: dict[int, float]) -> None:
        for i in range(st.top - 1, 0, -1):
            if i in st.covered:
                continue
            got = self._get(self.key(i), st, exact=True)
            if got is not None:
                created[i] = self._absorb(st, i, got[1])
            elif any(j > i and time.time() - t > self.dead_after for j, t in created.items()):
                st.covered.add(i)  # reserved long ago and never finished: dead
            else:
                st.gaps.add(i)
