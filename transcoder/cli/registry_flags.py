"""Registry flags of ``convert`` and ``restore``, named as skopeo names them.

``--src-*`` flags are for the registry read from, ``--dest-*`` for the one
written to: ``convert`` reads a docker:// SRC and writes a ``--to`` sink, and
``restore`` reads its SINK, so there (as in ``skopeo copy``) a registry SINK
takes the ``--src-*`` flags. ``--authfile`` applies to both sides.

A flag given where it has no registry to act on, both credentials flags at
once, or a flag that a sink spec's own ``username=``/``password=``/``insecure=``
already decides, is a one-line UsageError naming the flag. Passwords never
appear in a message (:func:`~transcoder.registry.credentials.parse_user_pass`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, NamedTuple

from ..errors import UsageError

if TYPE_CHECKING:
    from ..registry.credentials import Credentials
    from ..sinks.base import Sink


def cli_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "1", "yes", "false", "0", "no"):
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not true or false")
    return value in ("true", "1", "yes")


def add_registry_flags(group: argparse._ArgumentGroup, side: str, target: str) -> None:
    """``--SIDE-creds``, ``--SIDE-registry-token`` and ``--SIDE-tls-verify`` for ``target``."""
    group.add_argument(f"--{side}-creds", metavar="USER[:PASSWORD]",
                       help=f"credentials for {target}; without :PASSWORD it is asked for on the terminal")
    group.add_argument(f"--{side}-registry-token", metavar="TOKEN",
                       help=f"a bearer token sent as it is to {target} (instead of --{side}-creds)")
    group.add_argument(f"--{side}-tls-verify", metavar="BOOL", type=cli_bool, nargs="?", const=True, default=None,
                       help=f"require HTTPS with a verified certificate from {target} (default true); "
                       f"--{side}-tls-verify=false allows plain HTTP and unverified TLS, like docker's insecure "
                       "registries (plain HTTP is always allowed for a loopback host)")


class RegistryFlags(NamedTuple):
    """One side's flags as given (None: not given). A named tuple, not a data
    class: ``convert`` parses its flags before ``dataclasses`` is loaded."""

    side: str
    creds: str | None = None
    token: str | None = None
    tls_verify: bool | None = None

    @classmethod
    def of(cls, args: argparse.Namespace, side: str) -> RegistryFlags:
        return cls(side, getattr(args, f"{side}_creds"), getattr(args, f"{side}_registry_token"),
                   getattr(args, f"{side}_tls_verify"))

    def given(self) -> list[str]:
        """The names of the flags given, in the order they are documented."""
        names = [("creds", self.creds), ("registry-token", self.token), ("tls-verify", self.tls_verify)]
        return [f"--{self.side}-{name}" for name, value in names if value is not None]

    def refuse(self, why: str) -> None:
        """UsageError naming the first flag given, if any was: ``why`` says what it needs."""
        names = self.given()
        if names:
            raise UsageError(f"{names[0]}: {why}")

    def credentials(self) -> Credentials | None:
        """The credentials flag's value; may ask for the password on the terminal."""
        if self.creds is None and self.token is None:
            return None  # and the registry client (httpx) is not imported for a local image
        from ..registry.credentials import Credentials, parse_user_pass

        if self.creds is not None and self.token is not None:
            raise UsageError(f"give --{self.side}-creds or --{self.side}-registry-token, not both")
        if self.creds is not None:
            return parse_user_pass(self.creds, f"--{self.side}-creds")
        return Credentials(registry_token=str(self.token), origin=f"--{self.side}-registry-token")

    def check_spec(self, opts: dict[str, str]) -> None:
        """Refuse a flag that the sink spec's own options already decide."""
        if "username" in opts or "password" in opts:
            for name, value in (("creds", self.creds), ("registry-token", self.token)):
                if value is not None:
                    raise UsageError(f"--{self.side}-{name}: the sink spec gives username=/password= already; "
                                     "give one of them")
        if "insecure" in opts and self.tls_verify is not None:
            raise UsageError(f"--{self.side}-tls-verify: the sink spec gives insecure= already; give one of them")


def open_cli_sink(spec: str, authfile: str | None, flags: RegistryFlags | None = None) -> Sink:
    """The sink of a spec. For a type=registry sink, ``--authfile`` is the
    default ``authfile=``, and ``flags`` give its credentials and TLS policy;
    any other sink refuses them."""
    from ..sinks import parse_spec, sink_class

    kind, opts = parse_spec(spec)
    flags = flags or RegistryFlags("dest")
    if kind != "registry":
        flags.refuse(f"for a type=registry sink, not type={kind}")
        sink: Sink = sink_class(kind).from_options(opts)
        return sink
    if authfile:
        opts.setdefault("authfile", authfile)
    flags.check_spec(opts)
    if flags.tls_verify is not None:
        opts["insecure"] = "false" if flags.tls_verify else "true"
    sink = sink_class(kind).from_options(opts, credentials=flags.credentials())
    return sink


__all__ = ["RegistryFlags", "add_registry_flags", "cli_bool", "open_cli_sink"]
