"""The variant table: SQLite, the embedded default record of what was done.

Facts kept: every blob we verified (digest, size, media type, diffID), which
blob is a variant of which canonical blob and with what parameters, where each
blob is stored, and a stat cache of file digests (path, inode, size, mtime) so
that a hit on an unchanged file does not read it again.

Several processes may share one table: WAL journal, a busy timeout, and each
write in one short transaction. Rows are only added for bytes this process
produced or checked (invariant 1).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .codecs import ZstdParams
from .descriptor import Descriptor
from .digest import Digest
from .errors import ManifestError, StoreError
from .records import VariantRecord

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY, size INTEGER NOT NULL, media_type TEXT NOT NULL, diff_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS blobs_diff_id ON blobs(diff_id);
CREATE TABLE IF NOT EXISTS variants (
    source TEXT NOT NULL, params_key TEXT NOT NULL, target TEXT NOT NULL,
    params TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (source, params_key));
CREATE INDEX IF NOT EXISTS variants_target ON variants(target);
CREATE TABLE IF NOT EXISTS locations (
    digest TEXT NOT NULL, location TEXT NOT NULL, PRIMARY KEY (digest, location));
CREATE TABLE IF NOT EXISTS file_digests (
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
    digest TEXT NOT NULL);
"""


def default_home() -> Path:
    env = os.environ.get("TRANSCODER_HOME")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "transcoder"


@dataclass(frozen=True)
class BlobInfo:
    digest: Digest
    size: int
    media_type: str
    diff_id: Digest


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class VariantTable:
    """One SQLite file; safe to open from several processes at once."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_home() / "variants.db"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection shared by the layer threads of a conversion, serialised by a lock.
            self._lock = threading.RLock()
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"variant table {self.path}: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"variant table {self.path}: {exc.strerror or exc}") from exc

    def _migrate(self) -> None:
        with self._tx():
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(stmt)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"variant table {self.path}: schema {row[0]} is newer than this transcoder ({SCHEMA_VERSION})")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"variant table {self.path}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[None]:
        with self._lock, self._tx_unlocked():
            yield

    @contextmanager
    def _tx_unlocked(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"variant table {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    # -- writes -------------------------------------------------------------

    def _put_blob(self, desc: Descriptor, diff_id: Digest) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)", (str(desc.digest), desc.size, desc.media_type, str(diff_id))
        )

    def record(self, rec: VariantRecord, locations: dict[Digest, str] | None = None) -> None:
        """Record a verified variant and, optionally, where its blobs live."""
        with self._tx():
            self._put_blob(rec.source, rec.diff_id)
            self._put_blob(rec.target, rec.diff_id)
            self._db.execute(
                "INSERT OR REPLACE INTO variants VALUES (?, ?, ?, ?, ?)",
                (str(rec.source.digest), rec.params.key, str(rec.target.digest), json.dumps(rec.params.to_json()), rec.created),
            )
            for digest, loc in (locations or {}).items():
                self._db.execute("INSERT OR IGNORE INTO locations VALUES (?, ?)", (str(digest), loc))

    def add_location(self, digest: Digest, location: str) -> None:
        with self._tx():
            self._db.execute("INSERT OR IGNORE INTO locations VALUES (?, ?)", (str(digest), location))

    def forget_location(self, digest: Digest, location: str) -> None:
        with self._tx():
            self._db.execute("DELETE FROM locations WHERE digest=? AND location=?", (str(digest), location))

    def remember_file(self, path: str | os.PathLike[str], digest: Digest) -> None:
        """Cache a file's digest against its inode, size and times."""
        p = os.path.abspath(path)
        st = os.stat(p)
        with self._tx():
            self._db.execute("INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?, ?, ?, ?)", (p, *_stat_key(st), str(digest)))

    # -- reads --------------------------------------------------------------

    def file_digest(self, path: str | os.PathLike[str]) -> Digest | None:
        """The cached digest of ``path`` if the file is unchanged since it was hashed."""
        p = os.path.abspath(path)
        try:
            st = os.stat(p)
        except OSError:
            return None
        sql = "SELECT dev, ino, size, mtime_ns, ctime_ns, digest FROM file_digests WHERE path=?"
        rows = self._read(sql, (p,))
        row = rows[0] if rows else None
        if row is None or tuple(row[:5]) != _stat_key(st):
            return None
        return Digest.parse(row[5])

    def blob(self, digest: Digest) -> BlobInfo | None:
        rows = self._read("SELECT digest, size, media_type, diff_id FROM blobs WHERE digest=?", (str(digest),))
        row = rows[0] if rows else None
        return None if row is None else BlobInfo(Digest.parse(row[0]), row[1], row[2], Digest.parse(row[3]))

    def find(self, source: Digest, params: ZstdParams) -> VariantRecord | None:
        rows = self._read(
            "SELECT source, target, params, created FROM variants WHERE source=? AND params_key=?", (str(source), params.key)
        )
        row = rows[0] if rows else None
        return None if row is None else self._rec(row)

    def _rec(self, row: tuple[Any, ...]) -> VariantRecord:
        src, tgt = self.blob(Digest.parse(row[0])), self.blob(Digest.parse(row[1]))
        if src is None or tgt is None:
            raise StoreError(f"variant table {self.path}: variant {row[1]} lacks its blob rows")
        return VariantRecord(
            Descriptor(src.media_type, src.digest, src.size),
            src.diff_id,
            Descriptor(tgt.media_type, tgt.digest, tgt.size),
            ZstdParams.from_json(json.loads(row[2])),
            row[3],
        )

    def variants(self) -> list[VariantRecord]:
        rows = self._read("SELECT source, target, params, created FROM variants ORDER BY created")
        return [self._rec(r) for r in rows]

    def related(self, digest: Digest) -> list[VariantRecord]:
        """Every variant whose source or target is ``digest`` or shares its diffID."""
        info = self.blob(digest)
        ids = {str(digest)} if info is None else {
            r[0] for r in self._read("SELECT digest FROM blobs WHERE diff_id=?", (str(info.diff_id),))
        }
        marks = ",".join("?" * len(ids))
        rows = self._read(
            f"SELECT source, target, params, created FROM variants WHERE source IN ({marks}) OR target IN ({marks})",
            (*ids, *ids),
        )
        return [self._rec(r) for r in rows]

    def locations(self, digest: Digest) -> list[str]:
        return [r[0] for r in self._read("SELECT location FROM locations WHERE digest=? ORDER BY location", (str(digest),))]

    # -- carrying a table to another machine -----------------------------------

    def export(self) -> dict[str, Any]:
        out = []
        for rec in self.variants():
            obj = rec.to_json()
            obj["locations"] = {str(d): self.locations(d) for d in (rec.source.digest, rec.target.digest)}
            out.append(obj)
        return {"schemaVersion": SCHEMA_VERSION, "exported": time.time(), "variants": out}

    def import_(self, doc: Any) -> int:
        if not isinstance(doc, dict) or not isinstance(doc.get("variants"), list):
            raise ManifestError("variant export: expected an object with a 'variants' list")
        recs = []
        for i, obj in enumerate(doc["variants"]):
            rec = VariantRecord.from_json(obj, f"variant export entry {i}")
            locs = obj.get("locations") or {}
            recs.append((rec, [(Digest.parse(d), loc) for d, ls in locs.items() for loc in ls]))
        for rec, _ in recs:
            self.record(rec)
        for _, locs in recs:
            for d, loc in locs:
                self.add_location(d, loc)
        return len(recs)
