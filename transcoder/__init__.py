"""transcoder: zstd variants for container-image layers, kept beside the
canonical gzip blob, moved through CI caches and registries."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .blobs import convert_blob
from .codecs import ZstdParams
from .descriptor import Descriptor
from .digest import Digest
from .errors import TranscoderError
from .images.convert import ConvertOptions, ImageResult, convert_image
from .images.restore import restore
from .images.source import open_source
from .records import ImageRecord, VariantRecord
from .sinks import open_sink
from .transcode import TranscodeResult, transcode_stream
from .variants import VariantTable
from .writers import BlobWriter, FileWriter, NullWriter

try:
    __version__ = version("transcoder")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+source"

__all__ = [
    "BlobWriter",
    "ConvertOptions",
    "Descriptor",
    "Digest",
    "FileWriter",
    "ImageRecord",
    "ImageResult",
    "NullWriter",
    "TranscodeResult",
    "TranscoderError",
    "VariantRecord",
    "VariantTable",
    "ZstdParams",
    "__version__",
    "convert_blob",
    "convert_image",
    "open_sink",
    "open_source",
    "restore",
    "transcode_stream",
]
