"""The EC2 store when AWS misbehaves or the sync is killed: it retries, cleans up, converges.

Throttling and 5xx answers come from a real HTTP proxy in front of moto
(``tests/httpfault.py``) that answers chosen calls as AWS fails them; kill -9
is a real ``SIGKILL`` of a sync running in a child process
(``tests/ec2_child.py``) at a chosen AWS call.  Afterwards the account is
looked at directly, as in ``tests/test_ec2_store.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BUCKET, VO, VO_ACCOUNT, make_store, sync_settings
from httpfault import Fault, FaultProxy
from moto_ec2 import free_port, session
from test_ec2_store import (
    images,
    launch_permissions,
    managed_snapshots,
    published,
    tags,
    trusted,
)
from test_sync_local import IMAGE_A, entry, publish

from glance_sync.service import SyncService
from glance_sync.stores.ec2 import EC2Store
from glance_sync.stores.ec2_upload import BLOCK
from vmtrust import ec2client, ec2record
from vmtrust.imagelist import Endorser
from vmtrust.policy import Subscription
from vmtrust.record import generate_key_pair, load_private_key

TESTS = Path(__file__).resolve().parent
BIG = b"k" * (4 * BLOCK) + b"end"  # five blocks: room to die in the middle


@pytest.fixture
def faulty(tmp_path: Path, ca_dir: Path, site, pki, ec2_cloud):
    """A sync whose every AWS request passes through a fault proxy in front of moto."""
    generate_key_pair(tmp_path / "seal.key")
    key = load_private_key(tmp_path / "seal.key")
    with FaultProxy(ec2_cloud.url) as proxy:
        through = ec2client.clients(
            session(ec2_cloud.gaps), endpoint_url=proxy.url, attempts=4, timeout=20
        )
        cloud = type(ec2_cloud)(through, ec2_cloud.gaps, ec2_cloud.url)
        service = SyncService(
            sync_settings(tmp_path, ca_dir, key),
            make_store(cloud, key, tmp_path, not_found_wait=10.0),
        )
        service.subs = (  # type: ignore[attr-defined]  # for the test
            Subscription(
                name="example",
                url=site.url("/site.list"),
                endorsers=(Endorser(dn=pki.endorser.dn, ca=pki.endorser.ca_dn),),
                approve_all=True,
            ),
        )
        service.cloud = ec2_cloud  # type: ignore[attr-defined]  # direct, for the checks
        service.proxy = proxy  # type: ignore[attr-defined]  # for the test
        yield service
        service.close()


def assert_converged(service, identifiers: set[str]) -> None:
    """Only trusted AMIs of ``identifiers``, each published and shared; no leftovers."""
    cloud = service.cloud
    held = trusted(service)
    assert set(held) == identifiers
    states = {tags(image).get("vmtrust:state") for image in images(cloud).values()}
    assert states <= {"trusted"}, states
    used = {ec2record.root_snapshot(image) for image in images(cloud).values()}
    assert managed_snapshots(cloud) == used
    for _, image in held.values():
        assert launch_permissions(cloud, image["ImageId"]) == {VO_ACCOUNT}
        assert published(cloud, image["ImageId"]) is not None
        assert "DeprecationTime" in image


# --- throttling and server errors -------------------------------------------------------------


def test_throttling_and_5xx_are_retried_and_the_image_is_stored(faulty, site, pki):
    publish(site, pki, [entry("big", BIG, site)], "1")
    faults = [
        Fault("DescribeImages", 500, "InternalError"),
        Fault("StartSnapshot", 503, "InternalServerException"),
        Fault("PutSnapshotBlock", 429, "ThrottlingException", times=3),
        Fault("CompleteSnapshot", 503, "InternalServerException"),
        Fault("RegisterImage", 503, "RequestLimitExceeded", times=2),
        Fault("CreateTags", 500, "InternalError"),
        Fault("PutObject", 503, "SlowDown"),
        Fault("ModifyImageAttribute", 503, "Unavailable"),
    ]
    faulty.proxy.faults = faults
    report = faulty.run(faulty.subs)
    assert report.failures == [], report.failures
    assert [f.hits for f in faults] == [f.times for f in faults]  # every fault happened
    assert faulty.proxy.count("RegisterImage") == 3 and faulty.proxy.count("StartSnapshot") == 2
    assert_converged(faulty, {"big"})


def test_snapshot_not_found_right_after_start_is_waited_for(faulty, site, pki):
    publish(site, pki, [entry("big", BIG, site)], "1")
    fault = Fault("PutSnapshotBlock", 404, "ResourceNotFoundException", times=3)
    faulty.proxy.faults = [fault]
    assert faulty.run(faulty.subs).failures == []
    assert fault.hits == 3
    assert_converged(faulty, {"big"})


@pytest.mark.parametrize(
    "operation",
    [
        "PutSnapshotBlock",
        "CompleteSnapshot",
        "RegisterImage",
        "CreateTags",
        "PutObject",
        "ModifyImageAttribute",
    ],
)
def test_a_call_that_keeps_failing_leaves_nothing_behind(faulty, site, pki, operation):
    publish(site, pki, [entry("big", BIG, site), entry("a", IMAGE_A, site)], "1")
    faulty.proxy.faults = [Fault(operation, 500, "InternalError", times=None)]
    report = faulty.run(faulty.subs)
    assert report.exit_code == 1 and len(report.failures) == 2
    for line in report.failures:
        assert line.startswith("image ") and operation in line and "InternalError" in line
        assert "\n" not in line and "Traceback" not in line
    assert images(faulty.cloud) == {} and managed_snapshots(faulty.cloud) == set()
    assert faulty.cloud.clients.s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    faulty.proxy.faults = []
    assert faulty.run(faulty.subs).failures == []
    assert_converged(faulty, {"big", "a"})


def test_an_unreachable_endpoint_is_one_line_and_touches_nothing(tmp_path, ca_dir, site, pki):
    generate_key_pair(tmp_path / "seal.key")
    key = load_private_key(tmp_path / "seal.key")
    clients = ec2client.clients(
        session(), endpoint_url=f"http://127.0.0.1:{free_port()}", attempts=1, timeout=2
    )
    service = SyncService(
        sync_settings(tmp_path, ca_dir, key),
        EC2Store(clients, seal_keys=[key.public_key()], workdir=tmp_path / "w"),
    )
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    subs = (
        Subscription(
            name="example",
            url=site.url("/site.list"),
            endorsers=(Endorser(dn=pki.endorser.dn, ca=pki.endorser.ca_dn),),
            approve_all=True,
        ),
    )
    try:
        report = service.run(subs)
    finally:
        service.close()
    assert report.exit_code == 1 and len(report.failures) == 1
    line = report.failures[0]
    assert line.startswith("ec2 store: EC2 DescribeImages: Could not connect"), line
    assert [p for p, _ in site.requests] == []  # nothing fetched: the store is unknown


# --- kill -9 at every step ------------------------------------------------------------------------

CRASH_POINTS = [
    ("before-call.ebs.PutSnapshotBlock", 3),  # mid-upload
    ("before-call.ebs.CompleteSnapshot", 1),
    ("before-call.ec2.RegisterImage", 1),
    ("before-call.ec2.EnableImageDeprecation", 1),  # registered, not committed
    ("before-call.ec2.CreateTags", 1),  # the commit itself
    ("after-call.ec2.CreateTags", 1),  # committed, not published
    ("before-call.ec2.ModifyImageAttribute", 1),  # published, not shared
    ("after-call.ec2.ModifyImageAttribute", 1),  # shared, bookkeeping not written
]


@pytest.mark.parametrize("event,occurrence", CRASH_POINTS)
def test_kill_9_at_any_step_and_the_next_run_converges(
    tmp_path, ca_dir, site, pki, ec2_cloud, event, occurrence
):
    generate_key_pair(tmp_path / "seal.key")
    publish(site, pki, [entry("big", BIG, site)], "1")
    config = tmp_path / "child.json"
    config.write_text(
        json.dumps(
            {
                "moto_url": ec2_cloud.url,
                "gaps_state": str(ec2_cloud.gaps.state_file),
                "tmp_path": str(tmp_path),
                "ca_dir": str(ca_dir),
                "list_url": site.url("/site.list"),
                "endorser_dn": pki.endorser.dn,
                "endorser_ca": pki.endorser.ca_dn,
                "vo_accounts": {VO: [VO_ACCOUNT]},
                "bucket": BUCKET,
                "crash": [event, occurrence],
            }
        )
    )
    child = subprocess.run(
        [sys.executable, str(TESTS / "ec2_child.py"), str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -9, (child.returncode, child.stdout, child.stderr[-2000:])
    key = load_private_key(tmp_path / "seal.key")
    service = SyncService(
        sync_settings(tmp_path, ca_dir, key),
        make_store(ec2_cloud, key, tmp_path),
    )
    service.subs = (  # type: ignore[attr-defined]  # for the test
        Subscription(
            name="example",
            url=site.url("/site.list"),
            endorsers=(Endorser(dn=pki.endorser.dn, ca=pki.endorser.ca_dn),),
            approve_all=True,
        ),
    )
    service.cloud = ec2_cloud  # type: ignore[attr-defined]  # for the test
    try:
        report = service.run(service.subs)
        assert report.failures == [], report.failures
        assert_converged(service, {"big"})
        before = service.store.calls
        again = service.run(service.subs)
        assert again.done == [] and again.failures == []
        assert service.store.calls - before == 2
    finally:
        service.close()
