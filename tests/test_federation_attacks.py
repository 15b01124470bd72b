# ruff: noqa: F401, F811  (pytest fixtures imported from etcd_server, then requested by name)
"""Attacks on a sync of several targets: what must never become a trusted image.

* A worker whose target lock lapsed mid-upload commits no seal (decision 0011).
  The lock is real (tooz on a real etcd); its lapse is the lease revoked while
  the worker holds it, as when the worker was frozen longer than the lease (the
  SIGSTOP attack itself is in tests/test_coordination.py).  The pass goes on
  for the targets still held; the lapsed one reports one line, and its store
  holds nothing: no sealed image, no leftover upload.
* A cloud that keeps other bytes than were streamed to it gets no seal, and the
  other targets of the same download are unharmed.
"""

from __future__ import annotations

import uuid

import pytest
from etcd_server import etcd
from test_federation import IMAGE_A, holdings, image_requests, key, local_targets, service
from test_federation import subscription as make_subscription
from test_sync_local import entry, publish

from glance_sync.coordination import ToozCoordination


@pytest.fixture
def member(etcd):
    coord = ToozCoordination(etcd.tooz_url, f"fence-{uuid.uuid4().hex[:6]}", 5)
    coord.start()
    yield coord
    coord.stop()


def _lapse(coord: ToozCoordination, name: str) -> None:
    """Revoke the lease of ``name``'s lock (what a freeze past the lease does)."""
    coord._held[name]._lease.revoke()


def _stored_files(tmp_path, name: str) -> list[str]:
    return sorted(p.name for p in (tmp_path / f"store-{name}").rglob("*") if p.is_file())


@pytest.mark.parametrize("names", [("a", "b", "c"), ("b",)], ids=["fan-out", "one-target"])
def test_a_target_whose_lock_lapsed_gets_no_seal_and_the_others_do(
    tmp_path, ca_dir, site, pki, key, member, names
):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    tag = uuid.uuid4().hex[:6]
    svc = service(tmp_path, ca_dir, key, local_targets(tmp_path, key, names))
    svc.fence = lambda target, what: member.fence(f"{tag}-{target}", what)
    with member.locked(f"{tag}-b"):
        locks = [member.locked(f"{tag}-{n}") for n in names if n != "b"]
        for held in locks:
            assert held.__enter__()
        _lapse(member, f"{tag}-b")
        report = svc.run((make_subscription(site, pki),))
        for held in locks:
            held.__exit__(None, None, None)
    assert len(report.failures) == 1
    assert report.failures[0].startswith("target b: image a: target ") and (
        "lock lapsed before the commit" in report.failures[0]
    )
    assert holdings(svc, skip=("b",)) == {n: {"a": "1"} for n in names if n != "b"}
    assert list(svc.targets[names.index("b")].store.held()) == []
    before = _stored_files(tmp_path, "b")
    assert not [f for f in before if f.endswith((".img", ".raw", ".qcow2", ".part"))], before
    assert image_requests(site) == ["/img/a-1.img"]
    svc.close()


def test_a_target_whose_lock_lapsed_is_neither_resealed_nor_retired(
    tmp_path, ca_dir, site, pki, key, member
):
    """A resumed worker must not re-seal (refresh) what the new owner may have retired,
    nor retire what it stored: every commit of the target asks the fence."""
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", b"B" * 5000, site)], "1")
    tag = uuid.uuid4().hex[:6]
    svc = service(tmp_path, ca_dir, key, local_targets(tmp_path, key, ("b",)))
    svc.fence = lambda target, what: member.fence(f"{tag}-{target}", what)
    with member.locked(f"{tag}-b"):
        assert svc.run((make_subscription(site, pki),)).failures == []
    before = {h.store_id: (h.record, h.retired) for h in svc.targets[0].store.held()}
    assert len(before) == 2
    publish(site, pki, [entry("a", IMAGE_A, site)], "2")  # a's record is refreshed, b retired
    with member.locked(f"{tag}-b"):
        _lapse(member, f"{tag}-b")
        report = svc.run((make_subscription(site, pki),))
    assert sorted(line.split(":")[1].strip() for line in report.failures) == [
        "refresh a",
        "retire b",
    ], report.failures
    assert all(line.endswith(": not committed") for line in report.failures)
    after = {h.store_id: (h.record, h.retired) for h in svc.targets[0].store.held()}
    assert after == before  # nothing re-sealed, nothing retired
    with member.locked(f"{tag}-b"):  # the lock held again: the pass goes through
        assert svc.run((make_subscription(site, pki),)).failures == []
    assert sorted(h.retired for h in svc.targets[0].store.held()) == [False, True]
    svc.close()


