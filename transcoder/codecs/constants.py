"""The zstd output's fixed parameters, importable without loading a codec.

The command line needs them to build its parser and to start decoding
(``transcoder.decode``) before ``zstandard`` is loaded; ``codecs.zstd``
explains the frame layout they describe.
"""

MIN_LEVEL = 1
MAX_LEVEL = 19
DEFAULT_LEVEL = 3
# Tar bytes per independent frame; part of the variant's identity.
FRAME_SIZE = 8 << 20
STRATEGY = "frames-8MiB"
