"""GitHub Actions cache service: configuration, v1/v2 clients, blob plane.

The sink built on these is :class:`transcoder.sinks.gha.GhaSink`.
"""

from __future__ import annotations

from ..redact import Secret, redact_url, scrub
from .client import CacheClient, CacheEntry, EntryUpload, open_client
from .env import GhaConfig, config_from, parse_duration
from .retry import RetryPolicy, UploadRateLimiter

__all__ = [
    "CacheClient",
    "CacheEntry",
    "EntryUpload",
    "GhaConfig",
    "RetryPolicy",
    "Secret",
    "UploadRateLimiter",
    "config_from",
    "open_client",
    "parse_duration",
    "redact_url",
    "scrub",
]
