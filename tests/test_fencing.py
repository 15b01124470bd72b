# ruff: noqa: F401, F811  (pytest fixtures imported from etcd_server, then requested by name)
"""A worker whose target lock lapsed mid-upload commits no seal (decision 0011).

The lock is real (tooz on a real etcd); its lapse is the lease revoked while
the worker holds it, as when the worker was frozen longer than the lease (the
SIGSTOP attack itself is in tests/test_coordination.py).  The pass goes on
for the targets still held; the lapsed one reports one line, and its store
holds nothing: no sealed image, no leftover upload.
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
