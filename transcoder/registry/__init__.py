"""OCI registries: references, auth, the distribution API client, blob
uploads, the ``docker://`` image source and variant records in a repository."""

from .auth import Credentials
from .client import RegistryClient
from .reference import Reference, parse_reference
from .source import RegistrySource

__all__ = ["Credentials", "Reference", "RegistryClient", "RegistrySource", "parse_reference"]
