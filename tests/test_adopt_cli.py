"""``vmtrust-sync --adopt atrope`` as a site runs it: the command, its dry run, kill -9.

atrope 2.0.0 fills the real Glance first (``tests/atrope_run.py``); then the
command runs as a process with a vmtrust.conf, its Glance connection through a
loopback proxy (``tests/tcpproxy.py``) that swallows one chosen request — reading
an image back, the commit PATCH of an adoption, the upload of a re-upload, the
retirement of atrope's copy, its deactivation — and the process is killed -9 while
it waits.  The re-run must converge to exactly what an uninterrupted adoption
gives, and a normal pass afterwards must change nothing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from atrope_run import appdb_entry
from conftest import write_clouds_yaml
from glance_server import MEMBER_ROLES, SERVICE_ROLES
from hostile_images import made, needs_qemu_img
from openstack_standin import Cloud, StandIn
from tcpproxy import Rule, TcpProxy
from test_adopt_atrope import RAW, SITE_LIST, atrope_pass, sign_list, source, tagged
from test_glance_store import VO, members, project_images, visible_to

from vmtrust import glanceprops
from vmtrust.record import generate_key_pair, load_private_key

BIN = Path(sys.executable).parent


@pytest.fixture
def migrating(glance, site, pki, ca_dir, tmp_path):
    """A site atrope has filled: ``img-raw`` (adoptable in place) and ``img-qcow2``
    (labelled raw by atrope: uploaded again), shared with the VO's project; and a
    vmtrust.conf for the same project, its Glance connection through ``proxy``."""
    project = "svc" + uuid.uuid4().hex[:12]
    vo_project = "vo" + uuid.uuid4().hex[:12]
    qcow2 = made(tmp_path, "wn.qcow2", "qcow2", "1M")
    url = sign_list(site, pki, "/site.list", SITE_LIST, [
        appdb_entry("img-raw", RAW, site),
        appdb_entry("img-qcow2", qcow2, site, fmt="QCOW2"),
    ], "1")  # fmt: skip
    with StandIn(Cloud(glance.url, {"atrope": "secret"})) as keystone:
        atrope_pass(tmp_path, keystone, project, ca_dir,
                    {"egi-site": source(url, pki, vo_project)})  # fmt: skip
    generate_key_pair(tmp_path / "seal.key")
    (tmp_path / "subs.yaml").write_text(
        f"subscriptions:\n  - name: example\n    url: {url}\n"
        f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
        f"    vo: {VO}\n    approve: all\n"
    )
    with TcpProxy(glance.port) as proxy:
        clouds = tmp_path / "clouds.yaml"
        write_clouds_yaml(clouds, proxy.url, {"sync": (project, SERVICE_ROLES)})
        write_clouds_yaml(tmp_path / "vo.yaml", glance.url, {"vo": (vo_project, MEMBER_ROLES)})
        with clouds.open("a") as out:  # the VO project's cloud, straight to Glance
            out.write((tmp_path / "vo.yaml").read_text().removeprefix("clouds:\n"))
        conf = tmp_path / "vmtrust.conf"
        conf.write_text(
            f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
            f"[trust]\nca_dir = {ca_dir}\nseal_key = {tmp_path}/seal.key\n"
            f"[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\nstore = glance\n"
            f"[store_glance]\ncloud = sync\nclouds_file = {clouds}\nproject_id = {project}\n"
            f"vo_project = {VO}:{vo_project}:vo\n"
        )
        yield {
            "conf": conf,
            "project": project,
            "vo_project": vo_project,
            "atrope": tagged(glance, project),
            "proxy": proxy,
            "key": load_private_key(tmp_path / "seal.key").public_key(),
        }


def sync(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "vmtrust-sync", "--config-file", conf, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def trusted(glance, migrating) -> dict[str, list[str]]:
    """identifier → ids of the images the filter's rule trusts."""
    result: dict[str, list[str]] = {}
    now = datetime.now(UTC)
    for image in project_images(glance, migrating["project"]).values():
        verdict = glanceprops.judge(image, [migrating["key"]], now, owners=[migrating["project"]])
        if verdict.trusted:
            result.setdefault(verdict.record.image_identifier, []).append(image["id"])
    return result


def converged(glance, migrating) -> None:
    """What an uninterrupted adoption gives, and a normal pass that changes nothing."""
    atrope = migrating["atrope"]
    raw_id, copy_id = atrope["img-raw"]["id"], atrope["img-qcow2"]["id"]
    found = trusted(glance, migrating)
    assert set(found) == {"img-raw", "img-qcow2"}
    assert found["img-raw"] == [raw_id], "adopted in place, once"
    assert len(found["img-qcow2"]) == 1 and found["img-qcow2"] != [copy_id]
    images = project_images(glance, migrating["project"])
    assert len(images) == 3, "no leftover upload, no second copy"
    copy = images[copy_id]
    assert copy["status"] == "deactivated" and copy[glanceprops.STATE] == "retired"
    vo_project = migrating["vo_project"]
    for image_id in (raw_id, found["img-qcow2"][0]):
        assert members(glance, migrating["project"], image_id) == {vo_project: "accepted"}
        assert image_id in visible_to(glance, vo_project)
    migrating["proxy"].rules.clear()
    dry = sync(migrating["conf"], "--dry-run")
    assert dry.returncode == 0 and dry.stdout.strip() == "nothing to do", dry.stdout + dry.stderr
    again = sync(migrating["conf"], "-v")
    assert again.returncode == 0, again.stderr
    assert "sync complete: 0 change(s)" in again.stderr
    assert project_images(glance, migrating["project"]) == images


