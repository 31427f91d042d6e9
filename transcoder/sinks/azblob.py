"""``type=azblob,account_url=U,name=CONTAINER[,prefix=P]``: an Azure Blob container as a sink.

Requests go through azure-storage-blob (``pip install 'transcoder[azure]'``).
Credentials, first found wins: ``connection_string=``, ``account_key=`` (or
BuildKit's ``secret_access_key=``), ``sas_token=``, then the environment's
``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_ACCOUNT_KEY`` and
``AZURE_STORAGE_SAS_TOKEN``; with none, requests are anonymous. The account
name comes from the URL (or ``account_name=`` / ``AZURE_STORAGE_ACCOUNT``).

Immutability rests on ``If-None-Match: *``: a small blob is one Put Blob, a
larger one is staged block by block as it arrives and committed with one
Put Block List, both create-only; a second writer gets 409 and treats it as
"already exists". Blocks can only be committed to the blob they were staged
on, so a blob whose digest is known only at the end is staged under
``ingest/``, committed there, and published by a server-side Copy Blob
(create-only) within the account, then removed. Azure Put Block From URL
would copy block by block without the intermediate commit, but the Azurite
emulator does not implement it; Copy Blob works on both. A copy still
pending is not "there" for readers: ``stat_blob`` waits for it to finish.

``transcoder gc`` removes what interrupted writers left under ``ingest/``:
committed ingest blobs and blobs that have only uncommitted blocks. Blocks
staged on a final name (a blob whose digest was known up front) cannot be
dropped without committing something under that name, so they are left to
the service, which discards uncommitted blocks after a week.
"""

from __future__ import annotations

import base64
import io
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, NoReturn

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, BlobClient, BlobServiceClient, ExponentialRetry

from ..deadline import Deadline, call_within, socket_of
from ..errors import AuthError, NotFound, SinkError, TranscoderError, TransientError, UsageError
from .objectstore import Leftover, ObjectReader, ObjectSink, buffered
from .options import Tuning, check_known, int_option, prefix_option, tuning_options

MIN_PART = 64 << 10
MAX_PART = 4000 << 20  # Azure's largest block
COPY_TIMEOUT = 600.0
ENV = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN")
OPTIONS = {"account_url", "name", "prefix", "account_name", "account_key", "secret_access_key", "sas_token",
           "connection_string", "part_size", "upload_concurrency", "retries"}
_COPYING = ("pending", "failed", "aborted")


class AzblobSink(ObjectSink):
    def __init__(self, container: str, *, account_url: str | None = None, prefix: str = "",
                 credential: dict[str, str] | None = None, tuning: Tuning | None = None, retries: int | None = None) -> None:
        tuning = tuning or Tuning()
        service, secret_values = _service(account_url, credential or {}, tuning, retries)
        where = f"{service.account_name}/{container}"
        location = f"azblob:{where}/{prefix.rstrip('/')}" if prefix else f"azblob:{where}"
        store = _AzStore(service.get_container_client(container), container, location, secret_values)
        super().__init__(store, location, prefix, tuning)

    @classmethod
    def from_options(cls, opts: dict[str, str]) -> AzblobSink:
        check_known("azblob", opts, OPTIONS, ("name",))
        cred = {k: opts[k] for k in ("connection_string", "account_key", "sas_token", "account_name") if opts.get(k)}
        if opts.get("secret_access_key") and "account_key" not in cred:
            cred["account_key"] = opts["secret_access_key"]
        if not any(k in cred for k in ("connection_string", "account_key", "sas_token")):
            env = {k: os.environ[k] for k in ENV if os.environ.get(k)}
            for key, var in zip(("connection_string", "account_key", "sas_token"), ENV, strict=True):
                if var in env:
                    cred[key] = env[var]
                    break
        url = opts.get("account_url")
        if not url and "connection_string" not in cred:
            raise UsageError("type=azblob requires account_url= (or a connection string)")
        if url and not url.startswith(("http://", "https://")):
            raise UsageError(f"type=azblob: option account_url={url!r} must start with http:// or https://")
        name = opts["name"]
        if not ((3 <= len(name) <= 63 and name.replace("-", "").isalnum() and name.islower()) or name == "$root"):
            raise UsageError(f"type=azblob: option name={name!r} is not a valid container name")
        retries = int_option("azblob", "retries", opts["retries"], 0, 20) if "retries" in opts else None
        return cls(name, account_url=url, prefix=prefix_option("azblob", opts.get("prefix", "")), credential=cred,
                   tuning=tuning_options("azblob", opts, MIN_PART, MAX_PART), retries=retries)


