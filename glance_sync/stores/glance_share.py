"""Sharing trusted images with the projects of their VO, and seeing that those projects see them.

A shared Glance image shows in a project's *default* image list — the list nova,
Horizon and EGI's publisher cloud-info-provider read — only once that project
has **accepted** its membership; until then the project can boot it by id but
nobody there finds it, and the site publishes nothing for the VO.  Glance's
policy ``modify_member`` (``role:admin or (role:member and
project_id:%(member_id)s)``) lets only the member project itself, or a cloud
admin, change that status: the service project that owns the images cannot.
So a ``vo_project = VO:PROJECT:CLOUD`` entry names credentials scoped to
PROJECT with which the sync accepts; an entry without CLOUD leaves the
acceptance to the VO, and the sync says so (:func:`acceptance_notes`, at start
and in ``vmtrust status``) with the command to run.

What the sync compares is what Glance reports, not only what vmtrust wrote:
for each VO project it can act as, one listing of the images that project has
accepted (``visibility=shared&member_status=accepted``, one request per project
and page, whatever the number of images), on every full reconcile and in every
pass that stored an image (docs/glance.md: incremental listings).  A
membership that is pending, rejected or gone — an acceptance that failed, or a
change made behind vmtrust's back — is repaired then.  Projects without
a cloud cannot be listed as; their memberships are checked per image, on
demand, by ``vmtrust status`` (:func:`waiting_memberships`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from glance_sync.plan import Held
from glance_sync.stores.glance_api import set_ops
from vmtrust import glanceprops as gp
from vmtrust.errors import ConfigError, GlanceError, summarise

if TYPE_CHECKING:
    from glance_sync.stores.glance import GlanceStore

__all__ = [
    "Waiting",
    "accept",
    "accept_command",
    "acceptance_notes",
    "accepted_by",
    "converge",
    "parse_vo_projects",
    "share",
    "waiting_memberships",
]

LOG = logging.getLogger("vmtrust.glance")


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


def accept_command(image_id: str, project: str) -> str:
    """What the VO runs, with credentials of ``project``, to accept ``image_id``."""
    return (
        f"openstack image set --accept {image_id} (or: glance member-update {image_id} "
        f"{project} accepted)"
    )


def acceptance_notes(mapping: dict[str, list[tuple[str, str]]], visibility: str) -> list[str]:
    """Why VO projects would not see their images: one line per cause, with the remedy."""
    if mapping and visibility == "private":
        return ["[store_glance] vo_project is ignored: visibility = private shares no image"]
    if mapping and visibility == "community":
        return [
            "[store_glance] visibility = community: images are in no project's default image "
            "list, so cloud-info-provider publishes none of them (vo_project needs shared)"
        ]
    if visibility != "shared":
        return []
    return [
        f"[store_glance] vo_project {vo}:{project} names no cloud: Glance lets only project "
        f"{project} (or a cloud admin) accept the images shared with it, so they stay out of "
        f"its image list, and cloud-info-provider publishes none of them for VO {vo}, until "
        f"the VO accepts each one: with credentials of project {project}, 'openstack image set "
        f"--accept IMAGE_ID' (or 'glance member-update IMAGE_ID {project} accepted'); "
        f"'vmtrust status' lists the images waiting. Or add a clouds.yaml entry scoped to "
        f"{project}: vo_project = {vo}:{project}:CLOUD"
        for vo, entries in mapping.items()
        for project, cloud in entries
        if not cloud
    ]


# --- what the sync does on every pass ---------------------------------------------------


def share(store: GlanceStore, image_id: str, vo: str) -> str:
    """Make the members of ``image_id`` exactly the VO's projects; return them as text."""
    wanted = {project for project, _ in store.projects(vo)}
    if store.visibility == "shared":
        reply = store.call("GET", f"/images/{image_id}/members", (200,))
        current = {m["member_id"] for m in reply.json().get("members", [])}
        for project in sorted(wanted - current):
            store.call("POST", f"/images/{image_id}/members", (200, 409),
                       json={"member": project})  # fmt: skip
        for project in sorted(current - wanted):
            store.call("DELETE", f"/images/{image_id}/members/{project}", (204, 404))
    return ",".join(sorted(wanted))


def accept(store: GlanceStore, image_id: str, project: str, conn: Any) -> None:
    """Accept the membership of ``project`` in ``image_id``, as that project."""
    try:
        store.call("PUT", f"/images/{image_id}/members/{project}", (200,), conn,
                   json={"status": "accepted"})  # fmt: skip
    except GlanceError as exc:
        # Glance hides a shared image from any project but its members: a 404 (or 403)
        # here means the cloud is not scoped to this project.
        hint = f"; is its cloud scoped to project {project}?" if exc.status in (403, 404) else ""
        raise GlanceError(f"project {project} could not accept it: {exc}{hint}") from None


