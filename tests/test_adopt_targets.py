"""``vmtrust-sync --adopt atrope`` with several targets (``[sync] targets``), as a process.

Two targets are two projects of the session's real Glance (each its own Glance
store, as two clouds would be; the same Glance lets atrope share an image from
one target's project into the other's, which two clouds could not), and a third
target's Glance is down (nothing listens at its endpoint).  atrope 2.0.0 itself
uploads into the first project (``tests/atrope_run.py``), sharing its images
with the second project as a VO project, as EGI's sites configure it.

Each target is surveyed for atrope's images on its own and gets its own
adoption plan, printed led by the target's name; the dead target fails alone in
one line and the others are adopted; a target whose listing of atrope's images
fails (HTTP 503 through ``tests/tcpproxy.py``) plans nothing while the other
adopts, and adopts on the next run; a local target beside a Glance one gets its
normal plan, and a configuration without a Glance target is one line.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from atrope_run import appdb_entry
from conftest import write_clouds_yaml
from glance_server import SERVICE_ROLES, free_port
from openstack_standin import Cloud, StandIn
from tcpproxy import Rule, TcpProxy
from test_adopt_atrope import RAW, SITE_LIST, atrope_pass, sign_list, source, tagged
from test_glance_store import project_images

from vmtrust import glanceprops
from vmtrust.record import generate_key_pair, load_private_key

BIN = Path(sys.executable).parent
OLD = b"version one of the other image " * 3000
NEW = b"version two of the other image " * 3000


def _atrope(glance, site, pki, ca_dir, tmp_path, project: str, shared_with: str = "") -> str:
    """atrope's upload of ``img-raw`` 1 and ``img-old`` 1 into ``project``; then the list
    moves ``img-old`` to version 2.  Returns the list's URL."""
    url = sign_list(site, pki, "/site.list", SITE_LIST, [
        appdb_entry("img-raw", RAW, site), appdb_entry("img-old", OLD, site),
    ], "1")  # fmt: skip
    with StandIn(Cloud(glance.url, {"atrope": "secret"})) as keystone:
        atrope_pass(tmp_path, keystone, project, ca_dir,
                    {"egi-site": source(url, pki, shared_with)})  # fmt: skip
    return sign_list(site, pki, "/site.list", SITE_LIST, [
        appdb_entry("img-raw", RAW, site), appdb_entry("img-old", NEW, site, version="2"),
    ], "2")  # fmt: skip


def _conf(tmp_path: Path, ca_dir, pki, url: str, clouds: Path, projects: dict[str, str]) -> Path:
    generate_key_pair(tmp_path / "seal.key")
    (tmp_path / "subs.yaml").write_text(
        f"subscriptions:\n  - name: example\n    url: {url}\n"
        f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
        "    approve: all\n"
    )
    sections = "".join(
        f"[target:{name}]\nstore = glance\ncloud = {name}\nproject_id = {project}\n"
        for name, project in projects.items()
    )
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
        f"[trust]\nca_dir = {ca_dir}\nseal_key = {tmp_path}/seal.key\n"
        f"[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\n"
        f"targets = {', '.join(projects)}\nhttp_retries = 1\nhttp_backoff = 0.01\n"
        f"[store_glance]\nclouds_file = {clouds}\napi_timeout = 10\n{sections}"
    )
    return conf


