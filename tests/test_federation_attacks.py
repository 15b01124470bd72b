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
    svc.fence = lambda target, identifier: member.fence(f"{tag}-{target}", identifier)
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