def _service(url: str | None, cred: dict[str, str], tuning: Tuning, retries: int | None) -> tuple[BlobServiceClient, list[str]]:
    """The service client and the secret strings that must never be shown."""
    kwargs: dict[str, Any] = {
        "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=3, retry_total=3 if retries is None else retries),
        # Small ranged GETs keep reads streaming with bounded memory.
        "max_single_get_size": 4 << 20, "max_chunk_get_size": 4 << 20,
        "connection_timeout": 20, "read_timeout": 120,
    }
    try:
        if "connection_string" in cred:
            from_cs = BlobServiceClient.from_connection_string(cred["connection_string"], **kwargs)
            credential = from_cs.credential
            service = BlobServiceClient(url, credential=credential, **kwargs) if url else from_cs
        else:
            assert url is not None
            credential = None
            if "account_key" in cred:
                account = (cred.get("account_name") or os.environ.get("AZURE_STORAGE_ACCOUNT")
                           or BlobServiceClient(url).account_name)
                credential = {"account_name": account, "account_key": cred["account_key"]}
            elif "sas_token" in cred:
                credential = cred["sas_token"].lstrip("?")
            service = BlobServiceClient(url, credential=credential, **kwargs)
    except (ValueError, AzureError) as exc:
        # The SDK's messages may quote the connection string; name only the kind of problem.
        raise UsageError(f"type=azblob: cannot use account_url or credentials: {type(exc).__name__}") from None
    hidden = [cred[k] for k in ("connection_string", "account_key", "sas_token") if k in cred]
    sas = cred.get("sas_token", "")
    hidden += [part.split("=", 1)[1] for part in sas.lstrip("?").split("&") if part.startswith("sig=")]
    return service, hidden


def _code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None) or ""
    return str(getattr(code, "value", code))


def _watch(deadline: Deadline) -> Callable[[Any], None]:
    """A response hook: the SDK reads a whole chunk inside one call, so the
    deadline must be able to cut each response's socket (and stop the SDK's retries)."""

    def hook(response: Any) -> None:
        if deadline.expired():
            raise deadline.error()
        deadline.attach(socket_of(getattr(response.http_response, "internal_response", None)))

    return hook


def _block_id(token: str, number: int) -> str:
    # Every block id of a blob must have the same length; the token keeps writers' blocks apart.
    return base64.b64encode(f"{token}-{number:08d}".encode()).decode()


