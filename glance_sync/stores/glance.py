"""The Glance store: trusted images in OpenStack Glance, with their sealed trust record.

Commit order, which keeps the sync's guarantees on Glance:

1. create the image record, marked ``vmtrust_managed`` and ``vmtrust_state =
   uploading`` (never trusted in that state);
2. stream the bytes from the download into ``PUT /v2/images/{id}/file`` (no
   temporary file), hashing on the way;
3. check that Glance's own ``os_hash_value`` (sha512) and size equal what
   vmtrust hashed, and that the download matched the list;
4. share with the VO's projects, then one ``PATCH`` writes the trust record and
   seal — bound to this image id and hash — and ``vmtrust_state = trusted``.
   That PATCH is the commit point.

Any failure before it deletes the image; an interrupted run leaves at most an
image in state ``uploading``, which :meth:`GlanceStore.cleanup` deletes on
the next run.  Only images owned by the service project that carry
``vmtrust_managed`` are ever listed, changed or deleted.

The sync lists them incrementally: only the images Glance updated since the last
pass, on top of the survey it keeps in the state directory, with a full listing
every ``reconcile_passes`` passes or ``reconcile_hours`` hours
(:mod:`glance_sync.stores.glance_survey`, decision 0010).  The download runs
ahead of the upload on a thread of its own (:func:`~glance_sync.transfer.upload_chunks`;
a fan-out branch reads the tee's memory ring instead).

Glance is reached through openstacksdk's image adapter with plain REST calls
and explicit status checks (some of openstacksdk's image helpers ignore HTTP
errors or mishandle ``enabled_backends``; see docs/glance.md).  Every Glance
failure becomes one :class:`GlanceError` line naming the call and the status.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from glance_sync.plan import Desired, Held
from glance_sync.stores import glance_share
from glance_sync.stores.base import Finish, Store, StoreContext, held_image
from glance_sync.stores.glance_api import PATCH_TYPE, GlanceRest, set_ops, short
from glance_sync.stores.glance_meta import GIB, list_properties, stale_properties
from glance_sync.stores.glance_share import parse_vo_projects
from glance_sync.stores.glance_survey import SurveyFile, Surveyor, filter_time
from glance_sync.transfer import DiskStream, Tally, sized, upload_chunks
from vmtrust import glanceprops as gp
from vmtrust.errors import ConfigError, GlanceError
from vmtrust.imagelist import format_date
from vmtrust.record import TrustRecord
from vmtrust.trust import RETIRED, check_binding

if TYPE_CHECKING:
    from oslo_config import cfg

LOG = logging.getLogger("vmtrust.glance")
__all__ = ["GlanceError", "GlanceStore", "parse_vo_projects"]


class GlanceStore(GlanceRest, Store):
    name = "glance"

    def __init__(
        self,
        conn: Any,
        *,
        project_id: str,
        seal_keys: list[Ed25519PublicKey],
        visibility: str = "shared",
        vo_projects: dict[str, list[tuple[str, Any]]] | None = None,
        disk_formats: list[str] | None = None,
        name_prefix: str = "",
        hypervisor_type: bool = True,
        survey: SurveyFile | None = None,
    ) -> None:
        self.conn = conn
        self.project_id = project_id
        self.seal_keys = seal_keys
        self.visibility = visibility
        #: VO → [(project id, connection scoped to it or None)]
        self.vo_projects = vo_projects or {}
        self.disk_formats = disk_formats or []
        self.name_prefix = name_prefix
        self.hypervisor_type = hypervisor_type
        #: image id → the whole image as Glance last returned it in this pass
        self.seen: dict[str, dict[str, Any]] = {}
        #: lists by changes since the last survey (with no survey file: always in full)
        self.surveyor = Surveyor(survey, self._managed, self._endpoint)
        #: images created or refreshed this pass, as they are now: converge shares them
        #: by their new record (a new VO is shared with in the same pass)
        self.fresh: dict[str, Held] = {}
        self._listing: list[dict[str, Any]] | None = None  #: cleanup's, for held()
        GlanceRest.__init__(self, conn)

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, context: StoreContext) -> GlanceStore:
        """``[store_glance]``: every option checked, nothing contacted.

        The sync logs a warning for each VO project it cannot make see its images
        (no cloud to accept with; visibility that keeps images out of listings);
        readers leave that to the sync.
        """
        from glance_sync import cloud

        section = conf.store_glance
        mapping = parse_vo_projects(section.vo_project)
        if context.syncing:
            for note in glance_share.acceptance_notes(mapping, section.visibility):
                LOG.warning("%s", note)
        conn = cloud.connect(conf)
        project_id = section.project_id
        if not project_id:
            try:
                project_id = conn.current_project_id
            except Exception as exc:  # keystoneauth raises many kinds here
                raise ConfigError(f"[store_glance] project_id: not set, and {short(exc)}") from None
            if not project_id:
                raise ConfigError(
                    "[store_glance] project_id: not set, and the credentials name no project"
                )
        vo_projects: dict[str, list[tuple[str, Any]]] = {}
        for vo, entries in mapping.items():
            vo_projects[vo] = [
                (project, cloud.connect_cloud(name, section.clouds_file, section.api_timeout)
                 if name else None)
                for project, name in entries
            ]  # fmt: skip
        formats = [f.strip().lower() for f in section.disk_formats if f.strip()]
        return cls(
            conn,
            project_id=project_id,
            seal_keys=context.seal_keys,
            visibility=section.visibility,
            vo_projects=vo_projects,
            disk_formats=formats,
            name_prefix=section.name_prefix,
            hypervisor_type=section.hypervisor_type,
            survey=SurveyFile(
                context.state_dir,
                reconcile_passes=section.reconcile_passes,
                reconcile_hours=section.reconcile_hours,
                margin=timedelta(seconds=section.changes_margin),
                project=project_id,
            )
            if context.syncing
            else None,
        )

    # --- REST plumbing (the rest is GlanceRest's) ---------------------------------------

    def patch(self, image_id: str, ops: list[dict[str, Any]], conn: Any = None) -> dict:
        if not ops:
            return self.image(image_id)
        reply = self.call(
            "PATCH",
            f"/images/{image_id}",
            (200,),
            conn,
            json=ops,
            headers={"Content-Type": PATCH_TYPE},
        )
        return reply.json()

    # --- reading ----------------------------------------------------------------------

    def _held(self, image: dict[str, Any]) -> Held:
        verdict = check_binding(
            lambda: gp.read_record(image), gp.stored(image), keys=self.seal_keys
        )
        return held_image(
            verdict,
            image["id"],
            retired=image.get(gp.STATE) == RETIRED,
            retired_at=image.get(gp.RETIRED_AT),
            location=f"glance:{image['id']}",
            unusable=gp.usable(image),
        )

    def _managed(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Every managed image of the project, visible and hidden (two listings + paging);
        with ``since``, only those Glance updated at or after it."""
        params = {"owner": self.project_id, gp.MANAGED: "true"}
        if since is not None:
            params["updated_at"] = "gte:" + filter_time(since)
        return [
            image
            for hidden in ("false", "true")
            for image in self.pages({**params, "os_hidden": hidden})
        ]

    def _list(self, *, new_pass: bool, full: bool = False) -> list[dict[str, Any]]:
        """Every managed image as Glance has it now (:class:`Surveyor`); what Glance
        returned in this listing is ``seen``, whole."""
        listed, every = self.surveyor.listing(new_pass=new_pass, full=full)
        self.seen = {image["id"]: image for image in listed}
        return every

    @property
    def full_listing(self) -> bool:
        """Whether the pass listed every image (a full reconcile), not only the changes."""
        return self.surveyor.full_listing

    def image(self, image_id: str) -> dict[str, Any]:
        """What this pass knows of an image: the whole of it when listed or written in
        this pass, else the survey's copy (what judging, retiring and sharing read)."""
        return self.seen.get(image_id) or self.surveyor.cached(image_id) or {}

    def _endpoint(self) -> str:
        """Glance's URL for this store (which survey file is its own); "" if unknown yet."""
        try:
            with self._lock:
                proxy = self.conn.image
            return str(proxy.get_endpoint() or "")
        except Exception as exc:  # the listing that follows reports the cause as one line
            LOG.debug("glance endpoint unknown: %s", short(exc))
            return ""

    def _forget(self, image_id: str) -> None:
        """An image this store deleted: out of the survey (incremental listings miss deletions)."""
        with self._lock:
            self.seen.pop(image_id, None)
        self.surveyor.forget(image_id)

    def held(self) -> list[Held]:
        # cleanup() of the same pass has just listed them: one listing per pass, not two
        images, self._listing = self._listing, None
        if images is None:
            images = [i for i in self._list(new_pass=False) if i.get(gp.STATE) != gp.UPLOADING]
        self.fresh = {}
        held = [self._held(image) for image in images]
        if not self.surveyor.last_full and any(
            h.store_id not in self.seen and not h.retired and not h.seal_ok for h in held
        ):
            # The survey only keeps what Glance listed, and a pass quarantines what it finds
            # at once: an image known only from the survey that fails the rule means the
            # survey is not what this store wrote.  Glance decides, not the file.
            LOG.warning("glance: the survey holds an image that fails its check; listing all")
            images = [i for i in self._list(new_pass=False, full=True)
                      if i.get(gp.STATE) != gp.UPLOADING]  # fmt: skip
            held = [self._held(image) for image in images]
        return held

    def free_bytes(self) -> int | None:
        return None  # Glance has quotas, not free space; a 413 is reported per image

    def disk_format(self, source_format: str) -> str:
        if not self.disk_formats or source_format in self.disk_formats:
            return source_format
        return self.disk_formats[0]

    # --- writing ----------------------------------------------------------------------

    def create(self, want: Desired, stream: DiskStream, disk_format: str, finish: Finish) -> Held:
        identifier = want.identifier
        body: dict[str, Any] = {
            **list_properties(
                want, want.image.size, self.name_prefix, hypervisor_type=self.hypervisor_type
            ),
            "disk_format": disk_format,
            "container_format": "bare",
            "visibility": self.visibility,
            gp.MANAGED: "true",
            gp.STATE: gp.UPLOADING,
            gp.PREFIX + "image_identifier": identifier,
        }
        image = self.call("POST", "/images", (201,), json=body).json()
        image_id = image["id"]
        try:
            tally = Tally()
            self.call(
                "PUT",
                f"/images/{image_id}/file",
                (204,),
                data=sized(upload_chunks(stream, identifier, tally), stream),
                headers={"Content-Type": "application/octet-stream"},
                # a stream cannot be sent twice: a retried PUT would store an empty image
                status_code_retries=0,
                connect_retries=0,
            )
            record, seal = finish(image_id, tally.size, tally.sha512)
            image = self.call("GET", f"/images/{image_id}", (200,)).json()
            if image.get("status") != "active":
                raise GlanceError(f"image {identifier}: Glance left it {image.get('status')}")
            if image.get("os_hash_algo") != "sha512" or image.get("os_hash_value") != tally.sha512:
                raise GlanceError(
                    f"image {identifier}: Glance's {image.get('os_hash_algo')} hash of the upload "
                    f"differs from vmtrust's SHA-512 (removed)"
                )
            if image.get("size") != tally.size:
                raise GlanceError(
                    f"image {identifier}: Glance stored {image.get('size')} bytes, vmtrust "
                    f"sent {tally.size} (removed)"
                )
            shared = glance_share.share(self, image_id, record.vo)
            ops = set_ops(
                image,
                {
                    **gp.record_properties(record, seal),
                    gp.SHARED_WITH: shared,
                    # what the disk needs, as stored (a conversion changes it)
                    "min_disk": _min_disk(image),
                },
            )
            image = self.patch(image_id, ops)
        except GlanceError as exc:
            self._remove_failed(image_id, identifier)
            message = str(exc)
            if not message.startswith(f"image {identifier}:"):
                message = f"image {identifier}: {message}"
            raise GlanceError(message) from None
        except BaseException:
            self._remove_failed(image_id, identifier)
            raise
        self.seen[image_id] = image
        held = Held(image_id, record, True, location=f"glance:{image_id}")
        self.fresh[image_id] = held
        self._accept_new(image_id, identifier, record.vo)
        return held

    def _remove_failed(self, image_id: str, identifier: str) -> None:
        try:
            self.call("DELETE", f"/images/{image_id}", (204, 404))
            self._forget(image_id)
        except GlanceError as exc:
            LOG.error("image %s: could not remove the unfinished Glance image %s: %s "
                      "(the next run removes it)", identifier, image_id, exc)  # fmt: skip

    def refresh(self, held: Held, want: Desired, record: TrustRecord, seal: str) -> Held:
        image = self.seen.get(held.store_id)
        if image is None:  # the survey keeps only part of an image; a refresh needs it all
            image = self.call("GET", f"/images/{held.store_id}", (200,)).json()
        wanted = self._wanted(image, want, record, seal)
        ops = set_ops(image, wanted) + _removals(image, stale_properties(image, wanted))
        self.seen[held.store_id] = self.patch(held.store_id, ops)
        fresh = Held(held.store_id, record, True, location=held.location)
        self.fresh[held.store_id] = fresh
        return fresh

    def _wanted(
        self, image: dict[str, Any], want: Desired, record: TrustRecord, seal: str
    ) -> dict[str, Any]:
        """The list metadata, ``min_disk`` as stored, the record and the seal of ``image``."""
        wanted: dict[str, Any] = dict(
            list_properties(
                want, record.size, self.name_prefix, hypervisor_type=self.hypervisor_type
            )
        )
        wanted["min_disk"] = _min_disk(image)
        wanted.update(gp.record_properties(record, seal))
        # What the entry no longer gives must go too: a stale hypervisor_type or
        # os_distro would steer nova's scheduler by metadata the list withdrew.
        wanted.setdefault("min_ram", 0)
        return wanted

    def retire(self, held: Held, mode: str, now: datetime) -> None:
        image = self.image(held.store_id)
        wanted: dict[str, Any] = {
            gp.STATE: "retired",
            gp.RETIRED_AT: format_date(now),
            gp.RETIRE_MODE: mode,
        }
        if mode in ("hide", "delete"):
            wanted["os_hidden"] = True
        try:
            if mode == "deactivate" and image.get("status", "active") == "active":
                # Before the state: killed in between, the next pass finds a record on an
                # image that is not active and retires it; a retired image still active
                # would stay bootable (nothing deactivates retired images later).
                self.call("POST", f"/images/{held.store_id}/actions/deactivate", (204,))
            self.patch(held.store_id, set_ops(image, wanted))
        except GlanceError as exc:
            if exc.status != 404 or held.store_id in self.seen:
                raise
            self._forget(held.store_id)  # deleted since the survey: out of use already

    def purge(self, held: Held) -> None:
        if held.store_id not in self.seen:  # known from the survey only: Glance confirms
            reply = self.call("GET", f"/images/{held.store_id}", (200, 404))
            image = reply.json() if reply.status_code == 200 else None
            if image is not None and (
                image.get("owner") != self.project_id or image.get(gp.MANAGED) != "true"
            ):
                self._forget(held.store_id)
                self.surveyor.save()  # the survey named it: that entry goes now
                raise GlanceError(f"image {held.store_id}: not a managed image of the project")
            if image is None:
                self._forget(held.store_id)
                return
        self.call("DELETE", f"/images/{held.store_id}", (204, 404))
        self._forget(held.store_id)

    def cleanup(self) -> list[str]:
        removed, kept = [], []
        for image in self._list(new_pass=True):
            # only what Glance listed in this pass: never an id the survey alone names
            if image.get(gp.STATE) != gp.UPLOADING:
                kept.append(image)
                continue
            if image["id"] not in self.seen:
                continue  # only what Glance listed in this pass, never an id the survey names
            try:
                self.call("DELETE", f"/images/{image['id']}", (204, 404))
            except GlanceError as exc:
                LOG.error("could not remove unfinished image %s: %s", image["id"], exc)
                continue
            self._forget(image["id"])
            removed.append(f"unfinished Glance image {image['id']} ({image.get('status')})")
        if removed:
            self.surveyor.save()
        self._listing = kept
        return removed

    # --- adoption of another tool's images (glance_sync.adopt) -------------------------------

    def adopt(
        self,
        image: dict[str, Any],
        want: Desired,
        record: TrustRecord,
        seal: str,
        *,
        drop_tags: set[str],
        drop_properties: set[str],
    ) -> Held:
        """Make an image another tool uploaded one of this store's trusted images, keeping its id.

        The caller has checked the bytes (read back, hashed and inspected) and made
        ``record``; this gives the image what :meth:`create` gives a new one: the
        configured visibility and the VO's members first (only shared images take
        members), then one PATCH — the commit point — with the list metadata, record
        and seal, which also takes off the other tool's marks (``drop_*``), so that
        tool no longer finds the image.  Until that PATCH the image is the other
        tool's, and adopting it again is safe.
        """
        image_id = image["id"]
        if image.get("visibility") != self.visibility:
            image = self.patch(image_id, set_ops(image, {"visibility": self.visibility}))
        wanted = self._wanted(image, want, record, seal)
        wanted[gp.SHARED_WITH] = glance_share.share(self, image_id, record.vo)
        wanted["os_hidden"] = False  # as a created image: in the projects' listings
        tags = image.get("tags") or []
        wanted["tags"] = [tag for tag in tags if tag not in drop_tags]
        gone = set(stale_properties(image, wanted)) | (drop_properties - set(wanted))
        ops = set_ops(image, wanted) + _removals(image, sorted(gone))
        self.seen[image_id] = self.patch(image_id, ops)
        held = Held(image_id, record, True, location=f"glance:{image_id}")
        self.fresh[image_id] = held
        self._accept_new(image_id, record.image_identifier, record.vo)
        return held

    # --- sharing -------------------------------------------------------------------------

    def projects(self, vo: str) -> list[tuple[str, Any]]:
        """The projects images of ``vo`` are shared with: [(project id, connection or None)]."""
        return self.vo_projects.get(vo, []) if self.visibility == "shared" else []

    def _accept_new(self, image_id: str, identifier: str, vo: str) -> None:
        """Accept a new image's memberships where the sync can; converge checks them all."""
        for project, conn in self.projects(vo):
            if conn is None:
                continue
            try:
                glance_share.accept(self, image_id, project, conn)
            except GlanceError as exc:
                LOG.warning("image %s: %s (tried again before the pass ends)", identifier, exc)

    def converge(self, held: list[Held]) -> list[str]:
        return glance_share.converge(self, held)


def _removals(image: dict[str, Any], keys: list[str]) -> list[dict[str, Any]]:
    return [{"op": "remove", "path": f"/{key}"} for key in keys if key in image]


def _min_disk(image: dict[str, Any]) -> int:
    """GiB of root disk an image needs: its bytes, or its virtual size if larger (qcow2)."""
    need = max(image.get("size") or 0, image.get("virtual_size") or 0)
    return math.ceil(need / GIB)
