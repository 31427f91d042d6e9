"""Variant and image records kept in one registry repository, as tagged
artifact manifests (schemes and guarantees: :mod:`.variants`, :mod:`.images`)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

from ..descriptor import OCI_MANIFEST, Descriptor
from ..digest import Digest
from ..errors import InputError, ManifestError, NotFound, SinkError, TranscoderError
from ..parallel import Ahead, Parallel
from ..records import ImageRecord, VariantRecord
from . import images as img
from . import variants as var
from .client import RegistryClient
from .reference import TAG
from .upload import push_blob

log = logging.getLogger(__name__)
SETTLE_ROUNDS = 8

ManifestBytes = Callable[[Descriptor], bytes]


def is_plain_tag(name: str) -> bool:
    """A name that can also be a registry tag users pull."""
    return bool(TAG.fullmatch(name)) and not var.is_attachment_tag(name)


class RepositoryRecords:
    """Records in ``repo``; ``manifest_bytes`` reads a root manifest (verified)."""

    def __init__(self, client: RegistryClient, repo: str, manifest_bytes: ManifestBytes, where: str,
                 target_named: Callable[[Digest], None] | None = None) -> None:
        """``target_named`` is told each variant target a record read names,
        before the record is checked (so the sink can start asking for it)."""
        self.client = client
        self.repo = repo
        self._manifest_bytes = manifest_bytes
        self.where = where
        self._target_named = target_named
        self._tags: set[str] | None = None  # listed once for variant lookups, then kept up to date
        self._staged: Ahead[Digest, Descriptor] = Ahead("record-blob", TranscoderError)  # pushed ahead of their tags
        # An image record's blob likewise, or None: the name is bound to its root already.
        self._staged_images: Ahead[Digest, Descriptor | None] = Ahead("image-record", TranscoderError)
        self._warming = False
        self._warm_lock = threading.Lock()
        self._lock = threading.Lock()

    # -- tags --------------------------------------------------------------------

    def tags(self, fresh: bool = False) -> set[str]:
        if fresh:
            listed = set(self.client.list_tags(self.repo))
            with self._lock:
                self._tags = listed | (self._tags or set())
                return set(listed)
        with self._lock:
            if self._tags is None:
                self._tags = set(self.client.list_tags(self.repo))
            return set(self._tags)

    def warm(self) -> None:
        """List the tags on a thread of their own, once; the first lookup then
        finds the listing done, or waits for it instead of listing again."""
        with self._warm_lock:  # not _lock: a listing holds that for its round trip
            if self._warming:
                return
            self._warming = True
        threading.Thread(target=self._warm, name="record-tags", daemon=True).start()

    def _warm(self) -> None:
        with contextlib.suppress(TranscoderError):  # the lookup lists again, and reports what fails
            self.tags()

    def _tag(self, tag: str, data: bytes, media_type: str) -> None:
        self.client.put_manifest(self.repo, tag, data, media_type)
        with self._lock:
            if self._tags is not None:
                self._tags.add(tag)

    def _push_record_blob(self, body: bytes, media_type: str) -> Descriptor:
        blob = Descriptor(media_type, Digest.of(body), len(body))
        push_blob(self.client, self.repo, body, blob.digest, fresh=True)  # records carry their creation time
        return blob

    def _stage(self, body: bytes, media_type: str) -> None:
        """Start pushing a record blob on a thread of its own; nothing points to it yet."""
        self._staged.start(Digest.of(body), lambda: self._push_record_blob(body, media_type))

    def _record_blob(self, body: bytes, media_type: str) -> Descriptor:
        """The record blob, in the repository: its staged push's, else pushed now."""
        return self._staged.take(Digest.of(body), lambda: self._push_record_blob(body, media_type))

    # -- variants -------------------------------------------------------------------

    def stage_variant(self, rec: VariantRecord) -> None:
        """Start pushing the record's blob; nothing points to it until :meth:`put_variant`."""
        self._stage(rec.to_bytes(), var.VARIANT_TYPE)

    def put_variant(self, rec: VariantRecord) -> None:
        """The variant blob must already be in the repository (the registry checks)."""
        blob = self._record_blob(rec.to_bytes(), var.VARIANT_TYPE)
        self._tag(var.variant_tag(rec.source.digest, rec.params.key), var.record_manifest(rec, blob), OCI_MANIFEST)

    def find_variants(self, source: Digest) -> list[VariantRecord]:
        prefix = var.tag_prefix(source)
        found = []
        for tag in sorted(t for t in self.tags() if t.startswith(prefix)):
            rec = self._read_variant(tag, source, tag[len(prefix) :])
            if rec is not None:
                found.append(rec)
        return found

    def _read_variant(self, tag: str, source: Digest, params_key: str) -> VariantRecord | None:
        """A record, or None (logged) when it is gone or invalid: a bad record
        must not block conversions, and the next put_variant replaces it."""
        where = f"{self.where}: variant record {tag}"
        try:
            manifest = self.client.get_manifest(self.repo, tag).data
            config, target = var.record_blob_of(manifest, source, where)
            if self._target_named is not None:
                self._target_named(target.digest)
            with self.client.open_blob(self.repo, config.digest) as f:
                body = f.read(config.size + 1)
            if Digest.of(body) != config.digest:
                raise ManifestError(f"{where}: record blob does not match its digest")
            rec = VariantRecord.from_bytes(body, where)
            var.check_record(rec, source, target, params_key, where)
        except NotFound:
            return None
        except InputError as exc:
            log.warning("ignoring %s", exc)
            return None
        return rec

    # -- images ---------------------------------------------------------------------

    def drop_staged(self) -> None:
        """Wait for the record blobs pushed ahead that no put took (an image
        that failed, or whose root changed): none is left half-sent."""
        self._staged.drain()
        self._staged_images.drain()

    def stage_image(self, rec: ImageRecord) -> None:
        """Start pushing the record's blob, before its root is pushed (nothing
        points to it until :meth:`put_image`), unless the name is bound to that
        root already."""
        self._staged_images.start(Digest.of(rec.to_bytes()), lambda: self._image_blob(rec))

    def _image_blob(self, rec: ImageRecord) -> Descriptor | None:
        return None if self._bound(rec) else self._push_record_blob(rec.to_bytes(), img.IMAGE_TYPE)

    def _bound(self, rec: ImageRecord) -> bool:
        """Whether ``rec.name`` is bound to ``rec.root`` already: its newest
        record, as the tags were listed (for the variant lookups; nothing
        listed, nothing known), names that root, and so does the tag when the
        name is one. The record is read and the tag asked for at once."""
        with self._lock:
            listed = sorted(self._tags) if self._tags is not None else []
        history = img.newest_by_name(listed).get(img.name_hash(rec.name), [])
        if not history or history[-1].root_prefix != rec.root.digest.hex[:16]:
            return False
        tagged = (Parallel(lambda name: self.client.head_manifest(self.repo, name), [rec.name], 1, "record-tag")
                  if is_plain_tag(rec.name) else None)
        try:
            newest = self._read_newest(history[-1:])
            pointed = tagged.join()[0] if tagged is not None else None
        except TranscoderError:
            return False  # not known to stand: a new record is written, as for any change
        finally:
            if tagged is not None:
                tagged.outcomes()
        same = newest is not None and (newest[1].root.digest, newest[1].root.size) == (rec.root.digest, rec.root.size)
        return same and (tagged is None or (pointed is not None and pointed.digest == rec.root.digest))

    def put_image(self, rec: ImageRecord) -> None:
        """Bind ``rec.name`` to ``rec.root`` with a new record, and point the
        tag there when the name is one; see :mod:`.images`. A binding that
        stands already (an unchanged rerun: :meth:`_bound`) is left as it is:
        nothing is written."""
        self._manifest_bytes(rec.root)  # the root must be there, as described
        blob = self._staged_images.take(Digest.of(rec.to_bytes()), lambda: self._image_blob(rec))
        if blob is None:
            return
        tag = img.record_tag(rec)
        settle = is_plain_tag(rec.name)
        # The settling's first listing goes out beside the record's own tag: only
        # the listings after the name's tag is pushed carry the argument (.images).
        listing = Parallel(lambda _: self.tags(fresh=True), [None], 1, "record-list") if settle else None
        self._tag(tag, img.record_manifest(rec, blob), OCI_MANIFEST)
        if listing is not None:
            self._settle_tag(rec.name, {tag: rec}, listing)

    def _settle_tag(self, name: str, known: dict[str, ImageRecord],
                    listing: Parallel[None, set[str]] | None = None) -> None:
        """Point tag ``name`` at the newest record's root; see :mod:`.images`.
        ``known``: records this sink has just written, by tag, not read back;
        ``listing``: a first listing already under way, which may have been
        sent before they were written."""
        pushed: str | None = None
        history: list[img.RecordTag] = []
        pruning: Parallel[list[img.RecordTag], list[img.RecordTag]] | None = None
        for _ in range(SETTLE_ROUNDS):
            history = img.newest_by_name(sorted(self._listed(listing, known))).get(img.name_hash(name), [])
            listing = None
            newest = self._read_newest(history, known)
            if newest is None or newest[0].tag == pushed:
                break
            tag, rec = newest
            self._tag(name, self._manifest_bytes(rec.root), rec.root.media_type)
            pushed = tag.tag
            if pruning is None:
                # What is older than the root now tagged goes while the tags are
                # listed again: one round trip less at the end of every put.
                pruning = Parallel(self._prune, [[t for t in history if t < tag]], 1, "record-prune")
        pruned: set[img.RecordTag] = set(pruning.join()[0]) if pruning is not None else set()
        self._prune([t for t in history[:-1] if t not in pruned])

    def _listed(self, listing: Parallel[None, set[str]] | None, known: dict[str, ImageRecord]) -> set[str]:
        """The tags as ``listing`` found them, with the records ``known`` (written
        since it was sent, maybe after it was answered); else, with no listing or
        a failed one, the tags as listed now."""
        if listing is not None:
            with contextlib.suppress(TranscoderError):
                return listing.join()[0] | set(known)
        return self.tags(fresh=True)

    def _read_newest(self, history: list[img.RecordTag], known: dict[str, ImageRecord] | None = None,
                     ) -> tuple[img.RecordTag, ImageRecord] | None:
        for tag in reversed(history):  # newest first; an older one if that was just pruned
            if known and tag.tag in known:
                return tag, known[tag.tag]
            where = f"{self.where}: image record {tag.tag}"
            try:
                return tag, img.parse_record(self.client.get_manifest(self.repo, tag.tag).data, tag, where)
            except NotFound:
                continue
            except InputError as exc:
                log.warning("ignoring %s", exc)
        return None

    def _prune(self, older: list[img.RecordTag]) -> list[img.RecordTag]:
        """Best effort: drop records a newer one supersedes (never the newest).
        Returns those dealt with (a refused deletion counts: it is not tried again)."""
        for tag in older:
            try:
                desc = self.client.head_manifest(self.repo, tag.tag)
                if desc is not None:
                    self.client.delete_manifest(self.repo, desc.digest)
            except SinkError:
                return older  # deletion disabled, or no right to delete: keep them
            with self._lock:
                if self._tags is not None:
                    self._tags.discard(tag.tag)
        return older

    def images(self) -> dict[str, ImageRecord]:
        tags = sorted(self.tags(fresh=True))
        out: dict[str, ImageRecord] = {}
        known: dict[str, set[str]] = {}  # name -> root digest prefixes of all its records
        for history in img.newest_by_name(tags).values():
            newest = self._read_newest(history)
            if newest is not None:
                out[newest[1].name] = newest[1]
                known[newest[1].name] = {t.root_prefix for t in history}
        for tag in tags:
            if var.is_attachment_tag(tag):
                continue
            if tag in out:
                desc = self.client.head_manifest(self.repo, tag)
                if desc is None or desc.digest.hex[:16] in known[tag]:
                    continue  # the tag is ours (maybe behind the newest record): records rule
            try:
                got = self.client.get_manifest(self.repo, tag)
            except NotFound:
                continue  # untagged since the listing
            out[tag] = ImageRecord(tag, got.descriptor(), 0.0)  # pushed by another tool: it wins
        return out


__all__ = ["RepositoryRecords", "is_plain_tag"]