# --- the command ---------------------------------------------------------------------------


@needs_qemu_img
def test_dry_run_prints_the_plan_then_adoption_keeps_the_ids(glance, migrating):
    before = project_images(glance, migrating["project"])
    raw_id = migrating["atrope"]["img-raw"]["id"]
    dry = sync(migrating["conf"], "--adopt", "atrope", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0].startswith(f"adopt    img-raw 1 (Example worker node): atrope image {raw_id}")
    assert lines[1].startswith("re-upload img-qcow2: atrope image ")
    assert lines[2].startswith("create  img-qcow2 1 (Example worker node) from example")
    assert len(lines) == 3
    assert project_images(glance, migrating["project"]) == before, "a dry run changes nothing"
    done = sync(migrating["conf"], "--adopt", "atrope")
    assert done.returncode == 0, done.stderr
    converged(glance, migrating)


def test_adopt_needs_the_glance_store_and_is_one_pass(tmp_path, ca_dir):
    generate_key_pair(tmp_path / "seal.key")
    (tmp_path / "subs.yaml").write_text("subscriptions: []\n")
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n[trust]\nca_dir = {ca_dir}\n"
        f"seal_key = {tmp_path}/seal.key\n[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\n"
        f"[store_local]\npath = {tmp_path}/store\n"
    )
    local = sync(conf, "--adopt", "atrope")
    assert local.returncode == 4
    assert local.stderr == (
        "vmtrust-sync: --adopt atrope: needs [sync] store = glance (atrope wrote to Glance)\n"
    )
    daemon = sync(conf, "--adopt", "atrope", "--daemon")
    assert daemon.returncode == 2 and "--adopt is one pass" in daemon.stderr
    tag = sync(conf, "--adopt", "cloudkeeper-os", "--adopt-tag", "x")
    assert tag.returncode == 2 and "--adopt-tag goes with --adopt atrope" in tag.stderr
    unknown = sync(conf, "--adopt", "vmcatcher")
    assert unknown.returncode == 2 and "invalid choice: 'vmcatcher'" in unknown.stderr


# --- kill -9 in the middle, then the same command again --------------------------------------


def _rules(migrating) -> dict[str, Rule]:
    raw_id = migrating["atrope"]["img-raw"]["id"]
    copy_id = migrating["atrope"]["img-qcow2"]["id"]
    return {
        "reading back": Rule("GET", f"/v2/images/{raw_id}/file", stall=True),
        "commit of the adoption": Rule("PATCH", f"/v2/images/{raw_id}", stall=True),
        "re-upload": Rule("PUT", "/file", stall=True),
        "handing over atrope's copy": Rule("PATCH", f"/v2/images/{copy_id}", stall=True),
        "deactivating atrope's copy": Rule("POST", f"/v2/images/{copy_id}/actions", stall=True),
    }


@needs_qemu_img
@pytest.mark.parametrize(
    "moment",
    [
        "reading back",
        "commit of the adoption",
        "re-upload",
        "handing over atrope's copy",
        "deactivating atrope's copy",
    ],
)
def test_kill_9_in_the_middle_of_adoption_then_rerun_converges(glance, migrating, moment):
    rule = _rules(migrating)[moment]
    migrating["proxy"].rules[:] = [rule]
    process = subprocess.Popen(
        [BIN / "vmtrust-sync", "--config-file", migrating["conf"], "--adopt", "atrope"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while rule.hits == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # whatever else the process would do meanwhile, let it
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert rule.hits == 1, f"the kill should land at the {moment}"
    migrating["proxy"].rules.clear()
    rerun = sync(migrating["conf"], "--adopt", "atrope")
    assert rerun.returncode == 0, rerun.stderr
    converged(glance, migrating)


def test_when_the_tool_s_images_cannot_be_listed_nothing_is_uploaded(glance, migrating):
    """Without atrope's images every approved image would look missing: the pass stops
    before its plan, in one line, rather than upload a second copy of each."""
    before = project_images(glance, migrating["project"])
    migrating["proxy"].rules[:] = [Rule("GET", "tag=atrope", status=503, times=None)]
    done = sync(migrating["conf"], "--adopt", "atrope")
    assert done.returncode == 1
    ours = [line for line in done.stderr.splitlines() if line.startswith("vmtrust-sync: ")]
    assert ours == [
        "vmtrust-sync: adopt atrope: cannot list its images: glance GET /images: "
        "HTTP 503 Proxy Failure"
    ]  # after keystoneauth's own retries, which it logs
    assert project_images(glance, migrating["project"]) == before
