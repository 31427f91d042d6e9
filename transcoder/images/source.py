"""The image-source contract, and opening a source from its reference.

An image source yields a root descriptor (a manifest or an index) and serves
manifests (whole, verified, bounded) and blobs (streamed; the caller verifies
them while streaming, through the transcode pipeline or ``read_verified``).

References: ``oci:DIR[:REF]``, ``docker-archive:FILE``, ``docker://HOST/REPO:TAG``
or ``docker://HOST/REPO@sha256:...``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from ..descriptor import Descriptor
from ..errors import UsageError

if TYPE_CHECKING:
    from ..registry.credentials import Credentials


@runtime_checkable
class ImageSource(Protocol):
    @property
    def name(self) -> str:
        """How messages name this image (no secrets)."""
        ...

    def resolve(self) -> tuple[Descriptor, str | None]:
        """The root descriptor and the tag it was found under (None if untagged)."""
        ...

    def get_manifest(self, desc: Descriptor) -> bytes:
        """The manifest or index bytes, checked against ``desc`` (size, digest, 4 MiB bound)."""
        ...

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """A stream of the blob's bytes; the caller checks digest and size as it reads."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ResolvesAhead(Protocol):
    """Optional: start :meth:`ImageSource.resolve`'s round trips in the
    background, so that they overlap what the caller does meanwhile; the
    later ``resolve()`` takes their result, or reports their failure."""

    def resolve_ahead(self) -> None: ...


def open_source(
    ref: str, *, credentials: Credentials | None = None, insecure: bool = False,
    authfile: str | os.PathLike[str] | None = None,
) -> ImageSource:
    """Open ``oci:``, ``docker-archive:`` or ``docker://`` references.

    ``credentials`` and ``insecure`` are for a registry and refused for a
    local source; ``authfile`` (where a registry's credentials are looked up
    when none are given) is ignored by local sources."""
    if (credentials is not None or insecure) and not ref.startswith("docker://"):
        raise UsageError(f"image reference {ref[:120]!r}: registry credentials and insecure apply to docker:// only")
    if ref.startswith("oci:"):
        from .layout import LayoutSource

        return LayoutSource.from_ref(ref[4:])
    if ref.startswith("docker-archive:"):
        from .archive import ArchiveSource

        return ArchiveSource(ref[len("docker-archive:") :])
    if ref.startswith("docker://"):
        from ..registry.source import RegistrySource

        return RegistrySource.from_ref(ref[len("docker://") :], credentials=credentials, insecure=insecure,
                                       authfile=authfile)
    raise UsageError(f"image reference {ref!r}: expected oci:DIR[:REF], docker-archive:FILE or docker://HOST/REPO:TAG")
