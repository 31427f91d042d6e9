"""Load: 100 images of small layers converted into one sink by 8 processes
at once finish without errors or lost records."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.load_driver import build_layout, run_load
from transcoder.check import check_store
from transcoder.sinks import open_sink

IMAGES, PROCESSES = 100, 8


def _verify(spec: str, names: list[str], report: dict[str, object]) -> None:
    assert report["errors"] == [] and report["images"] == IMAGES
    sink = open_sink(spec)
    try:
        merged = sink.images()
        results = {r["name"]: r for r in report["results"]}  # type: ignore[attr-defined]
        assert set(names) <= set(merged)
        for name in names:
            assert str(merged[name].root.digest) == results[name]["root"]
            assert sink.get_manifest(merged[name].root)
    finally:
        sink.close()


def test_local_store_under_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = build_layout(tmp_path / "src", IMAGES)
    spec = f"type=local,dest={tmp_path / 'store'}"
    report = run_load(spec, tmp_path / "src", names, PROCESSES)
    _verify(spec, names, report)
    check = check_store(tmp_path / "store", deep=True)
    assert check.ok and check.images == IMAGES and check.variants == IMAGES + 1  # the shared base once
    with capsys.disabled():
        slow = report["slowest"]
        print(f"\nload (local): {IMAGES} images by {PROCESSES} processes in {report['wall_s']} s, "
              f"{report['images_per_s']} images/s, slowest {slow['name']} {slow['seconds']} s")  # type: ignore[index]


@pytest.mark.peers
def test_s3_under_load(tmp_path: Path, moto_s3: object, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.sink_contract import S3_KEY_ID, S3_REGION, new_bucket

    url = moto_s3.endpoint_url  # type: ignore[attr-defined]
    spec = (f"type=s3,bucket={new_bucket(url)},region={S3_REGION},endpoint_url={url},prefix=load,"
            f"access_key_id={S3_KEY_ID},secret_access_key=load-test")
    names = build_layout(tmp_path / "src", IMAGES)
    report = run_load(spec, tmp_path / "src", names, PROCESSES)
    _verify(spec, names, report)
    sink = open_sink(spec)
    try:
        converted = sum(r["converted"] for r in report["results"])  # type: ignore[attr-defined]
        assert IMAGES + 1 <= converted <= IMAGES + PROCESSES  # the base layer at most once per process
    finally:
        sink.close()
    with capsys.disabled():
        slow = report["slowest"]
        print(f"\nload (s3): {IMAGES} images by {PROCESSES} processes in {report['wall_s']} s, "
              f"{report['images_per_s']} images/s, slowest {slow['name']} {slow['seconds']} s")  # type: ignore[index]
