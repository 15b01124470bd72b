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

import contextlib
import dataclasses
import html
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from glance_sync.plan import Desired, Held
from glance_sync.stores.base import Finish, Store
from glance_sync.stores.glance_meta import list_properties, stale_properties
from glance_sync.transfer import Tally, iter_chunks
from vmtrust import glanceprops as gp
from vmtrust.errors import ConfigError, VmtrustError
from vmtrust.imagelist import format_date, parse_date
from vmtrust.record import SealError, TrustRecord, check_seal

LOG = logging.getLogger("vmtrust.glance")
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"
PAGE = 1000  # Glance's default api_limit_max


class GlanceError(VmtrustError):
    exit_code = 42
    rule = "glance"


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
        self._seen: dict[str, dict[str, Any]] = {}  #: image id → last listing of it
        self._listing: list[dict[str, Any]] | None = None  #: cleanup's, for held()
        self.calls = 0  #: Glance API requests made (the no-op benchmark counts them)

    # --- REST plumbing --------------------------------------------------------------

    def _call(self, method: str, url: str, ok: tuple[int, ...], conn: Any = None, **kw: Any) -> Any:
        from keystoneauth1 import exceptions as ks_exc

        self.calls += 1
        # JSON errors carry Glance's explanation; its HTML pages hide it in markup.
        headers = {"Accept": "application/json", **kw.pop("headers", {})}
        try:
            adapter = (conn or self.conn).image  # endpoint discovery happens here
            reply = adapter.request(url, method, raise_exc=False, headers=headers, **kw)
        except ks_exc.ConnectFailure as exc:
            text = _short(exc)
            if "aborted" in text or "RemoteDisconnected" in text or "reset" in text:
                raise GlanceError(f"glance {method} {url}: connection lost ({text})") from None
            raise GlanceError(f"glance {method} {url}: cannot connect ({text})") from None
        except ks_exc.ConnectTimeout:
            raise GlanceError(f"glance {method} {url}: connection timed out") from None
        except ks_exc.RequestTimeout:
            raise GlanceError(f"glance {method} {url}: no answer in time") from None
        except ks_exc.DiscoveryFailure as exc:
            raise GlanceError(
                f"glance {method} {url}: cannot connect, or no Glance API there ({_short(exc)})"
            ) from None
        except ks_exc.ClientException as exc:  # authentication, catalogue
            raise GlanceError(f"glance {method} {url}: {_short(exc)}") from None
        if reply.status_code not in ok:
            raise GlanceError(
                f"glance {method} {url}: HTTP {reply.status_code} {_reason(reply)}"
            ) from None
        return reply

    def _patch(self, image_id: str, ops: list[dict[str, Any]], conn: Any = None) -> dict:
        if not ops:
            return self._seen.get(image_id, {})
        reply = self._call(
            "PATCH",
            f"/images/{image_id}",
            (200,),
            conn,
            json=ops,
            headers={"Content-Type": PATCH_TYPE},
        )
        return reply.json()

    def _list(self, **filters: str) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"owner": self.project_id, gp.MANAGED: "true", "limit": PAGE}
        params.update(filters)
        url = "/images"
        while url:
            reply = self._call("GET", url, (200,), params=params)
            body = reply.json()
            yield from body.get("images", [])
            url, params = body.get("next", ""), None
            if url:
                url = url.removeprefix("/v2")

    # --- reading ----------------------------------------------------------------------

    def location(self, held: Held) -> str:
        return held.location

    def _held(self, image: dict[str, Any]) -> Held:
        image_id = image["id"]
        location = f"glance:{image_id}"
        retired = image.get(gp.STATE) == "retired"
        retired_at = None
        if retired and isinstance(image.get(gp.RETIRED_AT), str):
            with contextlib.suppress(ValueError):
                retired_at = parse_date(image[gp.RETIRED_AT])
        try:
            record, seal = gp.read_record(image)
            # retiring changes only vmtrust_state: the seal is over the trusted record
            sealed = dataclasses.replace(record, state="trusted") if retired else record
            check_seal(sealed, seal, self.seal_keys)
        except SealError as exc:
            return Held(image_id, None, False, retired, retired_at, location, str(exc))
        problem = None
        if record.store_id != image_id:
            problem = f"record belongs to image {record.store_id}"
        elif image.get("os_hash_value") != record.sha512:
            problem = "Glance's os_hash_value differs from the sealed SHA-512"
        elif image.get("size") != record.size:
            problem = f"Glance holds {image.get('size')} bytes, the record says {record.size}"
        elif not retired and image.get("status") != "active":
            problem = f"image status is {image.get('status')}"
        return Held(image_id, record, problem is None, retired, retired_at, location, problem)

    def _managed(self) -> list[dict[str, Any]]:
        """Every managed image of the project, visible and hidden (two listings + paging)."""
        return [image for hidden in ("false", "true") for image in self._list(os_hidden=hidden)]

    def held(self) -> list[Held]:
        # cleanup() of the same pass has just listed them: one listing per pass, not two
        images, self._listing = self._listing, None
        if images is None:
            images = [i for i in self._managed() if i.get(gp.STATE) != gp.UPLOADING]
        self._seen = {image["id"]: image for image in images}
        return [self._held(image) for image in images]

    def free_bytes(self) -> int | None:
        return None  # Glance has quotas, not free space; a 413 is reported per image

    def disk_format(self, source_format: str) -> str:
        if not self.disk_formats or source_format in self.disk_formats:
            return source_format
        return self.disk_formats[0]

    # --- writing ----------------------------------------------------------------------

    def create(self, want: Desired, stream: IO[bytes], disk_format: str, finish: Finish) -> Held:
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
        image = self._call("POST", "/images", (201,), json=body).json()
        image_id = image["id"]
        try:
            tally = Tally()
            self._call(
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
            image = self._call("GET", f"/images/{image_id}", (200,)).json()
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
            shared = self._share(image_id, record.vo)
            ops = _set_ops(image, {**gp.record_properties(record, seal), gp.SHARED_WITH: shared})
            image = self._patch(image_id, ops)
        except GlanceError as exc:
            self._remove_failed(image_id, identifier)
            message = str(exc)
            if not message.startswith(f"image {identifier}:"):
                message = f"image {identifier}: {message}"
            raise GlanceError(message) from None
        except BaseException:
            self._remove_failed(image_id, identifier)
            raise
        self._accept(image_id, record.vo)
        self._seen[image_id] = image
        return Held(image_id, record, True, location=f"glance:{image_id}")

    def _remove_failed(self, image_id: str, identifier: str) -> None:
        try:
            self._call("DELETE", f"/images/{image_id}", (204, 404))
        except GlanceError as exc:
            LOG.error("image %s: could not remove the unfinished Glance image %s: %s "
                      "(the next run removes it)", identifier, image_id, exc)  # fmt: skip

    def refresh(self, held: Held, want: Desired, record: TrustRecord, seal: str) -> Held:
        image = (
            self._seen.get(held.store_id)
            or self._call("GET", f"/images/{held.store_id}", (200,)).json()
        )
        wanted: dict[str, Any] = dict(
            list_properties(
                want, record.size, self.name_prefix, hypervisor_type=self.hypervisor_type
            )
        )
        wanted.update(gp.record_properties(record, seal))
        # What the entry no longer gives must go too: a stale hypervisor_type or
        # os_distro would steer nova's scheduler by metadata the list withdrew.
        wanted.setdefault("min_ram", 0)
        wanted.setdefault("min_disk", 0)
        ops = _set_ops(image, wanted)
        ops += [{"op": "remove", "path": f"/{key}"} for key in stale_properties(image, wanted)]
        self._seen[held.store_id] = self._patch(held.store_id, ops)
        return Held(held.store_id, record, True, location=held.location)

    def retire(self, held: Held, mode: str, now: datetime) -> None:
        image = self._seen.get(held.store_id, {})
        wanted: dict[str, Any] = {
            gp.STATE: "retired",
            gp.RETIRED_AT: format_date(now),
            gp.RETIRE_MODE: mode,
        }
        if mode in ("hide", "delete"):
            wanted["os_hidden"] = True
        self._patch(held.store_id, _set_ops(image, wanted))
        if mode == "deactivate" and image.get("status", "active") == "active":
            self._call("POST", f"/images/{held.store_id}/actions/deactivate", (204,))

    def purge(self, held: Held) -> None:
        self._call("DELETE", f"/images/{held.store_id}", (204, 404))

    def cleanup(self) -> list[str]:
        removed, kept = [], []
        for image in self._managed():
            if image.get(gp.STATE) != gp.UPLOADING:
                kept.append(image)
                continue
            try:
                self._call("DELETE", f"/images/{image['id']}", (204, 404))
            except GlanceError as exc:
                LOG.error("could not remove unfinished image %s: %s", image["id"], exc)
                continue
            removed.append(f"unfinished Glance image {image['id']} ({image.get('status')})")
        self._listing = kept
        return removed

    # --- sharing ------------------------------------------------------------------------

    def _projects(self, vo: str) -> list[tuple[str, Any]]:
        return self.vo_projects.get(vo, []) if self.visibility == "shared" else []

    def _share(self, image_id: str, vo: str) -> str:
        """Make the members of ``image_id`` exactly the VO's projects; return them as text."""
        wanted = {project for project, _ in self._projects(vo)}
        if self.visibility == "shared":
            reply = self._call("GET", f"/images/{image_id}/members", (200,))
            current = {m["member_id"] for m in reply.json().get("members", [])}
            for project in sorted(wanted - current):
                self._call("POST", f"/images/{image_id}/members", (200, 409),
                           json={"member": project})  # fmt: skip
            for project in sorted(current - wanted):
                self._call("DELETE", f"/images/{image_id}/members/{project}", (204, 404))
        return ",".join(sorted(wanted))

    def _accept(self, image_id: str, vo: str) -> None:
        for project, conn in self._projects(vo):
            if conn is None:
                continue
            try:
                self._call("PUT", f"/images/{image_id}/members/{project}", (200,), conn,
                           json={"status": "accepted"})  # fmt: skip
            except GlanceError as exc:
                LOG.warning("image %s: project %s could not accept it: %s", image_id, project, exc)

    def converge(self, held: list[Held]) -> list[str]:
        changed = []
        for item in held:
            if item.retired or not item.seal_ok or item.record is None:
                continue
            image = self._seen.get(item.store_id, {})
            wanted = ",".join(sorted(project for project, _ in self._projects(item.record.vo)))
            visibility = image.get("visibility", self.visibility)
            if image.get(gp.SHARED_WITH, "") == wanted and visibility == self.visibility:
                continue
            if visibility != self.visibility:
                # Before sharing (only shared images take members); leaving "shared"
                # is what takes the image away from the members it had.
                image = self._patch(item.store_id, _set_ops(image, {"visibility": self.visibility}))
            shared = self._share(item.store_id, item.record.vo)
            self._seen[item.store_id] = self._patch(
                item.store_id, _set_ops(image, {gp.SHARED_WITH: shared})
            )
            self._accept(item.store_id, item.record.vo)
            changed.append(f"shared {item.identifier} with [{shared}]")
        return changed


def _set_ops(image: dict[str, Any], wanted: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON-patch operations that give ``image`` the ``wanted`` values (only the changes)."""
    ops = []
    for key, value in wanted.items():
        if image.get(key) == value:
            continue
        ops.append({"op": "replace" if key in image else "add", "path": f"/{key}", "value": value})
    return ops


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _reason(reply: Any) -> str:
    """Glance's explanation from an error reply, on one line."""
    text = ""
    try:
        body = reply.json()
        if isinstance(body, dict):
            inner = next(iter(body.values()), body) if len(body) == 1 else body
            text = str(inner.get("message") or inner.get("title") or "") if isinstance(
                inner, dict) else ""  # fmt: skip
    except ValueError:
        lines = [line.strip() for line in reply.text.splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    text = html.unescape(re.sub(r"<[^>]*>", " ", text))
    return " ".join(text.split())[:200] or reply.reason or ""


def parse_vo_projects(entries: list[str]) -> dict[str, list[tuple[str, str]]]:
    """``VO:PROJECT[:CLOUD]`` entries → VO → [(project, cloud or "")]."""
    result: dict[str, list[tuple[str, str]]] = {}
    for entry in entries:
        parts = [part.strip() for part in entry.split(":")]
        if len(parts) not in (2, 3) or not all(parts[:2]):
            raise ConfigError(
                f"[store_glance] vo_project {entry!r}: expected VO:PROJECT_ID or "
                "VO:PROJECT_ID:CLOUD"
            )
        result.setdefault(parts[0], []).append((parts[1], parts[2] if len(parts) == 3 else ""))
    return result


def from_conf(conf: Any, seal_keys: list[Ed25519PublicKey]) -> GlanceStore:
    """The store as ``[store_glance]`` describes it; every option checked, nothing contacted."""
    from glance_sync import cloud

    section = conf.store_glance
    mapping = parse_vo_projects(section.vo_project)
    conn = cloud.connect(conf)
    project_id = section.project_id
    if not project_id:
        try:
            project_id = conn.current_project_id
        except Exception as exc:  # keystoneauth raises many kinds here
            raise ConfigError(f"[store_glance] project_id: not set, and {_short(exc)}") from None
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
    return GlanceStore(
        conn,
        project_id=project_id,
        seal_keys=seal_keys,
        visibility=section.visibility,
        vo_projects=vo_projects,
        disk_formats=formats,
        name_prefix=section.name_prefix,
        hypervisor_type=section.hypervisor_type,
    )
