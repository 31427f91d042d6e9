"""The connections a command opens while it is still loading.

A command that talks to registries or to the Actions cache finds their
addresses in its arguments, starts the TLS context loading (:mod:`..tls`)
and the connections to them (:mod:`..preconnect`), and only then loads the
HTTP stack and the rest: on a long link the handshakes are then over, or
under way, by the time the first request is ready. TLS handshakes are made
ahead only where the client will speak verified TLS and nothing else. A
reference or spec that does not parse is left out here: it is reported when
the source or the sink opens.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from ..errors import UsageError

# Connections opened ahead per service named. A conversion's first round
# trips go out side by side: on each side a probe, the manifest or the tag
# listing, a config, and for each of the first layers (--jobs 2 plus 4 small
# ones) its blob or its upload session. Sockets not taken close at exit.
CONNECTIONS_AHEAD = 8
# To a token service: a token for the source, and one for the destination.
TOKEN_CONNECTIONS = 2


class Endpoint(NamedTuple):
    host: str
    port: int
    secure: bool  # verified TLS and nothing else
    connections: int = CONNECTIONS_AHEAD
    probe: bool = False  # a registry that may be plain HTTP: asked whether it speaks TLS (preconnect.probe_ahead)


def start(endpoints: list[Endpoint]) -> None:
    """Load the TLS context and open the connections to ``endpoints`` in the background."""
    if not endpoints:
        return
    from .. import preconnect, tls

    tls.warm()  # the CA bundle loads while the HTTP stack imports
    for host, port, secure, connections, probe in endpoints:
        if probe:
            preconnect.probe_ahead(host, port)
        preconnect.open_ahead(host, port, connections, tls.context if secure else None)


def registry(text: str, insecure: bool) -> list[Endpoint]:
    """A registry reference's endpoint. One on loopback or insecure is probed
    for TLS first (and may be plain HTTP), so only TCP is opened to it, and
    the probe is made ahead too.
    Docker Hub's token service, which every request there needs first (even
    an anonymous pull), is known without asking: it is opened too."""
    from ..registry.reference import DOCKER_HUB_API, DOCKER_HUB_AUTH, is_loopback, parse_reference

    try:
        ref = parse_reference(text, default_tag=None)
    except UsageError:
        return []
    certain = not (insecure or is_loopback(ref.api_host))
    found = [Endpoint(*ref.endpoint, certain, probe=not certain)]
    if ref.api_host == DOCKER_HUB_API and not insecure:
        found.append(Endpoint(DOCKER_HUB_AUTH, 443, True, TOKEN_CONNECTIONS))
    return found


def sink(spec: str | None, insecure_flag: bool) -> list[Endpoint]:
    """The endpoint of a ``type=registry`` or ``type=gha`` sink spec;
    ``insecure_flag``: a command line flag turned TLS verification off."""
    if not spec:
        return []
    from ..sinks import REGISTRY_FALSE, parse_spec

    try:
        kind, opts = parse_spec(spec)
    except UsageError:
        return []
    if kind == "registry" and opts.get("ref"):
        # A value in doubt counts as insecure: then only TCP is opened ahead.
        insecure = insecure_flag or opts.get("insecure", "").lower() not in REGISTRY_FALSE
        return registry(opts["ref"], insecure)
    if kind == "gha":
        return _actions_cache(opts)
    return []


def _actions_cache(opts: dict[str, str]) -> list[Endpoint]:
    from urllib.parse import urlsplit

    from ..gha.env import config_from

    try:
        url = urlsplit(config_from(opts, os.environ).url)
        port = url.port or (443 if url.scheme == "https" else 80)
    except (UsageError, ValueError):
        return []
    return [Endpoint(url.hostname, port, url.scheme == "https")] if url.hostname else []


__all__ = ["CONNECTIONS_AHEAD", "TOKEN_CONNECTIONS", "Endpoint", "registry", "sink", "start"]
