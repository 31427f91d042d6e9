"""A HeadStart: decoding that begins before the pipeline exists, then is taken over by it.

Every case compares with the pipeline started from nothing on the same bytes:
same output, same digests, same errors, and nothing written when it fails.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.imagegen import gz, make_tar
from transcoder.codecs import ZstdParams
from transcoder.codecs.constants import FRAME_SIZE
from transcoder.decode import HeadStart
from transcoder.errors import FormatError, SizeLimitExceeded
from transcoder.transcode import transcode_stream
from transcoder.writers import FileWriter, NullWriter

# Three frames and a bit: the hold (two frames) fills before the pipeline attaches.
BIG = make_tar(5, size=3 * FRAME_SIZE + 123_456, files=40)
BIG_GZ = gz(BIG, 1)


def plain(data: bytes) -> tuple[str, str, str, bytes]:
    w = BufferWriter()
    r = transcode_stream(io.BytesIO(data), w, params=ZstdParams(), workers=2)
    return str(r.source.digest), str(r.diff_id), str(r.target.digest), bytes(w.buf)


class BufferWriter(NullWriter):
    def __init__(self) -> None:
        super().__init__("buffer")
        self.buf = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        super().write(data)
        self.buf += data


def wait_until_held(head: HeadStart, frames: int) -> None:
    """Block until the head start has ``frames`` frames held or has ended (a condition, not a timing)."""
    deadline = time.monotonic() + 60
    while len(head._hold._held) < frames and head.thread.is_alive():
        assert time.monotonic() < deadline, "the head start never filled its hold"
        time.sleep(0.001)


def via_head(data: bytes, hold_first: int | None = None, **kw: object) -> tuple[str, str, str, bytes]:
    head = HeadStart(io.BytesIO(data), name="layer", frame_size=FRAME_SIZE, **kw)  # type: ignore[arg-type]
    if hold_first is not None:
        wait_until_held(head, hold_first)
    w = BufferWriter()
    r = transcode_stream(head, w, params=ZstdParams(), workers=2)
    return str(r.source.digest), str(r.diff_id), str(r.target.digest), bytes(w.buf)


def test_held_frames_then_the_rest_give_the_same_output() -> None:
    """Attached with its hold full (the decode thread waiting), and attached at
    once: byte for byte what a pipeline started from nothing writes."""
    want = plain(BIG_GZ)
    assert via_head(BIG_GZ, hold_first=2) == want
    assert via_head(BIG_GZ) == want


def test_decode_finished_before_the_pipeline_attached() -> None:
    small = gz(make_tar(6, size=200_000))
    want = plain(small)
    head = HeadStart(io.BytesIO(small), name="small", frame_size=FRAME_SIZE)
    head.thread.join(timeout=60)
    assert not head.thread.is_alive()  # the whole stream decoded, end held
    w = BufferWriter()
    r = transcode_stream(head, w, params=ZstdParams())
    assert (str(r.source.digest), str(r.diff_id), str(r.target.digest), bytes(w.buf)) == want


@pytest.mark.parametrize("kind", ["tar", "zstd"])
def test_other_source_formats(kind: str) -> None:
    tar = make_tar(7, size=400_000)
    data = tar if kind == "tar" else plain(tar)[3]
    assert via_head(data) == plain(data)


def test_an_error_decoded_before_the_attach_is_raised_by_the_pipeline(tmp_path: Path) -> None:
    """A corrupt stream found while the frames before it were held: the pipeline
    raises the decoder's error, and the output file is never created."""
    bad = bytearray(BIG_GZ)
    bad[len(bad) // 2 : len(bad) // 2 + 64] = b"\xff" * 64
    head = HeadStart(io.BytesIO(bytes(bad)), name="broken", frame_size=FRAME_SIZE, hold=8)
    head.thread.join(timeout=60)
    out = tmp_path / "out.zst"
    with pytest.raises(FormatError, match="broken: corrupt gzip data"), FileWriter(out) as w:
        transcode_stream(head, w)
    assert list(tmp_path.iterdir()) == []


def test_the_size_bound_applies_while_held() -> None:
    head = HeadStart(io.BytesIO(BIG_GZ), name="bomb", frame_size=FRAME_SIZE, max_size=FRAME_SIZE + 1)
    with pytest.raises(SizeLimitExceeded, match="bomb: decoded size exceeds --max-size"):
        transcode_stream(head, NullWriter("x"))


def test_progress_counts_every_source_byte_once() -> None:
    head = HeadStart(io.BytesIO(BIG_GZ), name="layer", frame_size=FRAME_SIZE)
    wait_until_held(head, 1)
    ticks: list[int] = []
    transcode_stream(head, NullWriter("x"), progress=ticks.append)
    assert sum(ticks) == len(BIG_GZ)


def test_cancel_stops_the_thread_and_close_closes_the_file(tmp_path: Path) -> None:
    src = tmp_path / "layer.tar.gz"
    src.write_bytes(BIG_GZ)
    head = HeadStart.begin(str(src), frame_size=FRAME_SIZE)
    wait_until_held(head, 2)
    head.close()
    head.thread.join(timeout=60)
    assert not head.thread.is_alive() and head._stream.closed
    with pytest.raises(RuntimeError, match="already taken or cancelled"):
        transcode_stream(head, NullWriter("x"))


def test_a_tee_needs_the_stream_from_its_first_byte() -> None:
    head = HeadStart(io.BytesIO(BIG_GZ), name="layer", frame_size=FRAME_SIZE)
    with pytest.raises(ValueError, match="tee"):
        transcode_stream(head, NullWriter("x"), tee=NullWriter("y"))
    head.close()


def test_command_line_decode_starts_before_zstandard_loads(tmp_path: Path) -> None:
    """What the head start is for: when ``convert`` starts decoding a blob, the
    encoder side (zstandard, the variant table, data classes) is not loaded yet."""
    src = tmp_path / "layer.tar.gz"
    src.write_bytes(BIG_GZ)
    code = ("import sys\nfrom transcoder import decode\nbegin = decode.HeadStart.begin\nseen = []\n"
            "def spy(*a, **k):\n    seen.extend(m for m in ('zstandard', 'sqlite3', 'dataclasses') if m in sys.modules)\n"
            "    return begin(*a, **k)\n"
            "decode.HeadStart.begin = spy\nfrom transcoder.cli import main\n"
            f"rc = main(['convert', {str(src)!r}, '-o', {str(tmp_path / 'out.zst')!r}, '--no-table'])\n"
            "print(rc, seen)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.stdout.split("\n")[-2] == "0 []", (r.stdout, r.stderr)
    assert (tmp_path / "out.zst").stat().st_size > 0


def test_command_line_falls_back_when_the_early_open_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the head start cannot open the source, convert goes the usual way
    (where a variant-table hit may still answer, or the error is reported in
    its usual place) instead of failing early."""
    from transcoder import decode
    from transcoder.cli import main
    from transcoder.errors import InputError

    def refuse(*_: object, **__: object) -> HeadStart:
        raise InputError("early open refused")

    monkeypatch.setattr(decode.HeadStart, "begin", refuse)
    src = tmp_path / "layer.tar.gz"
    src.write_bytes(gz(make_tar(8, size=300_000)))
    assert main(["convert", str(src), "-o", str(tmp_path / "out.zst"), "--no-table"]) == 0
    assert (tmp_path / "out.zst").stat().st_size > 0
