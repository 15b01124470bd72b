"""VO projects see every image they were given: memberships accepted, and kept so.

Against the session's real Glance: images are shared with the projects of
their VO; a project with a cloud (credentials scoped to it) has its membership
accepted by the sync, and the sync checks on every pass what Glance reports —
the images each such project has accepted — so a membership that is pending,
rejected or gone is repaired.  A project without a cloud cannot be accepted for
(Glance's ``modify_member`` policy): the sync says so at start, and ``vmtrust
status`` lists the images that wait, with the command the VO runs.  Every check
looks at Glance directly, as the service project or as the VO project.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import write_clouds_yaml
from glance_server import MEMBER_ROLES
from test_glance_store import VO, _url, members, project_images, small, visible_to
from test_sync_local import entry, publish

from glance_sync.cloud import connect_cloud
from glance_sync.stores.glance import GlanceStore


def vo_cloud(glance, tmp_path: Path, name: str = "vo") -> tuple[str, object, Path]:
    """A fresh VO project and a fresh connection scoped to it (no proxy made yet)."""
    project = "vo" + uuid.uuid4().hex[:12]
    clouds = write_clouds_yaml(
        tmp_path / f"{name}-{project}.yaml", glance.url, {name: (project, MEMBER_ROLES)}
    )
    return project, connect_cloud(name, str(clouds)), clouds


def with_vo(service, vo_projects: dict, **options) -> GlanceStore:
    old = service.store
    service.store = GlanceStore(
        old.conn,
        project_id=service.project,
        seal_keys=old.seal_keys,
        vo_projects=vo_projects,
        **options,
    )
    return service.store


def vo_subs(service):
    return (dataclasses.replace(service.subs[0], vo=VO),)


# --- 1. connections used from the download threads -----------------------------------------


def test_first_use_of_a_connection_from_many_threads_at_once(glance_sync, glance, tmp_path):
    """openstacksdk makes a connection's image proxy on first use, unlocked: the store
    makes it under a lock, so threads that all start with a fresh connection succeed."""
    store = glance_sync.store
    for _ in range(3):
        _, conn, _ = vo_cloud(glance, tmp_path)
        start = threading.Barrier(6)

        def first_use(_: int, conn=conn, start=start) -> int:
            start.wait()
            return store.call("GET", "/images", (200,), conn).status_code

        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(first_use, range(6))) == [200] * 6


def test_parallel_uploads_leave_every_membership_accepted_every_time(
    glance_sync, site, pki, glance, tmp_path, caplog
):
    """Issue 19: with parallel downloads, one of two images stayed pending for the VO."""
    glance_sync.s.parallel_downloads = 4
    caplog.set_level(logging.WARNING, logger="vmtrust.glance")
    for run in range(3):
        # A new VO project and connection each run: every run makes its first look-up
        # from the download threads, as the first pass of a new sync does.
        b, conn_b, _ = vo_cloud(glance, tmp_path, "b")
        c, conn_c, _ = vo_cloud(glance, tmp_path, "c")
        with_vo(glance_sync, {VO: [(b, conn_b), (c, conn_c)]})
        images = [entry(f"img-{run}-{i}", small(f"{run}{i}"), site) for i in range(4)]
        publish(site, pki, images, str(run + 1))
        report = glance_sync.run(vo_subs(glance_sync))
        assert report.failures == [], report.failures
        assert len([line for line in report.done if line.startswith("stored")]) == 4
        trusted = [
            image_id
            for image_id, image in project_images(glance, glance_sync.project).items()
            if image["vmtrust_state"] == "trusted"
        ]
        assert len(trusted) == 4
        for image_id in trusted:
            assert members(glance, glance_sync.project, image_id) == {
                b: "accepted",
                c: "accepted",
            }
        assert set(trusted) <= visible_to(glance, b) and set(trusted) <= visible_to(glance, c)
        # Accepted from the threads themselves, not repaired afterwards.
        assert "could not accept" not in caplog.text
        assert not any(line.startswith("accepted") for line in report.done)
        again = glance_sync.run(vo_subs(glance_sync))
        assert again.done == [] and again.failures == []


# --- 2. converge compares what Glance reports -------------------------------------------------


def _set_status(glance, project: str, image_id: str, status: str) -> None:
    reply = glance.api(project, MEMBER_ROLES).put(
        _url(glance, f"/images/{image_id}/members/{project}"), json={"status": status}
    )
    assert reply.status_code == 200, reply.text


def _remove_member(glance, owner: str, image_id: str, project: str) -> None:
    reply = glance.api(owner).delete(_url(glance, f"/images/{image_id}/members/{project}"))
    assert reply.status_code == 204, reply.text


@pytest.mark.parametrize("change", ["pending", "rejected", "removed"])
def test_membership_changed_behind_vmtrusts_back_is_repaired_by_the_next_pass(
    glance_sync, site, pki, glance, tmp_path, change
):
    b, conn_b, _ = vo_cloud(glance, tmp_path)
    with_vo(glance_sync, {VO: [(b, conn_b)]})
    publish(site, pki, [entry("img-a", small("a"), site), entry("img-b", small("b"), site)], "1")
    assert glance_sync.run(vo_subs(glance_sync)).failures == []
    by_name = {i["vmtrust_image_identifier"]: i["id"] for i in project_images(
        glance, glance_sync.project).values()}  # fmt: skip
    image_id = by_name["img-a"]
    if change == "removed":
        _remove_member(glance, glance_sync.project, image_id, b)
    else:
        _set_status(glance, b, image_id, change)
    assert image_id not in visible_to(glance, b)
    # vmtrust's own property still says it is shared: only Glance's answer shows it is not.
    assert project_images(glance, glance_sync.project)[image_id]["vmtrust_shared_with"] == b

    report = glance_sync.run(vo_subs(glance_sync))
    assert report.failures == []
    assert report.done == [
        f"accepted img-a for project {b} (Glance did not list it as accepted there)"
    ]
    assert members(glance, glance_sync.project, image_id) == {b: "accepted"}
    assert members(glance, glance_sync.project, by_name["img-b"]) == {b: "accepted"}
    assert set(by_name.values()) <= visible_to(glance, b)
    again = glance_sync.run(vo_subs(glance_sync))
    assert again.done == [] and again.failures == []


def test_no_op_pass_costs_one_listing_more_per_vo_project_with_a_cloud(
    glance_sync, site, pki, glance, tmp_path
):
    publish(site, pki, [entry(f"img-{i}", small(str(i)), site) for i in range(5)], "1")
    assert glance_sync.run(glance_sync.subs).failures == []

    def no_op_cost(subs) -> int:
        calls = glance_sync.store.calls
        report = glance_sync.run(subs)
        assert report.done == [] and report.failures == []
        return glance_sync.store.calls - calls

    plain = no_op_cost(glance_sync.subs)
    assert plain == 2  # managed images, visible and hidden: one listing each
    b, conn_b, _ = vo_cloud(glance, tmp_path, "b")
    c, conn_c, _ = vo_cloud(glance, tmp_path, "c")
    with_vo(glance_sync, {VO: [(b, conn_b), (c, conn_c), ("nocloud" + b, None)]})
    sharing = glance_sync.run(vo_subs(glance_sync))
    assert sharing.failures == [] and len(sharing.done) == 5
    assert no_op_cost(vo_subs(glance_sync)) == plain + 2  # not one per image


def test_a_vo_cloud_that_cannot_be_reached_is_a_failure_and_repaired_once_back(
    glance_sync, site, pki, glance, tmp_path
):
    b, conn_b, _ = vo_cloud(glance, tmp_path)
    broken = write_clouds_yaml(tmp_path / "broken.yaml", "http://127.0.0.1:9", {
        "vo": (b, MEMBER_ROLES)})  # fmt: skip
    with_vo(glance_sync, {VO: [(b, connect_cloud("vo", str(broken)))]})
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    report = glance_sync.run(vo_subs(glance_sync))
    assert report.done == ["stored img-a 1 (Example worker node)"]
    assert len(report.failures) == 1, report.failures
    assert f"project {b}: cannot list the images it accepted" in report.failures[0]
    assert "cannot connect" in report.failures[0]
    (image_id,) = project_images(glance, glance_sync.project)
    assert members(glance, glance_sync.project, image_id) == {b: "pending"}

    with_vo(glance_sync, {VO: [(b, conn_b)]})
    again = glance_sync.run(vo_subs(glance_sync))
    assert again.failures == []
    assert again.done == [
        f"accepted img-a for project {b} (Glance did not list it as accepted there)"
    ]
    assert image_id in visible_to(glance, b)
