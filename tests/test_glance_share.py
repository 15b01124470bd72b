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
import json
import logging
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import write_clouds_yaml
from glance_server import MEMBER_ROLES, SERVICE_ROLES
from test_glance_config import subscription, write_conf
from test_glance_store import VO, _url, members, project_images, small, visible_to
from test_sync_local import entry, publish

from glance_sync.cloud import connect_cloud
from glance_sync.stores.glance import GlanceStore

BIN = Path(sys.executable).parent


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


def test_an_image_whose_vo_changes_is_shared_with_the_new_vo_in_the_same_pass(
    glance_sync, site, pki, glance, tmp_path
):
    b, conn_b, _ = vo_cloud(glance, tmp_path)
    with_vo(glance_sync, {VO: [(b, conn_b)]})
    elsewhere = (dataclasses.replace(glance_sync.subs[0], vo="vo.elsewhere.org"),)
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    assert glance_sync.run(elsewhere).failures == []
    (image_id,) = project_images(glance, glance_sync.project)
    assert members(glance, glance_sync.project, image_id) == {}

    report = glance_sync.run(vo_subs(glance_sync))  # the site moves the subscription to VO
    assert report.failures == []
    assert report.done == ["refreshed img-a metadata", f"shared img-a with [{b}]"]
    assert members(glance, glance_sync.project, image_id) == {b: "accepted"}
    assert image_id in visible_to(glance, b)
    again = glance_sync.run(vo_subs(glance_sync))
    assert again.done == [] and again.failures == []


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


def test_a_vo_cloud_scoped_to_another_project_is_a_failure_that_says_so(
    glance_sync, site, pki, glance, tmp_path
):
    b = "vob" + uuid.uuid4().hex[:10]
    _, elsewhere, _ = vo_cloud(glance, tmp_path)  # credentials of some other project
    with_vo(glance_sync, {VO: [(b, elsewhere)]})
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    for _ in range(2):  # and again on the next pass
        report = glance_sync.run(vo_subs(glance_sync))
        (failure,) = report.failures
        assert f"image img-a: project {b} could not accept it" in failure
        assert f"is its cloud scoped to project {b}?" in failure
    (image_id,) = project_images(glance, glance_sync.project)
    assert members(glance, glance_sync.project, image_id) == {b: "pending"}


# --- 3. a VO project without a cloud: nobody can accept for it, so say so ----------------------


def test_the_service_project_cannot_accept_for_a_vo_project(glance_sync, site, pki, glance):
    """Glance's modify_member policy: the owner of the image may not accept for a member."""
    glance_sync.store = with_vo(glance_sync, {VO: [("novo" + uuid.uuid4().hex[:8], None)]})
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    assert glance_sync.run(vo_subs(glance_sync)).failures == []
    (image_id,) = project_images(glance, glance_sync.project)
    (project,) = members(glance, glance_sync.project, image_id)
    reply = glance.api(glance_sync.project).put(
        _url(glance, f"/images/{image_id}/members/{project}"), json={"status": "accepted"}
    )
    assert reply.status_code == 403
    assert members(glance, glance_sync.project, image_id) == {project: "pending"}


@pytest.fixture
def site_with_vos(tmp_path, ca_dir, glance, site, pki):
    """vmtrust.conf for the CLI: VO project P without a cloud, Q with one."""
    svc = "svc" + uuid.uuid4().hex[:12]
    p, q = ("p" + uuid.uuid4().hex[:12] for _ in range(2))
    clouds = write_clouds_yaml(
        tmp_path / "clouds.yaml", glance.url, {"s": (svc, SERVICE_ROLES), "q": (q, MEMBER_ROLES)}
    )
    conf = write_conf(
        tmp_path,
        ca_dir,
        f"cloud = s\nclouds_file = {clouds}\nproject_id = {svc}\n"
        f"vo_project = {VO}:{p}\nvo_project = {VO}:{q}:q\n",
        subscription(site, pki),
    )
    publish(site, pki, [entry("img-a", small("a"), site), entry("img-b", small("b"), site)], "1")
    return conf, svc, p, q


def _cli(*args) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN / args[0], *args[1:]], capture_output=True, text=True, timeout=300)


