"""Benchmark corpus: real layers built from files on this machine, cached.

Three gzip -6 layers of deterministic tars (sorted entries, mtime 0, uid/gid 0,
no owner names, PAX), made once and reused from ``--workdir``:

- ``bin``: /usr/lib/x86_64-linux-gnu, regular-file data capped at 500 MiB
  (shared libraries: the hardest common case for zstd);
- ``py``: the Python standard library of this interpreter, without
  site-packages (source, bytecode, test data: a typical language layer);
- ``small``: /etc (a small layer, where fixed costs show).

``build_image`` lays the three out as a one-manifest OCI image layout for the
image benchmarks. Run as a program to build (or show) the cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sysconfig
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transcoder.digest import sha256_stream

DEFAULT_WORKDIR = Path("/tmp/transcoder-corpus")
MiB = 1 << 20
LAYERS: dict[str, tuple[str, int | None, tuple[str, ...]]] = {
    # name: (root, cap on regular-file bytes, top-level names skipped)
    "bin": ("/usr/lib/x86_64-linux-gnu", 500 * MiB, ()),
    "py": (sysconfig.get_paths()["stdlib"], None, ("site-packages",)),
    "small": ("/etc", None, ()),
}
# Small layers more, for an image of many layers (benchmarks/bench_latency.py),
# where the requests around the layers make the time, not their bytes.
MANY_LAYERS: dict[str, tuple[str, int | None, tuple[str, ...]]] = {
    "usr-bin": ("/usr/bin", 8 * MiB, ()),
    "usr-sbin": ("/usr/sbin", 8 * MiB, ()),
    "usr-include": ("/usr/include", 8 * MiB, ()),
    "usr-share": ("/usr/share", 8 * MiB, ()),
    "dpkg": ("/var/lib/dpkg", 8 * MiB, ()),
}
GZIP_LEVEL = "-6"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _walk(root: Path, skip: tuple[str, ...]) -> Iterator[Path]:
    """Every path under ``root`` in sorted order; symlinks are not followed."""
    stack = [root]
    while stack:
        top = stack.pop()
        try:
            names = sorted(os.listdir(top), reverse=True)
        except OSError:
            continue
        for name in names:
            if top == root and name in skip:
                continue
            path = top / name
            if path.is_dir() and not path.is_symlink():
                stack.append(path)
            yield path


def _sorted_paths(root: Path, skip: tuple[str, ...]) -> list[Path]:
    return sorted(_walk(root, skip), key=lambda p: p.relative_to(root).parts)


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_tar(root: Path, cap: int | None, skip: tuple[str, ...], dest: Path) -> int:
    """A reproducible tar of ``root``; returns the number of entries."""
    data = entries = 0
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in _sorted_paths(root, skip):
            try:
                st = path.lstat()
                # Decide on the cap before gettarinfo registers the inode for hard links.
                if stat.S_ISREG(st.st_mode) and cap is not None and data + st.st_size > cap:
                    continue
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            except OSError:
                continue
            if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
                continue  # sockets, FIFOs, devices: not layer content
            _normalize(info)
            if info.isreg():
                try:
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                except OSError:
                    continue
                data += info.size
            else:
                tar.addfile(info)
            entries += 1
    return entries


def sha256_file(path: Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return str(sha256_stream(f, 4 * MiB)[0])


def _build_layer(name: str, workdir: Path) -> dict[str, Any]:
    root, cap, skip = {**LAYERS, **MANY_LAYERS}[name]
    tar_path = workdir / f"{name}.tar"
    gz_path = workdir / f"{name}.tar.gz"
    entries = _write_tar(Path(root), cap, skip, tar_path)
    diff_id = sha256_file(tar_path)
    tmp = gz_path.with_suffix(".gz.tmp")
    with open(tmp, "wb") as out:
        subprocess.run(["gzip", GZIP_LEVEL, "-n", "-c", str(tar_path)], stdout=out, check=True)
    os.replace(tmp, gz_path)
    meta = {
        "name": name, "root": root, "entries": entries, "tar_size": tar_path.stat().st_size, "diff_id": diff_id,
        "path": str(gz_path), "size": gz_path.stat().st_size, "digest": sha256_file(gz_path),
    }
    tar_path.unlink()
    return meta


def build_corpus(workdir: str | os.PathLike[str] = DEFAULT_WORKDIR, names: tuple[str, ...] = tuple(LAYERS)) -> dict[str, Path]:
    """Build (once) and return the gzip layer files by name: bin, py, small."""
    return {name: Path(str(layer_info(workdir, name)["path"])) for name in names}


def layer_info(workdir: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """Facts about one cached layer (tar_size, diff_id, size, digest, path); builds it if missing."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    meta_path = workdir / f"{name}.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if Path(meta["path"]).exists() and Path(meta["path"]).stat().st_size == meta["size"]:
            return dict(meta)
    meta = _build_layer(name, workdir)
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def _put_blob(layout: Path, data: bytes | None = None, source: Path | None = None) -> tuple[str, int]:
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    if source is not None:
        digest = sha256_file(source)
        dest = blobs / digest.split(":")[1]
        if not dest.exists():
            try:
                os.link(source, dest)
            except OSError:
                shutil.copyfile(source, dest)
        return digest, source.stat().st_size
    assert data is not None
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.split(":")[1]).write_bytes(data)
    return digest, len(data)


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _put_image(tmp: Path, infos: list[dict[str, Any]], arch: str) -> tuple[str, int]:
    """One linux/``arch`` image of these layers into the layout being built:
    its layer blobs (hard links), config and manifest; the manifest's digest and size."""
    layers = []
    for info in infos:
        digest, size = _put_blob(tmp, source=Path(str(info["path"])))
        layers.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": size})
    config = {"architecture": arch, "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": [i["diff_id"] for i in infos]}}
    cdigest, csize = _put_blob(tmp, _canonical(config))
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": csize}, "layers": layers}
    return _put_blob(tmp, _canonical(manifest))


