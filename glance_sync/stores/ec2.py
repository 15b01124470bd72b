"""The EC2 store: trusted images as AMIs on EBS snapshots, with their sealed trust record.

Commit order, which keeps the sync's guarantees on EC2 (docs/ec2.md):

1. ``StartSnapshot`` (tags ``vmtrust:managed``, ``vmtrust:state = uploading``),
   the raw bytes streamed into it block by block (:mod:`.ec2_upload`), then
   ``CompleteSnapshot`` with the block count and aggregate checksum, which AWS
   checks; a raw download that differs from the list fails here, before
   anything is registered;
2. ``RegisterImage`` on the snapshot, tagged at creation as managed and
   uploading (never trusted in that state);
3. ``EnableImageDeprecation`` at the record's expiry — before the commit, so no
   trusted AMI ever lacks it and Allowed AMIs refuses it once expired even if
   the sync stops for good;
4. one ``CreateTags`` writes the record and its seal — bound to the AMI id and
   its snapshot id — and ``vmtrust:state = trusted``: the commit point;
5. the record is published where VO accounts can read it (an S3 object), and
   only then are the VO accounts given launch permission.

A failure at any step removes what this create made; kill -9 leaves at most an
``uploading`` AMI or a managed snapshot no AMI uses, which :meth:`EC2Store.cleanup`
removes on the next run, or a committed AMI whose publication or sharing
:meth:`EC2Store.converge` finishes.  Only AMIs and snapshots of the site account
tagged ``vmtrust:managed`` are ever listed, changed or removed.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from glance_sync.convert import work_folder
from glance_sync.plan import Desired, Held
from glance_sync.stores.base import Finish, Store, StoreContext, held_image
from glance_sync.stores.ec2_account import (
    SiteAccount,
    aws_time,
    deprecate_at,
    next_minute,
    parse_time,
)
from glance_sync.stores.ec2_conf import ImageOptions, build_store
from glance_sync.stores.ec2_upload import BlockWriter, blocks, raw_source, volume_gib
from glance_sync.transfer import DiskStream
from glance_sync.unpack import normalise_format
from vmtrust import ec2record as tags_
from vmtrust.ec2client import Clients
from vmtrust.errors import EC2Error
from vmtrust.imagelist import format_date
from vmtrust.record import TrustRecord
from vmtrust.trust import RETIRED, Stored, check_binding

if TYPE_CHECKING:
    from oslo_config import cfg

__all__ = ["ARCHES", "EC2Store"]

LOG = logging.getLogger("vmtrust.ec2")
#: sl:arch → EC2's architecture; an empty sl:arch is taken as x86_64.
ARCHES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "i386",
    "i686": "i386",
    "": "x86_64",
}
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9()\[\] ./\-'@_]+")  #: AMI names
_TAG_UNSAFE = re.compile(r"[^\w .:/=+\-@]+")


class EC2Store(Store):
    name = "ec2"

    def __init__(
        self,
        clients: Clients,
        *,
        seal_keys: list[Ed25519PublicKey],
        workdir: Path,
        vo_accounts: dict[str, list[str]] | None = None,
        record_bucket: str = "",
        record_prefix: str = "vmtrust/records/",
        options: ImageOptions | None = None,
        threads: int = 8,
        not_found_wait: float = 120.0,
        snapshot_wait: float = 1800.0,
    ) -> None:
        self.c = clients
        self.account = SiteAccount(clients, record_bucket, record_prefix)
        self.seal_keys = seal_keys
        self.workdir = workdir
        self.vo_accounts = vo_accounts or {}
        self.publishes = bool(record_bucket)
        self.options = options or ImageOptions()
        self.threads = threads
        self.not_found_wait = not_found_wait  #: after StartSnapshot (AWS needs a moment)
        self.snapshot_wait = snapshot_wait  #: for CompleteSnapshot to become "completed"
        self._seen: dict[str, dict[str, Any]] = {}  #: AMI id → its last DescribeImages entry
        self._listing: list[dict[str, Any]] | None = None  #: cleanup's, for held()

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, context: StoreContext) -> EC2Store:
        """``[store_ec2]`` (read by :mod:`~glance_sync.stores.ec2_conf`); scratch files
        go to the sync's work folder."""
        return build_store(conf, context.seal_keys, work_folder(context.state_dir))

    @property
    def calls(self) -> int:
        """Requests to the site account, except the block puts of an upload."""
        return self.account.calls

    # --- reading ----------------------------------------------------------------------

    def _held(self, image: dict[str, Any]) -> Held:
        # EBS snapshots are immutable: the snapshot id in the store id binds the bytes,
        # and EC2 computes no hash of them to compare.
        bound_to = tags_.store_id(image["ImageId"], tags_.root_snapshot(image))
        tags = _tags(image)
        verdict = check_binding(
            lambda: tags_.read_record(tags), Stored(bound_to), keys=self.seal_keys
        )
        state = image.get("State")
        return held_image(
            verdict,
            bound_to,
            retired=tags.get(tags_.STATE) == RETIRED,
            retired_at=tags.get(tags_.RETIRED_AT),
            location=f"ec2:{self.c.region}:{image['ImageId']}",
            unusable=None if state in ("available", "pending") else f"AMI state is {state}",
        )

    def held(self) -> list[Held]:
        # cleanup() of the same pass has just listed them: one listing per pass, not two
        images, self._listing = self._listing, None
        if images is None:
            images = self.account.managed_images()
        images = [image for image in images if not _unfinished(image)]
        self._seen = {image["ImageId"]: image for image in images}
        return [self._held(image) for image in images]

    def free_bytes(self) -> int | None:
        return None  # EBS has quotas, not free space

    # --- writing ----------------------------------------------------------------------

    def create(self, want: Desired, stream: DiskStream, disk_format: str, finish: Finish) -> Held:
        what = f"image {want.identifier}"
        self._check_fits(want)
        arch = ARCHES.get(want.image.arch.strip().lower())
        if arch is None:
            raise EC2Error(f"{what}: sl:arch {want.image.arch!r} is not an EC2 architecture")
        marker = {
            tags_.MANAGED: "true",
            tags_.STATE: tags_.UPLOADING,
            **tags_.split(tags_.PREFIX + "image_identifier", want.identifier),
        }
        writer = BlockWriter(
            self.c.ebs, want.identifier, threads=self.threads, not_found_wait=self.not_found_wait
        )
        image_id = ""
        # the download itself, when it is raw as listed: streamed, its size known up front
        direct = want.image.size if normalise_format(want.image.format) == (None, "raw") else None
        try:
            with raw_source(
                stream,
                disk_format,
                direct_size=direct,
                workdir=self.workdir,
                identifier=want.identifier,
            ) as (size, chunks, tally):
                writer.start(size, tags_.tag_list(marker), _printable(f"vmtrust {want.identifier}"))
                for index, block in blocks(chunks):
                    writer.put(index, block)
                writer.complete()
            if tally.size != size:
                raise EC2Error(f"{what}: read {tally.size} bytes, the disk has {size}")
            snapshot_id = writer.snapshot_id
            self._wait_completed(snapshot_id, what)
            image_id = self._register(want, snapshot_id, size, arch, marker)
            bound_to = tags_.store_id(image_id, snapshot_id)
            record, seal = finish(bound_to, tally.size, tally.sha512, stored_format="raw")
            deprecated = self.account.deprecate(image_id, deprecate_at(record.expires), what)
            commit = tags_.record_tags(record, seal)
            self.account.tag(image_id, commit, what)  # the commit point
            image = {
                "ImageId": image_id,
                "Tags": tags_.tag_list({**marker, **commit}),
                "DeprecationTime": aws_time(deprecated),
            }
            self._settle(image, record, seal)
        except BaseException as exc:
            writer.abort()
            self._remove(image_id, writer.snapshot_id, want.identifier)
            if isinstance(exc, EC2Error) and not str(exc).startswith(f"{what}:"):
                raise EC2Error(f"{what}: {exc}") from None
            raise
        self._seen[image_id] = image
        return Held(bound_to, record, True, location=f"ec2:{self.c.region}:{image_id}")

    def _check_fits(self, want: Desired) -> None:
        """Refuse, before any byte is sent, a record too long for EC2's 50 tags."""
        longest = want.record(
            store_id=tags_.store_id("ami-" + "0" * 17, "snap-" + "0" * 17),
            sha512="0" * 128,
            size=10**15,
            disk_format="raw",
        )
        seal = "0" * 16 + ":" + "A" * 88  # key id and base64 Ed25519 signature
        tags_.check_limits(
            tags_.record_tags(longest, seal),
            reserve=len(tags_.BOOKKEEPING),
            what=f"image {want.identifier}",
        )

    def _wait_completed(self, snapshot_id: str, what: str) -> None:
        """RegisterImage needs a completed snapshot; EBS finishes it asynchronously."""
        deadline = time.monotonic() + self.snapshot_wait
        delay = 1.0
        while (state := self.account.snapshot_state(snapshot_id, what)) != "completed":
            if state == "error" or time.monotonic() > deadline:
                raise EC2Error(f"{what}: snapshot {snapshot_id} is {state}, not completed")
            time.sleep(delay)
            delay = min(delay * 2, 15.0)

    def _register(
        self, want: Desired, snapshot_id: str, size: int, arch: str, marker: dict[str, str]
    ) -> str:
        opts = self.options
        title = f"{opts.name_prefix}{want.image.title}"
        # AMI names are unique per account and region: the snapshot id makes them so
        name = _NAME_UNSAFE.sub("-", f"{title} {want.image.version}")[: 127 - len(snapshot_id)]
        root = {
            "DeviceName": opts.root_device,
            "Ebs": {
                "SnapshotId": snapshot_id,
                "VolumeSize": volume_gib(size),
                "VolumeType": opts.volume_type,
                "DeleteOnTermination": True,
            },
        }
        tagged = {"ResourceType": "image", "Tags": tags_.tag_list({**marker, "Name": _name(title)})}
        extra = {"ImdsSupport": "v2.0"} if opts.imds_v2 else {}
        vo = want.vo or "-"
        return self.account.register(
            f"image {want.identifier}",
            Name=f"{name} {snapshot_id}",
            Description=_printable(f"{title} {want.image.version} (vmtrust, VO {vo})")[:255],
            Architecture=arch,
            RootDeviceName=opts.root_device,
            BlockDeviceMappings=[root],
            VirtualizationType="hvm",
            BootMode=opts.boot_mode,
            EnaSupport=opts.ena_support,
            TagSpecifications=[tagged],
            **extra,
        )

    def _remove(self, image_id: str, snapshot_id: str, identifier: str) -> None:
        """Undo an unfinished create; what cannot be removed now, the next cleanup removes."""
        what = f"image {identifier}"
        try:
            if image_id:
                self.account.deregister(image_id, what)
                if self.publishes:
                    self.account.unpublish(image_id, what)
            if snapshot_id:
                self.account.delete_snapshot(snapshot_id, what)
        except EC2Error as exc:
            LOG.error(
                "image %s: could not remove the unfinished AMI %s / snapshot %s: %s "
                "(the next run removes it)",
                identifier,
                image_id or "-",
                snapshot_id or "-",
                exc,
            )

    # --- what follows from the record and the configuration ------------------------------

    def _settle(self, image: dict[str, Any], record: TrustRecord, seal: str) -> list[str]:
        """Deprecation, publication and sharing of a trusted AMI as the record and the
        configuration say; only what differs is changed (a no-op pass makes no call)."""
        image_id, identifier = image["ImageId"], record.image_identifier
        what = f"image {identifier}"
        tags = _tags(image)
        changed, bookkeeping = [], {}
        when = deprecate_at(record.expires)
        if parse_time(image.get("DeprecationTime")) != when:
            when = self.account.deprecate(image_id, when, what)
            image["DeprecationTime"] = aws_time(when)
            changed.append(f"deprecation of {identifier} at {aws_time(when)}")
        if self.publishes:
            body = tags_.document(record, seal)
            # where it went counts too: a new bucket or prefix gets the record again
            where = f"s3://{self.account.record_bucket}/{self.account.record_key(image_id)}\n"
            published = tags_.digest(where.encode() + body)
            if tags.get(tags_.PUBLISHED) != published:
                self.account.publish(image_id, body, what)
                bookkeeping[tags_.PUBLISHED] = published
                changed.append(f"published the record of {identifier}")
        accounts = sorted(set(self.vo_accounts.get(record.vo, [])))
        shared = tags_.digest(",".join(accounts).encode())
        if tags.get(tags_.SHARED_WITH) != shared:
            self.account.share(image_id, accounts, what)
            bookkeeping[tags_.SHARED_WITH] = shared
            changed.append(f"shared {identifier} with [{','.join(accounts)}]")
        if bookkeeping:
            self.account.tag(image_id, bookkeeping, what)
            image["Tags"] = tags_.tag_list({**tags, **bookkeeping})
        return changed

    def refresh(self, held: Held, want: Desired, record: TrustRecord, seal: str) -> Held:
        image_id = held.store_id.split("/", 1)[0]
        image = self._seen.get(image_id) or {"ImageId": image_id, "Tags": []}
        what = f"image {record.image_identifier}"
        current = _tags(image)
        title = f"{self.options.name_prefix}{want.image.title}"
        new = {**tags_.record_tags(record, seal), "Name": _name(title)}
        # Continuations a shorter value no longer uses are emptied in the same call
        # (an empty piece adds nothing), so the record reads whole at every moment.
        stale = [
            key
            for field in (*tags_.RECORD_FIELDS, "seal")
            for key in tags_.continuation_keys(current, tags_.PREFIX + field)
            if key not in new
        ]
        tags_.check_limits({**current, **new}, what=what)
        self.account.tag(image_id, {**new, **dict.fromkeys(stale, "")}, what)
        if stale:
            self.account.untag(image_id, stale, what)
        kept = {key: value for key, value in {**current, **new}.items() if key not in stale}
        image["Tags"] = tags_.tag_list(kept)
        self._settle(image, record, seal)
        self._seen[image_id] = image
        return Held(held.store_id, record, True, location=held.location)

    def converge(self, held: list[Held]) -> list[str]:
        changed = []
        for item in held:
            if item.retired or not item.seal_ok or item.record is None:
                continue
            image = self._seen.get(item.store_id.split("/", 1)[0])
            if image is not None:  # as listed, or as refresh() left it in this pass
                record, seal = tags_.read_record(_tags(image))
                changed += self._settle(image, record, seal)
        return changed

    # --- leaving --------------------------------------------------------------------------

    def retire(self, held: Held, mode: str, now: datetime) -> None:
        image_id = held.store_id.split("/", 1)[0]
        image = self._seen.get(image_id, {})
        what = f"image {held.identifier or image_id}"
        # The cloud's action first, the tags after: an interrupted retire is done again,
        # never taken for done.
        if mode == "deactivate":
            if image.get("State") != "disabled":
                self.account.disable(image_id, what)
        else:
            deprecated = parse_time(image.get("DeprecationTime"))
            if deprecated is None or deprecated > next_minute(now):
                self.account.deprecate(image_id, next_minute(now), what)
            self.account.share(image_id, [], what)
        if self.publishes:
            self.account.unpublish(image_id, what)
        retired = {tags_.STATE: "retired", tags_.RETIRED_AT: format_date(now)}
        self.account.tag(image_id, {**retired, tags_.RETIRE_MODE: mode}, what)

    def purge(self, held: Held) -> None:
        image_id, _, snapshot_id = held.store_id.partition("/")
        what = f"image {held.identifier or image_id}"
        self.account.deregister(image_id, what)
        if snapshot_id:
            self.account.delete_snapshot(snapshot_id, what)
        if self.publishes:
            self.account.unpublish(image_id, what)

    def cleanup(self) -> list[str]:
        """Remove AMIs left ``uploading`` and managed snapshots no managed AMI uses."""
        removed, kept = [], []
        for image in self.account.managed_images():
            if not _unfinished(image):
                kept.append(image)
                continue
            try:
                self.account.deregister(image["ImageId"], "ec2 store cleanup")
            except EC2Error as exc:
                LOG.error("could not remove unfinished AMI %s: %s", image["ImageId"], exc)
                kept.append(image)
                continue
            removed.append(f"unfinished AMI {image['ImageId']}")
        used = {tags_.root_snapshot(image) for image in kept}
        for snapshot in self.account.managed_snapshots():
            if snapshot["SnapshotId"] in used:
                continue
            try:
                self.account.delete_snapshot(snapshot["SnapshotId"], "ec2 store cleanup")
            except EC2Error as exc:
                LOG.error("could not remove snapshot %s: %s", snapshot["SnapshotId"], exc)
                continue
            removed.append(f"snapshot {snapshot['SnapshotId']} no AMI uses")
        # work files of a run killed while reading a qcow2 or an unpacked raw image
        for leftover in [*self.workdir.glob("*.ec2"), *self.workdir.glob("*.err")]:
            leftover.unlink(missing_ok=True)
            removed.append(f"work file {leftover}")
        self._listing = kept
        return removed


def _tags(image: dict[str, Any]) -> dict[str, str]:
    return tags_.tag_dict(image.get("Tags"))


def _unfinished(image: dict[str, Any]) -> bool:
    """An AMI a create left before its commit: ``uploading`` and no seal yet.  The commit
    writes the seal and ``trusted`` in one call, so a sealed AMI marked ``uploading`` was
    altered: it is listed (and quarantined), never removed as a leftover."""
    tags = _tags(image)
    return tags.get(tags_.STATE) == tags_.UPLOADING and tags_.SEAL not in tags


def _printable(text: str) -> str:
    """List data without control characters, which EC2 descriptions do not take."""
    return "".join(c if c.isprintable() else " " for c in text)


def _name(title: str) -> str:
    """The ``Name`` tag people see in the console: list data made plain (``aws:`` is
    reserved, and other services refuse unusual characters in tags)."""
    plain = _TAG_UNSAFE.sub("-", title)
    return ("_" + plain if plain.lower().startswith("aws:") else plain)[:256]
