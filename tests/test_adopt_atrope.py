"""Switching a site from atrope: atrope itself fills the real Glance, vmtrust adopts.

Each test runs atrope 2.0.0 (``tests/atrope_run.py``) against the session's real
Glance 33 in a fresh project, then ``SyncService.run(..., adoption=...)`` — what
``vmtrust-sync --adopt atrope`` runs — and looks at Glance directly (plain REST
calls, ``tests/test_glance_store.py``'s helpers), judging every image with the
filter's rule.  Covered: ids kept where Glance holds the list's bytes, with seal,
``vmtrust_*`` and EGI properties, owner, sharing and acceptance as vmtrust makes
them; the copies atrope changed (a QCOW2 it labelled raw, an OVA it unpacked) or
that the list replaced since are uploaded again and atrope's copy retired once
the new one is active; images of lists and entries the site does not approve are
listed and left alone; the dry run changes nothing; a second pass changes
nothing; the nova filter's decision; atrope's images in another project are
refused with the fix, which works; public images (a source without token) become
shared with the VO; bytes vmtrust refuses (a VMDK naming a parent, which Glance's
own upload check lets through) stay untrusted at read-back, and such a failure
never retires the version vmtrust already holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid

import pytest
from atrope_run import Source, appdb_entry, run_atrope
from conftest import list_document
from glance_server import ADMIN_ROLES, token
from hostile_images import made, needs_qemu_img, ova, vmdk_with_parent
from keystoneauth1 import adapter, session, token_endpoint
from openstack_standin import Cloud, StandIn
from test_glance_share import vo_cloud, with_vo
from test_glance_store import VO, judge, members, patch_image, project_images, visible_to

from glance_sync.adopt import Adoption
from glance_sync.foreign import Atrope
from nova_filter.decision import ImageTrust, glance_fetch
from vmtrust import glanceprops as gp
from vmtrust import imagelist, smime

SITE_LIST = "65ef8feb-86d4-42ea-9960-f79bcc5a11b4"
OTHER_LIST = "5d1c0a7e-0f3b-4b55-8f0e-1a2b3c4d5e6f"
RAW = b"worker node raw disk " * 20_000


@pytest.fixture
def keystone(glance):
    with StandIn(Cloud(glance.url, {"atrope": "secret"})) as cloud:
        yield cloud


def sign_list(site, pki, path: str, identifier: str, images: list[dict], version: str) -> str:
    document = list_document(pki.endorser, version=version, images=images, identifier=identifier)
    document["hv:imagelist"]["hv:uri"] = site.url(path)
    site.files[path] = smime.sign(imagelist.dumps(document), pki.endorser.cert, pki.endorser.key)
    return site.url(path)


def atrope_pass(tmp_path, keystone, project, ca_dir, sources: dict[str, Source]) -> None:
    """atrope's own sync into ``project`` (its cron job's command)."""
    done = run_atrope(tmp_path / f"atrope-{uuid.uuid4().hex[:6]}", keystone.auth_url, project,
                      ca_dir, sources)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert " ERROR " not in done.stderr, done.stderr[-3000:]


def source(url: str, pki, project: str = "", **kw) -> Source:
    return Source(url, pki.endorser.dn, pki.endorser.ca_dn, project, **kw)


def adoption(service, tag: str = "atrope") -> Adoption:
    return Adoption(service.store, Atrope(tag=tag), service.s.seal_key, service.s.retire_mode)


def run_adoption(service, subs, *, dry_run: bool = False):
    lines: list[str] = []
    report = service.run(subs, dry_run=dry_run, out=lines.append, adoption=adoption(service))
    return report, lines


def tagged(glance, project: str) -> dict[str, dict]:
    """appdb_id → the image atrope made (tag ``atrope``) that ``project`` sees as owner."""
    return {
        image["appdb_id"]: image
        for image in project_images(glance, project).values()
        if "atrope" in image.get("tags", [])
    }


def filter_trust(glance, service) -> ImageTrust:
    """The nova filter's decision, with credentials of its own (an admin token)."""
    auth = token_endpoint.Token(glance.url, token("scheduler", ADMIN_ROLES))
    fetch = glance_fetch(adapter.Adapter(session.Session(auth=auth), endpoint_override=glance.url))
    return ImageTrust(fetch, [service.s.seal_key.public_key()], [service.project])


def subscription(service, url: str, *identifiers: str):
    return (
        dataclasses.replace(
            service.subs[0], url=url, vo=VO, approve_all=not identifiers,
            identifiers=frozenset(identifiers),
        ),
    )  # fmt: skip


# --- the site's images, all kinds at once ---------------------------------------------------


