"""Which manifests of an image a conversion takes, read and verified: the
plan every later step works from.

The root is resolved and the manifests under it read (an index's children
at once); configs that the platform choice does not need are read on their
way (:func:`start_plan`), so the layers' first round trips overlap them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..descriptor import ANNOTATION_REF_NAME, INDEX_TYPES, MAX_MANIFEST_BYTES, Descriptor, read_checked
from ..digest import Digest
from ..errors import ManifestError
from ..parallel import Parallel, each
from .model import Index, Manifest, matches_platform, parse, platform_of_config
from .source import ImageSource

MAX_DEPTH = 4
LIGHT_THREADS = 8  # round trips at once: manifests, configs, variant lookups, layers reused or carried
NAME_ANNOTATIONS = frozenset({ANNOTATION_REF_NAME, "io.containerd.image.name"})


@dataclass
class Platformed:
    """A manifest with its platform and its config bytes, all verified (in a
    plan from :func:`start_plan`, once :meth:`Plan.configs` has returned)."""

    desc: Descriptor
    manifest: Manifest
    raw: bytes
    config: bytes | None  # None while it is being read


@dataclass
class Plan:
    root: Descriptor
    tag: str | None
    index: Index | None
    manifests: list[Platformed] = field(default_factory=list)
    reads: Parallel[Platformed, None] | None = field(default=None, repr=False)  # configs being read

    def configs(self) -> None:
        """Wait until every manifest's config is read and verified, and its
        platform known; raise the first failure, in plan order (thread-safe)."""
        if self.reads is not None:
            self.reads.join()


def read_blob_verified(source: ImageSource, desc: Descriptor, what: str) -> bytes:
    if desc.size > MAX_MANIFEST_BYTES:  # before opening: a hostile size never costs a read
        raise ManifestError(f"{what}: {desc.size} bytes is over the {MAX_MANIFEST_BYTES} byte limit")
    with source.open_blob(desc) as f:
        return read_checked(f, desc, what)


def plan(source: ImageSource, platforms: list[str] | None) -> Plan:
    """The image's manifests that match ``platforms``, with their configs."""
    result = start_plan(source, platforms)
    result.configs()
    return result


def start_plan(source: ImageSource, platforms: list[str] | None) -> Plan:
    """:func:`plan`, returning once the manifests are read: the configs that
    need not be read to choose the platforms are still on their way
    (:meth:`Plan.configs` waits for them). On a long link the layers' first
    round trips (their blobs, their uploads) then overlap a config's instead
    of following it; nothing is written until the configs are verified."""
    root, tag = source.resolve()
    # Name annotations belong to the store's index.json, not to our documents.
    root = root.replace(annotations={k: v for k, v in root.annotations.items() if k not in NAME_ANNOTATIONS})
    result = Plan(root, tag, None)
    result.manifests = _visit(source, root, result, platforms, set(), 0)
    if not result.manifests:
        raise ManifestError(f"{source.name}: no manifest matches platform {platforms}")
    pending = [m for m in result.manifests if m.config is None]
    result.reads = Parallel(lambda m: _read_config(source, m), pending, LIGHT_THREADS, "config-read")
    return result


def _read_config(source: ImageSource, m: Platformed) -> None:
    """Fill in ``m``'s config, and its platform from it when the index gave none."""
    what = f"{source.name}: config {m.manifest.config.digest}"
    m.config = read_blob_verified(source, m.manifest.config, what)
    if m.desc.platform is None:
        m.desc = m.desc.replace(platform=platform_of_config(m.config, what) or None)


def _visit(source: ImageSource, desc: Descriptor, out: Plan, platforms: list[str] | None, seen: set[Digest],
           depth: int) -> list[Platformed]:
    """The manifests under ``desc`` that match ``platforms``, in index order.
    The root index's children are read at once: each is a manifest and a
    config to fetch, round trips that need not wait for each other (a
    multi-platform image has a dozen)."""
    if desc.digest in seen or depth > MAX_DEPTH:
        raise ManifestError(f"{source.name}: index {desc.digest} refers to itself (or nests too deep)")
    seen = seen | {desc.digest}
    raw = source.get_manifest(desc)
    doc = parse(raw, desc, source.name)
    if isinstance(doc, Index):
        if depth == 0:
            out.index = doc
        children = [c for c in doc.manifests
                    if c.media_type in INDEX_TYPES or matches_platform(c.platform, platforms) or c.platform is None]

        def visit(child: Descriptor) -> list[Platformed]:
            return _visit(source, child, out, platforms, seen, depth + 1)

        # Nested indexes are read in turn, so the threads stay bounded.
        found = each(visit, children, LIGHT_THREADS, "manifest") if depth == 0 else [visit(c) for c in children]
        return [m for ms in found for m in ms]
    if desc.platform or not platforms:  # the config is not needed to choose: read later (start_plan)
        return [Platformed(desc, doc, raw, None)] if matches_platform(desc.platform, platforms) else []
    config = read_blob_verified(source, doc.config, f"{source.name}: config {doc.config.digest}")
    platform = platform_of_config(config, f"{source.name}: config {doc.config.digest}")
    if not matches_platform(platform, platforms):
        return []
    return [Platformed(desc.replace(platform=platform or None), doc, raw, config)]


__all__ = ["LIGHT_THREADS", "Plan", "Platformed", "plan", "read_blob_verified", "start_plan"]
