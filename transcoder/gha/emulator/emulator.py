"""``Emulator``: the GitHub Actions cache service on a local port.

    with Emulator(visibility_delay=0) as emu:
        env = emu.env(scopes=[("refs/pull/7/merge", 3), ("refs/heads/main", 1)])
        ...                                   # run a client with env
        assert emu.count("PutBlob", "PutBlock") == 1
        emu.fail_next("CreateCacheEntry", 503, count=2)

The server runs in a background thread. Behaviour knobs are the fields of
:class:`Config` (keyword arguments here, or ``emu.config.<name> = value``
while running); faults are queued with :meth:`fail_next` and friends.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from . import jwt
from .app import App, RequestRecord
from .blobplane import BlobPlane, BuiltinPlane
from .faults import Fault, FaultPlan
from .rest import V1Uploads
from .server import Server
from .service import CacheService, Config
from .store import Entry


class ManualClock:
    """A clock tests advance by hand (TTLs, visibility delay, URL expiry)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Emulator:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        azurite: str | None = None,
        clock: Callable[[], float] = time.time,
        secret: bytes | None = None,
        data_dir: Path | None = None,
        **config: Any,
    ) -> None:
        self.config = Config(**config)
        self.clock = clock
        self.secret = secret or secrets.token_bytes(32)
        self._own_dir = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="transcoder-gha-emulator-")) if data_dir is None else data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.plane = self._plane(azurite)
        except BaseException:
            self._remove_data()
            raise
        self.uploads = V1Uploads(self.data_dir)
        self.service = CacheService(self.config, self.plane, self.secret, clock, on_evict=self.uploads.discard)
        self.faults = FaultPlan()
        self.app = App(self.service, self.uploads, self.faults)
        try:
            self._server = Server((host, port), self.app)
        except BaseException:
            self.plane.close()
            self._remove_data()
            raise
        host_name, bound_port = self._server.server_address[:2]
        self.url = f"http://{host_name!s}:{bound_port}"
        if isinstance(self.plane, BuiltinPlane):
            self.plane.base_url = self.url
        self._thread: threading.Thread | None = None

    def _plane(self, azurite: str | None) -> BlobPlane:
        if azurite is not None:
            from .azurite import AzuritePlane

            return AzuritePlane(azurite, self.clock)
        blobs = self.data_dir / "blobs"
        blobs.mkdir(exist_ok=True)
        return BuiltinPlane(blobs, self.secret, self.clock)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Emulator:
        if self._thread is None:
            # A short poll interval keeps close() quick; the loop is idle otherwise.
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="gha-emulator",
                                            daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI)."""
        try:
            self._server.serve_forever()
        finally:
            self.close()

    def close(self) -> None:
        """Stop serving and delete the emulator's data (and its Azurite container)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        self.plane.close()
        self._remove_data()

    def _remove_data(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Emulator(url={self.url!r}, plane={self.plane.name!r})"

    # -- client configuration ----------------------------------------------------

    @property
    def results_url(self) -> str:
        return self.url + "/"

    @property
    def cache_url(self) -> str:
        """The v1 base; the trailing slash matters (clients concatenate)."""
        return self.url + "/"

    def mint_token(self, scopes: Sequence[tuple[str, int]] | None = None, *, ttl: float = jwt.DEFAULT_TTL,
                   repository: str = jwt.DEFAULT_REPOSITORY, extra: dict[str, Any] | None = None) -> str:
        """A runtime token for ``scopes`` (default ``[("refs/heads/main", 3)]``), signed with this emulator's key."""
        return jwt.mint(self.secret, jwt.scopes_arg(scopes), ttl=ttl, now=self.clock(), repository=repository, extra=extra)

    def env(self, scopes: Sequence[tuple[str, int]] | None = None, *, v2: bool = True, token: str | None = None,
            repository: str = jwt.DEFAULT_REPOSITORY) -> dict[str, str]:
        """The variables a runner would export; ``v2=False`` gives the v1 (GHES) set."""
        env = {"ACTIONS_CACHE_URL": self.cache_url,
               "ACTIONS_RUNTIME_TOKEN": token or self.mint_token(scopes, repository=repository)}
        if v2:
            env.update({"ACTIONS_RESULTS_URL": self.results_url, "ACTIONS_CACHE_SERVICE_V2": "1"})
        return env

    # -- counters and state ------------------------------------------------------

    @property
    def counts(self) -> Counter[str]:
        """Requests per operation (``CreateCacheEntry``, ``PutBlock``, ``v1.UploadChunk``...), faults included."""
        with self.app._lock:
            return Counter(self.app.counts)

    def count(self, *operations: str) -> int:
        counts = self.counts
        return sum(counts[op] for op in operations)

    @property
    def requests(self) -> list[RequestRecord]:
        with self.app._lock:
            return list(self.app.records)

    def reset_counts(self) -> None:
        with self.app._lock:
            self.app.counts.clear()
            self.app.records.clear()

    def entries(self, repository: str | None = None) -> list[Entry]:
        """Copies of every entry (reserved and committed), oldest first."""
        return sorted(self.service.store.snapshot(repository), key=lambda e: e.id)

    def entry(self, key: str, *, scope: str | None = None, repository: str | None = None) -> Entry | None:
        matches = [e for e in self.entries(repository) if e.key == key and scope in (None, e.scope)]
        return matches[-1] if matches else None

    def blob_bytes(self, entry: Entry) -> bytes:
        """The committed bytes of an entry's blob (small blobs only: read into memory)."""
        return self.plane.read_all(entry.blob_name)

    def evict(self, entry: Entry) -> None:
        """Remove an entry and its blob now, as the service's eviction would."""
        self.service.store.delete(entry.id)

    # -- faults -----------------------------------------------------------------

    def fail_next(self, operation: str, status: int | str = 500, *, count: int | None = 1,
                  retry_after: float | None = None, message: str = "injected fault") -> Fault:
        """The next ``count`` calls (None: all) to ``operation`` answer ``status``, or a kind such as
        ``"non_json"`` or ``"quota"`` (see :mod:`.faults`)."""
        if isinstance(status, str):
            return self.faults.add(Fault(operation, status, count=count, retry_after=retry_after, message=message))
        return self.faults.add(Fault(operation, "error", status, count, retry_after, message=message))

    def delay_next(self, operation: str, seconds: float, *, after: bool = False, count: int | None = 1) -> Fault:
        """Sleep before handling (``after=False``) or after committing (``after=True``) the next calls."""
        return self.faults.add(Fault(operation, "delay_after" if after else "delay", count=count, delay=seconds))

    def drop_next(self, operation: str, *, after: bool = False, count: int | None = 1) -> Fault:
        """Close the connection without answering; ``after=True`` handles the call first (ambiguous timeout)."""
        return self.faults.add(Fault(operation, "drop_after" if after else "drop", count=count))
