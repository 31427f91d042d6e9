"""TLS client contexts: one per process and trust setting, loadable ahead of use.

A verifying context trusts the CAs named by ``SSL_CERT_FILE`` or
``SSL_CERT_DIR``, else certifi's bundle: the policy httpx applies to
``verify=True``. Loading a CA bundle takes 20-30 ms of CPU, so a context is
built once per process and setting, and a caller that knows it will need one
can :func:`warm` it: a background thread loads the bundle (OpenSSL does so
without holding the GIL) while the caller goes on importing the HTTP stack,
and the first :func:`context` call then finds it ready or waits for it.

This module imports only the standard library and certifi, so warming costs
nothing that the caller would not pay anyway.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading

_Key = tuple[bool, str | None, str | None]

_lock = threading.Lock()  # held while a context is built, so it is built once
_contexts: dict[_Key, ssl.SSLContext] = {}


def _key(verify: bool) -> _Key:
    return verify, os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None


def _build(verify: bool, cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    if not verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if cert_file:
        return ssl.create_default_context(cafile=cert_file)
    if cert_dir:
        return ssl.create_default_context(capath=cert_dir)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def context(verify: bool = True) -> ssl.SSLContext:
    """The process's context for ``verify`` under the current environment."""
    key = _key(verify)
    with _lock:  # a warming thread holds it until its context is stored
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = _contexts[key] = _build(*key)
        return ctx


def warm(verify: bool = True) -> None:
    """Start building the context for ``verify`` in the background."""
    threading.Thread(target=_warm, args=(verify,), name="tls-warm", daemon=True).start()


def _warm(verify: bool) -> None:
    # A bad SSL_CERT_FILE is reported by the caller's own context() call.
    with contextlib.suppress(OSError, ssl.SSLError):
        context(verify)


__all__ = ["context", "warm"]