class _AzStore:
    """The object-store protocol on one container; every SDK error is converted."""

    def __init__(self, container: Any, name: str, location: str, secret_values: list[str]) -> None:
        self.container, self.name, self.location = container, name, location
        self._secrets = [s for s in secret_values if s]

    def blob(self, key: str) -> BlobClient:
        return self.container.get_blob_client(key)  # type: ignore[no-any-return]

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except AzureError as exc:
            self.fail(exc, what)

    def fail(self, exc: AzureError, what: str) -> NoReturn:
        # URLs in SDK messages carry the SAS token: never chain an exception that shows a secret.
        leaks = any(s in f"{exc}{exc!r}" for s in self._secrets)
        raise self.convert(exc, what) from (None if leaks else exc)

    def convert(self, exc: AzureError, what: str) -> TranscoderError:
        where = f"{self.location}: {what}"
        status = getattr(exc, "status_code", None) or 0
        code = _code(exc)
        if code == "ContainerNotFound":
            return SinkError(f"{self.location}: container {self.name!r} does not exist")
        if isinstance(exc, ResourceNotFoundError) or status == 404:
            return NotFound(f"{where}: not found")
        if status in (401, 403):
            return AuthError(f"{where}: authentication failed ({code or status}); check the account key, SAS token "
                             "or connection string")
        if not isinstance(exc, HttpResponseError) or status == 429 or status >= 500:
            return TransientError(f"{where}: {code or type(exc).__name__} talking to Azure Blob, retry later")
        return SinkError(f"{where}: {code or 'error'} ({status})")

    def create(self, what: str, request: Callable[[], Any]) -> bool:
        """Run a create-only request: True if created, False if the blob already existed."""
        try:
            request()
            return True
        except ResourceExistsError:
            return False
        except AzureError as exc:
            if getattr(exc, "status_code", None) == 412:
                return False
            self.fail(exc, what)

    def head(self, key: str) -> int | None:
        try:
            with self.errors(f"stat {key}"):
                props = self.blob(key).get_blob_properties()
        except NotFound:
            return None
        if props.copy.status in _COPYING:
            props = self._await_copy(self.blob(key))
        return None if props is None else int(props.size)

    def _await_copy(self, blob: BlobClient) -> Any:
        """The blob's properties once a copy into it ends; None if it failed (and was removed)."""
        deadline = time.monotonic() + COPY_TIMEOUT
        with self.errors(f"copy into {blob.blob_name}"):
            props = blob.get_blob_properties()
            while props.copy.status == "pending" and time.monotonic() < deadline:
                time.sleep(0.2)
                props = blob.get_blob_properties()
            if props.copy.status == "pending":
                raise TransientError(f"{self.location}: copy into {blob.blob_name} still pending after {COPY_TIMEOUT:.0f} s")
            if props.copy.status in _COPYING:
                # A failed copy leaves an unusable blob that would block every create-only write.
                blob.delete_blob(etag=props.etag, match_condition=MatchConditions.IfNotModified)
                return None
        return props

    def get(self, key: str, offset: int = 0, length: int | None = None, *,
            deadline: Deadline | None = None) -> BinaryIO:
        if length == 0:
            return self._empty(key)
        hooks: dict[str, Any] = {} if deadline is None else {"raw_response_hook": _watch(deadline)}
        try:
            def download() -> Any:
                return self.blob(key).download_blob(offset=offset, length=length, max_concurrency=1, **hooks)

            # The headers (and the SDK's first chunk) too must come within the deadline.
            stream = download() if deadline is None else call_within(deadline, download)
        except AzureError as exc:
            if deadline is not None and deadline.expired():
                raise deadline.error() from exc
            if getattr(exc, "status_code", None) == 416:
                return self._empty(key)  # offset at or past the end
            self.fail(exc, f"read {key}")
        if stream.properties.copy.status in _COPYING:
            raise NotFound(f"{self.location}: read {key}: not found (a copy into it has not finished)")
        reader = ObjectReader(stream.read, lambda: None, int(stream.size), f"{self.location}: read {key}",
                              lambda e: self._read_error(e, key), deadline)
        return buffered(reader)

    def _read_error(self, exc: BaseException, key: str) -> TranscoderError:
        if isinstance(exc, AzureError):
            return self.convert(exc, f"read {key}")
        return TransientError(f"{self.location}: read {key}: {type(exc).__name__}")

    def _empty(self, key: str) -> BinaryIO:
        if self.head(key) is None:
            raise NotFound(f"{self.location}: read {key}: not found")
        return io.BytesIO(b"")

    def put(self, key: str, data: bytes) -> bool:
        return self.create(f"write {key}", lambda: self.blob(key).upload_blob(data, overwrite=False, max_concurrency=1))

    def keys(self, prefix: str) -> Iterator[str]:
        with self.errors(f"list {prefix}"):
            yield from self.container.list_blob_names(name_starts_with=prefix)

    def upload(self, key: str) -> _AzUpload:
        return _AzUpload(self, key)

    def copy(self, src: str, dst: str, size: int) -> bool:
        target, url = self.blob(dst), self.blob(src).url
        def start() -> Any:
            return target.start_copy_from_url(url, match_condition=MatchConditions.IfMissing)

        if not self.create(f"copy {src} to {dst}", start):
            self._await_copy(target)  # someone else's copy: done before we call the blob there
            return False
        if self._await_copy(target) is None:
            raise SinkError(f"{self.location}: copy {src} to {dst} failed")
        return True

    def delete(self, key: str) -> None:
        try:
            with self.errors(f"delete {key}"):
                self.blob(key).delete_blob()
        except NotFound:
            pass

    def leftovers(self, prefix: str) -> Iterator[Leftover]:
        ingest = f"{prefix}ingest/"
        with self.errors(f"list {ingest}"):
            found = list(self.container.list_blobs(name_starts_with=ingest, include=["uncommittedblobs"]))
        for props in found:
            key = str(props.name)
            size = int(props.size or 0) or self._staged_bytes(key)
            modified = props.last_modified or props.creation_time
            yield Leftover("ingest object", key, size, modified.timestamp(), _AzUpload(self, key).abort)

    def _staged_bytes(self, key: str) -> int:
        try:
            with self.errors(f"list blocks of {key}"):
                committed, uncommitted = self.blob(key).get_block_list("all")
        except NotFound:
            return 0
        return sum(int(b.size or 0) for b in [*committed, *uncommitted])

    def close(self) -> None:
        self.container.close()


class _AzUpload:
    """Blocks staged on one blob name, invisible until the block list is committed."""

    def __init__(self, store: _AzStore, key: str) -> None:
        self.store, self.key, self.blob = store, key, store.blob(key)
        self.token = secrets.token_hex(8)

    def put_part(self, number: int, data: bytes) -> None:
        with self.store.errors(f"stage block {number} of {self.key}"):
            self.blob.stage_block(_block_id(self.token, number), data, length=len(data))

    def complete(self, parts: int, *, if_absent: bool) -> bool:
        blocks = [BlobBlock(_block_id(self.token, n)) for n in range(1, parts + 1)]
        condition = MatchConditions.IfMissing if if_absent else None
        try:
            return self.store.create(f"commit {self.key}", lambda: self.blob.commit_block_list(blocks, match_condition=condition))
        except SinkError:
            # Another writer's commit of the same name discards our uncommitted blocks.
            if if_absent and self.store.head(self.key) is not None:
                return False
            raise

    def abort(self) -> None:
        if "/ingest/" not in f"/{self.key}":
            # Committing an empty list would publish an empty blob under a final name; uncommitted
            # blocks there are invisible, and the service discards them after a week.
            return
        with self.store.errors(f"discard {self.key}"):
            self.blob.commit_block_list([])  # drops the staged blocks
        self.store.delete(self.key)
