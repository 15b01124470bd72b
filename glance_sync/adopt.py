"""Adoption: a site's Glance images made by atrope (or cloudkeeper-os) become vmtrust's.

``vmtrust-sync --adopt atrope`` is one sync pass with two hooks
(:meth:`Adoption.before_plan`, :meth:`Adoption.after_create`) around the plan.
Between verifying the lists and planning, every approved image the other tool
holds in Glance is decided (:mod:`glance_sync.adopt_plan`, pure):

* **adopt in place** — the image keeps its Glance id (what users, Heat
  templates and pilot frameworks reference) — when it is owned by the sync's
  project, active, and Glance holds exactly the bytes vmtrust would store: its
  ``os_hash_value`` (sha512) is the list's, the list's file is a plain disk the
  site stores as it is, and Glance's ``disk_format`` says what the list
  declares.  The bytes are then read back from Glance, hashed and inspected like
  a download (:mod:`glance_sync.inspection`) — reading, not uploading — and the
  store's :meth:`~glance_sync.stores.glance.GlanceStore.adopt` commits record and
  seal bound to that id;
* **re-upload** — any other copy the sync's project owns (converted, unpacked,
  mislabelled, of an older version, not active): the pass creates the image as
  usual, and the tool's copy is retired (``[sync] retire``) only once vmtrust
  holds that version trusted — in the same pass, or, after an interruption, in
  the next adoption pass;
* **refuse** — a copy owned by another project: the sync could neither commit a
  record on it nor retire it, and a copy of its own would show the VO two
  images.  One line with the fix; the image is not created;
* **leave alone** — images of lists or entries the site does not approve in
  vmtrust (or whose list did not verify in this pass), images the tool marks as
  its own retired copies, and copies in other projects of images vmtrust
  already holds: listed with the command that would remove them, never touched.

Each adoption is its own boundary; a kill at any point leaves either the other
tool's image as it was (adopting again is safe) or vmtrust's committed image,
and a re-run converges.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from glance_sync.adopt_plan import (
    AdoptionPlan,
    InPlace,
    current_versions,
    held_identifiers,
    plan_adoption,
)
from glance_sync.foreign import Image, Tool
from glance_sync.inspection import inspect_stream
from glance_sync.lists import image_failure
from glance_sync.plan import Desired, Held
from glance_sync.report import Report, unexpected
from glance_sync.stores.glance import GlanceStore
from glance_sync.stores.glance_api import set_ops, short
from glance_sync.transfer import CHUNK, Tally, iter_chunks
from vmtrust import glanceprops as gp
from vmtrust.errors import ConfigError, GlanceError, TransferError, VmtrustError
from vmtrust.record import seal

if TYPE_CHECKING:
    from glance_sync.targets import Target

__all__ = ["Adoption", "Adoptions", "GlanceFile", "find"]

LOG = logging.getLogger("vmtrust.adopt")


# --- finding the tool's images ---------------------------------------------------------------


def find(store: GlanceStore, tool: Tool, list_identifiers: set[str]) -> list[Image]:
    """The tool's images the sync can see: as its project, and as each VO project it has.

    cloudkeeper-os keeps its images private in the VO projects; atrope's are in its
    own project, shared or public.  Images vmtrust manages are not the tool's.
    """
    connections = [None] + [
        conn for entries in store.vo_projects.values() for _, conn in entries if conn is not None
    ]
    found: dict[str, Image] = {}
    for conn in connections:
        for query in tool.queries(list_identifiers):
            for hidden in ("false", "true"):
                params = {**query, "visibility": "all", "os_hidden": hidden}
                for image in store.pages(params, conn):
                    if image.get(gp.MANAGED) != "true":
                        found.setdefault(image["id"], image)
    return list(found.values())


# --- reading an image back from Glance --------------------------------------------------------


class GlanceFile:
    """The bytes Glance holds for an image, as a stream (for hashing and inspection).

    Bounded by the size the image should have: a body that goes on is cut there.
    """

    def __init__(self, store: GlanceStore, image_id: str, size: int) -> None:
        self.what = f"glance GET /images/{image_id}/file"
        self.size = size
        self.left = size
        self.reply = store.call(
            "GET",
            f"/images/{image_id}/file",
            (200,),
            headers={"Accept": "application/octet-stream"},
            stream=True,
        )
        self.chunks: Iterator[bytes] = self.reply.iter_content(CHUNK)

    def read(self, size: int = CHUNK) -> bytes:
        try:
            chunk = next(self.chunks, b"")
        except Exception as exc:  # requests' and urllib3's ways of losing a body
            raise GlanceError(f"{self.what}: connection lost ({short(exc)})") from None
        self.left -= len(chunk)
        if self.left < 0:
            raise GlanceError(f"{self.what}: more than the {self.size} bytes of the image")
        return chunk

    def close(self) -> None:
        self.reply.close()


# --- the hooks of the pass ---------------------------------------------------------------------


class Adoption:
    """One adoption pass's decisions and actions, called by :meth:`SyncService.run`."""

    def __init__(
        self,
        store: Any,
        tool: Tool,
        seal_key: Ed25519PrivateKey,
        retire_mode: str,
        workers: int = 1,
        elsewhere: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(store, GlanceStore):
            raise ConfigError(
                f"--adopt {tool.name}: needs [sync] store = glance ({tool.name} wrote to Glance)"
            )
        self.store = store
        self.tool = tool
        self.seal_key = seal_key
        self.retire_mode = retire_mode
        self.workers = max(1, workers)  #: adoptions read back at once ([sync] parallel_downloads)
        #: project → name of the sync's other Glance targets (their copies are theirs)
        self.elsewhere = dict(elsewhere or {})
        self.plan = AdoptionPlan()
        self.current: set[str] = set()

    def of(self, target: Target) -> Adoption | None:
        """The adoption of ``target``: this one for its store's target, None for another."""
        return self if target.store is self.store else None

    def before_plan(
        self,
        wanted: dict[str, Desired],
        held: list[Held],
        report: Report,
        *,
        dry_run: bool,
        out: Callable[[str], None],
    ) -> list[Held] | None:
        """Adopt in place; return what the store holds now (None: stop the pass).

        Images refused, or whose adoption failed, leave ``wanted`` unless vmtrust
        holds a version of its own: the pass must not upload a second copy beside
        the tool's, nor retire vmtrust's own because it left the approved set.
        """
        lists = {want.imagelist.identifier for want in wanted.values()}
        try:
            found = find(self.store, self.tool, lists)
        except VmtrustError as exc:
            # Without the tool's images every approved image would be uploaded again.
            report.fail(f"adopt {self.tool.name}: cannot list its images: {exc}")
            return None
        plan = plan_adoption(
            wanted, held, found, tool=self.tool, project=self.store.project_id,
            stored_format=self.store.disk_format, elsewhere=self.elsewhere,
        )  # fmt: skip
        self.plan, self.current = plan, current_versions(wanted, held)
        for line in plan.describe(self.tool, self.retire_mode, self._changes) or [
            f"adopt    nothing: no {self.tool.name} image of an approved list"
        ]:
            out(line)
        for refused in plan.refused:  # refused only when vmtrust holds no version of it
            want = refused.want
            report.fail(f"image {want.identifier}: {refused.reason}", image_failure(want))
            wanted.pop(want.identifier, None)
        holding = held_identifiers(held)
        held = list(held)
        # reading back is I/O and hashing (which releases the GIL): several at once
        with ThreadPoolExecutor(self.workers, thread_name_prefix="vmtrust-adopt") as pool:
            results = list(pool.map(lambda i: self._in_place(i, report, dry_run), plan.in_place))
        for item, adopted in zip(plan.in_place, results, strict=True):
            if adopted is not None:
                held.append(adopted)
            elif item.want.identifier not in holding:
                # no upload beside the copy that failed (with a version of its own
                # vmtrust updates as usual: leaving the image out would retire that)
                wanted.pop(item.want.identifier, None)
        return held

    def _changes(self, item: InPlace) -> list[str]:
        """What the users of an adopted image notice: its name, who sees it."""
        image, store = item.image, self.store
        name = f"{store.name_prefix}{item.want.image.title}"[:255]
        changes = []
        if image.get("name") != name:
            changes.append(f"renamed {image.get('name')!r} -> {name!r}")
        if image.get("visibility") != store.visibility:
            changes.append(f"visibility {image.get('visibility')} -> {store.visibility}")
        shared = sorted(project for project, _ in store.projects(item.want.vo))
        changes.append(f"members: {', '.join(shared) or 'none'}")
        return changes

    def _in_place(self, item: InPlace, report: Report, dry_run: bool) -> Held | None:
        want, image = item.want, item.image
        image_id = image["id"]
        if dry_run:  # as the plan will see it once adopted: nothing to create
            record = want.record(
                store_id=image_id, sha512=want.image.sha512, size=want.image.size,
                disk_format=item.disk_format,
            )  # fmt: skip
            return Held(image_id, record, True, location=f"glance:{image_id}")
        what = f"adopt {want.identifier}"
        try:
            tally = self._read_back(image_id, want, item.disk_format)
            record = want.record(
                store_id=image_id, sha512=tally.sha512, size=tally.size,
                disk_format=item.disk_format,
            )  # fmt: skip
            tags, properties = self.tool.marks(image)
            held = self.store.adopt(
                image, want, record, seal(record, self.seal_key),
                drop_tags=tags, drop_properties=properties,
            )  # fmt: skip
        except VmtrustError as exc:
            report.fail(f"{what}: {exc}", image_failure(want))
            return None
        except Exception as exc:
            report.fail(unexpected(what, exc), image_failure(want))
            return None
        report.add(
            f"adopted {want.identifier} {want.image.version}: {self.tool.name} image "
            f"{image_id} kept its id",
            subscription=want.subscription, image=want.identifier, version=want.image.version,
        )  # fmt: skip
        return held

    def _read_back(self, image_id: str, want: Desired, disk_format: str) -> Tally:
        """Hash and inspect what Glance holds, as a download would be before it is stored."""
        identifier = want.identifier
        raw = GlanceFile(self.store, image_id, want.image.size)
        tally = Tally()
        try:
            for _ in iter_chunks(inspect_stream(raw, disk_format, identifier), identifier, tally):
                pass
        finally:
            raw.close()
        if tally.sha512 != want.image.sha512 or tally.size != want.image.size:
            raise TransferError(
                f"image {identifier}: Glance image {image_id} returned {tally.size} bytes "
                f"with another sha512 than the list's and Glance's own hash; not adopted"
            )
        return tally

    def after_create(self, report: Report, now: datetime) -> None:
        """Retire the tool's copies of images vmtrust now holds at the list's version."""
        trusted = self.current | {
            h.record.image_identifier for h in self.store.fresh.values() if h.record is not None
        }
        for item in self.plan.retire:
            if item.identifier not in trusted:
                LOG.warning(
                    "%s kept: %s is not trusted in vmtrust yet",
                    self.tool.describe(item.image), item.identifier,
                )  # fmt: skip
                continue
            what = f"retire {self.tool.describe(item.image)}"
            try:
                self._retire_copy(item.image, now)
            except VmtrustError as exc:
                report.fail(f"{what}: {exc}")
                continue
            except Exception as exc:
                report.fail(unexpected(what, exc))
                continue
            report.add(
                f"retired {self.tool.name} image {item.image.get('id')} ({item.identifier}): "
                f"{item.reason}"
            )

    def _retire_copy(self, image: Image, now: datetime) -> None:
        """Hand the copy to vmtrust's retirement: marked managed, then retired as usual.

        As a managed retired image it follows ``[sync] retire`` like vmtrust's own
        (deactivated, hidden, or deleted after the grace period); killed between the
        two steps, the next pass finds a managed image without a record and retires it.
        """
        image_id = image["id"]
        tags, _ = self.tool.marks(image)
        wanted = {gp.MANAGED: "true", "tags": [t for t in image.get("tags") or [] if t not in tags]}
        self.store.seen[image_id] = self.store.patch(image_id, set_ops(image, wanted))
        self.store.retire(Held(image_id, None, False, location=f"glance:{image_id}"),
                          self.retire_mode, now)  # fmt: skip


class Adoptions:
    """``--adopt`` with several targets (``[sync] targets``): one :class:`Adoption` per
    Glance target, each surveying its own Glance and project, with its own plan.

    Targets of other stores (a local archive, EC2) hold nothing the tool made: they
    get the pass's normal plan.  Each Glance target knows the others' projects, so
    a copy atrope shared from one target's project into another's is adopted where
    it is owned and left alone where it is only seen.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        tool: Tool,
        seal_key: Ed25519PrivateKey,
        retire_mode: str,
        workers: int = 1,
    ) -> None:
        projects = {t.name: t.store.project_id for t in targets if isinstance(t.store, GlanceStore)}
        if not projects:
            raise ConfigError(
                f"--adopt {tool.name}: needs a target with store = glance ({tool.name} wrote "
                "to Glance)"
            )
        self.by_target = {
            t.name: Adoption(
                t.store,
                tool,
                seal_key,
                t.retire_mode or retire_mode,
                workers,
                elsewhere={p: n for n, p in projects.items() if n != t.name},
            )
            for t in targets
            if t.name in projects
        }

    def of(self, target: Target) -> Adoption | None:
        """The adoption of ``target``; None for a target that is not a Glance store."""
        return self.by_target.get(target.name)
