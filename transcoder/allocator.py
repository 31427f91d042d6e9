"""glibc malloc settings for a process that moves megabyte buffers.

Every frame the pipeline compresses allocates a few MiB (the joined frame,
libzstd's output bound). glibc serves allocations above its mmap threshold
(dynamic, from 128 KiB) with fresh mappings and trims freed heap tops above
128 KiB, so each frame's buffers are new pages: tens of thousands of page
faults per 500 MB layer, 7-8 % of the pipeline's CPU in the engine benchmark.
Raising both thresholds keeps those buffers in the heap for reuse. The cost
is that up to ``TRIM`` bytes of freed memory stay mapped to the process.

Applied once, on the first transcode, and only where the C library is glibc;
``TRANSCODER_MALLOC_TUNING=0`` leaves the allocator alone (for embedders that
tune it themselves).

The command line also asks for a single arena (:func:`one_arena`). By
default glibc gives each thread that allocates its own arena, up to 8 per
core, and each arena keeps its own high-water mark of freed frames. An image
converted with two layers at once then peaked at 212 MB instead of 164 MB,
with 50,000 page faults instead of 38,000, for the same wall time. The
library leaves this alone: in a host process, one arena would be shared by
every thread of the host too.
"""

from __future__ import annotations

import ctypes
import os
import threading

ENV = "TRANSCODER_MALLOC_TUNING"
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20  # glibc's own upper bound for the dynamic threshold
TRIM = 128 << 20

_lock = threading.Lock()
_done = False


def tune() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if they were set."""
    global _done
    with _lock:
        if _done:
            return False
        _done = True
        if os.environ.get(ENV, "1") == "0":
            return False
        mallopt = _mallopt()
        if mallopt is None:
            return False
        return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM))


def one_arena() -> bool:
    """Have threads that allocate from now on share glibc's existing arenas
    instead of creating their own; True if set. For a process of our own only."""
    if os.environ.get(ENV, "1") == "0":
        return False
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, 1))


def _mallopt() -> ctypes._NamedFuncPointer | None:
    if not _is_glibc():
        return None
    try:
        # The process's own symbols include glibc's: no library search (ctypes.util
        # runs ldconfig and pulls in subprocess, 5 ms of every start-up).
        func = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int]
    func.restype = ctypes.c_int
    return func


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # no such name: not glibc
        return False
