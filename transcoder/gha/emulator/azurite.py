"""A data plane backed by a real Azure Blob endpoint (Azurite in tests).

The cache service hands out *service SAS* URLs that point straight at the
storage account, as GitHub does with its user-delegation SAS URLs; clients
then talk to Azurite itself, and finalize asks Azurite for the committed blob.
Each emulator uses its own container, deleted on close.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from ...errors import UsageError


class AzuritePlane:
    name = "azurite"

    def __init__(self, connection_string: str, clock: Callable[[], float], container: str | None = None) -> None:
        try:
            from azure.core.exceptions import AzureError, ResourceExistsError
            from azure.storage.blob import BlobServiceClient
        except ImportError as exc:  # pragma: no cover - optional extra
            raise UsageError("--azurite needs azure-storage-blob (pip install 'transcoder[azure]')") from exc
        try:
            self._service = BlobServiceClient.from_connection_string(connection_string)
        except ValueError as exc:
            raise UsageError("--azurite: not a valid Azure Storage connection string") from exc
        self._clock = clock
        self.container = container or f"actions-cache-{secrets.token_hex(4)}"
        self._client = self._service.get_container_client(self.container)
        try:
            with contextlib.suppress(ResourceExistsError):
                self._client.create_container()
        except AzureError as exc:  # the message names the endpoint, never the account key
            self._service.close()
            raise UsageError(f"--azurite: cannot create container {self.container!r} at "
                             f"{self._service.primary_endpoint}: {type(exc).__name__}") from exc
        cred = self._service.credential
        self._account, self._key = cred.account_name, cred.account_key

    def _url(self, blob: str, permissions: str, ttl: float) -> str:
        from azure.storage.blob import generate_blob_sas

        now = datetime.fromtimestamp(self._clock(), UTC)
        sas = generate_blob_sas(self._account, self.container, blob, account_key=self._key, permission=permissions,
                                start=now - timedelta(minutes=5), expiry=now + timedelta(seconds=ttl))
        return f"{self._client.url}/{quote(blob)}?{sas}"

    def upload_url(self, blob: str, ttl: float) -> str:
        return self._url(blob, "cw", ttl)

    def download_url(self, blob: str, ttl: float) -> str:
        return self._url(blob, "r", ttl)

    def committed_size(self, blob: str) -> int | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return int(self._client.get_blob_client(blob).get_blob_properties().size)
        except ResourceNotFoundError:
            return None

    def store_file(self, blob: str, path: Path) -> None:
        with open(path, "rb") as f:
            self._client.get_blob_client(blob).upload_blob(f, overwrite=True)
        path.unlink(missing_ok=True)

    def seal(self, blob: str) -> None:
        """Nothing to do: immutability of committed entries is enforced by the service, not the blob."""

    def delete(self, blob: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self._client.get_blob_client(blob).delete_blob()

    def read_all(self, blob: str) -> bytes:
        return bytes(self._client.get_blob_client(blob).download_blob().readall())

    def close(self) -> None:
        from azure.core.exceptions import AzureError

        with contextlib.suppress(AzureError):  # Azurite already gone: nothing left to clean
            self._client.delete_container()
        self._service.close()