def test_without_a_cloud_the_sync_warns_at_start_and_status_says_what_to_run(site_with_vos, glance):
    conf, svc, p, q = site_with_vos
    sync = _cli("vmtrust-sync", "--config-file", conf)
    assert sync.returncode == 0, sync.stderr
    warnings = [line for line in sync.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, sync.stderr  # P only: Q has a cloud
    assert f"vo_project {VO}:{p} names no cloud" in warnings[0]
    assert "openstack image set --accept IMAGE_ID" in warnings[0]
    assert f"glance member-update IMAGE_ID {p} accepted" in warnings[0]
    ids = {i["vmtrust_image_identifier"]: i["id"] for i in project_images(glance, svc).values()}
    assert set(ids.values()) <= visible_to(glance, q)
    assert not set(ids.values()) & visible_to(glance, p)

    text = _cli("vmtrust", "--config-file", conf, "status")
    assert text.returncode == 0, text.stderr
    assert "Images VO projects do not see yet" in text.stdout
    for name, image_id in ids.items():
        (line,) = [row for row in text.stdout.splitlines() if row.startswith(name)]
        assert image_id in line and p in line and "pending" in line
        assert f"openstack image set --accept {image_id}" in line
        assert f"glance member-update {image_id} {p} accepted" in line
    assert q not in text.stdout

    status = _cli("vmtrust", "--config-file", conf, "status", "--json")
    (row,) = json.loads(status.stdout)
    assert {(w["identifier"], w["image_id"], w["project"], w["membership"], w["vo"])
            for w in row["vo_acceptance"]} == {
        (name, image_id, p, "pending", VO) for name, image_id in ids.items()
    }  # fmt: skip

    # The VO accepts one, and the site's service project removes the other's membership.
    _set_status(glance, p, ids["img-a"], "accepted")
    _remove_member(glance, svc, ids["img-b"], p)
    status = _cli("vmtrust", "--config-file", conf, "status", "--json")
    (row,) = json.loads(status.stdout)
    ((waiting),) = row["vo_acceptance"]
    assert (waiting["identifier"], waiting["membership"]) == ("img-b", "none")
    assert f"openstack image add project {ids['img-b']} {p}" in waiting["fix"]
    assert ids["img-a"] in visible_to(glance, p)


def test_status_without_vo_projects_does_not_ask_glance(tmp_path, ca_dir, site, pki):
    clouds = write_clouds_yaml(tmp_path / "clouds.yaml", "http://127.0.0.1:9", {"s": ("p", "r")})
    conf = write_conf(tmp_path, ca_dir, f"cloud = s\nclouds_file = {clouds}\nproject_id = p\n",
                      subscription(site, pki))  # fmt: skip
    status = _cli("vmtrust", "--config-file", conf, "status", "--json")
    assert status.returncode == 0 and status.stderr == ""
    (row,) = json.loads(status.stdout)
    assert row["vo_acceptance"] == []


def test_status_says_in_one_line_when_glance_cannot_be_asked(tmp_path, ca_dir, site, pki):
    clouds = write_clouds_yaml(tmp_path / "clouds.yaml", "http://127.0.0.1:9", {"s": ("p", "r")})
    conf = write_conf(
        tmp_path,
        ca_dir,
        f"cloud = s\nclouds_file = {clouds}\nproject_id = p\nvo_project = {VO}:x\n",
        subscription(site, pki),
    )
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    status = _cli("vmtrust", "--config-file", conf, "status")
    assert status.returncode == 0
    assert "SUBSCRIPTION" in status.stdout and "example" in status.stdout
    (line,) = status.stderr.strip().splitlines()
    assert line.startswith("vmtrust status: VO memberships not checked: glance GET /images")
    assert "cannot connect" in line and "Traceback" not in status.stderr


@pytest.mark.parametrize(
    ("visibility", "words"),
    [("private", "vo_project is ignored"), ("community", "publishes none of them")],
)
def test_visibility_that_hides_images_from_vo_projects_is_said_at_start(
    tmp_path, ca_dir, glance, site, pki, visibility, words
):
    svc = "svc" + uuid.uuid4().hex[:12]
    clouds = write_clouds_yaml(tmp_path / "clouds.yaml", glance.url, {"s": (svc, SERVICE_ROLES)})
    conf = write_conf(
        tmp_path,
        ca_dir,
        f"cloud = s\nclouds_file = {clouds}\nproject_id = {svc}\nvisibility = {visibility}\n"
        f"vo_project = {VO}:someproject\n",
        subscription(site, pki),
    )
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    sync = _cli("vmtrust-sync", "--config-file", conf)
    assert sync.returncode == 0, sync.stderr
    (warning,) = [line for line in sync.stderr.splitlines() if "WARNING" in line]
    assert words in warning and "names no cloud" not in warning