def sync(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "vmtrust-sync", "--config-file", conf, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def trusted(glance, project: str, key) -> dict[str, tuple[str, str]]:
    """identifier → (image id, version) of the images the filter's rule trusts."""
    found = {}
    for image in project_images(glance, project).values():
        verdict = glanceprops.judge(image, [key], datetime.now(UTC), owners=[project])
        if verdict.trusted:
            record = verdict.record
            assert record.image_identifier not in found, "one trusted image per identifier"
            found[record.image_identifier] = (image["id"], record.image_version)
    return found


def test_each_target_its_own_adoption_plan_and_a_dead_target_fails_alone(
    glance, site, pki, ca_dir, tmp_path
):
    north, south = "north" + uuid.uuid4().hex[:10], "south" + uuid.uuid4().hex[:10]
    url = _atrope(glance, site, pki, ca_dir, tmp_path, north, shared_with=south)
    atrope = tagged(glance, north)
    raw_id, old_id = atrope["img-raw"]["id"], atrope["img-old"]["id"]
    assert raw_id in {i["id"] for i in glance.api(south).get(f"{glance.url}/v2/images").json()[
        "images"]}, "south's project sees north's atrope images (shared, accepted)"  # fmt: skip
    clouds = write_clouds_yaml(tmp_path / "clouds.yaml", glance.url, {
        "north": (north, SERVICE_ROLES), "south": (south, SERVICE_ROLES),
    })  # fmt: skip
    dead = write_clouds_yaml(tmp_path / "dead.yaml", f"http://127.0.0.1:{free_port()}",
                             {"gone": ("gone", SERVICE_ROLES)})  # fmt: skip
    with clouds.open("a") as out:
        out.write(dead.read_text().removeprefix("clouds:\n"))
    conf = _conf(
        tmp_path, ca_dir, pki, url, clouds, {"north": north, "south": south, "gone": "gone"}
    )
    key = load_private_key(tmp_path / "seal.key").public_key()
    before = {p: project_images(glance, p) for p in (north, south)}

    # 1. the dry run: each target's plan, led by its name; the dead one is one line
    dry = sync(conf, "--adopt", "atrope", "--dry-run")
    assert dry.returncode == 1, dry.stderr
    (failure,) = dry.stderr.splitlines()
    assert failure.startswith("vmtrust-sync: target gone: glance GET ") and "connect" in failure
    lines = dry.stdout.splitlines()
    north_lines = [line for line in lines if line.startswith("target north: ")]
    south_lines = [line for line in lines if line.startswith("target south: ")]
    assert len(north_lines) + len(south_lines) == len(lines), lines
    assert north_lines[0].startswith(
        f"target north: adopt    img-raw 1 (Example worker node): atrope image {raw_id}"
    )
    assert north_lines[1].startswith(f"target north: re-upload img-old: atrope image {old_id}")
    assert "than the list has now (version 2, sha512 " in north_lines[1]
    assert north_lines[2].startswith("target north: create  img-old 2 ")
    assert len(north_lines) == 3, north_lines
    # south sees north's images (shared with it) and leaves them to north
    for image_id in (raw_id, old_id):
        assert any(
            line.startswith(f"target south: leave    atrope image {image_id} ")
            and f"owned by project {north}, target north's: adopted there, not here" in line
            for line in south_lines
        ), south_lines
    assert {line.split(" (")[0] for line in south_lines if " create " in line} == {
        "target south: create  img-raw 1", "target south: create  img-old 2",
    }  # fmt: skip
    assert {p: project_images(glance, p) for p in (north, south)} == before, "dry run: no change"

    # 2. adoption: north keeps atrope's id, south gets its own, gone fails in one line
    done = sync(conf, "--adopt", "atrope")
    assert done.returncode == 1
    (failure,) = done.stderr.splitlines()
    assert failure.startswith("vmtrust-sync: target gone: glance GET ")
    in_north = trusted(glance, north, key)
    assert in_north["img-raw"] == (raw_id, "1"), "adopted in place: its id kept"
    assert in_north["img-old"][1] == "2" and in_north["img-old"][0] != old_id
    copy = project_images(glance, north)[old_id]
    assert copy["status"] == "deactivated" and copy[glanceprops.STATE] == "retired"
    in_south = trusted(glance, south, key)
    assert set(in_south) == {"img-raw", "img-old"}
    assert in_south["img-raw"][0] != raw_id and in_south["img-old"][1] == "2"
    images = project_images(glance, south)
    assert all(i["owner"] == south for i in images.values()) and len(images) == 2
    assert hashlib.sha512(RAW).hexdigest() == images[in_south["img-raw"][0]]["os_hash_value"]

    # 3. each target's outcome is its own; a normal pass then has nothing to do but the dead
    status = {
        name: json.loads(subprocess.run(
            [BIN / "vmtrust", "--config-file", conf, "status", "--json", "--target", name],
            capture_output=True, text=True, check=True,
        ).stdout)
        for name in ("north", "south", "gone")
    }  # fmt: skip
    assert status["north"]["last_error"] is None and status["south"]["last_error"] is None
    assert status["gone"]["last_error"].startswith("target gone: glance GET ")
    dry = sync(conf, "--dry-run")
    assert dry.stdout.splitlines() == ["target north: nothing to do", "target south: nothing to do"]


def test_a_target_whose_listing_fails_plans_nothing_and_the_other_is_adopted(
    glance, site, pki, ca_dir, tmp_path
):
    """atrope in both targets' projects; north's Glance fails the listing of atrope's images
    (503): one line for north, which uploads nothing (every approved image would look
    missing), and south adopts in place.  The next run adopts north too."""
    north, south = "north" + uuid.uuid4().hex[:10], "south" + uuid.uuid4().hex[:10]
    for project in (north, south):
        url = _atrope(glance, site, pki, ca_dir, tmp_path / project, project)
    ids = {p: {k: v["id"] for k, v in tagged(glance, p).items()} for p in (north, south)}
    with TcpProxy(glance.port) as proxy:
        clouds = write_clouds_yaml(tmp_path / "clouds.yaml", proxy.url,
                                   {"north": (north, SERVICE_ROLES)})  # fmt: skip
        direct = write_clouds_yaml(tmp_path / "south.yaml", glance.url,
                                   {"south": (south, SERVICE_ROLES)})  # fmt: skip
        with clouds.open("a") as out:
            out.write(direct.read_text().removeprefix("clouds:\n"))
        conf = _conf(tmp_path, ca_dir, pki, url, clouds, {"north": north, "south": south})
        key = load_private_key(tmp_path / "seal.key").public_key()
        untouched = project_images(glance, north)
        proxy.rules[:] = [Rule("GET", "tag=atrope", status=503, times=None)]
        done = sync(conf, "--adopt", "atrope")
        assert done.returncode == 1
        ours = [line for line in done.stderr.splitlines() if line.startswith("vmtrust-sync: ")]
        assert ours == [
            "vmtrust-sync: target north: adopt atrope: cannot list its images: glance GET "
            "/images: HTTP 503 Proxy Failure"
        ]
        assert project_images(glance, north) == untouched, "nothing uploaded beside atrope's"
        in_south = trusted(glance, south, key)
        assert in_south["img-raw"] == (ids[south]["img-raw"], "1")
        assert in_south["img-old"][1] == "2"

        proxy.rules.clear()
        again = sync(conf, "--adopt", "atrope", "--log-format", "json", "-v")
        assert again.returncode == 0, again.stderr
        # the adoption is an event of its target, with the image it is about
        records = [json.loads(line) for line in again.stderr.splitlines()]
        (adopted,) = [r for r in records if "adopted img-raw" in r["message"]]
        assert (adopted["target"], adopted["subscription"], adopted["image"]) == (
            "north", "example", "img-raw",
        )  # fmt: skip
        assert adopted["message"] == (
            f"target north: adopted img-raw 1: atrope image {ids[north]['img-raw']} kept its id"
        )
        assert trusted(glance, north, key)["img-raw"] == (ids[north]["img-raw"], "1")
        assert trusted(glance, south, key) == in_south, "south: nothing more to do"


def test_targets_of_other_stores_get_their_normal_plan_and_none_of_glance_is_one_line(
    glance, site, pki, ca_dir, tmp_path
):
    """A local archive beside a Glance target: the archive holds nothing atrope made and
    gets the normal plan; a configuration without a Glance target is refused in one line."""
    project = "svc" + uuid.uuid4().hex[:10]
    url = sign_list(site, pki, "/site.list", SITE_LIST, [appdb_entry("img-raw", RAW, site)], "1")
    clouds = write_clouds_yaml(tmp_path / "clouds.yaml", glance.url,
                               {"cloud": (project, SERVICE_ROLES)})  # fmt: skip
    conf = _conf(tmp_path, ca_dir, pki, url, clouds, {"cloud": project})
    text = conf.read_text().replace("targets = cloud\n", "targets = cloud, archive\n")
    conf.write_text(text + f"[target:archive]\nstore = local\npath = {tmp_path}/archive\n")
    dry = sync(conf, "--adopt", "atrope", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "target cloud: adopt    nothing: no atrope image of an approved list",
        "target cloud: create  img-raw 1 (Example worker node) from example",
        "target archive: create  img-raw 1 (Example worker node) from example",
    ]
    done = sync(conf, "--adopt", "atrope")
    assert done.returncode == 0, done.stderr
    assert len(project_images(glance, project)) == 1
    conf.write_text(
        text.replace("targets = cloud, archive\n", "targets = archive\n").split("[target:cloud]")[0]
        + f"[target:archive]\nstore = local\npath = {tmp_path}/archive\n"
    )
    local = sync(conf, "--adopt", "atrope", "--dry-run")
    assert (local.returncode, local.stderr) == (
        4, "vmtrust-sync: --adopt atrope: needs [sync] store = glance (atrope wrote to Glance)\n"
    )  # fmt: skip
