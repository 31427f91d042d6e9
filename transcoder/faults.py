"""Crash points for crash-consistency testing.

``TRANSCODER_CRASHPOINT=NAME[:N]`` makes the process kill itself with SIGKILL
the N-th time (default first) it passes the point NAME, so tests can stop a
conversion at an exact step and check that nothing half-done is visible.
Unset (always, outside tests), a crash point costs one dictionary lookup.

Points: ``decode`` (per decoded chunk), ``blob-committed`` (after a blob is
published, before records), ``layer-done`` (a layer's blobs committed in
any sink, before records), ``record-written`` (after a variant record),
``index-write`` (index.json written to its temp file, not yet renamed),
``ingest-part`` (S3/Azure: a part of a blob whose digest is not known yet
stored under ``ingest/``), ``ingest-complete`` (that upload completed under
``ingest/``, not yet copied to its digest).
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "TRANSCODER_CRASHPOINT"
_counts: dict[str, int] = {}
_lock = threading.Lock()


def crashpoint(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        hit = _counts[name] == int(nth or 1)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
