"""A local emulator of the GitHub Actions cache service (v2 Twirp, v1 REST, Azure blob plane).

Start it with ``transcoder emulator serve`` or, in tests, ``with Emulator() as emu:``.
"""

from __future__ import annotations

from .app import RequestRecord
from .emulator import Emulator, ManualClock
from .faults import Fault, parse_fault
from .jwt import READ, WRITE, Grant, TokenError, mint, verify
from .service import Config
from .store import COMMITTED, RESERVED, Entry

__all__ = [
    "COMMITTED",
    "READ",
    "RESERVED",
    "WRITE",
    "Config",
    "Emulator",
    "Entry",
    "Fault",
    "Grant",
    "ManualClock",
    "RequestRecord",
    "TokenError",
    "mint",
    "parse_fault",
    "verify",
]
