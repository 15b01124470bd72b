"""Glance's property protections, metadefs and nova snippet that vmtrust ships, on a real Glance.

The session's Glance (``tests/glance_server.py``) runs with
``etc/glance/property-protections-vmtrust.conf`` and the metadefs from
``etc/glance/metadefs``: only the sync's role ``vmtrust_service`` may create,
change or delete ``vmtrust_*`` properties; everyone may read them.  A copy of
the trust properties onto another image is never trusted.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from glance_server import ADMIN_ROLES, MEMBER_ROLES, SERVICE_ROLES
from test_sync_local import entry, publish

from vmtrust import glanceprops as gp

ROOT = Path(__file__).resolve().parent.parent
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
IMAGE_A = b"A" * 100_000


def _project() -> str:
    return "p" + uuid.uuid4().hex[:12]


def _create(glance, project: str, roles: str, **props: str):
    body = {"disk_format": "raw", "container_format": "bare", "name": "t", **props}
    return glance.api(project, roles).post(f"{glance.url}/v2/images", json=body, timeout=30)


def _patch(glance, project: str, roles: str, image_id: str, ops: list[dict]):
    return glance.api(project, roles).patch(
        f"{glance.url}/v2/images/{image_id}", json=ops, headers=PATCH, timeout=30
    )


def _get(glance, project: str, roles: str, image_id: str) -> dict:
    reply = glance.api(project, roles).get(f"{glance.url}/v2/images/{image_id}", timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.fixture
def service_image(glance):
    """An image in a fresh project, created by the sync's role with vmtrust properties."""
    project = _project()
    reply = _create(
        glance, project, SERVICE_ROLES, vmtrust_managed="true", vmtrust_state="uploading"
    )
    assert reply.status_code == 201, reply.text
    return project, reply.json()["id"]


# --- who may write vmtrust_* ---------------------------------------------------------------


@pytest.mark.parametrize("roles", [MEMBER_ROLES, ADMIN_ROLES])
def test_without_the_service_role_no_image_is_created_with_vmtrust_properties(glance, roles):
    project = _project()
    reply = _create(glance, project, roles, vmtrust_managed="true")
    assert reply.status_code == 403, reply.text
    assert "vmtrust_managed" in reply.text
    images = glance.api(project, roles).get(f"{glance.url}/v2/images?owner={project}").json()
    assert images["images"] == []
    # Other properties stay free for everyone (the [.*] section).
    plain = _create(glance, project, roles, os_distro="alma")
    assert plain.status_code == 201, plain.text


def test_the_service_role_creates_images_with_vmtrust_properties(glance):
    project = _project()
    reply = _create(glance, project, SERVICE_ROLES, vmtrust_managed="true", vmtrust_state="x")
    assert reply.status_code == 201, reply.text
    assert reply.json()[gp.MANAGED] == "true"


OPS = {
    "add": [{"op": "add", "path": "/vmtrust_seal", "value": "forged"}],
    "replace": [{"op": "replace", "path": "/vmtrust_state", "value": "trusted"}],
    "remove": [{"op": "remove", "path": "/vmtrust_managed"}],
}


@pytest.mark.parametrize("roles", [MEMBER_ROLES, ADMIN_ROLES])
@pytest.mark.parametrize("op", sorted(OPS))
def test_own_project_without_the_role_cannot_change_vmtrust_properties(
    glance, service_image, roles, op
):
    project, image_id = service_image
    before = _get(glance, project, roles, image_id)
    reply = _patch(glance, project, roles, image_id, OPS[op])
    assert reply.status_code == 403, reply.text
    after = _get(glance, project, roles, image_id)
    assert {k: v for k, v in after.items() if k.startswith(gp.PREFIX)} == {
        k: v for k, v in before.items() if k.startswith(gp.PREFIX)
    }
    # The same user may still change an ordinary property of the image.
    ok = _patch(
        glance, project, roles, image_id, [{"op": "add", "path": "/os_distro", "value": "x"}]
    )
    assert ok.status_code == 200, ok.text


