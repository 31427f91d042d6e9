"""Registry credentials and where they come from, as docker and skopeo find them.

What a caller gives wins. Otherwise auth files are read: ``authfile`` (the
CLI's ``--authfile``) or ``$REGISTRY_AUTH_FILE`` alone when given; else
``$XDG_RUNTIME_DIR/containers/auth.json``,
``${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`` and docker's
``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``), and the
first file with credentials for the registry decides.

In one file: ``credHelpers[host]`` names a helper for that registry (by host
alone, docker's rule); else an ``auths`` entry (base64 ``auth``,
``username``/``password``, and an ``identitytoken``); else ``credsStore`` is the
helper for every registry. An ``auths`` key may name a repository or a
namespace, as containers-auth.json(5) allows: for ``host/ns/repo`` the keys
``host/ns/repo``, ``host/ns`` and ``host`` are tried in that order, the most
specific first. A key with a scheme (docker's legacy ``https://host/v1/``)
names the host alone. A
helper is ``docker-credential-<name> get``, given the server URL on stdin,
answering ``{"ServerURL", "Username", "Secret"}``; "credentials not found"
means anonymous, and the user name ``<token>`` means Secret is an identity
token. Secrets are :class:`~transcoder.redact.Secret` values; no message or
``repr`` built here contains one, and credentials found here say where they
came from (``origin``), so a rejection can name the auth-file key or helper.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
from pathlib import Path

from ..errors import AuthError, UsageError
from ..redact import Secret

HELPER_TIMEOUT = 60.0  # seconds; helpers such as ecr-login go to the network
TOKEN_USER = "<token>"  # docker's user name for "Secret is an identity token"
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # the key docker uses for Docker Hub
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _secret(value: str | Secret) -> Secret:
    return value if isinstance(value, Secret) else Secret(value)


class Credentials:
    """What to present to a registry: a username and password, an identity
    (refresh) token for the OAuth2 token flow, or a registry bearer token that
    is sent as it is. The secrets are held as :class:`Secret`. ``origin`` says
    where they came from, for messages (an auth-file key, a helper, an option);
    it takes no part in equality."""

    __slots__ = ("identity_token", "origin", "password", "registry_token", "username")

    def __init__(
        self, username: str = "", password: str | Secret = "", *, identity_token: str | Secret = "",
        registry_token: str | Secret = "", origin: str = "",
    ) -> None:
        self.username = username
        self.password = _secret(password)
        self.identity_token = _secret(identity_token)
        self.registry_token = _secret(registry_token)
        self.origin = origin

    @classmethod
    def from_identity_token(cls, token: str | Secret, username: str = TOKEN_USER, origin: str = "") -> Credentials:
        return cls(username, identity_token=token, origin=origin)

    @property
    def origin_note(self) -> str:
        """`` (from ORIGIN)`` for a message, or nothing."""
        return f" (from {self.origin})" if self.origin else ""

    def _key(self) -> tuple[str, Secret, Secret, Secret]:
        return (self.username, self.password, self.identity_token, self.registry_token)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credentials) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        shown = [f"username={self.username!r}"] if self.username else []
        shown += [f"{name}=<hidden>" for name in ("password", "identity_token", "registry_token") if getattr(self, name)]
        return f"Credentials({', '.join(shown)})"

    @property
    def can_basic(self) -> bool:
        """Whether there is a user name and password to answer a Basic challenge."""
        return bool(self.username and self.username != TOKEN_USER and self.password)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password.reveal()}".encode()
        return "Basic " + base64.b64encode(raw).decode()


# -- auth files -------------------------------------------------------------------


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def auth_file_paths(authfile: str | os.PathLike[str] | None = None) -> list[Path]:
    """The files to read, in order (see the module docstring)."""
    chosen = authfile or os.environ.get("REGISTRY_AUTH_FILE")
    if chosen:
        return [Path(chosen)]
    paths = []
    if os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [*paths, Path(config_home) / "containers" / "auth.json", docker_config_path()]


def normalize_key(key: str) -> str:
    """A registry host from an auth-file key (``https://host/v1/``, ``host/ns``, ``host``)."""
    key = re.sub(r"^[a-z]+://", "", key.strip())
    key = key.split("/", 1)[0]
    return "docker.io" if key in ("docker.io", "index.docker.io", "registry-1.docker.io") else key


def key_scope(key: str) -> tuple[str, str]:
    """The host and the repository path an ``auths`` key covers: ``host/ns/repo``
    and ``host/ns`` cover that path, ``host`` and a URL (``https://host/v1/``,
    docker's legacy form) every repository of the host (path "")."""
    url = re.match(r"^[a-z]+://", key.strip()) is not None
    path = "" if url else key.strip().partition("/")[2].strip("/")
    return normalize_key(key), path


def server_url(host: str) -> str:
    """What a credential helper is asked about: docker's Hub URL, else the host."""
    return DOCKER_HUB_SERVER if normalize_key(host) == "docker.io" else host


def _read_config(path: Path, required: bool) -> dict[str, object] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        if required:
            raise UsageError(f"auth file {path}: no such file") from None
        return None
    except OSError as exc:
        raise UsageError(f"auth file {path}: {exc.strerror or exc}") from exc
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"auth file {path}: not JSON") from exc
    if not isinstance(config, dict):
        raise UsageError(f"auth file {path}: not a JSON object")
    return config


def _matching(table: object, host: str) -> tuple[str, object] | None:
    """The first entry of ``table`` whose key names ``host`` (credHelpers: host only)."""
    wanted = normalize_key(host)
    for key, value in (table.items() if isinstance(table, dict) else []):
        if normalize_key(str(key)) == wanted:
            return str(key), value
    return None


def _covers(path: str, repository: str | None) -> bool:
    return not path or (repository is not None and (repository == path or repository.startswith(path + "/")))


