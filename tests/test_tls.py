"""transcoder.tls: one context per trust setting, built ahead by a warming thread.

Verification itself is proven against a real TLS registry in
test_registry_transport.py (an untrusted certificate refused, SSL_CERT_FILE
trusted); these tests pin down who builds a context and when.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import pytest

from transcoder import tls


@pytest.fixture(autouse=True)
def fresh_contexts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls, "_contexts", {})
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def test_a_warmed_context_is_the_one_callers_get(monkeypatch: pytest.MonkeyPatch) -> None:
    started = threading.Event()
    builders: list[str] = []
    real_build = tls._build

    def build(*key: object) -> ssl.SSLContext:
        builders.append(threading.current_thread().name)
        started.set()  # from here the warming thread holds the lock until the context is stored
        return real_build(*key)  # type: ignore[arg-type]

    monkeypatch.setattr(tls, "_build", build)
    tls.warm()
    assert started.wait(30)
    ctx = tls.context()
    assert builders == ["tls-warm"]
    assert tls.context() is ctx and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] > 0  # certifi's bundle is loaded


def test_one_context_per_setting_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    verifying, insecure = tls.context(True), tls.context(False)
    assert verifying is not insecure and insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    assert tls.context(True) is verifying
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))  # an empty CA directory: a new context that trusts nothing
    own = tls.context(True)
    assert own is not verifying and own.cert_store_stats()["x509_ca"] == 0


def test_a_bad_ca_file_fails_the_caller_not_the_warming_thread(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    monkeypatch.setenv("SSL_CERT_FILE", str(bad))
    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    thread = threading.Thread(target=tls._warm, args=(True,))
    thread.start()
    thread.join(30)
    assert errors == []
    with pytest.raises(ssl.SSLError):
        tls.context(True)
