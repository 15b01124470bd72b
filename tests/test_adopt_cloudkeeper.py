"""``--adopt cloudkeeper-os``: images cloudkeeper-os 0.9 left in the real Glance.

cloudkeeper-os cannot run here (Python 2, fed over gRPC by cloudkeeper core, in
Ruby), so :func:`cloudkeeper_upload` makes the three calls its
``ApplianceManager.add_appliance`` makes (the-cloudkeeper-project/cloudkeeper-os
0.9.9, ``imagemanager.py`` and ``utils.extract_appliance_properties``): create the
image in the VO's project (its clients are scoped to the VO project of
``mapping.json``), private, with ``min_ram``; upload the bytes; set
``APPLIANCE_<FIELD>`` for every appliance field (``identifier`` and
``image_list_identifier`` as ``APPLIANCE_ID`` and ``APPLIANCE_IMAGE_LIST_ID``,
the attributes as JSON), ``vmcatcher_event_ad_mpuri`` and ``APPLIANCE_STATUS =
ACTIVE``.  The sync finds them through the VO project's cloud (they are private
there), refuses them with the fix (the owner is the VO project), and adopts them
in place once a cloud admin applied it.
"""

from __future__ import annotations

import json

from glance_server import ADMIN_ROLES, MEMBER_ROLES
from test_adopt_atrope import RAW, SITE_LIST, sign_list, subscription
from test_glance_share import vo_cloud, with_vo
from test_glance_store import VO, judge, members, patch_image, project_images, visible_to
from test_sync_local import entry

from glance_sync.adopt import Adoption
from glance_sync.foreign import CloudkeeperOS


def cloudkeeper_upload(glance, vo_project: str, want: dict, data: bytes, list_id: str) -> str:
    image = want["hv:image"]
    api = glance.api(vo_project, MEMBER_ROLES)
    url = f"{glance.url}/v2/images"
    created = api.post(url, json={
        "name": image["dc:title"], "disk_format": image["hv:format"].lower(),
        "container_format": "bare", "visibility": "private", "min_ram": 2,
    }, timeout=30)  # fmt: skip
    assert created.status_code == 201, created.text
    image_id = created.json()["id"]
    put = api.put(f"{url}/{image_id}/file", data=data,
                  headers={"Content-Type": "application/octet-stream"}, timeout=30)  # fmt: skip
    assert put.status_code == 204, put.text
    properties = {
        "APPLIANCE_ID": image["dc:identifier"],
        "APPLIANCE_IMAGE_LIST_ID": list_id,
        "APPLIANCE_TITLE": image["dc:title"],
        "APPLIANCE_DESCRIPTION": image["dc:description"],
        "APPLIANCE_RAM": "2048",
        "APPLIANCE_CORE": "1",
        "APPLIANCE_VERSION": image["hv:version"],
        "APPLIANCE_ARCHITECTURE": image["sl:arch"],
        "APPLIANCE_OPERATING_SYSTEM": image["sl:os"],
        "APPLIANCE_VO": VO,
        "APPLIANCE_EXPIRATION_DATE": "1900000000",
        "APPLIANCE_ATTRIBUTES": json.dumps(image),
        "vmcatcher_event_ad_mpuri": "",
        "APPLIANCE_STATUS": "ACTIVE",
    }
    ops = [{"op": "add", "path": f"/{k}", "value": v} for k, v in properties.items()]
    reply = patch_image(glance, vo_project, image_id, ops, MEMBER_ROLES)
    assert reply.status_code == 200, reply.text
    return image_id


def test_cloudkeeper_os_images_in_the_vo_project_are_refused_then_adopted_in_place(
    glance_sync, glance, site, pki, tmp_path
):
    service, project = glance_sync, glance_sync.project
    vo_project, vo_conn, _ = vo_cloud(glance, tmp_path)
    with_vo(service, {VO: [(vo_project, vo_conn)]})
    wn = entry("wn", RAW, site)
    url = sign_list(site, pki, "/site.list", SITE_LIST, [wn], "1")
    image_id = cloudkeeper_upload(glance, vo_project, wn, RAW, SITE_LIST)
    # an older copy cloudkeeper-os itself marked for its own clean-up
    eol = cloudkeeper_upload(glance, vo_project, wn, RAW, SITE_LIST)
    patch_image(
        glance,
        vo_project,
        eol,
        [{"op": "replace", "path": "/APPLIANCE_STATUS", "value": "EOL"}],
        MEMBER_ROLES,
    )
    subs = subscription(service, url)
    tool = CloudkeeperOS()

    def adopt():
        lines: list[str] = []
        adoption = Adoption(service.store, tool, service.s.seal_key, service.s.retire_mode)
        return service.run(subs, out=lines.append, adoption=adoption), lines

    report, lines = adopt()
    (failure,) = report.failures
    assert failure.startswith(f"image wn: cloudkeeper-os image {image_id} (Example worker node)")
    assert f"owned by project {vo_project}, not by the sync's project {project}" in failure
    assert f"'openstack image set --project {project} {image_id}'" in failure
    assert project_images(glance, project) == {}, "not copied"
    assert any(f"cloudkeeper-os image {eol} " in line and "marked it as replaced" in line
               for line in lines)  # fmt: skip

    moved = patch_image(
        glance,
        "admin",
        image_id,
        [{"op": "replace", "path": "/owner", "value": project}],
        ADMIN_ROLES,
    )
    assert moved.status_code == 200, moved.text
    report, _ = adopt()
    assert report.failures == [], report.failures
    image = project_images(glance, project)[image_id]
    verdict = judge(service, image)
    assert verdict.trusted and verdict.record.list_identifier == SITE_LIST
    assert image["visibility"] == "shared"
    assert members(glance, project, image_id) == {vo_project: "accepted"}
    assert image_id in visible_to(glance, vo_project)
    assert {k for k in image if k.startswith("APPLIANCE_")} == {"APPLIANCE_ATTRIBUTES"}
    assert json.loads(image["APPLIANCE_ATTRIBUTES"]) == wn["hv:image"]
    assert "vmcatcher_event_ad_mpuri" not in image  # the entry has no ad:mpuri
    again = service.run(subs)
    assert (again.done, again.failures) == ([], [])