def test_a_cloud_that_stores_other_bytes_than_were_sent_gets_no_seal_in_a_fan_out(
    tmp_path, ca_dir, site, pki, key, glance
):
    """The attack: one target's Glance keeps bytes that differ from those streamed to it
    (a byte changed on the way, as by a hostile proxy or a broken store).  Its own hash
    betrays it: that target's image is removed unsealed; the other target is unharmed."""
    from conftest import write_clouds_yaml
    from glance_server import SERVICE_ROLES
    from tcpproxy import Rule, TcpProxy
    from test_federation import glance_target

    projects = {n: "svc" + uuid.uuid4().hex[:10] for n in ("honest", "lying")}
    with TcpProxy(glance.port, [Rule("PUT", "/file", flip_at=300_000, times=None)]) as liar:
        clouds = tmp_path / "clouds.yaml"
        text = ["clouds:"]
        for name, url in (("honest", glance.url), ("lying", liar.url)):
            one = write_clouds_yaml(
                tmp_path / f"{name}.yaml", url, {name: (projects[name], SERVICE_ROLES)}
            )
            text += one.read_text().splitlines()[1:]
        clouds.write_text("\n".join(text) + "\n")
        targets = [glance_target(n, clouds, n, projects[n], key) for n in projects]
        publish(site, pki, [entry("a", IMAGE_A, site)], "1")
        svc = service(tmp_path, ca_dir, key, targets)
        report = svc.run((make_subscription(site, pki),))
        assert len(report.failures) == 1
        assert report.failures[0].startswith("target lying: image a: Glance's sha512 hash")
        assert "(removed)" in report.failures[0]
        assert holdings(svc, skip=("lying",)) == {"honest": {"a": "1"}}
        assert list(targets[1].store.held()) == []
        lying = glance.api(projects["lying"]).get(f"{glance.url}/v2/images").json()["images"]
        assert lying == []  # nothing sealed, nothing half-made left
        assert [s for s in liar.seen if s.startswith("PUT ")], "the upload went through the liar"
        svc.close()


def test_kill_9_mid_fan_out_then_the_next_pass_cleans_the_spool_and_every_partial_upload(
    tmp_path, ca_dir, site, pki, glance
):
    """``kill -9`` of a one-shot sync while a slow Glance target reads the spool: the
    spool file and Glance's half-made image are left behind; the next pass removes
    both and every target ends with its one trusted image."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from conftest import write_clouds_yaml
    from glance_server import SERVICE_ROLES
    from tcpproxy import Rule, TcpProxy

    from vmtrust.glanceprops import STATE
    from vmtrust.record import generate_key_pair

    root = Path(__file__).resolve().parent.parent
    image = os.urandom(6 * 1024 * 1024)
    publish(site, pki, [entry("a", image, site)], "1")
    generate_key_pair(tmp_path / "seal.key")
    project = "svc" + uuid.uuid4().hex[:10]
    with TcpProxy(glance.port, [Rule("PUT", "/file", rate=400_000, times=None)]) as slow:
        clouds = write_clouds_yaml(tmp_path / "clouds.yaml", slow.url,
                                   {"slow": (project, SERVICE_ROLES)})  # fmt: skip
        (tmp_path / "subs.yaml").write_text(
            f"subscriptions:\n  - name: example\n    url: {site.url('/site.list')}\n"
            f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
            "    approve: all\n"
        )
        conf = tmp_path / "vmtrust.conf"
        conf.write_text(
            f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
            f"[trust]\nca_dir = {ca_dir}\nseal_key = {tmp_path}/seal.key\n"
            f"[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\nhttp_retries = 0\n"
            "fanout_buffer = 1\ntargets = dir, slow\n"
            f"[target:dir]\nstore = local\npath = {tmp_path}/dir\n"
            f"[target:slow]\nstore = glance\ncloud = slow\nclouds_file = {clouds}\n"
            f"project_id = {project}\n"
        )
        env = dict(os.environ, PYTHONPATH=str(root))
        argv = [sys.executable, "-m", "glance_sync", "--config-file", str(conf)]
        doomed = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        work = tmp_path / "state" / "work"
        deadline = time.monotonic() + 60
        while not (work.is_dir() and [p for p in work.iterdir() if p.suffix == ".spool"]):
            assert doomed.poll() is None, doomed.stderr.read()
            assert time.monotonic() < deadline, "no spool was ever written"
            time.sleep(0.02)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
        doomed.stderr.close()
        assert [p.suffix for p in work.iterdir()] == [".spool"]  # left behind by the kill
        half = glance.api(project).get(f"{glance.url}/v2/images").json()["images"]
        assert len(half) == 1 and half[0][STATE] != "trusted"  # Glance's half-made image
        slow.rules.clear()
        again = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stderr
    assert list(work.iterdir()) == []
    (final,) = glance.api(project).get(f"{glance.url}/v2/images").json()["images"]
    assert final["id"] != half[0]["id"] and final[STATE] == "trusted"
    assert final["status"] == "active"
    assert not (glance.base / "images" / half[0]["id"]).exists()
    stored = [p for p in (tmp_path / "dir").rglob("*") if p.is_file()]
    assert [p.read_bytes() == image for p in stored if p.stat().st_size == len(image)] == [True]