def accepted_by(
    store: GlanceStore, projects: Iterable[tuple[str, Any]]
) -> tuple[dict[str, set[str]], list[str]]:
    """For each (project, connection): the managed images it has accepted, as Glance says.

    One listing per project (and page of 1,000).  A project that cannot be listed
    is left out of the result and named in the problems.
    """
    accepted: dict[str, set[str]] = {}
    problems: list[str] = []
    for project, conn in projects:
        params = {"visibility": "shared", "member_status": "accepted",
                  "owner": store.project_id, gp.MANAGED: "true"}  # fmt: skip
        try:
            accepted[project] = {image["id"] for image in store.pages(params, conn)}
        except GlanceError as exc:
            problems.append(f"project {project}: cannot list the images it accepted: {exc}")
    return accepted, problems


def converge(store: GlanceStore, held: list[Held]) -> list[str]:
    """Visibility, members and acceptance of every trusted image, as configured.

    Raises one error naming what could not be done, after doing everything else.
    """
    items = {h.store_id: h for h in held if not h.retired and h.seal_ok and h.record}
    items.update(store.fresh)
    listed = {
        project: conn
        for item in items.values()
        for project, conn in store.projects(item.record.vo)  # type: ignore[union-attr]  # has one
        if conn is not None
    }
    # What each VO project accepted is a listing of all its images, and a membership
    # change does not touch the image's updated_at: asked on full reconciles and in
    # passes that stored images, like the deletions an incremental listing misses.
    if not (store.full_listing or store.fresh):
        listed = {}
    accepted, problems = accepted_by(store, listed.items())
    changed: list[str] = []
    for item in items.values():
        try:
            changed += _converge_one(store, item, accepted)
        except GlanceError as exc:
            problems.append(f"image {item.identifier}: {exc}")
    if problems:
        for line in changed:  # the pass's report only gets the error
            LOG.info("%s", line)
        for line in problems:
            LOG.warning("%s", line)
        raise GlanceError(summarise(problems))
    return changed


def _converge_one(store: GlanceStore, item: Held, accepted: dict[str, set[str]]) -> list[str]:
    image_id, vo = item.store_id, item.record.vo  # type: ignore[union-attr]  # sealed: has one
    image = store.image(image_id)
    projects = store.projects(vo)
    wanted = ",".join(sorted(project for project, _ in projects))
    visibility = image.get("visibility", store.visibility)
    resharing = image.get(gp.SHARED_WITH, "") != wanted or visibility != store.visibility
    # Projects Glance lists as not having accepted (unlisted projects: unknown, left be).
    waiting = [
        (project, conn)
        for project, conn in projects
        if conn is not None and project in accepted and image_id not in accepted[project]
    ]
    if not resharing and not waiting:
        return []
    lines = []
    if resharing:
        if visibility != store.visibility:
            # Before sharing (only shared images take members); leaving "shared"
            # is what takes the image away from the members it had.
            image = store.patch(image_id, set_ops(image, {"visibility": store.visibility}))
        shared = share(store, image_id, vo)
        store.seen[image_id] = store.patch(image_id, set_ops(image, {gp.SHARED_WITH: shared}))
        lines.append(f"shared {item.identifier} with [{shared}]")
    else:
        share(store, image_id, vo)  # puts back a membership removed behind vmtrust's back
    for project, conn in waiting:
        accept(store, image_id, project, conn)
        if not resharing:
            lines.append(
                f"accepted {item.identifier} for project {project} "
                "(Glance did not list it as accepted there)"
            )
    return lines


# --- what ``vmtrust status`` shows --------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """A trusted image a VO project cannot see in its image list yet."""

    subscription: str
    identifier: str
    image_id: str
    vo: str
    project: str
    membership: str  #: pending, rejected, or "none" (removed)
    fix: str  #: who does what

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def waiting_memberships(store: GlanceStore) -> list[Waiting]:
    """Every (trusted image, VO project) whose membership Glance does not list as accepted.

    One request per shared image: run on demand (``vmtrust status``), not per pass.
    """
    result = []
    for item in store.held():
        if item.retired or not item.seal_ok or item.record is None:
            continue
        projects = store.projects(item.record.vo)
        if not projects:
            continue
        reply = store.call("GET", f"/images/{item.store_id}/members", (200,))
        status = {m["member_id"]: m["status"] for m in reply.json().get("members", [])}
        for project, conn in projects:
            membership = status.get(project, "none")
            if membership == "accepted":
                continue
            if conn is not None:
                fix = "vmtrust-sync accepts it on its next pass (the VO project has a cloud)"
            elif membership == "none":
                fix = (
                    f"the site shares it again: openstack image add project {item.store_id} "
                    f"{project}; then the VO runs: {accept_command(item.store_id, project)}"
                )
            else:
                fix = f"the VO runs, as project {project}: {accept_command(item.store_id, project)}"
            result.append(
                Waiting(
                    item.record.subscription,
                    item.record.image_identifier,
                    item.store_id,
                    item.record.vo,
                    project,
                    membership,
                    fix,
                )
            )
    return result