def test_member_cannot_add_vmtrust_properties_to_its_own_plain_image(glance):
    project = _project()
    image_id = _create(glance, project, MEMBER_ROLES).json()["id"]
    for key in gp.ALL_PROPERTIES:
        ops = [{"op": "add", "path": f"/{key}", "value": "x"}]
        reply = _patch(glance, project, MEMBER_ROLES, image_id, ops)
        assert reply.status_code == 403, (key, reply.text)
    assert not [k for k in _get(glance, project, MEMBER_ROLES, image_id) if k.startswith("vmtrust")]


@pytest.mark.parametrize("op", sorted(OPS))
def test_the_service_role_changes_vmtrust_properties(glance, service_image, op):
    project, image_id = service_image
    reply = _patch(glance, project, SERVICE_ROLES, image_id, OPS[op])
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("roles", [MEMBER_ROLES, ADMIN_ROLES, SERVICE_ROLES])
def test_everyone_in_the_project_reads_vmtrust_properties(glance, service_image, roles):
    project, image_id = service_image
    image = _get(glance, project, roles, image_id)
    assert image[gp.MANAGED] == "true" and image[gp.STATE] == "uploading"


def test_member_of_a_project_the_image_is_shared_with_cannot_change_it(glance, service_image):
    project, image_id = service_image
    other = _project()
    owner = glance.api(project, SERVICE_ROLES)
    added = owner.post(f"{glance.url}/v2/images/{image_id}/members", json={"member": other})
    assert added.status_code == 200, added.text
    accepted = glance.api(other, MEMBER_ROLES).put(
        f"{glance.url}/v2/images/{image_id}/members/{other}", json={"status": "accepted"}
    )
    assert accepted.status_code == 200, accepted.text
    image = _get(glance, other, MEMBER_ROLES, image_id)  # it reads them
    assert image[gp.STATE] == "uploading"
    for roles in (MEMBER_ROLES, SERVICE_ROLES):
        for ops in OPS.values():
            reply = _patch(glance, other, roles, image_id, ops)
            assert reply.status_code == 403, (roles, ops, reply.text)
    after = _get(glance, project, SERVICE_ROLES, image_id)
    assert after[gp.STATE] == "uploading" and after[gp.MANAGED] == "true"
    assert gp.SEAL not in after


# --- vmtrust's own sync under the protections -----------------------------------------------


def _verdict(glance_sync, glance, image_id: str):
    image = _get(glance, glance_sync.project, MEMBER_ROLES, image_id)
    keys = [glance_sync.s.seal_key.public_key()]
    return gp.judge(image, keys, datetime.now(UTC), owners=[glance_sync.project])


