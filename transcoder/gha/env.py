"""Where the cache service is and how to talk to it, chosen the way the
official toolkit (``@actions/cache``) chooses, overridable by sink options.

The runner gives JavaScript actions ``ACTIONS_RUNTIME_TOKEN``,
``ACTIONS_RESULTS_URL`` (v2), ``ACTIONS_CACHE_URL`` (v1) and
``ACTIONS_CACHE_SERVICE_V2``; the repository's action re-exports them for
``run:`` steps. Toolkit rules: GitHub Enterprise Server (a server URL that is
not github.com, ``*.ghe.com`` or ``*.localhost``) always speaks v1; otherwise
v2 when ``ACTIONS_CACHE_SERVICE_V2`` is non-empty. The v1 base falls back to
``ACTIONS_RESULTS_URL``.

Secrets (the token, the ``sig`` of signed URLs) never reach ``repr``, ``str``
or an error message (``transcoder.redact``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import UsageError
from ..redact import Secret, redact_url

DEFAULT_TIMEOUT = 600.0  # seconds; BuildKit's default for type=gha
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, what: str = "timeout") -> float:
    """Go-style duration (``10m``, ``1h30m``, ``45s``, ``500ms``) or plain seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pos, value = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNIT[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise UsageError(f"{what}={text!r}: not a duration (e.g. 10m, 90s, 1h30m)") from None
    if value <= 0:
        raise UsageError(f"{what}={text!r}: must be positive")
    return value


def is_ghes(server_url: str | None) -> bool:
    """The toolkit's test: only github.com, *.ghe.com and *.localhost are not GHES."""
    if not server_url:
        return False
    host = (urlsplit(server_url).hostname or "").lower()
    return not (host == "github.com" or host.endswith(".ghe.com") or host.endswith(".localhost"))


@dataclass(frozen=True)
class GhaConfig:
    """Resolved endpoint, protocol version, token and retry budget."""

    version: int
    url: str
    token: Secret = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if self.version not in (1, 2):
            raise UsageError(f"version={self.version}: must be 1 or 2")

    def __repr__(self) -> str:
        return f"GhaConfig(version={self.version}, url={redact_url(self.url)!r}, timeout={self.timeout})"

    @property
    def api_root(self) -> str:
        """v2: the server root (the toolkit drops any path); v1: base with one trailing slash."""
        parts = urlsplit(self.url)
        if self.version == 2:
            return f"{parts.scheme}://{parts.netloc}/"
        return self.url.rstrip("/") + "/"


def _check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{what}={redact_url(url)!r}: not an http(s) URL")
    return url


def _version(opts: Mapping[str, str], env: Mapping[str, str]) -> int:
    if opts.get("version"):
        if opts["version"] not in ("1", "2"):
            raise UsageError(f"version={opts['version']!r}: must be 1 or 2")
        return int(opts["version"])
    if is_ghes(env.get("GITHUB_SERVER_URL")):
        return 1
    if env.get("ACTIONS_CACHE_SERVICE_V2") or opts.get("url_v2"):
        return 2
    return 1


def config_from(opts: Mapping[str, str], env: Mapping[str, str]) -> GhaConfig:
    """Options (``url``, ``url_v2``, ``token``, ``version``, ``timeout``) over the environment.

    Raises UsageError naming what is missing, before any request is made.
    """
    version = _version(opts, env)
    if version == 2:
        url = opts.get("url_v2") or env.get("ACTIONS_RESULTS_URL") or ""
        missing = "url_v2= or ACTIONS_RESULTS_URL"
    else:
        url = opts.get("url") or env.get("ACTIONS_CACHE_URL") or env.get("ACTIONS_RESULTS_URL") or ""
        missing = "url= or ACTIONS_CACHE_URL"
    if not url:
        raise UsageError(f"type=gha: no cache service URL for v{version}: set {missing} (expose them with the transcoder action)")
    token = opts.get("token") or env.get("ACTIONS_RUNTIME_TOKEN") or ""
    if not token:
        raise UsageError("type=gha: no token: set token= or ACTIONS_RUNTIME_TOKEN (expose it with the transcoder action)")
    timeout = parse_duration(opts["timeout"]) if opts.get("timeout") else DEFAULT_TIMEOUT
    return GhaConfig(version, _check_url(url, "url_v2" if version == 2 else "url"), Secret(token), timeout)
