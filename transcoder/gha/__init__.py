"""GitHub Actions cache service: configuration, v1/v2 clients, blob plane.

The sink built on these is :class:`transcoder.sinks.gha.GhaSink`. The names
below load on first use, so that :mod:`.env` can be read without the HTTP
stack (the command line finds the service's address before it loads).
"""

from __future__ import annotations

from typing import Any

from .. import lazy

_HOME = {
    "Secret": "..redact", "redact_url": "..redact", "scrub": "..redact",
    "CacheClient": ".client", "CacheEntry": ".client", "EntryUpload": ".client", "open_client": ".client",
    "GhaConfig": ".env", "config_from": ".env", "parse_duration": ".env",
    "RetryPolicy": ".retry", "UploadRateLimiter": ".retry",
}


def __getattr__(name: str) -> Any:
    return lazy.attribute(__name__, _HOME, name)


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
