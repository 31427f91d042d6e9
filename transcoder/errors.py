"""The exception tree. Every error the library raises on purpose is a
:class:`TranscoderError`; the CLI prints ``str(exc)`` as one line and exits
non-zero. Library errors from dependencies are converted at the boundary with
``raise ... from exc`` so callers never need to catch isal, zstandard, httpx or
sqlite3 exceptions.

    TranscoderError
    ├── UsageError              bad option or argument (exit 2)
    ├── InputError              the bytes or metadata we were given are wrong
    │   ├── FormatError         not gzip / zstd / tar, truncated, corrupt, trailing garbage
    │   ├── DigestMismatch      bytes do not hash to the digest that was claimed
    │   ├── SizeMismatch        bytes are not as long as the descriptor says
    │   ├── SizeLimitExceeded   decoded output passed --max-size (decompression bomb)
    │   └── ManifestError       malformed or hostile manifest, index, layout or archive
    ├── NotFound                a blob, image or variant that is not there
    ├── StoreError              a local store or the variant table cannot be written
    └── SinkError               a remote sink failed
        ├── AuthError           401 / 403 / bad credentials (never echoes the secret)
        ├── Conflict            the key exists or is reserved (409)
        └── TransientError      retryable: 429, 5xx, reset, timeout
"""

from __future__ import annotations


class TranscoderError(Exception):
    """Base of every error raised on purpose; ``str()`` is a one-line message."""

    exit_code = 1


class UsageError(TranscoderError):
    exit_code = 2


class InputError(TranscoderError):
    pass


class FormatError(InputError):
    pass


class DigestMismatch(InputError):
    pass


class SizeMismatch(InputError):
    pass


class SizeLimitExceeded(InputError):
    pass


class ManifestError(InputError):
    pass


class NotFound(TranscoderError):
    pass


class StoreError(TranscoderError):
    pass


class SinkError(TranscoderError):
    pass


class AuthError(SinkError):
    pass


class Conflict(SinkError):
    pass


class TransientError(SinkError):
    """Retryable failure; ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
