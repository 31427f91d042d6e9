"""Test helpers for the registry client: fault injection around a real
registry, and a bearer-token front for one.

* :class:`FaultTransport` wraps httpx's real transport; a test installs a
  hook that may raise, change or replace a response (httpx transport
  injection), while every other request reaches the real registry.
* :class:`CutProxy` is a TCP proxy that drops the connection part-way through
  the body of a request (a reset mid-upload, as a network would do it).
* :class:`TokenFront` is a small HTTP server implementing the distribution
  token flow in front of a real registry: ``/token`` hands out tokens for the
  scopes a user may have (Basic-authenticated, or anonymous, by GET; or by
  the OAuth2 form POST with ``grant_type=refresh_token`` and an identity
  token), and ``/v2/`` requests pass through only with a token covering
  their scope.
* :func:`write_credential_helper` writes a real ``docker-credential-<name>``
  executable implementing the helper protocol's ``get``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.imagegen import config_for, gz
from transcoder.descriptor import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from transcoder.records import ImageRecord
from transcoder.sinks.base import put_bytes
from transcoder.sinks.registry import RegistrySink

Hook = Callable[[httpx.Request, Callable[[httpx.Request], httpx.Response]], httpx.Response]


def repo_name(prefix: str = "t") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A one-day certificate for 127.0.0.1 and its key, written into ``directory``."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def push_one_layer_image(sink: RegistrySink, tar: bytes, tag: str = "v1") -> None:
    """A gzip image of the one layer ``tar``, pushed to ``sink`` and named ``tag``; the sink is closed."""
    layer = put_bytes(sink, gz(tar), OCI_LAYER_GZIP)
    config = put_bytes(sink, config_for([tar]), OCI_CONFIG)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(),
                           "layers": [layer.to_json()]}).encode()
    sink.put_image(ImageRecord(tag, sink.put_manifest(manifest, OCI_MANIFEST)))
    sink.close()


_HELPER = """#!{python}
import json, sys
server = sys.stdin.read()
with open({log!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "stdin": server}}) + "\\n")
if sys.argv[1:] != ["get"]:
    sys.exit(2)
fail = {fail!r}
if fail is not None:
    sys.stderr.write(fail + "\\n")
    sys.exit(3)
store = {store!r}
if server not in store:
    print("credentials not found in native keychain")
    sys.exit(1)
user, secret = store[server]
print(json.dumps({{"ServerURL": server, "Username": user, "Secret": secret}}))
"""


def write_credential_helper(bin_dir: Path, name: str, store: dict[str, tuple[str, str]] | None = None, *,
                            fail: str | None = None) -> Path:
    """``bin_dir/docker-credential-<name>``: ``get`` answers from ``store``
    (server URL -> user, secret) as docker's helpers do, "credentials not
    found" for any other server, or fails with ``fail`` on stderr. Every call
    (argv and stdin) is logged as a JSON line to the returned path."""
    log = bin_dir / f"{name}.calls"
    exe = bin_dir / f"docker-credential-{name}"
    exe.write_text(_HELPER.format(python=sys.executable, log=str(log), fail=fail, store=store or {}))
    exe.chmod(0o755)
    return log


def helper_calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


class FaultTransport(httpx.BaseTransport):
    """The real transport, with an optional hook around each request; keeps a log."""

    def __init__(self, hook: Hook | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.hook = hook
        self.log: list[tuple[str, str, dict[str, str]]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.log.append((request.method, request.url.path, dict(request.headers)))
        if self.hook is None:
            return self.inner.handle_request(request)
        return self.hook(request, self.inner.handle_request)

    def close(self) -> None:
        self.inner.close()

    def methods(self, path_part: str = "") -> list[str]:
        return [m for m, p, _ in self.log if path_part in p]


class ChunkStream(httpx.SyncByteStream):
    """A response body served in 64 KiB pieces, as a network would (never pre-read)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        for i in range(0, len(self.data), 1 << 16):
            yield self.data[i : i + (1 << 16)]


def replaced(response: httpx.Response, body: bytes, **headers: str) -> httpx.Response:
    """``response`` with another body (Content-Length fixed, Content-Encoding kept off)."""
    response.read()
    response.close()
    hdrs = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-encoding")}
    hdrs.update(headers, **{"Content-Length": str(len(body))})
    return httpx.Response(response.status_code, headers=hdrs, stream=ChunkStream(body))


