"""transcoder: zstd variants for container-image layers, kept beside the
canonical gzip blob, moved through CI caches and registries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import lazy

# The one place the version is written (pyproject.toml reads it from here): a
# literal, because asking the installed metadata costs the command line's
# start-up 5-7 ms.
__version__ = "0.1.0"

# Public names and the module each lives in. They are imported on first use
# (PEP 562), so `transcoder convert blob` does not pay for the HTTP clients.
_EXPORTS = {
    "convert_blob": ".blobs",
    "ZstdParams": ".codecs",
    "Descriptor": ".descriptor",
    "Digest": ".digest",
    "TranscoderError": ".errors",
    "ConvertOptions": ".images.convert",
    "ImageResult": ".images.convert",
    "convert_image": ".images.convert",
    "restore": ".images.restore",
    "open_source": ".images.source",
    "ImageRecord": ".records",
    "VariantRecord": ".records",
    "open_sink": ".sinks",
    "TranscodeResult": ".transcode",
    "transcode_stream": ".transcode",
    "VariantTable": ".variants",
    "BlobWriter": ".writers",
    "FileWriter": ".writers",
    "NullWriter": ".writers",
}

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    return lazy.attribute(__name__, _EXPORTS, name)


def __dir__() -> list[str]:
    return sorted(__all__)


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
