"""``docker://HOST/REPO:TAG`` or ``docker://HOST/REPO@sha256:...`` as an image source."""

from __future__ import annotations

import os
from typing import BinaryIO

import httpx

from ..descriptor import INDEX_TYPES, MANIFEST_TYPES, Descriptor
from ..errors import ManifestError, SizeMismatch
from ..parallel import Ahead
from .client import RegistryClient
from .credentials import Credentials
from .reference import Reference, parse_reference


class RegistrySource:
    """Implements :class:`~transcoder.images.source.ImageSource` for a registry."""

    def __init__(self, ref: Reference, client: RegistryClient) -> None:
        self.ref = ref
        self.client = client
        self._manifests: dict[str, bytes] = {}  # digest -> verified bytes already fetched
        # A failed resolve ahead is reported as it failed: asking again would double the round trips to an error.
        self._resolving: Ahead[None, tuple[Descriptor, str | None]] = Ahead("resolve", ())

    @classmethod
    def from_ref(
        cls, text: str, *, insecure: bool = False, credentials: Credentials | None = None,
        transport: httpx.BaseTransport | None = None, authfile: str | os.PathLike[str] | None = None,
    ) -> RegistrySource:
        """``credentials`` win; without them, ``authfile`` or the default auth
        files and credential helpers are asked (:mod:`.credentials`)."""
        ref = parse_reference(text)
        client = RegistryClient(ref.api_host, insecure=insecure, credentials=credentials, transport=transport,
                                authfile=authfile, repository=ref.repository)
        return cls(ref, client)

    @property
    def name(self) -> str:
        return f"docker://{self.ref}"

    @property
    def host(self) -> str:
        return self.ref.api_host

    @property
    def repository(self) -> str:
        return self.ref.repository

    def __repr__(self) -> str:
        return f"RegistrySource({self.name!r})"

    def resolve_ahead(self) -> None:
        """Start :meth:`resolve` (the probe, any token, the root manifest) on a thread of its own."""
        self._resolving.start(None, self._resolve)

    def resolve(self) -> tuple[Descriptor, str | None]:
        return self._resolving.take(None, self._resolve)

    def _resolve(self) -> tuple[Descriptor, str | None]:
        got = self.client.get_manifest(self.ref.repository, self.ref.digest or self.ref.reference)
        if got.media_type not in MANIFEST_TYPES | INDEX_TYPES:
            raise ManifestError(f"{self.name}: unsupported manifest type {got.media_type[:80]!r}")
        self._manifests[str(got.digest)] = got.data
        return got.descriptor(), self.ref.tag

    def get_manifest(self, desc: Descriptor) -> bytes:
        data = self._manifests.get(str(desc.digest))
        if data is None:
            data = self.client.get_manifest(self.ref.repository, desc.digest, accept=(desc.media_type,)).data
            self._manifests[str(desc.digest)] = data
        if len(data) != desc.size:
            raise SizeMismatch(f"{self.name}: manifest {desc.digest} is {len(data)} bytes, descriptor says {desc.size}")
        return data

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self.client.open_blob(self.ref.repository, desc.digest)

    def close(self) -> None:
        self._resolving.drain()  # a resolve started ahead and never taken ends before its client
        self.client.close()

    def __enter__(self) -> RegistrySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["RegistrySource"]