@needs_qemu_img
def test_atrope_images_are_adopted_in_place_or_uploaded_again(
    glance_sync, glance, site, pki, ca_dir, keystone, tmp_path
):
    service, project = glance_sync, glance_sync.project
    vo_project, vo_conn, _ = vo_cloud(glance, tmp_path)
    with_vo(service, {VO: [(vo_project, vo_conn)]})
    qcow2 = made(tmp_path, "wn.qcow2", "qcow2", "1M")
    box = ova([("wn-disk1.vmdk", made(tmp_path, "wn.vmdk", "vmdk", "1M", "-o",
                                      "subformat=streamOptimized"))])  # fmt: skip
    url = sign_list(site, pki, "/site.list", SITE_LIST, [
        appdb_entry("img-raw", RAW, site),
        appdb_entry("img-qcow2", qcow2, site, fmt="QCOW2"),  # AppDB's spelling
        appdb_entry("img-ova", box, site, fmt="OVA"),
        appdb_entry("img-unapproved", b"n" * 5000, site),
    ], "1")  # fmt: skip
    other = sign_list(site, pki, "/other.list", OTHER_LIST,
                      [appdb_entry("img-other", b"o" * 7000, site)], "4")  # fmt: skip
    atrope_pass(tmp_path, keystone, project, ca_dir, {
        "egi-site": source(url, pki, vo_project, prefix="EGI "),
        "not-in-vmtrust": source(other, pki, vo_project),
    })  # fmt: skip

    before = tagged(glance, project)
    assert set(before) == {"img-raw", "img-qcow2", "img-ova", "img-unapproved", "img-other"}
    # what atrope 2.0.0 did: "QCOW2" is not a disk format it knows, so it says raw;
    # of an OVA it uploads the disk inside, so Glance's hash is not the list's
    assert before["img-qcow2"]["disk_format"] == "raw"
    assert before["img-qcow2"]["os_hash_value"] == hashlib.sha512(qcow2).hexdigest()
    assert before["img-ova"]["disk_format"] == "vmdk"
    assert before["img-ova"]["os_hash_value"] != hashlib.sha512(box).hexdigest()
    raw_id = before["img-raw"]["id"]
    assert members(glance, project, raw_id) == {vo_project: "accepted"}
    subs = subscription(service, url, "img-raw", "img-qcow2", "img-ova")
    untouched = project_images(glance, project)

    # 1. the dry run says what will happen and changes nothing
    report, lines = run_adoption(service, subs, dry_run=True)
    assert report.failures == []
    assert project_images(glance, project) == untouched
    text = "\n".join(lines)
    assert f"adopt    img-raw 1 (Example worker node): atrope image {raw_id}" in text
    # what the users of the image will notice, said before it happens
    assert (
        "keeps its id; renamed 'EGI Example worker node' -> 'Example worker node'; "
        f"members: {vo_project}\n" in text
    )
    assert "re-upload img-qcow2: " in text
    assert "Glance labels it raw, the list declares qcow2" in text
    assert "re-upload img-ova: " in text and "atrope converted it" in text
    for name in ("img-unapproved", "img-other"):
        image_id = before[name]["id"]
        assert f"leave    atrope image {image_id} " in text
        assert f"openstack image delete {image_id}" in text
    assert "create  img-qcow2 1" in text and "create  img-ova 1" in text
    assert "create  img-raw" not in text

    # 2. adoption
    report, lines = run_adoption(service, subs)
    assert report.failures == [], report.failures
    after = project_images(glance, project)
    trusted = {}
    for image in after.values():
        verdict = judge(service, image)
        if verdict.trusted:
            trusted[verdict.record.image_identifier] = image
    assert set(trusted) == {"img-raw", "img-qcow2", "img-ova"}
    raw = trusted["img-raw"]
    assert raw["id"] == raw_id, "adopted in place: the id users reference is kept"
    record = judge(service, raw).record
    assert record.sha512 == record.source_sha512 == hashlib.sha512(RAW).hexdigest()
    assert (record.disk_format, record.subscription, record.vo) == ("raw", "example", VO)
    assert raw["owner"] == project and raw["visibility"] == "shared"
    assert raw[gp.SHARED_WITH] == vo_project
    assert members(glance, project, raw_id) == {vo_project: "accepted"}
    assert raw_id in visible_to(glance, vo_project)
    # vmtrust's metadata, atrope's marks gone: atrope no longer finds it
    assert raw["tags"] == [] and not {"sha512", "vo"} & set(raw)
    assert raw["name"] == "Example worker node"
    assert raw["appdb_id"] == "img-raw" and raw["image_list"] == "example"
    assert raw["image_hash"] == "sha512:" + hashlib.sha512(RAW).hexdigest()
    assert raw["vmcatcher_event_ad_mpuri"].endswith("/img-raw:1/")
    assert raw["os_distro"] == "almalinux" and raw["min_ram"] == 2048
    assert trusted["img-qcow2"]["id"] != before["img-qcow2"]["id"]
    assert trusted["img-qcow2"]["disk_format"] == "qcow2"
    assert trusted["img-ova"]["disk_format"] == "vmdk"
    # atrope's copies of those two: retired only now that the new ones are active
    for name in ("img-qcow2", "img-ova"):
        copy = after[before[name]["id"]]
        assert copy["status"] == "deactivated" and copy[gp.STATE] == "retired"
        assert copy[gp.MANAGED] == "true" and copy["tags"] == []
    for name in ("img-unapproved", "img-other"):
        assert after[before[name]["id"]] == before[name], f"{name} must be left alone"
    assert {
        f"adopted img-raw 1: atrope image {raw_id} kept its id",
        f"retired atrope image {before['img-ova']['id']} (img-ova): "
        "Glance holds other bytes than the list's file (atrope converted it)",
        f"retired atrope image {before['img-qcow2']['id']} (img-qcow2): "
        "Glance labels it raw, the list declares qcow2 (hv:format): the label cannot "
        "change on an active image",
    } <= set(report.done)

    # 3. a normal pass afterwards changes nothing; the filter takes the adopted image
    again = service.run(subs)
    assert (again.done, again.failures) == ([], [])
    assert project_images(glance, project) == after
    trust = filter_trust(glance, service)
    decision = trust.decide(raw_id)
    assert decision.trusted and decision.vo == VO
    assert not trust.decide(before["img-qcow2"]["id"]).trusted
    assert not trust.decide(before["img-unapproved"]["id"]).trusted


# --- atrope's images in another project -------------------------------------------------------


def test_images_of_another_project_are_refused_with_the_fix_which_works(
    glance_sync, glance, site, pki, ca_dir, keystone, tmp_path
):
    """atrope ran as its own project and shared its images with the sync's project: the
    sync can neither seal nor retire them, and a copy would show two images.  Refused,
    nothing uploaded; once an admin moves the image (the fix printed), it is adopted."""
    service, project = glance_sync, glance_sync.project
    atrope_project = "atr" + uuid.uuid4().hex[:12]
    url = sign_list(site, pki, "/site.list", SITE_LIST, [appdb_entry("img-raw", RAW, site)], "1")
    atrope_pass(tmp_path, keystone, atrope_project, ca_dir,
                {"egi-site": source(url, pki, project)})  # fmt: skip
    (image,) = tagged(glance, atrope_project).values()
    assert image["owner"] == atrope_project and image["id"] in visible_to(glance, project)
    subs = subscription(service, url)

    report, lines = run_adoption(service, subs)
    (failure,) = report.failures
    assert failure.startswith(f"image img-raw: atrope image {image['id']} ")
    assert f"is owned by project {atrope_project}, not by the sync's project {project}" in failure
    assert f"openstack image set --project {project} {image['id']}" in failure
    assert "\n" not in failure
    assert project_images(glance, project) == {}, "no silent copy"
    assert tagged(glance, atrope_project) == {"img-raw": image}
    assert any(line.startswith("refuse   img-raw: ") for line in lines)

    # the fix: a cloud admin gives the image to the sync's project; its id stays
    moved = patch_image(
        glance,
        "admin",
        image["id"],
        [{"op": "replace", "path": "/owner", "value": project}],
        ADMIN_ROLES,
    )
    assert moved.status_code == 200, moved.text
    report, _ = run_adoption(service, subs)
    assert report.failures == [], report.failures
    adopted = project_images(glance, project)[image["id"]]
    assert judge(service, adopted).trusted
    assert members(glance, project, image["id"]) == {}  # vmtrust's sharing: no VO project here


# --- the list moved on, atrope's copy is not active, bytes vmtrust refuses ----------------------


@needs_qemu_img
def test_copies_of_older_versions_or_not_active_are_replaced_and_refused_bytes_stay_untrusted(
    glance_sync, glance, site, pki, ca_dir, keystone, tmp_path
):
    service, project = glance_sync, glance_sync.project
    # a VMDK naming a parent disk: Glance's own upload check lets it through, qemu-img
    # would open the parent as a backing file (docs/images.md)
    evil = vmdk_with_parent(tmp_path)
    old = [
        appdb_entry("img-old", b"version one " * 4000, site),
        appdb_entry("img-down", b"deactivated " * 4000, site),
        appdb_entry("img-evil", evil, site, fmt="vmdk"),
    ]
    url = sign_list(site, pki, "/site.list", SITE_LIST, old, "1")
    atrope_pass(tmp_path, keystone, project, ca_dir, {"egi-site": source(url, pki)})
    before = tagged(glance, project)
    reply = glance.api(project).post(
        f"{glance.url}/v2/images/{before['img-down']['id']}/actions/deactivate"
    )
    assert reply.status_code == 204
    new = appdb_entry("img-old", b"version two " * 4000, site, version="2")
    url = sign_list(site, pki, "/site.list", SITE_LIST, [new, *old[1:]], "2")

    report, lines = run_adoption(service, subscription(service, url))
    text = "\n".join(lines)
    assert "re-upload img-old: " in text and "than the list has now (version 2, sha512 " in text
    assert "re-upload img-down: " in text and "its Glance status is deactivated" in text
    assert "adopt    img-evil 1" in text  # Glance's hash is the list's: read back to decide
    (failure,) = report.failures
    assert failure == (
        "adopt img-evil: image img-evil: VMDK names a parent disk "
        "(parentFileNameHint/parentCID); refused"
    )
    after = project_images(glance, project)
    versions = {
        verdict.record.image_identifier: verdict.record.image_version
        for verdict in map(lambda image: judge(service, image), after.values())
        if verdict.trusted
    }
    assert versions == {"img-old": "2", "img-down": "1"}
    assert after[before["img-old"]["id"]][gp.STATE] == "retired"
    assert after[before["img-down"]["id"]][gp.STATE] == "retired"
    assert after[before["img-evil"]["id"]] == before["img-evil"], "refused: left as it was"
    assert len(after) == 5, "no copy of img-evil either"


@needs_qemu_img
def test_a_failed_adoption_never_retires_the_version_vmtrust_holds(
    glance_sync, glance, site, pki, ca_dir, keystone, tmp_path
):
    """A site that ran both: vmtrust holds version 1; atrope uploaded version 2, which
    vmtrust refuses when it reads it back.  vmtrust's version 1 stays trusted."""
    service, project = glance_sync, glance_sync.project
    url = sign_list(site, pki, "/site.list", SITE_LIST, [appdb_entry("wn", RAW, site)], "1")
    subs = subscription(service, url)
    assert service.run(subs).failures == []
    (mine,) = project_images(glance, project)
    evil = appdb_entry("wn", vmdk_with_parent(tmp_path), site, fmt="vmdk", version="2")
    url = sign_list(site, pki, "/site.list", SITE_LIST, [evil], "2")
    atrope_pass(tmp_path, keystone, project, ca_dir, {"egi-site": source(url, pki)})

    report, lines = run_adoption(service, subs)
    assert any(line.startswith("adopt    wn 2 ") for line in lines)
    assert len(report.failures) == 2, report.failures  # the read-back, then the download
    assert all("VMDK names a parent disk" in line for line in report.failures)
    image = project_images(glance, project)[mine]
    verdict = judge(service, image)
    assert verdict.trusted and verdict.record.image_version == "1"


def test_public_images_of_a_list_without_token_become_shared_with_the_vo(
    glance_sync, glance, site, pki, ca_dir, tmp_path
):
    """atrope makes the images of a source without token public (its admin credentials
    allow it): adoption gives them vmtrust's visibility and members, as the sync's
    project, without an admin role — and says so in the plan first."""
    service, project = glance_sync, glance_sync.project
    vo_project, vo_conn, _ = vo_cloud(glance, tmp_path)
    with_vo(service, {VO: [(vo_project, vo_conn)]})
    url = sign_list(site, pki, "/site.list", SITE_LIST, [appdb_entry("wn", RAW, site)], "1")
    cloud = Cloud(glance.url, {"atrope": "secret"}, roles={"atrope": ADMIN_ROLES})
    with StandIn(cloud) as keystone:
        atrope_pass(tmp_path, keystone, project, ca_dir, {"egi": source(url, pki, token="")})
    (image,) = tagged(glance, project).values()
    assert image["visibility"] == "public"
    subs = subscription(service, url)
    _, lines = run_adoption(service, subs, dry_run=True)
    assert f"visibility public -> shared; members: {vo_project}" in lines[0]
    report, _ = run_adoption(service, subs)
    assert report.failures == [], report.failures
    adopted = project_images(glance, project)[image["id"]]
    assert judge(service, adopted).trusted and adopted["visibility"] == "shared"
    assert image["id"] in visible_to(glance, vo_project)
    assert image["id"] not in visible_to(glance, "someone-else")
