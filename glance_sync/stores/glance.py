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

Glance is reached through openstacksdk's image adapter with plain REST calls
and explicit status checks (some of openstacksdk's image helpers ignore HTTP
errors or mishandle ``enabled_backends``; see docs/glance.md).  Every Glance
failure becomes one :class:`GlanceError` line naming the call and the status.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from glance_sync.plan import Desired, Held
from glance_sync.stores import glance_share
from glance_sync.stores.base import Finish, Store, StoreContext, held_image
from glance_sync.stores.glance_api import PATCH_TYPE, reason, set_ops, short
from glance_sync.stores.glance_meta import GIB, list_properties, stale_properties
from glance_sync.stores.glance_share import parse_vo_projects
from glance_sync.transfer import DiskStream, Tally, iter_chunks
from vmtrust import glanceprops as gp
from vmtrust.errors import ConfigError, GlanceError
from vmtrust.imagelist import format_date
from vmtrust.record import TrustRecord
from vmtrust.trust import RETIRED, check_binding

if TYPE_CHECKING:
    from oslo_config import cfg

LOG = logging.getLogger("vmtrust.glance")
PAGE = 1000  # Glance's default api_limit_max
__all__ = ["GlanceError", "GlanceStore", "parse_vo_projects"]


class GlanceStore(Store):
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
        self.seen: dict[str, dict[str, Any]] = {}  #: image id → last listing of it
        #: images created or refreshed this pass, as they are now: converge shares them
        #: by their new record (a new VO is shared with in the same pass)
        self.fresh: dict[str, Held] = {}
        self._listing: list[dict[str, Any]] | None = None  #: cleanup's, for held()
        self._lock = threading.Lock()
        self.calls = 0  #: Glance API requests made (the no-op benchmark counts them)

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
        )

    # --- REST plumbing --------------------------------------------------------------

    def adapter(self, conn: Any = None) -> Any:
        """The image adapter of ``conn`` (default: the sync's connection).

        openstacksdk makes a connection's service proxy on first use, with endpoint
        discovery that rewrites the connection's shared configuration, and without a
        lock: two threads making it at once can send one of them to a wrong URL
        ("Unable to find a version discovery document at …/v2/").  Once made, the
        proxy is a keystoneauth adapter, which (like the token renewal behind it,
        locked in keystoneauth) serves many threads — openstacksdk's own
        ``project_cleanup`` makes its proxies first and then uses them from a thread
        pool.  So the look-up happens under this store's lock, once per connection.
        """
        with self._lock:
            self.calls += 1  # counted here too: ``+=`` is not atomic across threads
            return (conn or self.conn).image

    def call(self, method: str, url: str, ok: tuple[int, ...], conn: Any = None, **kw: Any) -> Any:
        """One request to Glance; any failure becomes one :class:`GlanceError` line."""
        from keystoneauth1 import exceptions as ks_exc

        # JSON errors carry Glance's explanation; its HTML pages hide it in markup.
        headers = {"Accept": "application/json", **kw.pop("headers", {})}
        try:
            adapter = self.adapter(conn)  # endpoint discovery happens here, once
            reply = adapter.request(url, method, raise_exc=False, headers=headers, **kw)
        except ks_exc.ConnectFailure as exc:
            text = short(exc)
            if "aborted" in text or "RemoteDisconnected" in text or "reset" in text:
                raise GlanceError(f"glance {method} {url}: connection lost ({text})") from None
            raise GlanceError(f"glance {method} {url}: cannot connect ({text})") from None
        except ks_exc.ConnectTimeout:
            raise GlanceError(f"glance {method} {url}: connection timed out") from None
        except ks_exc.RequestTimeout:
            raise GlanceError(f"glance {method} {url}: no answer in time") from None
        except ks_exc.DiscoveryFailure as exc:
            raise GlanceError(
                f"glance {method} {url}: cannot connect, or no Glance API there ({short(exc)})"
            ) from None
        except ks_exc.ClientException as exc:  # authentication, catalogue
            raise GlanceError(f"glance {method} {url}: {short(exc)}") from None
        if reply.status_code not in ok:
            raise GlanceError(
                f"glance {method} {url}: HTTP {reply.status_code} {reason(reply)}",
                reply.status_code,
            ) from None
        return reply

    def patch(self, image_id: str, ops: list[dict[str, Any]], conn: Any = None) -> dict:
        if not ops:
            return self.seen.get(image_id, {})
        reply = self.call(
            "PATCH",
            f"/images/{image_id}",
            (200,),
            conn,
            json=ops,
            headers={"Content-Type": PATCH_TYPE},
        )
        return reply.json()

    def pages(self, params: dict[str, Any], conn: Any = None) -> Iterator[dict[str, Any]]:
        """Every image of a listing with ``params``, page by page."""
        url = "/images"
        query: dict[str, Any] | None = {**params, "limit": PAGE}  # then "next" carries it
        while url:
            body = self.call("GET", url, (200,), conn, params=query).json()
            yield from body.get("images", [])
            url, query = body.get("next", ""), None
            if url:
                url = url.removeprefix("/v2")

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

    def _managed(self) -> list[dict[str, Any]]:
        """Every managed image of the project, visible and hidden (two listings + paging)."""
        params = {"owner": self.project_id, gp.MANAGED: "true"}
        return [
            image
            for hidden in ("false", "true")
            for image in self.pages({**params, "os_hidden": hidden})
        ]

    def held(self) -> list[Held]:
        # cleanup() of the same pass has just listed them: one listing per pass, not two
        images, self._listing = self._listing, None
        if images is None:
            images = [i for i in self._managed() if i.get(gp.STATE) != gp.UPLOADING]
        self.seen = {image["id"]: image for image in images}
        self.fresh = {}
        return [self._held(image) for image in images]

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
                data=iter_chunks(stream, identifier, tally),
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
        except GlanceError as exc:
            LOG.error("image %s: could not remove the unfinished Glance image %s: %s "
                      "(the next run removes it)", identifier, image_id, exc)  # fmt: skip

    def refresh(self, held: Held, want: Desired, record: TrustRecord, seal: str) -> Held:
        image = (
            self.seen.get(held.store_id)
            or self.call("GET", f"/images/{held.store_id}", (200,)).json()
        )
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
        image = self.seen.get(held.store_id, {})
        wanted: dict[str, Any] = {
            gp.STATE: "retired",
            gp.RETIRED_AT: format_date(now),
            gp.RETIRE_MODE: mode,
        }
        if mode in ("hide", "delete"):
            wanted["os_hidden"] = True
        if mode == "deactivate" and image.get("status", "active") == "active":
            # Before the state: killed in between, the next pass finds a record on an
            # image that is not active and retires it; a retired image still active
            # would stay bootable (nothing deactivates retired images later).
            self.call("POST", f"/images/{held.store_id}/actions/deactivate", (204,))
        self.patch(held.store_id, set_ops(image, wanted))

    def purge(self, held: Held) -> None:
        self.call("DELETE", f"/images/{held.store_id}", (204, 404))

    def cleanup(self) -> list[str]:
        removed, kept = [], []
        for image in self._managed():
            if image.get(gp.STATE) != gp.UPLOADING:
                kept.append(image)
                continue
            try:
                self.call("DELETE", f"/images/{image['id']}", (204, 404))
            except GlanceError as exc:
                LOG.error("could not remove unfinished image %s: %s", image["id"], exc)
                continue
            removed.append(f"unfinished Glance image {image['id']} ({image.get('status')})")
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
