"""transcoder: zstd variants for container-image layers, kept beside the
canonical gzip blob, moved through CI caches and registries."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .codecs import ZstdParams
from .descriptor import Descriptor
from .digest import Digest
from .errors import TranscoderError
from .records import ImageRecord, VariantRecord
from .transcode import TranscodeResult, transcode_stream
from .variants import VariantTable
from .writers import BlobWriter, FileWriter, NullWriter

try:
    __version__ = version("transcoder")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+source"

__all__ = [
    "BlobWriter",
    "Descriptor",
    "Digest",
    "FileWriter",
    "ImageRecord",
    "NullWriter",
    "TranscodeResult",
    "TranscoderError",
    "VariantRecord",
    "VariantTable",
    "ZstdParams",
    "__version__",
    "transcode_stream",
]