def _images(glance, project: str) -> list[dict]:
    reply = glance.api(project, SERVICE_ROLES).get(
        f"{glance.url}/v2/images", params={"owner": project, "limit": 1000}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    hidden = glance.api(project, SERVICE_ROLES).get(
        f"{glance.url}/v2/images",
        params={"owner": project, "limit": 1000, "os_hidden": "true"},
        timeout=30,
    )
    return reply.json()["images"] + hidden.json()["images"]


def test_sync_stores_a_trusted_image_under_the_protections(glance_sync, glance, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    report = glance_sync.run(glance_sync.subs)
    assert report.failures == [] and report.exit_code == 0
    (image,) = _images(glance, glance_sync.project)
    assert image["status"] == "active" and image[gp.STATE] == "trusted"
    assert image["os_hash_value"] == hashlib.sha512(IMAGE_A).hexdigest()
    assert _verdict(glance_sync, glance, image["id"]).trusted


def test_trust_properties_copied_onto_another_image_are_never_trusted(
    glance_sync, glance, site, pki
):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    assert glance_sync.run(glance_sync.subs).exit_code == 0
    project = glance_sync.project
    (original,) = _images(glance, project)
    # The service project itself (the strongest copier) makes another image with other bytes
    # and copies every vmtrust_* property onto it.
    api = glance.api(project, SERVICE_ROLES)
    copy = _create(glance, project, SERVICE_ROLES).json()
    put = api.put(
        f"{glance.url}/v2/images/{copy['id']}/file",
        data=b"evil" * 1000,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert put.status_code == 204, put.text
    trust = {k: v for k, v in original.items() if k.startswith(gp.PREFIX)}
    assert set(trust) >= {gp.SEAL, gp.MANAGED, gp.STATE, "vmtrust_store_id"}
    ops = [{"op": "add", "path": f"/{k}", "value": v} for k, v in trust.items()]
    assert _patch(glance, project, SERVICE_ROLES, copy["id"], ops).status_code == 200
    verdict = _verdict(glance_sync, glance, copy["id"])
    assert not verdict.trusted
    assert verdict.reason == f"seal is bound to image {original['id']}, not this one"
    # The same bytes under the same record: still bound to the other id.
    assert _verdict(glance_sync, glance, original["id"]).trusted

    held = {h.store_id: h for h in glance_sync.store.held()}
    assert not held[copy["id"]].seal_ok
    assert held[copy["id"]].problem == verdict.reason  # the store's view: the same rule
    assert held[original["id"]].seal_ok

    report = glance_sync.run(glance_sync.subs)
    held = {h.store_id: h for h in glance_sync.store.held()}
    assert held[copy["id"]].retired and not held[copy["id"]].seal_ok
    assert held[original["id"]].seal_ok and not held[original["id"]].retired
    # The copy is quarantined (retired), never trusted; the original stays trusted and active.
    after = _get(glance, project, SERVICE_ROLES, copy["id"])
    assert after[gp.STATE] == "retired", (after[gp.STATE], report)
    assert after["status"] == "deactivated"  # retire_mode = deactivate: nova cannot boot it
    assert any(line.startswith("retired a") for line in report.done), report.done
    assert not _verdict(glance_sync, glance, copy["id"]).trusted
    assert _verdict(glance_sync, glance, original["id"]).trusted
    kept = _get(glance, project, SERVICE_ROLES, original["id"])
    assert kept["status"] == "active" and kept[gp.STATE] == "trusted"
    assert report.failures == []
    # A third run changes nothing more.
    again = glance_sync.run(glance_sync.subs)
    assert again.failures == [] and _verdict(glance_sync, glance, original["id"]).trusted


# --- metadefs -------------------------------------------------------------------------------


def _namespace(glance, name: str) -> dict:
    reply = glance.api(_project(), MEMBER_ROLES).get(
        f"{glance.url}/v2/metadefs/namespaces/{name}", timeout=30
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_metadefs_namespace_lists_exactly_the_vmtrust_properties(glance):
    ns = _namespace(glance, "OS::Site::VMTrust")
    assocs = {a["name"]: a.get("prefix") for a in ns["resource_type_associations"]}
    assert assocs == {"OS::Glance::Image": gp.PREFIX}
    names = {gp.PREFIX + name for name in ns["properties"]}
    assert names == set(gp.ALL_PROPERTIES)
    assert len(ns["properties"]) == len(gp.ALL_PROPERTIES)


def test_metadefs_scheduling_namespace_is_for_flavors_and_aggregates(glance):
    ns = _namespace(glance, "OS::Site::VMTrustScheduling")
    assocs = {a["name"]: a.get("prefix") for a in ns["resource_type_associations"]}
    assert set(assocs) == {"OS::Nova::Flavor", "OS::Nova::Aggregate"}
    assert assocs["OS::Nova::Flavor"] == "vmtrust:"
    assert "trusted_only" in ns["properties"]


# --- the nova snippet -----------------------------------------------------------------------


def test_nova_snippet_keeps_every_trust_property_out_of_snapshots():
    from oslo_config import cfg

    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.ListOpt("non_inheritable_image_properties", default=[]))
    conf(args=[], default_config_files=[str(ROOT / "etc/nova/nova-vmtrust-snapshots.conf")])
    names = conf.non_inheritable_image_properties
    assert len(names) == len(set(names))
    assert set(names) == {*gp.ALL_PROPERTIES, "cache_in_nova", "bittorrent"}
    conf.reset()