class BreakingStream(httpx.SyncByteStream):
    """Passes ``limit`` bytes of a response body through, then fails like a reset."""

    def __init__(self, inner: httpx.Response, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner.iter_raw():
            if sent + len(chunk) >= self.limit:
                yield chunk[: self.limit - sent]
                raise httpx.ReadError("connection reset by peer (injected)")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


# -- a TCP proxy that cuts a request body short ----------------------------------


class CutProxy:
    """Forwards TCP to ``upstream``; the first ``cuts`` requests whose first line
    starts with ``marker`` are cut after ``after`` body bytes (both sides closed).
    ``answer``: the answer to such a request is cut instead, after ``after``
    bytes of it (head included)."""

    def __init__(self, upstream: str, marker: bytes = b"PATCH ", after: int = 1 << 20, cuts: int = 1,
                 answer: bool = False) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.marker, self.after, self.cuts, self.answer = marker, after, cuts, answer
        self.cut_done = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._server.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            doomed = threading.Event()  # set when this connection's answer is to be cut
            threading.Thread(target=self._pump, args=(client, upstream, True, doomed), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False, doomed), daemon=True).start()

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cut_done >= self.cuts:
                return False
            self.cut_done += 1
            return True

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool, doomed: threading.Event) -> None:
        budget: int | None = None  # bytes still allowed through on a doomed request (or answer)
        try:
            while data := src.recv(65536):
                if outbound and budget is None and not doomed.is_set() and self.marker in data and self._take_cut():
                    if self.answer:
                        doomed.set()
                    else:
                        budget = self.after + data.index(self.marker)
                if not outbound and budget is None and doomed.is_set():
                    budget = self.after
                if budget is not None:
                    if len(data) >= budget:
                        dst.sendall(data[:budget])
                        break
                    budget -= len(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


# -- a bearer-token front for a real registry ------------------------------------

_PATH = re.compile(r"^/v2/(.+?)/(manifests|blobs|tags)/")


@dataclass
class TokenFront:
    """Token service + token-checking pass-through to ``upstream`` (a real registry).

    ``users``: name -> (password, actions granted on every repository).
    Anonymous callers get ``anonymous`` actions. Repositories under ``denied/``
    answer 403 to any valid token."""

    upstream: str
    users: dict[str, tuple[str, str]]
    anonymous: str = ""
    service: str = "test-registry"
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    #: identity (refresh) token -> user, for the OAuth2 POST (and, as some
    #: registries do, as the Basic password of a GET)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    oauth: bool = True  # False: POST /token answers 404, as token servers without OAuth2 do
    rotate: bool = False  # answer each refresh with a new refresh token (the old one stops working)
    _tokens: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        front = self

        class Handler(_FrontHandler):
            owner = front

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def issue(self, user: str | None, scopes: list[str]) -> str:
        allowed = set(self.users[user][1].split(",")) if user else set(filter(None, self.anonymous.split(",")))
        grant: dict[str, set[str]] = {}
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository":
                grant[name] = set(actions.split(",")) & allowed
        token = secrets.token_urlsafe(16)
        self._tokens[token] = grant
        return token

    def allows(self, token: str, repo: str, action: str) -> bool | None:
        """None: unknown token; else whether it covers the action."""
        grant = self._tokens.get(token)
        if grant is None:
            return None
        return action in grant.get(repo, set())


class _FrontHandler(BaseHTTPRequestHandler):
    owner: TokenFront
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, length: str | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", length if length is not None else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _token(self, body: bytes) -> None:
        if self.command == "POST":
            self._oauth(body)
            return
        query = parse_qs(urlsplit(self.path).query)
        user = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if self.owner.users.get(name, ("\0", ""))[0] == password:
                user = name
            elif password in self.owner.refresh_tokens:
                user = self.owner.refresh_tokens[password]
            else:
                self._reply(401, b'{"details":"bad credentials"}')
                return
        self.owner.token_requests.append({"method": "GET", "user": user, "scope": query.get("scope", []),
                                          "service": query.get("service"), "authorization": auth})
        token = self.owner.issue(user, query.get("scope", []))
        self._reply(200, json.dumps({"token": token, "expires_in": 300}).encode(), {"Content-Type": "application/json"})

    def _oauth(self, body: bytes) -> None:
        """The OAuth2 flow of the distribution token spec (spec/auth/oauth.md)."""
        if not self.owner.oauth:
            self._reply(404, b"404 page not found")
            return
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        user = self.owner.refresh_tokens.get(form.get("refresh_token", ""))
        self.owner.token_requests.append({"method": "POST", "user": user, "form": form, "service": [form.get("service")],
                                          "scope": form.get("scope", "").split(), "authorization":
                                          self.headers.get("Authorization", ""),
                                          "content_type": self.headers.get("Content-Type", "")})
        if form.get("grant_type") != "refresh_token" or not form.get("client_id") or user is None:
            self._reply(400, b'{"error":"invalid_grant"}', {"Content-Type": "application/json"})
            return
        answer: dict[str, Any] = {"access_token": self.owner.issue(user, form.get("scope", "").split()),
                                  "expires_in": 300, "scope": form.get("scope", "")}
        if self.owner.rotate:
            del self.owner.refresh_tokens[form["refresh_token"]]
            answer["refresh_token"] = new = secrets.token_urlsafe(16)
            self.owner.refresh_tokens[new] = user
        self._reply(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

    def _challenge(self, scope: str | None) -> None:
        realm = f'Bearer realm="http://{self.owner.host}/token",service="{self.owner.service}"'
        if scope:
            realm += f',scope="{scope}"'
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        self._reply(401, body, {"WWW-Authenticate": realm, "Content-Type": "application/json"})

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/token"):
            self._token(body)
            return
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        m = _PATH.match(urlsplit(self.path).path)
        if m is None:  # /v2/ itself: any valid token will do
            if token not in self.owner._tokens:
                self._challenge(None)
                return
        else:
            repo, action = m.group(1), ("pull" if self.command in ("GET", "HEAD") else "push")
            allowed = self.owner.allows(token, repo, action)
            if allowed and repo.startswith("denied/"):
                self._reply(403, b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}')
                return
            if not allowed:
                self._challenge(f"repository:{repo}:{'pull' if action == 'pull' else 'pull,push'}")
                return
        self._forward(body)

    def _forward(self, body: bytes) -> None:
        conn = HTTPConnection(*self.owner.upstream.rsplit(":", 1), timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "connection")}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        hop = ("connection", "transfer-encoding", "content-length", "keep-alive")
        length = resp.getheader("Content-Length") if self.command == "HEAD" else None
        self._reply(resp.status, data, {k: v for k, v in resp.getheaders() if k.lower() not in hop}, length)
        conn.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle
