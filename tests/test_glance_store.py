"""The Glance store against a real Glance 33, checked through Glance's own API.

``tests/test_sync_local.py`` proves the sync's guarantees against the local
store; these tests prove the same guarantees hold when the store is OpenStack
Glance (:mod:`glance_sync.stores.glance`, :mod:`glance_sync.stores.glance_meta`,
:mod:`vmtrust.glanceprops`).  Each test publishes signed lists and image bytes
on a loopback web server, runs a sync pass into a fresh service project of the
session's real Glance (``tests/glance_server.py``: sqlite, file store, the
property protections vmtrust ships, sha512 multihash), and then looks at
Glance *directly* — plain REST calls as the service project or as other
projects, never through vmtrust's own view — so that a store which only
believes it did the right thing fails.  Every image Glance calls trusted is
judged with :func:`vmtrust.glanceprops.judge`, the rule the nova filter
applies.

Covered: what a created image looks like (status, owner, hashes, formats,
visibility, trust record, seal, the list metadata clouds read); that a no-op
run changes nothing and costs a constant number of Glance calls, also across
pages of Glance's listing; refresh of metadata in place, including metadata
the list withdrew; new version active before the old is retired; lists that
fail leave their images untouched while other lists go on; wrong bytes never
stay in Glance; the retire modes and purge; images the sync does not manage
(in its project or shared into it) are never touched; leftovers of
interrupted uploads are removed; sharing with a VO's projects, visibility, and
their convergence when the configuration changes; conversion to the formats a
site wants; and tampering inside Glance (trust properties changed, or copied
onto another image).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import list_document, write_clouds_yaml
from glance_server import MEMBER_ROLES, SERVICE_ROLES
from httpserve import Behaviour
from test_sync_local import IMAGE_A, IMAGE_B, entry, publish

from glance_sync.cloud import connect_cloud
from glance_sync.stores.glance import GlanceStore
from vmtrust import glanceprops, imagelist, smime
from vmtrust.trust import Verdict

VO = "vo.example.org"
OTHER_LIST = "2b0f7e4c-4b8e-4a57-9a43-0c3c1f6e7d11"

# --- looking at Glance directly ----------------------------------------------------------


def _url(glance, path: str) -> str:
    return f"{glance.url}/v2{path}"


def project_images(glance, project: str, roles: str = SERVICE_ROLES) -> dict[str, dict]:
    """Every image ``project`` owns, hidden or not, by id — straight from Glance."""
    api = glance.api(project, roles)
    found: dict[str, dict] = {}
    for hidden in ("false", "true"):
        url = _url(glance, "/images")
        params: dict[str, Any] | None = {"owner": project, "os_hidden": hidden, "limit": 100}
        while url:
            reply = api.get(url, params=params, timeout=30)
            assert reply.status_code == 200, reply.text
            body = reply.json()
            found.update({image["id"]: image for image in body["images"]})
            url = glance.url + body["next"] if body.get("next") else ""
            params = None
    return found


def visible_to(glance, project: str) -> set[str]:
    """Ids of the images ``project`` sees in its own image list (shared ones accepted)."""
    reply = glance.api(project, MEMBER_ROLES).get(_url(glance, "/images"), timeout=30)
    assert reply.status_code == 200, reply.text
    return {image["id"] for image in reply.json()["images"]}


def get_image(glance, project: str, image_id: str, roles: str = SERVICE_ROLES) -> dict | None:
    reply = glance.api(project, roles).get(_url(glance, f"/images/{image_id}"), timeout=30)
    if reply.status_code == 404:
        return None
    assert reply.status_code == 200, reply.text
    return reply.json()


def members(glance, project: str, image_id: str) -> dict[str, str]:
    reply = glance.api(project).get(_url(glance, f"/images/{image_id}/members"), timeout=30)
    assert reply.status_code == 200, reply.text
    return {m["member_id"]: m["status"] for m in reply.json()["members"]}


def make_image(glance, project: str, data: bytes | None, roles: str = SERVICE_ROLES, **props):
    """Create (and upload, if ``data``) an image directly, bypassing vmtrust."""
    api = glance.api(project, roles)
    body = {"name": "hand-made", "disk_format": "raw", "container_format": "bare", **props}
    reply = api.post(_url(glance, "/images"), json=body, timeout=30)
    assert reply.status_code == 201, reply.text
    image_id = reply.json()["id"]
    if data is not None:
        reply = api.put(
            _url(glance, f"/images/{image_id}/file"),
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=30,
        )
        assert reply.status_code == 204, reply.text
    return get_image(glance, project, image_id, roles)


def patch_image(glance, project: str, image_id: str, ops: list, roles: str = SERVICE_ROLES):
    return glance.api(project, roles).patch(
        _url(glance, f"/images/{image_id}"),
        json=ops,
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
        timeout=30,
    )


def judge(service, image: dict, now: datetime | None = None) -> Verdict:
    return glanceprops.judge(
        image,
        [service.s.seal_key.public_key()],
        now or datetime.now(UTC),
        owners=[service.project],
    )


def trusted_in_glance(glance, service) -> dict[str, list[tuple[str, str]]]:
    """identifier → [(image id, version)] of every image Glance holds that judge() trusts."""
    result: dict[str, list[tuple[str, str]]] = {}
    for image_id, image in project_images(glance, service.project).items():
        verdict = judge(service, image)
        if verdict.trusted:
            record = verdict.record
            result.setdefault(record.image_identifier, []).append((image_id, record.image_version))
    return result


def versions(glance, service) -> dict[str, str]:
    """identifier → version of the trusted images, asserting at most one per identifier."""
    result = {}
    for identifier, items in trusted_in_glance(glance, service).items():
        assert len(items) == 1, f"{identifier}: several trusted images {items}"
        result[identifier] = items[0][1]
    return result


def by_identifier(images: dict[str, dict]) -> dict[str, list[dict]]:
    result: dict[str, list[dict]] = {}
    for image in images.values():
        result.setdefault(image.get("vmtrust_image_identifier"), []).append(image)
    return result


# --- lists -------------------------------------------------------------------------------


def publish_other(site, pki, images: list[dict], version: str) -> None:
    """A second list, of its own identity, at /other.list."""
    document = list_document(pki.endorser, version=version, images=images, identifier=OTHER_LIST)
    document["hv:imagelist"]["hv:uri"] = site.url("/other.list")
    site.files["/other.list"] = smime.sign(
        imagelist.dumps(document), pki.endorser.cert, pki.endorser.key
    )


def small(tag: str, size: int = 100_000) -> bytes:
    return (tag.encode() * size)[:size]


# --- 1. create ---------------------------------------------------------------------------


def test_created_image_is_active_sealed_and_carries_the_list_metadata(
    glance_sync, site, pki, glance
):
    mpuri = "https://appdb.example.org/store/vm/image/img-a:1/"
    a = entry("img-a", IMAGE_A, site)
    a["hv:image"]["ad:mpuri"] = mpuri
    publish(site, pki, [a, entry("img-b", IMAGE_B, site)], "1")
    report = glance_sync.run(glance_sync.subs)
    assert report.failures == []
    assert sorted(report.done) == [
        "stored img-a 1 (Example worker node)",
        "stored img-b 1 (Example worker node)",
    ]

    images = by_identifier(project_images(glance, glance_sync.project))
    assert set(images) == {"img-a", "img-b"}
    (image,) = images["img-a"]
    assert image["status"] == "active"
    assert image["owner"] == glance_sync.project
    assert image["os_hash_algo"] == "sha512"
    assert image["os_hash_value"] == hashlib.sha512(IMAGE_A).hexdigest()
    assert image["size"] == len(IMAGE_A)
    assert (image["disk_format"], image["container_format"]) == ("raw", "bare")
    assert image["visibility"] == "shared"
    assert image["os_hidden"] is False
    assert image["vmtrust_state"] == "trusted"
    assert image["vmtrust_managed"] == "true"
    assert image["vmtrust_store_id"] == image["id"]
    assert image["vmtrust_shared_with"] == ""

    verdict = judge(glance_sync, image)
    assert verdict.trusted, verdict.reason
    assert verdict.record.image_identifier == "img-a"
    assert verdict.record.source_sha512 == hashlib.sha512(IMAGE_A).hexdigest()
    # The seal binds the owner check too: another project's copy would not pass.
    assert not glanceprops.judge(
        image, [glance_sync.s.seal_key.public_key()], datetime.now(UTC), owners=["elsewhere"]
    ).trusted

    # The bytes Glance serves are the list's bytes.
    data = glance.api(glance_sync.project).get(_url(glance, f"/images/{image['id']}/file"))
    assert data.status_code == 200 and data.content == IMAGE_A

    # The list's metadata, as nova, Horizon and the EGI tools read it.
    assert image["name"] == "Example worker node"
    assert image["architecture"] == "x86_64"
    assert image["os_distro"] == "almalinux"
    assert image["os_version"] == "9"
    assert image["hypervisor_type"] == "kvm"
    assert image["min_ram"] == 2048
    assert image["min_disk"] == 1
    assert image["vmcatcher_event_dc_identifier"] == "img-a"
    assert image["vmcatcher_event_hv_version"] == "1"
    assert image["vmcatcher_event_ad_mpuri"] == mpuri
    assert image["vmcatcher_event_vo"] == VO
    assert json.loads(image["APPLIANCE_ATTRIBUTES"]) == a["hv:image"]
    assert image["appdb_id"] == "img-a"
    assert image["image_list"] == "example"  # the subscription, as atrope
    assert image["vmtrust_list_identifier"] == list_document()["hv:imagelist"]["dc:identifier"]
    assert image["image_hash"] == "sha512:" + hashlib.sha512(IMAGE_A).hexdigest()

    (other,) = images["img-b"]
    assert "vmcatcher_event_ad_mpuri" not in other  # only when the entry has ad:mpuri
    assert judge(glance_sync, other).trusted
    assert other["os_hash_value"] == hashlib.sha512(IMAGE_B).hexdigest()


# --- 2. the no-op run --------------------------------------------------------------------


def test_no_op_run_changes_nothing_and_costs_a_constant_number_of_calls(
    glance_sync, site, pki, glance
):
    store = glance_sync.store
    publish(site, pki, [entry("img-0", small("0"), site)], "1")
    assert glance_sync.run(glance_sync.subs).failures == []

    def no_op_cost() -> int:
        before = project_images(glance, glance_sync.project)
        calls = store.calls
        report = glance_sync.run(glance_sync.subs)
        assert report.done == [] and report.failures == []
        assert project_images(glance, glance_sync.project) == before  # updated_at included
        return store.calls - calls

    one = no_op_cost()
    publish(site, pki, [entry(f"img-{i}", small(str(i)), site) for i in range(6)], "2")
    report = glance_sync.run(glance_sync.subs)
    assert report.failures == []
    assert len([line for line in report.done if line.startswith("stored")]) == 5
    assert versions(glance, glance_sync) == {f"img-{i}": "1" for i in range(6)}
    six = no_op_cost()
    assert one == six <= 4


def test_held_pages_through_long_listings(glance_sync, site, pki, glance, monkeypatch):
    monkeypatch.setattr("glance_sync.stores.glance_api.PAGE", 2)
    publish(site, pki, [entry(f"img-{i}", small(str(i)), site) for i in range(3)], "1")
    assert glance_sync.run(glance_sync.subs).failures == []
    assert len(glance_sync.store.held()) == 3  # two pages
    again = glance_sync.run(glance_sync.subs)
    assert again.done == [] and again.failures == []
    assert versions(glance, glance_sync) == {f"img-{i}": "1" for i in range(3)}


# --- 3. metadata refresh -----------------------------------------------------------------


def test_metadata_change_is_refreshed_in_place(glance_sync, site, pki, glance):
    a = entry("img-a", IMAGE_A, site)
    publish(site, pki, [a], "1")
    glance_sync.run(glance_sync.subs)
    (before,) = project_images(glance, glance_sync.project).values()

    a["hv:image"]["dc:description"] = "Now with a better description"
    a["hv:image"]["sl:osversion"] = "9.4"
    publish(site, pki, [a], "2")
    report = glance_sync.run(glance_sync.subs)
    assert report.failures == []
    assert report.done == ["refreshed img-a metadata"]

    (after,) = project_images(glance, glance_sync.project).values()
    assert after["id"] == before["id"]
    assert after["os_hash_value"] == before["os_hash_value"]
    assert after["vmcatcher_event_dc_description"] == "Now with a better description"
    assert after["os_version"] == "9.4"
    assert json.loads(after["APPLIANCE_ATTRIBUTES"]) == a["hv:image"]
    assert after["vmtrust_list_version"] == "2"
    assert after["vmtrust_entry_digest"] != before["vmtrust_entry_digest"]
    assert after["vmtrust_seal"] != before["vmtrust_seal"]
    verdict = judge(glance_sync, after)
    assert verdict.trusted, verdict.reason


def test_refresh_drops_list_properties_the_entry_no_longer_has(glance_sync, site, pki, glance):
    a = entry("img-a", IMAGE_A, site)
    a["hv:image"]["ad:mpuri"] = "https://appdb.example.org/store/vm/image/img-a:1/"
    publish(site, pki, [a], "1")
    glance_sync.run(glance_sync.subs)
    del a["hv:image"]["ad:mpuri"]
    a["hv:image"]["dc:description"] = ""  # vmcatcher omits empty variables
    a["hv:image"]["hv:hypervisor"] = "VirtualBox"  # no nova hypervisor_type for it
    publish(site, pki, [a], "2")
    report = glance_sync.run(glance_sync.subs)
    assert report.done == ["refreshed img-a metadata"], report.failures
    (image,) = project_images(glance, glance_sync.project).values()
    assert "vmcatcher_event_ad_mpuri" not in image
    assert "vmcatcher_event_dc_description" not in image
    assert "hypervisor_type" not in image  # a stale "kvm" would steer nova's scheduler
    assert image["vmcatcher_event_hv_hypervisor"] == "VirtualBox"
    assert json.loads(image["APPLIANCE_ATTRIBUTES"]) == a["hv:image"]
    assert judge(glance_sync, image).trusted
    again = glance_sync.run(glance_sync.subs)
    assert again.done == [] and again.failures == []


# --- 4. new version ----------------------------------------------------------------------


def _log_lines(glance) -> list[str]:
    return glance.access_log.read_text().splitlines()


def test_new_version_is_active_before_the_old_is_retired(glance_sync, site, pki, glance):
    publish(site, pki, [entry("img-a", IMAGE_A, site)], "1")
    glance_sync.run(glance_sync.subs)
    (old_id,) = project_images(glance, glance_sync.project)

    start = len(_log_lines(glance))
    publish(site, pki, [entry("img-a", IMAGE_A + b"v2", site, version="2")], "2")
    report = glance_sync.run(glance_sync.subs)
    assert report.failures == []
    assert report.done[0].startswith("stored img-a 2")
    assert report.done[1].startswith("retired img-a")

    images = project_images(glance, glance_sync.project)
    (new_id,) = set(images) - {old_id}
    new, old = images[new_id], images[old_id]
    assert judge(glance_sync, new).trusted
    assert new["os_hash_value"] == hashlib.sha512(IMAGE_A + b"v2").hexdigest()
    assert old["status"] == "deactivated"
    assert old["vmtrust_state"] == "retired"
    assert old["vmtrust_retire_mode"] == "deactivate"
    assert not judge(glance_sync, old).trusted
    assert versions(glance, glance_sync) == {"img-a": "2"}

    # Glance's own request log: the new image's commit PATCH came before any change
    # to the old one.
    log = _log_lines(glance)[start:]
    commit = max(i for i, line in enumerate(log) if f"PATCH /v2/images/{new_id}" in line)
    first_old = min(i for i, line in enumerate(log) if f"/v2/images/{old_id}" in line)
    assert commit < first_old
    assert any(f"POST /v2/images/{old_id}/actions/deactivate" in line for line in log)


# --- 5. lists that fail ------------------------------------------------------------------


def _unreachable(site, pki) -> None:
    site.behaviour["/site.list"] = Behaviour(status=500)


def _tampered(site, pki) -> None:
    site.files["/site.list"] = site.files["/site.list"].replace(
        b"Example worker node", b"Evil worker nodes!!"
    )


def _rolled_back(site, pki) -> None:
    publish(site, pki, [entry("img-a", IMAGE_A, site), entry("img-x", small("x"), site)], "4")


def _malformed(site, pki) -> None:
    site.files["/site.list"] = smime.sign(b'{"hv:imagelist": ', pki.endorser.cert, pki.endorser.key)


@pytest.mark.parametrize(
    ("breakage", "words"),
    [
        (_unreachable, "500"),
        (_tampered, "signature"),
        (_rolled_back, "rollback"),
        (_malformed, "subscription example"),
    ],
    ids=["unreachable", "tampered", "rollback", "malformed"],
)
def test_failed_list_leaves_its_images_exactly_as_they_were(
    glance_sync, site, pki, glance, breakage, words
):
    other = dataclasses.replace(glance_sync.subs[0], name="other", url=site.url("/other.list"))
    subs = (*glance_sync.subs, other)
    publish(site, pki, [entry("img-a", IMAGE_A, site)], "5")
    publish_other(site, pki, [entry("img-b", small("b"), site)], "1")
    assert glance_sync.run(subs).failures == []
    before = by_identifier(project_images(glance, glance_sync.project))
    (a_before,) = before["img-a"]

    breakage(site, pki)
    publish_other(
        site, pki, [entry("img-b", small("b"), site), entry("img-c", small("c"), site)], "2"
    )
    report = glance_sync.run(subs)

    assert len(report.failures) == 1, report.failures
    assert report.failures[0].startswith("subscription example")
    assert words.lower() in report.failures[0].lower()
    # The other list went on: a new image stored, its list's new version re-sealed.
    assert sorted(report.done) == [
        "refreshed img-b metadata",
        "stored img-c 1 (Example worker node)",
    ]
    after = by_identifier(project_images(glance, glance_sync.project))
    assert after["img-a"] == [a_before]  # same id, same properties, same updated_at
    assert a_before["status"] == "active" and judge(glance_sync, a_before).trusted
    assert versions(glance, glance_sync) == {"img-a": "1", "img-b": "1", "img-c": "1"}

    if breakage is _unreachable:
        # Kept only until the last good list's dc:date:expires (28 days), then retired.
        expired = glance_sync.run(subs, now=datetime.now(UTC) + timedelta(days=60))
        assert any(line.startswith("retired img-a") for line in expired.done)
        (a_after,) = by_identifier(project_images(glance, glance_sync.project))["img-a"]
        assert a_after["id"] == a_before["id"] and a_after["status"] == "deactivated"
        assert a_after["vmtrust_state"] == "retired"


# --- 6. wrong bytes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wrong", "words"),
    [("checksum", "SHA-512"), ("longer", "hv:size"), ("shorter", "closed early")],
)
def test_bytes_that_do_not_match_the_list_never_stay_in_glance(
    glance_sync, site, pki, glance, wrong, words
):
    publish(site, pki, [entry("img-a", IMAGE_A, site)], "1")
    glance_sync.run(glance_sync.subs)
    before = project_images(glance, glance_sync.project)

    new = entry("img-a", IMAGE_A + b"v2", site, version="2")
    site.files["/img/img-a-2.img"] = {
        "checksum": b"E" * len(IMAGE_A + b"v2"),
        "longer": IMAGE_A + b"v2" + b"more",
        "shorter": IMAGE_A[:-1000],
    }[wrong]
    publish(site, pki, [new], "2")
    report = glance_sync.run(glance_sync.subs)

    assert len(report.failures) == 1, report.failures
    assert "img-a" in report.failures[0]
    assert words in report.failures[0]
    assert report.done == []
    assert project_images(glance, glance_sync.project) == before
    assert versions(glance, glance_sync) == {"img-a": "1"}


# --- 7. retire modes ---------------------------------------------------------------------


def test_hide_mode_hides_the_retired_image(glance_sync, site, pki, glance):
    glance_sync.s.retire_mode = "hide"
    publish(site, pki, [entry("img-a", IMAGE_A, site)], "1")
    glance_sync.run(glance_sync.subs)
    (image_id,) = project_images(glance, glance_sync.project)
    publish(site, pki, [], "2")
    report = glance_sync.run(glance_sync.subs)
    assert report.failures == [] and report.done[0].startswith("retired img-a")

    image = get_image(glance, glance_sync.project, image_id)
    assert image["os_hidden"] is True
    assert image["vmtrust_state"] == "retired"
    assert image["vmtrust_retire_mode"] == "hide"
    assert image["status"] == "active"  # hidden, not deactivated
    assert not judge(glance_sync, image).trusted
    assert image_id not in visible_to(glance, glance_sync.project)
    # Held and kept: a later run neither re-creates nor purges it.
    again = glance_sync.run(glance_sync.subs, now=datetime.now(UTC) + timedelta(days=8))
    assert again.done == [] and again.failures == []
    assert get_image(glance, glance_sync.project, image_id) == image


def test_delete_mode_purges_the_retired_image_after_the_grace_period(
    glance_sync, site, pki, glance
):
    glance_sync.s.retire_mode = "delete"
    publish(site, pki, [entry("img-a", IMAGE_A, site)], "1")
    glance_sync.run(glance_sync.subs)
    (image_id,) = project_images(glance, glance_sync.project)
    publish(site, pki, [], "2")
    glance_sync.run(glance_sync.subs)

    image = get_image(glance, glance_sync.project, image_id)
    assert image["vmtrust_state"] == "retired" and image["os_hidden"] is True
    assert not judge(glance_sync, image).trusted
    within = glance_sync.run(glance_sync.subs, now=datetime.now(UTC) + timedelta(days=6))
    assert within.done == [] and get_image(glance, glance_sync.project, image_id) is not None

    later = glance_sync.run(glance_sync.subs, now=datetime.now(UTC) + timedelta(days=8))
    assert later.failures == [] and later.done == [f"purged {image_id}"]
    assert get_image(glance, glance_sync.project, image_id) is None
    assert project_images(glance, glance_sync.project) == {}


# --- 8. unmanaged images -----------------------------------------------------------------


def test_images_the_sync_does_not_manage_are_never_touched(glance_sync, site, pki, glance):
    glance_sync.s.retire_mode = "delete"
    project = glance_sync.project
    stranger = "other" + uuid.uuid4().hex[:12]
    # Same project, no trust record; a look-alike named like a listed image, hidden.
    mine = make_image(glance, project, small("m"))
    alike = make_image(
        glance, project, small("l"), name="Example worker node", appdb_id="img-a", os_hidden=True
    )
    # Another project's images, marked managed by its own sync (one trusted-looking, one
    # unfinished) and shared with the service project, which accepted them: visible to the
    # service project, but not its own.
    theirs = {}
    for state in ("trusted", "uploading"):
        image = make_image(
            glance,
            stranger,
            small(state[0]) if state == "trusted" else None,
            visibility="shared",
            vmtrust_managed="true",
            vmtrust_state=state,
            vmtrust_image_identifier="img-a",
        )
        api = glance.api(stranger)
        reply = api.post(_url(glance, f"/images/{image['id']}/members"), json={"member": project})
        assert reply.status_code == 200, reply.text
        reply = glance.api(project).put(
            _url(glance, f"/images/{image['id']}/members/{project}"), json={"status": "accepted"}
        )
        assert reply.status_code == 200, reply.text
        theirs[image["id"]] = get_image(glance, stranger, image["id"])
    assert set(theirs) <= visible_to(glance, project)
    untouched = {mine["id"]: mine, alike["id"]: alike}

    publish(site, pki, [entry("img-a", IMAGE_A, site)], "1")
    runs = [glance_sync.run(glance_sync.subs)]
    publish(site, pki, [], "2")  # retires everything
    runs.append(glance_sync.run(glance_sync.subs))
    runs.append(glance_sync.run(glance_sync.subs, now=datetime.now(UTC) + timedelta(days=8)))
    assert [r.failures for r in runs] == [[], [], []]
    assert runs[1].done[0].startswith("retired img-a") and len(runs[1].done) == 1
    assert runs[2].done and runs[2].done[0].startswith("purged") and len(runs[2].done) == 1

    assert project_images(glance, project) == untouched
    assert project_images(glance, stranger) == theirs


# --- 9. cleanup of unfinished uploads ----------------------------------------------------


def test_an_unfinished_upload_is_removed_by_the_next_run(glance_sync, site, pki, glance):
    leftover = make_image(
        glance,
        glance_sync.project,
        None,
        vmtrust_managed="true",
        vmtrust_state="uploading",
        vmtrust_image_identifier="img-a",
    )
    assert leftover["status"] == "queued"
    publish(site, pki, [entry("img-a", IMAGE_A, site)], "1")
    report = glance_sync.run(glance_sync.subs)
    assert report.failures == []
    assert get_image(glance, glance_sync.project, leftover["id"]) is None
    images = project_images(glance, glance_sync.project)
    assert len(images) == 1 and leftover["id"] not in images
    assert versions(glance, glance_sync) == {"img-a": "1"}


# --- 10. sharing -------------------------------------------------------------------------


@pytest.fixture
def vo_projects(glance, glance_sync, tmp_path: Path):
    """Two VO projects (B, C), each with a connection of its own: name → (id, connection)."""
    ids = {name: f"vo{name}" + uuid.uuid4().hex[:10] for name in ("b", "c")}
    clouds = write_clouds_yaml(
        tmp_path / "vo-clouds.yaml",
        glance.url,
        {name: (project, MEMBER_ROLES) for name, project in ids.items()},
    )
    return {name: (project, connect_cloud(name, str(clouds))) for name, project in ids.items()}


def _store(service, **options) -> GlanceStore:
    old = service.store
    return GlanceStore(old.conn, project_id=service.project, seal_keys=old.seal_keys, **options)


def test_images_are_shared_with_the_vo_projects_and_sharing_converges(
    glance_sync, site, pki, glance, vo_projects
):
    b, conn_b = vo_projects["b"]
    c, conn_c = vo_projects["c"]
    store = _store(glance_sync, vo_projects={VO: [(b, conn_b)]})
    glance_sync.store = store
    subs = (dataclasses.replace(glance_sync.subs[0], vo=VO),)
    publish(site, pki, [entry("img-a", IMAGE_A, site)], "1")
    assert glance_sync.run(subs).failures == []

    (image_id,) = project_images(glance, glance_sync.project)
    assert members(glance, glance_sync.project, image_id) == {b: "accepted"}
    assert image_id in visible_to(glance, b)
    assert image_id not in visible_to(glance, c)
    seen_by_b = get_image(glance, b, image_id, MEMBER_ROLES)
    assert seen_by_b["vmtrust_shared_with"] == b
    assert judge(glance_sync, seen_by_b).trusted  # what nova checks in project B

    store.vo_projects = {VO: [(c, conn_c)]}
    report = glance_sync.run(subs)
    assert report.failures == []
    assert report.done == [f"shared img-a with [{c}]"]
    assert members(glance, glance_sync.project, image_id) == {c: "accepted"}
    assert image_id in visible_to(glance, c)
    assert image_id not in visible_to(glance, b)
    image = get_image(glance, glance_sync.project, image_id)
    assert image["vmtrust_shared_with"] == c
    assert judge(glance_sync, image).trusted

    # Converged: the next run is a no-op again.
    again = glance_sync.run(subs)
    assert again.done == [] and again.failures == []


def test_private_visibility_shares_with_nobody(glance_sync, site, pki, glance, vo_projects):
    b, conn_b = vo_projects["b"]
    glance_sync.store = _store(glance_sync, visibility="private", vo_projects={VO: [(b, conn_b)]})
    subs = (dataclasses.replace(glance_sync.subs[0], vo=VO),)
    publish(site, pki, [entry("img-a", IMAGE_A, site)], "1")
    assert glance_sync.run(subs).failures == []
    (image,) = project_images(glance, glance_sync.project).values()
    assert image["visibility"] == "private"
    assert image["vmtrust_shared_with"] == ""
    assert judge(glance_sync, image).trusted
    assert get_image(glance, b, image["id"], MEMBER_ROLES) is None
    again = glance_sync.run(subs)
    assert again.done == [] and again.failures == []


def test_visibility_change_converges(glance_sync, site, pki, glance, vo_projects):
    b, conn_b = vo_projects["b"]
    glance_sync.store = _store(glance_sync, vo_projects={VO: [(b, conn_b)]})
    subs = (dataclasses.replace(glance_sync.subs[0], vo=VO),)
    publish(site, pki, [entry("img-a", IMAGE_A, site)], "1")
    assert glance_sync.run(subs).failures == []
    (image_id,) = project_images(glance, glance_sync.project)
    assert image_id in visible_to(glance, b)

    glance_sync.store = _store(glance_sync, visibility="private", vo_projects={VO: [(b, conn_b)]})
    report = glance_sync.run(subs)
    assert report.failures == []
    image = get_image(glance, glance_sync.project, image_id)
    assert image["visibility"] == "private" and image["vmtrust_shared_with"] == ""
    assert get_image(glance, b, image_id, MEMBER_ROLES) is None
    assert judge(glance_sync, image).trusted

    glance_sync.store = _store(glance_sync, vo_projects={VO: [(b, conn_b)]})
    report = glance_sync.run(subs)
    assert report.failures == []
    image = get_image(glance, glance_sync.project, image_id)
    assert image["visibility"] == "shared" and image["vmtrust_shared_with"] == b
    assert image_id in visible_to(glance, b)
    again = glance_sync.run(subs)
    assert again.done == [] and again.failures == []


# --- 11. conversion ----------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img (qemu-utils)")
def test_qcow2_is_converted_to_the_format_the_site_wants(glance_sync, site, pki, glance, tmp_path):
    qcow2 = tmp_path / "x.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "1M"], check=True, timeout=30
    )
    data = qcow2.read_bytes()
    raw = bytes(1024 * 1024)  # an empty 1 MiB disk
    glance_sync.store = _store(glance_sync, disk_formats=["raw"])
    img = entry("img-q", data, site)
    img["hv:image"]["hv:format"] = "QCOW2"
    publish(site, pki, [img], "1")
    report = glance_sync.run(glance_sync.subs)
    assert report.failures == [], report.failures

    (image,) = project_images(glance, glance_sync.project).values()
    assert image["disk_format"] == "raw"
    assert image["size"] == len(raw)
    assert image["min_disk"] == 1  # the stored raw disk, not the list's qcow2 bytes
    assert image["os_hash_value"] == hashlib.sha512(raw).hexdigest()
    verdict = judge(glance_sync, image)
    assert verdict.trusted, verdict.reason
    assert verdict.record.sha512 == image["os_hash_value"]
    assert verdict.record.disk_format == "raw"
    assert verdict.record.source_sha512 == hashlib.sha512(data).hexdigest()
    assert image["image_hash"] == "sha512:" + hashlib.sha512(data).hexdigest()
    assert list((glance_sync.s.state_dir / "work").iterdir()) == []  # the work folder, emptied
    again = glance_sync.run(glance_sync.subs)
    assert again.done == [] and again.failures == []


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img (qemu-utils)")
def test_min_disk_is_what_the_disk_needs_not_the_file_size(
    glance_sync, site, pki, glance, tmp_path
):
    """A qcow2 file of a few hundred KiB holds a 3 GiB disk: nova refuses flavours whose
    root disk is smaller than the virtual size, so min_disk says 3, on create and refresh."""
    qcow2 = tmp_path / "big.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "3G"], check=True, timeout=30
    )
    data = qcow2.read_bytes()
    assert len(data) < 1024**2
    img = entry("img-q", data, site)
    img["hv:image"]["hv:format"] = "QCOW2"
    publish(site, pki, [img], "1")
    assert glance_sync.run(glance_sync.subs).failures == []
    (image,) = project_images(glance, glance_sync.project).values()
    assert (image["disk_format"], image["virtual_size"]) == ("qcow2", 3 * 1024**3)
    assert image["min_disk"] == 3

    img["hv:image"]["dc:description"] = "refreshed"
    publish(site, pki, [img], "2")
    assert glance_sync.run(glance_sync.subs).done == ["refreshed img-q metadata"]
    (after,) = project_images(glance, glance_sync.project).values()
    assert after["min_disk"] == 3 and after["vmcatcher_event_dc_description"] == "refreshed"


# --- 12. tampering inside Glance ---------------------------------------------------------


@pytest.mark.parametrize(
    ("prop", "value"),
    [("vmtrust_expires", "2099-01-01T00:00:00Z"), ("vmtrust_vo", "vo.evil.org")],
)
def test_tampered_trust_properties_are_quarantined_and_replaced(
    glance_sync, site, pki, glance, prop, value
):
    publish(site, pki, [entry("img-a", IMAGE_A, site)], "1")
    glance_sync.run(glance_sync.subs)
    (image_id,) = project_images(glance, glance_sync.project)

    # Property protections: a plain member of the project may not change them ...
    denied = patch_image(
        glance,
        glance_sync.project,
        image_id,
        [{"op": "replace", "path": f"/{prop}", "value": value}],
        MEMBER_ROLES,
    )
    assert denied.status_code == 403
    # ... the service role may, and the seal then no longer verifies.
    changed = patch_image(
        glance,
        glance_sync.project,
        image_id,
        [{"op": "replace", "path": f"/{prop}", "value": value}],
    )
    assert changed.status_code == 200, changed.text
    assert not judge(glance_sync, changed.json()).trusted
    (held,) = glance_sync.store.held()
    assert not held.seal_ok and "seal" in held.problem

    report = glance_sync.run(glance_sync.subs)
    assert report.failures == []
    assert report.done[0].startswith("retired")
    images = project_images(glance, glance_sync.project)
    old = images.pop(image_id)
    assert old["vmtrust_state"] == "retired" and old["status"] == "deactivated"
    (new,) = images.values()
    assert judge(glance_sync, new).trusted
    assert new["os_hash_value"] == hashlib.sha512(IMAGE_A).hexdigest()
    assert versions(glance, glance_sync) == {"img-a": "1"}


def test_trust_properties_copied_onto_another_image_do_not_make_it_trusted(
    glance_sync, site, pki, glance
):
    publish(site, pki, [entry("img-a", IMAGE_A, site)], "1")
    glance_sync.run(glance_sync.subs)
    (original,) = project_images(glance, glance_sync.project).values()
    # Same bytes, every vmtrust property copied (what a snapshot or a careless copy does).
    copied = {k: v for k, v in original.items() if k.startswith("vmtrust_")}
    copy = make_image(glance, glance_sync.project, IMAGE_A, **copied)
    assert copy["os_hash_value"] == original["os_hash_value"]
    assert "bound to image" in judge(glance_sync, copy).reason

    report = glance_sync.run(glance_sync.subs)
    assert report.failures == []
    assert report.done == [f"retired img-a: seal is bound to image {original['id']}, not this one"]
    images = project_images(glance, glance_sync.project)
    assert images[original["id"]] == original
    assert images[copy["id"]]["vmtrust_state"] == "retired"
    assert images[copy["id"]]["status"] == "deactivated"
    assert versions(glance, glance_sync) == {"img-a": "1"}


def test_retired_images_keep_their_record_for_the_site(glance_sync, site, pki):
    """A retired image still shows what it was (identifier, version), with its seal checked."""
    publish(site, pki, [entry("img-a", IMAGE_A, site)], "1")
    assert glance_sync.run(glance_sync.subs).failures == []
    publish(site, pki, [entry("img-b", IMAGE_B, site)], "2")
    assert glance_sync.run(glance_sync.subs).failures == []
    retired = [h for h in glance_sync.store.held() if h.retired]
    assert len(retired) == 1
    (held,) = retired
    assert held.record is not None and held.record.image_identifier == "img-a"
    assert held.record.state == "retired" and held.seal_ok and held.problem is None
