"""The public surface is deliberate: changing it must change this test."""

from __future__ import annotations

import transcoder


def test_exported_members() -> None:
    assert sorted(transcoder.__all__) == sorted([
        "BlobWriter", "ConvertOptions", "Descriptor", "Digest", "FileWriter", "ImageRecord", "ImageResult",
        "NullWriter", "TranscodeResult", "TranscoderError", "VariantRecord", "VariantTable", "ZstdParams",
        "__version__", "convert_blob", "convert_image", "open_sink", "open_source", "restore", "transcode_stream",
    ])
    for name in transcoder.__all__:
        assert getattr(transcoder, name) is not None


def test_py_typed_marker_ships() -> None:
    from importlib.resources import files

    assert files("transcoder").joinpath("py.typed").is_file()


def test_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    assert transcoder.__version__ == version("transcoder")
    assert all(part.isdigit() for part in transcoder.__version__.split("."))