def _auths_for(table: object, host: str, repository: str | None) -> list[tuple[str, object]]:
    """The ``auths`` entries covering ``repository`` of ``host``, the most
    specific first (file order among equals); without a repository, host keys only."""
    wanted = normalize_key(host)
    found: list[tuple[int, str, object]] = []
    for key, value in (table.items() if isinstance(table, dict) else []):
        key_host, path = key_scope(str(key))
        if key_host == wanted and _covers(path, repository):
            found.append((path.count("/") + 1 if path else 0, str(key), value))
    found.sort(key=lambda item: -item[0])  # stable: file order among keys equally specific
    return [(key, value) for _, key, value in found]


def entry_credentials(entry: object, where: str) -> Credentials | None:
    """Credentials from one ``auths`` entry; None if it holds none."""
    if not isinstance(entry, dict):
        return None
    user, password = "", ""
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(str(entry["auth"]), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise UsageError(f"{where}: the 'auth' value is not base64 of user:password") from exc
        if not sep:
            raise UsageError(f"{where}: the 'auth' value is not base64 of user:password")
    elif entry.get("username") and entry.get("password") is not None:
        user, password = str(entry["username"]), str(entry["password"])
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return Credentials(user or TOKEN_USER, password, identity_token=token, origin=where)
    return Credentials(user, password, origin=where) if user else None


def credentials_in_file(
    host: str, path: Path, required: bool = False, *, repository: str | None = None,
) -> Credentials | None:
    """Credentials for ``repository`` of ``host`` from one docker config or
    containers auth file (see the module docstring for which key wins)."""
    config = _read_config(path, required)
    if config is None:
        return None
    helper = _matching(config.get("credHelpers"), host)
    if helper is not None:
        return run_helper(str(helper[1]), host, f"{path}: credHelpers[{helper[0]!r}]")
    for key, entry in _auths_for(config.get("auths"), host, repository):
        found = entry_credentials(entry, f"{path}: auths[{key!r}]")
        if found is not None:
            return found
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        return run_helper(store, host, f"{path}: credsStore")
    return None


def load_docker_credentials(
    host: str, path: Path | None = None, *, authfile: str | os.PathLike[str] | None = None,
    repository: str | None = None,
) -> Credentials | None:
    """Credentials for ``repository`` (e.g. ``ns/repo``) of ``host`` from the
    auth files (or from ``path`` alone); None means anonymous. Without a
    repository only host keys count. An explicit ``authfile`` must exist."""
    if path is not None:
        return credentials_in_file(host, path, repository=repository)
    for candidate in auth_file_paths(authfile):
        found = credentials_in_file(host, candidate, required=authfile is not None, repository=repository)
        if found is not None:
            return found
    return None


# -- credential helpers ----------------------------------------------------------


def run_helper(name: str, host: str, named_by: str) -> Credentials | None:
    """``docker-credential-<name> get`` for ``host``; None when it has nothing.

    Errors name the registry, the helper and the config that chose it, never
    anything the helper answered on success."""
    exe = f"docker-credential-{name}"
    what = f"registry {host}: credential helper {exe[:80]} (from {named_by})"
    if not _HELPER_NAME.fullmatch(name):
        raise UsageError(f"registry {host}: credential helper name {name[:40]!r} is not valid (from {named_by})")
    try:
        proc = subprocess.run([exe, "get"], input=server_url(host).encode(), capture_output=True,
                              timeout=HELPER_TIMEOUT, check=False)
    except FileNotFoundError:
        raise AuthError(f"{what}: not found on PATH") from None
    except subprocess.TimeoutExpired:
        raise AuthError(f"{what}: no answer in {HELPER_TIMEOUT:.0f} s") from None
    except OSError as exc:
        raise AuthError(f"{what}: cannot run it ({exc.strerror or type(exc).__name__})") from None
    said = (proc.stdout or proc.stderr).decode(errors="replace").strip()
    if proc.returncode != 0:
        if "credentials not found" in said.lower():
            return None
        first = said.splitlines()[0][:160] if said else ""
        raise AuthError(f"{what}: failed with exit status {proc.returncode}" + (f": {first}" if first else ""))
    return _helper_answer(proc.stdout, what, f"{exe[:80]}, named by {named_by}")


def _helper_answer(out: bytes, what: str, origin: str) -> Credentials | None:
    try:
        answer = json.loads(out)
        user, secret = answer.get("Username", ""), answer.get("Secret", "")
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise AuthError(f"{what}: the answer is not JSON with Username and Secret") from None
    if not isinstance(user, str) or not isinstance(secret, str):
        raise AuthError(f"{what}: the answer is not JSON with Username and Secret")
    if not secret:
        return None
    if user == TOKEN_USER:
        return Credentials.from_identity_token(secret, origin=origin)
    return Credentials(user, secret, origin=origin)


def parse_user_pass(text: str, option: str) -> Credentials:
    """``USER[:PASS]`` as skopeo's ``--creds``; PASS is asked for on the terminal
    when missing. Messages never contain the password."""
    user, sep, password = text.partition(":")
    if not user:
        raise UsageError(f"{option}: expected USER[:PASSWORD], the user name is empty")
    if not sep:
        import getpass
        import sys

        if not sys.stdin.isatty():
            raise UsageError(f"{option} {user[:80]!r}: no password (give USER:PASSWORD, or run on a terminal)")
        password = getpass.getpass(f"Password for {user}: ")
    return Credentials(user, password, origin=option)


__all__ = [
    "Credentials", "auth_file_paths", "credentials_in_file", "docker_config_path", "entry_credentials",
    "key_scope", "load_docker_credentials", "normalize_key", "parse_user_pass", "run_helper", "server_url",
]