def _build_layout(layout: Path, root: Callable[[Path], tuple[str, str, int]], tag: str) -> Path:
    """``layout``, unless built already: ``root(tmp)`` writes the blobs into a
    temporary directory and names the root (media type, digest, size), which
    ``index.json`` tags; then the directory takes its place."""
    if (layout / "index.json").exists():
        return layout
    tmp = layout.with_name(layout.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    media_type, digest, size = root(tmp)
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": media_type, "digest": digest, "size": size,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (tmp / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (tmp / "index.json").write_bytes(_canonical(index))
    os.replace(tmp, layout)
    return layout


def build_image(
    workdir: str | os.PathLike[str] = DEFAULT_WORKDIR, names: tuple[str, ...] = tuple(LAYERS), tag: str = "latest",
    dirname: str | None = None,
) -> Path:
    """An OCI image layout holding one linux/amd64 image with the given layers (gzip).

    Layer blobs are hard links to the cached layer files. Returns the layout
    directory; the image is ``oci:<dir>:<tag>``.
    """
    workdir = Path(workdir)

    def root(tmp: Path) -> tuple[str, str, int]:
        return (OCI_MANIFEST, *_put_image(tmp, [layer_info(workdir, n) for n in names], "amd64"))

    return _build_layout(workdir / (dirname or "image-" + "-".join(names)), root, tag)


def build_index_image(workdir: str | os.PathLike[str], names: tuple[str, ...], platforms: int,
                      tag: str = "latest") -> Path:
    """An OCI image layout holding one image index of ``platforms`` images
    (architectures amd64, arm64, ...), the layers dealt out among them in
    turn, each image with its own config. Returns the layout directory."""
    arches = ("amd64", "arm64", "s390x", "ppc64le", "riscv64", "386", "mips64le", "arm")[:platforms]
    if len(arches) < platforms or len(names) < platforms:
        raise SystemExit(f"{platforms} platforms: at most {min(8, len(names))} for {len(names)} layers")
    workdir = Path(workdir)

    def root(tmp: Path) -> tuple[str, str, int]:
        children = []
        for k, arch in enumerate(arches):
            digest, size = _put_image(tmp, [layer_info(workdir, n) for n in names[k::platforms]], arch)
            children.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": size,
                             "platform": {"architecture": arch, "os": "linux"}})
        index = _canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
        return (OCI_INDEX, *_put_blob(tmp, index))

    return _build_layout(workdir / f"index{platforms}-{'-'.join(names)}", root, tag)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache directory (default %(default)s)")
    ap.add_argument("--image", action="store_true", help="also build the 3-layer OCI image layout")
    args = ap.parse_args()
    for name in LAYERS:
        info = layer_info(args.workdir, name)
        ratio = int(str(info["tar_size"])) / int(str(info["size"]))
        print(f"{name:6} {info['path']}  tar {info['tar_size']:>11,} B  gz {info['size']:>11,} B  ({ratio:.3f})  "
              f"{info['entries']} entries")
    if args.image:
        print("image:", build_image(args.workdir))


if __name__ == "__main__":
    main()
