"""Test images made from files on this machine: real tar layers, gzip'd,
laid out as OCI layouts or docker-archive tars. Deterministic for a given
seed, so digests repeat across runs."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import tarfile
from pathlib import Path
from typing import Any

import zstandard

from transcoder.descriptor import (
    ANNOTATION_REF_NAME,
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
)
from transcoder.digest import Digest

SOURCE_DIRS = ["/usr/lib/python3.11/json", "/usr/lib/python3.11/email", "/etc/ssl", "/usr/share/doc/git"]


def make_tar(seed: int, size: int = 300_000, files: int = 12) -> bytes:
    """A tar of real files plus a few seeded ones, mtime 0, sorted."""
    rnd = random.Random(seed)
    real = []
    for d in SOURCE_DIRS:
        for root, _, names in os.walk(d):
            real += [os.path.join(root, n) for n in sorted(names) if os.path.isfile(os.path.join(root, n))]
    rnd.shuffle(real)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        total = 0
        for i, path in enumerate(real[:files]):
            data = Path(path).read_bytes()[: size // files]
            total += _add(tar, f"layer{seed}/real/{i:03d}-{os.path.basename(path)}", data)
        words = [b"alpha", b"beta", b"gamma", b"delta", b"layer", bytes(str(seed), "ascii")]
        filler = b" ".join(rnd.choice(words) for _ in range(max(1, (size - total) // 6)))
        _add(tar, f"layer{seed}/seeded.txt", filler + rnd.randbytes(256))
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))
    return len(data)


def gz(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, level, mtime=0)


def _write_blob(root: Path, data: bytes) -> str:
    d = Digest.of(data)
    path = root / "blobs" / "sha256" / d.hex
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(d)


def _desc(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(Digest.of(data)), "size": len(data), **extra}


def config_for(tars: list[bytes], arch: str = "amd64", os_: str = "linux") -> bytes:
    cfg = {"architecture": arch, "os": os_, "config": {"Env": ["PATH=/usr/bin"]},
           "rootfs": {"type": "layers", "diff_ids": [str(Digest.of(t)) for t in tars]}}
    return json.dumps(cfg, sort_keys=True).encode()


def write_manifest(root: Path, tars: list[bytes], *, docker: bool = False, arch: str = "amd64",
                   layer_blobs: list[bytes] | None = None) -> tuple[bytes, str]:
    """Write config, layers and a manifest; return (manifest bytes, media type)."""
    blobs = layer_blobs if layer_blobs is not None else [gz(t) for t in tars]
    config = config_for(tars, arch)
    _write_blob(root, config)
    for b in blobs:
        _write_blob(root, b)
    types = (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP) if docker else (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP)
    mt, cfg_mt, layer_mt = types
    manifest = {"schemaVersion": 2, "mediaType": mt, "config": _desc(cfg_mt, config),
                "layers": [_desc(layer_mt, b, annotations={"test.layer": str(i)}) for i, b in enumerate(blobs)],
                "annotations": {"test.unknown": "kept"}}
    data = json.dumps(manifest, indent=1).encode()
    _write_blob(root, data)
    return data, mt


def write_layout(root: Path, images: dict[str, Any]) -> Path:
    """images: name -> list of tars (single manifest) or {arch: [tars]} (index)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entries = []
    for name, spec in images.items():
        if isinstance(spec, dict):
            children = []
            for arch, tars in spec.items():
                data, mt = write_manifest(root, tars, arch=arch)
                children.append(_desc(mt, data, platform={"architecture": arch, "os": "linux"}))
            index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children,
                                "annotations": {"test.index": "kept"}}).encode()
            _write_blob(root, index)
            entries.append(_desc(OCI_INDEX, index, annotations={ANNOTATION_REF_NAME: name}))
        else:
            data, mt = write_manifest(root, spec)
            entries.append(_desc(mt, data, annotations={ANNOTATION_REF_NAME: name}))
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    return root


def write_docker_archive(path: Path, tars: list[bytes], tag: str = "example/app:1.0") -> Path:
    """The classic ``docker save`` form: uncompressed layer.tar members."""
    config = config_for(tars)
    cfg_name = Digest.of(config).hex + ".json"
    layers = [f"{Digest.of(t).hex[:16]}/layer.tar" for t in tars]
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": [tag], "Layers": layers}]).encode()
    with tarfile.open(path, "w") as tar:
        _add(tar, "manifest.json", manifest)
        _add(tar, cfg_name, config)
        for name, t in zip(layers, tars, strict=True):
            _add(tar, name, t)
    return path


def unzstd(data: bytes) -> bytes:
    """Decode a whole zstd stream, every frame of it (the pipeline writes 8 MiB frames)."""
    return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(data)
