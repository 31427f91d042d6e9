"""Image references (``HOST/REPO[:TAG][@sha256:...]``), validated against the
grammar of the distribution project (``reference/regexp.go``).

Every repository name and tag that reaches a URL went through this module, and
every digest is a :class:`~transcoder.digest.Digest`, so no user string is
ever spliced into a request path unchecked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..digest import Digest
from ..errors import InputError, UsageError

_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|[-]+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
HOST = re.compile(rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
MAX_NAME = 255

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# The token service Docker Hub's 401 answers name (realm https://auth.docker.io/token).
DOCKER_HUB_AUTH = "auth.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]"}
HTTPS_PORT = 443


def check_repository(name: str, what: str = "repository") -> str:
    if len(name) > MAX_NAME or not REPOSITORY.fullmatch(name):
        raise UsageError(f"{what} {name[:80]!r}: not a valid repository name "
                         "(lowercase path components separated by '/', '.', '_', '__' or '-')")
    return name


def check_tag(tag: str, what: str = "tag") -> str:
    if not TAG.fullmatch(tag):
        raise UsageError(f"{what} {tag[:80]!r}: not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")
    return tag


def check_host(host: str) -> str:
    if not HOST.fullmatch(host):
        raise UsageError(f"registry host {host[:80]!r}: not a valid host[:port]")
    return host


def split_port(host: str) -> tuple[str, int | None]:
    """``host[:port]`` as its name and port (None when it names none); a
    bracketed IPv6 literal stays whole."""
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and not host.endswith("]"):
        return name, int(port)
    return host, None


def endpoint_of(host: str) -> tuple[str, int]:
    """Where a connection to ``host`` (``name[:port]``) goes: the name and its port, else HTTPS's."""
    name, port = split_port(host)
    return name, HTTPS_PORT if port is None else port


def is_loopback(host: str) -> bool:
    name = split_port(host)[0]
    return name in LOOPBACK_HOSTS or name.startswith("127.")


@dataclass(frozen=True)
class Reference:
    """A validated reference; ``host`` is as written, ``api_host`` is where requests go."""

    host: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host

    @property
    def endpoint(self) -> tuple[str, int]:
        """Where the first connection goes: ``api_host`` and its port, else HTTPS's."""
        return endpoint_of(self.api_host)

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to ask the manifests endpoint for: the digest if pinned, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or "latest"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def _split_host(text: str) -> tuple[str, str]:
    """Docker's rule: the first component is a host if it has '.' or ':' or is localhost."""
    first, sep, rest = text.partition("/")
    if sep and (("." in first) or (":" in first) or first == "localhost" or first.lower() != first):
        host = DOCKER_HUB if first in _HUB_ALIASES else check_host(first)
        return host, rest
    return DOCKER_HUB, text


def parse_reference(text: str, *, allow_digest: bool = True, default_tag: str | None = "latest") -> Reference:
    """Parse ``[HOST/]REPO[:TAG][@sha256:HEX]``; a Docker Hub name gets ``library/``."""
    if not text or any(c.isspace() for c in text):
        raise UsageError(f"image reference {text[:80]!r}: empty or contains spaces")
    rest, at, digest_text = text.partition("@")
    digest = None
    if at:
        if not allow_digest:
            raise UsageError(f"reference {text[:120]!r}: a digest is not allowed here")
        try:
            digest = Digest.parse(digest_text)
        except InputError as exc:
            raise UsageError(f"reference {text[:120]!r}: {exc}") from exc
    host, path = _split_host(rest)
    tag = None
    slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > slash:
        path, tag = path[:colon], check_tag(path[colon + 1 :], f"reference {text[:120]!r}: tag")
    if host == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    check_repository(path, f"reference {text[:120]!r}: repository")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(host, path, tag, digest)


__all__ = ["Reference", "check_host", "check_repository", "check_tag", "endpoint_of", "is_loopback", "parse_reference"]
