"""EGI's publisher, cloud-info-provider 1.2, reads what the sync put into the real Glance.

cloud-info-provider runs from its own environment (``.venv-cip``, ``make
venv-cip``), unchanged, through its own ``main()`` (``tests/cip_main.py``; only
its GOCDB look-up, which would leave this machine, answers "not registered").
Its OpenStack provider needs Keystone and Nova too: a minimal stand-in at the
HTTP boundary gives it tokens, the catalogue and two flavours
(``tests/openstack_standin.py``).  Glance is the session's real Glance: the
token the stand-in issues is scoped to the VO project, so the publisher sees
exactly that project's default image list — the images whose membership the
project accepted — as it would at a site.

What the federation must see: every approved image, for its VO only, with the
marketplace URL, description, OS, version and every key of the list entry
(``APPLIANCE_ATTRIBUTES`` → GLUE ``OtherInfo``); nothing unapproved; and for a
VO project without a cloud, nothing until the VO accepts (issue 19).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from glance_server import MEMBER_ROLES
from openstack_standin import FLAVORS, Cloud, StandIn
from test_glance_share import vo_cloud, with_vo
from test_glance_store import VO, _url, project_images, publish_other, small
from test_sync_local import entry, publish

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("VMTRUST_CIP_VENV", ROOT / ".venv-cip"))
OTHER_VO = "vo.other.org"


@pytest.fixture(scope="module")
def cip() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / "bin" / "cloud-info-provider-service").exists():
        why = f"no cloud-info-provider environment at {VENV} (run 'make venv-cip')"
        if os.environ.get("VMTRUST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"cloud-info-provider is required here: {why}")
        pytest.skip(why)
    return python


def publish_site(cip: Path, cloud: Cloud, vos: dict[str, str], tmp_path: Path) -> dict:
    """One cloud-info-provider run for the VOs (name → project); its GLUE 2.1 JSON."""
    site = tmp_path / f"site-{uuid.uuid4().hex[:6]}.yaml"
    site.write_text(
        f"gocdb: TEST-SITE\nendpoint: {cloud.auth_url}\nvos:\n"
        + "".join(f"  - name: {vo}\n    auth:\n      project_id: {p}\n" for vo, p in vos.items())
    )
    done = subprocess.run(
        [str(cip), str(ROOT / "tests" / "cip_main.py"), "--exit-on-share-errors",
         "--os-auth-type", "v3password", "--os-auth-url", cloud.auth_url,
         "--os-username", "publisher", "--os-password", "secret",
         "--os-user-domain-name", "Default", str(site)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NO_PROXY": "*"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def images_by_vo(glue: dict) -> dict[str, dict[str, dict]]:
    """VO → Glance image id → the GLUE image cloud-info-provider published in its share."""
    vo_of_share = {
        share: policy["Associations"]["PolicyUserDomain"][0]
        for policy in glue["MappingPolicy"]
        for share in policy["Associations"]["Share"]
    }
    result: dict[str, dict[str, dict]] = {vo: {} for vo in vo_of_share.values()}
    for image in glue.get("CloudComputingImage", []):
        for share in image["Associations"]["Share"]:
            result[vo_of_share[share]][image["ID"]] = image
    return result


def appdb_entry(identifier: str, site, **fields) -> dict:
    data = small(identifier)
    item = entry(identifier, data, site)
    item["hv:image"].update(
        {
            "ad:mpuri": f"https://appdb.example.org/store/vm/image/{identifier}:7/",
            "ad:base_mpuri": f"https://appdb.example.org/store/vm/image/{identifier}/",
            "ad:user:fullname": "Jane Endorser",
            "dc:description": f"Worker node {identifier} for the federation",
            "sl:osversion": "9.4",
            **fields,
        }
    )
    return item


def test_every_approved_image_is_published_for_its_vo_with_the_lists_metadata(
    cip, glance_sync, site, pki, glance, tmp_path
):
    # vo.example.org: project B, whose cloud lets the sync accept; two approved images
    # and one the site did not approve.  vo.other.org: project C, no cloud.
    b, conn_b, _ = vo_cloud(glance, tmp_path, "b")
    c = "voc" + uuid.uuid4().hex[:10]
    with_vo(glance_sync, {VO: [(b, conn_b)], OTHER_VO: [(c, None)]})
    entries = {
        "img-a": appdb_entry("img-a", site, **{"sl:osname": "AlmaLinux"}),
        "img-b": appdb_entry("img-b", site, **{"sl:osname": "Ubuntu", "sl:osversion": "24.04"}),
        "img-x": appdb_entry("img-x", site),
        "img-c": appdb_entry("img-c", site),
    }
    publish(site, pki, [entries[n] for n in ("img-a", "img-b", "img-x")], "1")
    publish_other(site, pki, [entries["img-c"]], "1")
    example = dataclasses.replace(
        glance_sync.subs[0], vo=VO, approve_all=False, identifiers=frozenset({"img-a", "img-b"})
    )
    other = dataclasses.replace(
        glance_sync.subs[0], name="other", url=site.url("/other.list"), vo=OTHER_VO
    )
    report = glance_sync.run((example, other))
    assert report.failures == [], report.failures
    ids = {
        image["vmtrust_image_identifier"]: image_id
        for image_id, image in project_images(glance, glance_sync.project).items()
    }
    assert set(ids) == {"img-a", "img-b", "img-c"}

    vos = {VO: b, OTHER_VO: c}
    with StandIn(Cloud(glance.url, {"publisher": "secret"})) as cloud:
        published = images_by_vo(publish_site(cip, cloud, vos, tmp_path))

        assert set(published[VO]) == {ids["img-a"], ids["img-b"]}
        for name in ("img-a", "img-b"):
            glue, listed = published[VO][ids[name]], entries[name]["hv:image"]
            assert glue["MarketplaceURL"] == listed["ad:mpuri"]
            assert glue["Description"] == listed["dc:description"]
            assert glue["Name"] == listed["dc:title"]
            assert glue["OSName"] == listed["sl:osname"].lower()
            assert glue["OSVersion"] == listed["sl:osversion"]
            assert glue["OSPlatform"] == "x86_64"
            # APPLIANCE_ATTRIBUTES: every key of the entry, plus the base_mpuri copy
            # cloud-info-provider makes for AppDB and cloud-info-api.
            assert glue["OtherInfo"] == {**listed, "base_mpuri": listed["ad:base_mpuri"]}
        # Project C has no cloud: its membership is pending, so the federation sees nothing.
        assert published[OTHER_VO] == {}
        # The flavours came from the stand-in, the images from the real Glance only.
        assert {f["name"] for f in FLAVORS} <= {
            t["Name"] for t in publish_site(cip, cloud, {VO: b}, tmp_path)[
                "CloudComputingInstanceType"]
        }  # fmt: skip

        # The VO does what 'vmtrust status' tells it to ('openstack image set --accept').
        reply = glance.api(c, MEMBER_ROLES).put(
            _url(glance, f"/images/{ids['img-c']}/members/{c}"), json={"status": "accepted"}
        )
        assert reply.status_code == 200, reply.text
        published = images_by_vo(publish_site(cip, cloud, vos, tmp_path))
    assert set(published[OTHER_VO]) == {ids["img-c"]}
    assert set(published[VO]) == {ids["img-a"], ids["img-b"]}
    glue = published[OTHER_VO][ids["img-c"]]
    assert glue["MarketplaceURL"] == entries["img-c"]["hv:image"]["ad:mpuri"]


def test_an_image_without_appdb_metadata_is_published_with_what_the_list_gives(
    cip, glance_sync, site, pki, glance, tmp_path
):
    """A plain HEPiX entry (no ad:* keys): cloud-info-provider falls back to Glance's own
    file URL for the marketplace URL; everything else comes from the entry."""
    b, conn_b, _ = vo_cloud(glance, tmp_path, "b")
    with_vo(glance_sync, {VO: [(b, conn_b)]})
    plain = entry("plain-1", small("p"), site)
    assert not [key for key in plain["hv:image"] if key.startswith("ad:")]
    publish(site, pki, [plain], "1")
    subs = (dataclasses.replace(glance_sync.subs[0], vo=VO),)
    assert glance_sync.run(subs).failures == []
    (image_id,) = project_images(glance, glance_sync.project)
    with StandIn(Cloud(glance.url, {"publisher": "secret"})) as cloud:
        published = images_by_vo(publish_site(cip, cloud, {VO: b}, tmp_path))
    glue = published[VO][image_id]
    assert glue["MarketplaceURL"] == f"{glance.url}/v2/images/{image_id}/file"
    assert glue["Description"] == plain["hv:image"]["dc:description"]
    assert glue["OtherInfo"] == plain["hv:image"]
