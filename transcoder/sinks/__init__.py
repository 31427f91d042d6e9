"""Sink types by name, imported lazily, with an install hint for extras.

A sink spec is written the way ``docker buildx --cache-to`` users know:
``type=local,dest=DIR``, ``type=gha,scope=NAME``, ``type=registry,ref=HOST/REPO``,
``type=s3,bucket=B,region=R``, ``type=azblob,account_url=U,name=N``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import UsageError
from .base import Sink

# How a yes/no option of a type=registry spec is spelled (any case); the
# command line reads insecure= with these before the sink's module loads.
REGISTRY_TRUE, REGISTRY_FALSE = ("true", "1", "yes"), ("false", "0", "no", "")

# name -> (module, class, pip extra needed, module whose absence means the extra is missing)
KNOWN: dict[str, tuple[str, str, str | None, str | None]] = {
    "local": ("transcoder.sinks.local", "LocalSink", None, None),
    "gha": ("transcoder.sinks.gha", "GhaSink", None, None),
    "registry": ("transcoder.sinks.registry", "RegistrySink", None, None),
    "s3": ("transcoder.sinks.s3", "S3Sink", "s3", "botocore"),
    "azblob": ("transcoder.sinks.azblob", "AzblobSink", "azure", "azure.storage.blob"),
}


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``type=x,k=v,...`` -> ("x", {k: v}); values may not contain commas."""
    opts: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            # Never echo the part: it may be the tail of a password that held a comma.
            after = f" after option {list(opts)[-1]!r}" if opts else ""
            raise UsageError(f"sink spec: a part{after} is not key=value (values cannot contain commas)")
        if key in opts:
            raise UsageError(f"sink spec: option {key!r} given twice")
        opts[key] = value
    kind = opts.pop("type", "")
    if kind not in KNOWN:
        raise UsageError(f"sink spec: unknown type {kind!r} (known: {', '.join(sorted(KNOWN))})")
    return kind, opts


def sink_class(kind: str) -> Any:
    module, cls, extra, probe = KNOWN[kind]
    if probe is not None:
        try:
            importlib.import_module(probe)
        except ImportError as exc:
            raise UsageError(f"type={kind} needs {probe}: pip install 'transcoder[{extra}]'") from exc
    return getattr(importlib.import_module(module), cls)


def open_sink(spec: str) -> Sink:
    """Build a sink from its spec; each sink validates its own options."""
    kind, opts = parse_spec(spec)
    sink: Sink = sink_class(kind).from_options(opts)
    return sink


__all__ = ["KNOWN", "Sink", "open_sink", "parse_spec", "sink_class"]
