"""The EC2 store against moto in server mode, checked through EC2's, EBS's and S3's own APIs.

``tests/test_sync_local.py`` and ``tests/test_glance_store.py`` prove the sync's
guarantees for a directory and for Glance; these tests prove the same for
:mod:`glance_sync.stores.ec2`.  Each test publishes signed lists and image
bytes on a loopback web server, runs a sync pass into a fresh moto account
(``tests/moto_ec2.py``), and then looks at the account *directly* — the
snapshot's blocks read back with GetSnapshotBlock, the AMI's tags, launch
permissions and state, the published record in S3 — so that a store which
only believes it did the right thing fails.

moto does not implement EnableImageDeprecation and ignores what RegisterImage
is told about block devices and tags, the block size it stores and DescribeImages
paging: :class:`moto_ec2.MotoGaps` stubs exactly those at the botocore boundary
(read its docstring); everything else here is moto's own behaviour.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from conftest import BUCKET, VO, VO_ACCOUNT, make_store, sync_settings
from httpserve import Behaviour
from moto_ec2 import ACCOUNT
from test_sync_local import IMAGE_A, IMAGE_B, entry, publish

from glance_sync.service import SyncService
from glance_sync.stores.ec2_upload import BLOCK
from vmtrust import ec2record, trust
from vmtrust.imagelist import Endorser, parse_date
from vmtrust.policy import Subscription
from vmtrust.record import generate_key_pair, load_private_key

# --- looking at the account directly ------------------------------------------------------


def images(cloud) -> dict[str, dict]:
    """Every AMI of the account by id, with the gap stubs' mapping and deprecation."""
    reply = cloud.clients.ec2.describe_images(Owners=["self"], IncludeDisabled=True)
    return {image["ImageId"]: image for image in reply["Images"]}


def tags(image: dict) -> dict[str, str]:
    return ec2record.tag_dict(image.get("Tags"))


def managed_snapshots(cloud) -> set[str]:
    reply = cloud.clients.ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:vmtrust:managed", "Values": ["true"]}]
    )
    return {s["SnapshotId"] for s in reply["Snapshots"]}


def read_back(cloud, snapshot_id: str, size: int) -> bytes:
    """The first ``size`` bytes of a snapshot, block by block with GetSnapshotBlock."""
    ebs = cloud.clients.ebs
    listing = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)
    data = bytearray(-(-size // BLOCK) * BLOCK)
    for block in listing["Blocks"]:
        reply = ebs.get_snapshot_block(
            SnapshotId=snapshot_id, BlockIndex=block["BlockIndex"], BlockToken=block["BlockToken"]
        )
        start = block["BlockIndex"] * BLOCK
        data[start : start + BLOCK] = reply["BlockData"].read()
    return bytes(data[:size])


def written_blocks(cloud, snapshot_id: str) -> list[int]:
    listing = cloud.clients.ebs.list_snapshot_blocks(SnapshotId=snapshot_id)
    return sorted(block["BlockIndex"] for block in listing["Blocks"])


def published(cloud, image_id: str) -> bytes | None:
    try:
        reply = cloud.clients.s3.get_object(Bucket=BUCKET, Key=f"vmtrust/records/{image_id}.json")
    except cloud.clients.s3.exceptions.NoSuchKey:
        return None
    return reply["Body"].read()


def launch_permissions(cloud, image_id: str) -> set[str]:
    reply = cloud.clients.ec2.describe_image_attribute(
        ImageId=image_id, Attribute="launchPermission"
    )
    return {p["UserId"] for p in reply["LaunchPermissions"] if "UserId" in p}


def trusted(service) -> dict[str, tuple[str, dict]]:
    """identifier → (version, AMI) of every AMI trusted as EC2 shows it, every check made
    with the public key alone, as a VO account would: the published record's seal, its
    binding to the AMI and snapshot seen in EC2, the bytes read back from the snapshot."""
    cloud = service.cloud
    key = service.s.seal_key.public_key()
    result = {}
    for image_id, image in images(cloud).items():
        if tags(image).get("vmtrust:state") != "trusted":
            continue
        snapshot = ec2record.root_snapshot(image)
        read = partial(ec2record.read_document, published(cloud, image_id) or b"", image_id)
        bound = trust.Stored(f"{image_id}/{snapshot}")
        verdict = trust.judge(read, bound, keys=[key], now=datetime.now(UTC))
        assert verdict.trusted and verdict.record, verdict.reason
        record = verdict.record
        assert ec2record.read_record(tags(image)) == read()
        data = read_back(cloud, snapshot, record.size)
        assert hashlib.sha512(data).hexdigest() == record.sha512
        result[record.image_identifier] = (record.image_version, image)
    return result


# --- creating -------------------------------------------------------------------------------


def test_first_sync_stores_sealed_amis_and_second_is_a_no_op(ec2_sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    report = ec2_sync.run(ec2_sync.subs)
    assert report.failures == [] and report.exit_code == 0
    held = trusted(ec2_sync)
    assert {k: v for k, (v, _) in held.items()} == {"a": "1", "b": "1"}
    cloud = ec2_sync.cloud
    expires = parse_date(ec2record.read_record(tags(held["a"][1]))[0].expires)
    for _, image in held.values():
        assert image["OwnerId"] == ACCOUNT
        assert launch_permissions(cloud, image["ImageId"]) == {VO_ACCOUNT}
        # deprecated at the record's expiry (to the minute EC2 keeps), never later
        deprecation = datetime.fromisoformat(image["DeprecationTime"])
        assert expires - timedelta(minutes=1) < deprecation <= expires
        assert tags(image)["vmtrust:managed"] == "true"
    assert ec2record.read_record(tags(held["a"][1]))[0].disk_format == "raw"
    # no-op: one DescribeImages and one DescribeSnapshots, nothing uploaded or changed
    before = ec2_sync.store.calls
    again = ec2_sync.run(ec2_sync.subs)
    assert again.done == [] and again.failures == []
    assert ec2_sync.store.calls - before == 2
    assert [p for p, _ in site.requests][-1] == "/site.list"


def test_zero_blocks_are_skipped_and_the_last_block_padded(ec2_sync, site, pki):
    data = b"x" * BLOCK + bytes(2 * BLOCK) + b"tail" * 1000  # data, two zero blocks, a part
    publish(site, pki, [entry("z", data, site)], "1")
    assert ec2_sync.run(ec2_sync.subs).exit_code == 0
    ((_, image),) = trusted(ec2_sync).values()
    snapshot = ec2record.root_snapshot(image)
    assert written_blocks(ec2_sync.cloud, snapshot) == [0, 3]
    last = read_back(ec2_sync.cloud, snapshot, 4 * BLOCK)[3 * BLOCK :]
    assert last == b"tail" * 1000 + bytes(BLOCK - 4000)
    assert read_back(ec2_sync.cloud, snapshot, len(data)) == data


def test_qcow2_is_streamed_as_raw_through_nbd(ec2_sync, site, pki, tmp_path):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"q" * 700_416 + bytes(BLOCK * 3) + b"end!" * 128)  # whole sectors
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True)
    image = entry("q", qcow2.read_bytes(), site)
    image["hv:image"]["hv:format"] = "QCOW2"
    publish(site, pki, [image], "1")
    report = ec2_sync.run(ec2_sync.subs)
    assert report.failures == []
    ((_, ami),) = trusted(ec2_sync).values()
    record = ec2record.read_record(tags(ami))[0]
    assert record.disk_format == "raw" and record.size == raw.stat().st_size
    assert record.sha512 == hashlib.sha512(raw.read_bytes()).hexdigest()
    assert record.source_sha512 == hashlib.sha512(qcow2.read_bytes()).hexdigest()
    assert list((tmp_path / "state" / "work").iterdir()) == []  # no work file left


def test_compressed_raw_goes_through_a_sparse_work_file(ec2_sync, site, pki, tmp_path):
    # random bytes keep it under [sync] max_expansion_ratio; the zero blocks stay sparse
    data = os.urandom(200_000) + bytes(4 * BLOCK) + b"z" * 10
    image = entry("gz", gzip.compress(data), site)
    image["hv:image"]["hv:format"] = "RAW.GZ"
    publish(site, pki, [image], "1")
    assert ec2_sync.run(ec2_sync.subs).failures == []
    ((_, ami),) = trusted(ec2_sync).values()
    assert read_back(ec2_sync.cloud, ec2record.root_snapshot(ami), len(data)) == data
    assert list((tmp_path / "state" / "work").iterdir()) == []


def test_wrong_bytes_register_nothing_and_leave_no_snapshot(ec2_sync, site, pki):
    bad = entry("bad", IMAGE_B, site)
    site.files["/img/bad-1.img"] = b"C" * len(IMAGE_B)
    publish(site, pki, [entry("a", IMAGE_A, site), bad], "1")
    report = ec2_sync.run(ec2_sync.subs)
    assert report.exit_code == 1
    assert len(report.failures) == 1 and "SHA-512" in report.failures[0]
    assert "image bad:" in report.failures[0]
    assert set(trusted(ec2_sync)) == {"a"}
    assert len(images(ec2_sync.cloud)) == 1
    used = {ec2record.root_snapshot(i) for i in images(ec2_sync.cloud).values()}
    assert managed_snapshots(ec2_sync.cloud) == used


def test_wrong_qcow2_bytes_register_nothing(ec2_sync, site, pki, tmp_path):
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", qcow2, "1M"], check=True)
    image = entry("q", qcow2.read_bytes(), site)
    image["hv:image"]["hv:format"] = "QCOW2"
    site.files["/img/q-1.img"] = b"\0" * len(qcow2.read_bytes())
    publish(site, pki, [image], "1")
    report = ec2_sync.run(ec2_sync.subs)
    assert report.exit_code == 1 and "SHA-512" in report.failures[0]
    assert images(ec2_sync.cloud) == {} and managed_snapshots(ec2_sync.cloud) == set()
    assert list((tmp_path / "state" / "work").iterdir()) == []


def test_a_list_that_says_qcow2_for_raw_bytes_is_refused(ec2_sync, site, pki):
    image = entry("r", IMAGE_A, site)
    image["hv:image"]["hv:format"] = "QCOW2"
    publish(site, pki, [image], "1")
    report = ec2_sync.run(ec2_sync.subs)
    assert report.exit_code == 1
    assert (
        "image r: the list declares QCOW2 (hv:format) but the bytes are RAW" in (report.failures[0])
    )
    assert "\n" not in report.failures[0]
    assert images(ec2_sync.cloud) == {} and managed_snapshots(ec2_sync.cloud) == set()


def test_qcow2_backing_file_is_never_read(ec2_sync, site, pki, tmp_path):
    """Defence in depth until the inspection of issue 10 refuses such images: qemu-nbd
    opens the work file with backing files disabled, so a host file never gets in."""
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"SEAL-KEY-MATERIAL" * 1000)
    qcow2 = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", qcow2],
        check=True,
    )
    image = entry("evil", qcow2.read_bytes(), site)
    image["hv:image"]["hv:format"] = "QCOW2"
    publish(site, pki, [image], "1")
    ec2_sync.run(ec2_sync.subs)
    for ami in images(ec2_sync.cloud).values():
        snapshot = ec2record.root_snapshot(ami)
        assert written_blocks(ec2_sync.cloud, snapshot) == []  # all zeros: nothing of the file


def test_record_too_long_for_ec2_tags_is_refused_before_any_upload(ec2_sync, site, pki):
    image = entry("long", IMAGE_A, site)
    image["hv:image"]["dc:title"] = "T" * (256 * 30)
    publish(site, pki, [image], "1")
    report = ec2_sync.run(ec2_sync.subs)
    assert report.exit_code == 1 and "EC2 allows 50" in report.failures[0]
    assert "image long:" in report.failures[0]
    assert managed_snapshots(ec2_sync.cloud) == set() and images(ec2_sync.cloud) == {}


def test_long_and_unusual_values_round_trip_through_tags(ec2_sync, site, pki):
    image = entry("u", IMAGE_A, site)
    image["hv:image"]["dc:title"] = "Wörker nøde, (v2) — aws:like " + "x" * 600
    publish(site, pki, [image], "1")
    assert ec2_sync.run(ec2_sync.subs).failures == []
    ((_, ami),) = trusted(ec2_sync).values()
    record = ec2record.read_record(tags(ami))[0]
    assert record.title == image["hv:image"]["dc:title"]
    assert "vmtrust:title.1" in tags(ami) and "vmtrust:title.2" in tags(ami)
    assert all(len(v) <= 256 for v in tags(ami).values())


def test_new_version_is_trusted_before_the_old_is_retired(ec2_sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    ec2_sync.run(ec2_sync.subs)
    ((_, old),) = trusted(ec2_sync).values()
    publish(site, pki, [entry("a", IMAGE_A + b"v2", site, version="2")], "2")
    report = ec2_sync.run(ec2_sync.subs)
    assert report.failures == []
    assert {k: v for k, (v, _) in trusted(ec2_sync).items()} == {"a": "2"}
    now = images(ec2_sync.cloud)[old["ImageId"]]
    assert now["State"] == "disabled" and tags(now)["vmtrust:state"] == "retired"
    assert published(ec2_sync.cloud, old["ImageId"]) is None


def test_failed_download_of_a_new_version_keeps_the_old(ec2_sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    ec2_sync.run(ec2_sync.subs)
    publish(site, pki, [entry("a", IMAGE_A + b"v2", site, version="2")], "2")
    site.behaviour["/img/a-2.img"] = Behaviour(status=404)
    report = ec2_sync.run(ec2_sync.subs)
    assert report.exit_code == 1 and "HTTP 404" in report.failures[0]
    assert {k: v for k, (v, _) in trusted(ec2_sync).items()} == {"a": "1"}
    assert len(managed_snapshots(ec2_sync.cloud)) == 1


# --- leaving --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["deactivate", "hide", "delete"])
def test_retire_modes(ec2_sync, site, pki, mode):
    ec2_sync.s.retire_mode = mode
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    ec2_sync.run(ec2_sync.subs)
    (_, gone) = trusted(ec2_sync)["b"]
    snapshot = ec2record.root_snapshot(gone)
    publish(site, pki, [entry("a", IMAGE_A, site)], "2")  # b revoked
    report = ec2_sync.run(ec2_sync.subs)
    assert report.failures == []
    assert set(trusted(ec2_sync)) == {"a"}
    image = images(ec2_sync.cloud)[gone["ImageId"]]
    assert tags(image)["vmtrust:state"] == "retired"
    assert tags(image)["vmtrust:retire_mode"] == mode
    assert published(ec2_sync.cloud, gone["ImageId"]) is None
    if mode == "deactivate":
        assert image["State"] == "disabled"
    else:
        soon = datetime.now(UTC) + timedelta(minutes=2)
        assert datetime.fromisoformat(image["DeprecationTime"]) <= soon
        assert launch_permissions(ec2_sync.cloud, gone["ImageId"]) == set()
    (held,) = [h for h in ec2_sync.store.held() if h.retired]
    assert held.seal_ok and held.record.image_identifier == "b"
    # past the grace period: only "delete" removes the AMI and its snapshot
    later = datetime.now(UTC) + timedelta(days=8)
    publish(site, pki, [entry("a", IMAGE_A, site)], "3")
    assert ec2_sync.run(ec2_sync.subs, now=later).failures == []
    if mode == "delete":
        assert gone["ImageId"] not in images(ec2_sync.cloud)
        assert snapshot not in managed_snapshots(ec2_sync.cloud)
    else:
        assert gone["ImageId"] in images(ec2_sync.cloud)


def test_images_vmtrust_did_not_create_are_never_touched(ec2_sync, site, pki):
    cloud = ec2_sync.cloud
    ec2 = cloud.clients.ec2
    foreign = ec2.register_image(Name="site's own image", RootDeviceName="/dev/xvda")["ImageId"]
    ec2.create_tags(Resources=[foreign], Tags=[{"Key": "vmtrust:state", "Value": "uploading"}])
    volume = ec2.create_volume(Size=1, AvailabilityZone="eu-west-1a")["VolumeId"]
    own_snapshot = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    ec2_sync.run(ec2_sync.subs)
    publish(site, pki, [], "2")  # a revoked: retire runs too
    assert ec2_sync.run(ec2_sync.subs).failures == []
    image = images(cloud)[foreign]
    assert image["State"] == "available" and tags(image) == {"vmtrust:state": "uploading"}
    assert [
        s["SnapshotId"] for s in ec2.describe_snapshots(SnapshotIds=[own_snapshot])["Snapshots"]
    ] == [own_snapshot]
    assert launch_permissions(cloud, foreign) == set()


# --- tampering ----------------------------------------------------------------------------------


def test_record_tags_copied_onto_another_ami_are_not_trusted(ec2_sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    ec2_sync.run(ec2_sync.subs)
    ((_, good),) = trusted(ec2_sync).values()
    ec2 = ec2_sync.cloud.clients.ec2
    copy = ec2.register_image(Name="copy", RootDeviceName="/dev/xvda")["ImageId"]
    ec2.create_tags(Resources=[copy], Tags=good["Tags"])
    problems = {h.store_id.split("/")[0]: h.problem for h in ec2_sync.store.held() if not h.seal_ok}
    assert list(problems) == [copy] and "bound to" in problems[copy]
    ec2_sync.run(ec2_sync.subs)
    assert tags(images(ec2_sync.cloud)[copy])["vmtrust:state"] == "retired"  # quarantined
    assert [v for v, _ in trusted(ec2_sync).values()] == ["1"]
    assert trusted(ec2_sync)["a"][1]["ImageId"] == good["ImageId"]


def test_an_altered_record_tag_breaks_the_seal_and_is_quarantined(ec2_sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    ec2_sync.run(ec2_sync.subs)
    ((_, good),) = trusted(ec2_sync).values()
    ec2_sync.cloud.clients.ec2.create_tags(
        Resources=[good["ImageId"]], Tags=[{"Key": "vmtrust:vo", "Value": "vo.evil.org"}]
    )
    (held,) = ec2_sync.store.held()
    assert not held.seal_ok and "seal" in held.problem
    report = ec2_sync.run(ec2_sync.subs)
    assert report.failures == []
    assert images(ec2_sync.cloud)[good["ImageId"]]["State"] == "disabled"
    assert trusted(ec2_sync)["a"][1]["ImageId"] != good["ImageId"]  # re-created from the list


# --- metadata and sharing -------------------------------------------------------------------------


def test_refresh_rewrites_the_record_in_place_and_clears_continuations(ec2_sync, site, pki):
    image = entry("a", IMAGE_A, site)
    image["hv:image"]["dc:title"] = "L" * 700  # three tags
    publish(site, pki, [image], "1")
    ec2_sync.run(ec2_sync.subs)
    ((_, before),) = trusted(ec2_sync).values()
    assert "vmtrust:title.2" in tags(before)
    image["hv:image"]["dc:title"] = "Short title"
    publish(site, pki, [image], "2")
    report = ec2_sync.run(ec2_sync.subs)
    assert report.failures == [] and any("refreshed a" in line for line in report.done)
    ((_, after),) = trusted(ec2_sync).values()
    assert after["ImageId"] == before["ImageId"]
    record = ec2record.read_record(tags(after))[0]
    assert record.title == "Short title" and record.list_version == "2"
    assert not any(key.startswith("vmtrust:title.") for key in tags(after))
    assert tags(after)["Name"] == "Short title"
    assert ec2record.read_document(published(ec2_sync.cloud, after["ImageId"]), "x")[0] == record


def test_sharing_follows_the_configuration(ec2_sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    ec2_sync.run(ec2_sync.subs)
    ((_, image),) = trusted(ec2_sync).values()
    ec2_sync.store.vo_accounts = {VO: ["222222222222", "333333333333"]}
    report = ec2_sync.run(ec2_sync.subs)
    assert report.failures == [] and any("shared a" in line for line in report.done)
    assert launch_permissions(ec2_sync.cloud, image["ImageId"]) == {"222222222222", "333333333333"}
    before = ec2_sync.store.calls
    assert ec2_sync.run(ec2_sync.subs).done == []
    assert ec2_sync.store.calls - before == 2
    ec2_sync.store.vo_accounts = {}
    ec2_sync.run(ec2_sync.subs)
    assert launch_permissions(ec2_sync.cloud, image["ImageId"]) == set()


def test_no_op_pass_lists_every_page_with_a_constant_number_of_calls(
    tmp_path, ca_dir, site, pki, ec2_cloud
):
    generate_key_pair(tmp_path / "seal.key")
    key = load_private_key(tmp_path / "seal.key")
    ec2_cloud.gaps.page_size = 2  # EC2 pages DescribeImages; moto does not (stubbed: see module)
    service = SyncService(
        sync_settings(tmp_path, ca_dir, key),
        make_store(ec2_cloud, key, tmp_path),
    )
    subs = (
        Subscription(
            name="example",
            url=site.url("/site.list"),
            endorsers=(Endorser(dn=pki.endorser.dn, ca=pki.endorser.ca_dn),),
            approve_all=True,
        ),
    )
    publish(site, pki, [entry(f"i{n}", IMAGE_B + bytes([n]), site) for n in range(5)], "1")
    try:
        assert service.run(subs).failures == []
        held = service.store.held()
        assert sorted(h.record.image_identifier for h in held if h.seal_ok) == [
            f"i{n}" for n in range(5)
        ]
        before = service.store.calls
        assert service.run(subs).done == []
        assert service.store.calls - before == 3 + 1  # DescribeImages in 3 pages, snapshots
    finally:
        service.close()


def test_leftovers_of_an_interrupted_run_are_removed(ec2_sync, site, pki):
    cloud = ec2_sync.cloud
    marker = [{"Key": "vmtrust:managed", "Value": "true"}]
    dead = cloud.clients.ebs.start_snapshot(VolumeSize=1, Tags=marker)["SnapshotId"]
    half = cloud.clients.ec2.register_image(Name="half", RootDeviceName="/dev/xvda")["ImageId"]
    cloud.clients.ec2.create_tags(
        Resources=[half], Tags=[*marker, {"Key": "vmtrust:state", "Value": "uploading"}]
    )
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    work = Path(ec2_sync.s.state_dir) / "work"
    work.mkdir(parents=True)
    (work / "0123abcd.ec2").write_bytes(b"half a qcow2")  # a run killed while reading one
    report = ec2_sync.run(ec2_sync.subs)
    assert report.failures == []
    assert half not in images(cloud) and dead not in managed_snapshots(cloud)
    assert set(trusted(ec2_sync)) == {"a"}
    assert list(work.iterdir()) == []


def test_dry_run_changes_nothing(ec2_sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    lines: list[str] = []
    ec2_sync.run(ec2_sync.subs, dry_run=True, out=lines.append)
    assert lines and lines[0].startswith("create  a 1")
    assert images(ec2_sync.cloud) == {} and managed_snapshots(ec2_sync.cloud) == set()


def test_expired_image_is_retired_and_deprecated_at_once(ec2_sync, site, pki):
    ec2_sync.s.retire_mode = "hide"
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    ec2_sync.run(ec2_sync.subs)
    ((_, image),) = trusted(ec2_sync).values()
    later = datetime.now(UTC) + timedelta(days=60)  # past the list's expiry
    ec2_sync.run(ec2_sync.subs, now=later)
    after = images(ec2_sync.cloud)[image["ImageId"]]
    assert tags(after)["vmtrust:state"] == "retired"
    # already deprecated at the expiry: retiring does not move that later
    assert after["DeprecationTime"] == image["DeprecationTime"]


def test_store_files_are_not_left_in_the_work_folder_after_a_failure(ec2_sync, site, pki):
    data = gzip.compress(IMAGE_A)
    image = entry("gz", data, site)
    image["hv:image"]["hv:format"] = "RAW.GZ"
    site.files["/img/gz-1.img"] = data[:-20] + b"\0" * 20  # wrong hash and broken trailer
    publish(site, pki, [image], "1")
    assert ec2_sync.run(ec2_sync.subs).exit_code == 1
    work = Path(ec2_sync.s.state_dir) / "work"
    assert not work.exists() or list(work.iterdir()) == []
    assert managed_snapshots(ec2_sync.cloud) == set()
    shutil.rmtree(work, ignore_errors=True)


def test_marking_a_trusted_ami_uploading_does_not_get_it_removed_but_quarantined(
    ec2_sync, site, pki
):
    """Cleanup removes only AMIs a create left before its commit (no seal yet): a sealed AMI
    someone marked ``uploading`` is not deleted as a leftover, it is quarantined."""
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    ec2_sync.run(ec2_sync.subs)
    ((_, good),) = trusted(ec2_sync).values()
    ec2_sync.cloud.clients.ec2.create_tags(
        Resources=[good["ImageId"]], Tags=[{"Key": "vmtrust:state", "Value": "uploading"}]
    )
    report = ec2_sync.run(ec2_sync.subs)
    assert report.failures == []
    after = images(ec2_sync.cloud)[good["ImageId"]]  # still registered
    assert after["State"] == "disabled" and tags(after)["vmtrust:state"] == "retired"
    assert trusted(ec2_sync)["a"][1]["ImageId"] != good["ImageId"]  # re-created from the list


def test_a_new_record_bucket_gets_every_record_again(ec2_sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    ec2_sync.run(ec2_sync.subs)
    ((_, image),) = trusted(ec2_sync).values()
    ec2_sync.cloud.clients.s3.create_bucket(
        Bucket="new-records", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    ec2_sync.store.account.record_bucket = "new-records"
    report = ec2_sync.run(ec2_sync.subs)
    assert report.failures == [] and any("published the record of a" in x for x in report.done)
    body = ec2_sync.cloud.clients.s3.get_object(
        Bucket="new-records", Key=f"vmtrust/records/{image['ImageId']}.json"
    )["Body"].read()
    assert body == published(ec2_sync.cloud, image["ImageId"])
    assert ec2_sync.run(ec2_sync.subs).done == []


def test_the_name_tag_is_plain_whatever_the_title(ec2_sync, site, pki):
    image = entry("n", IMAGE_A, site)
    image["hv:image"]["dc:title"] = "aws:evil\x1b[31m title, with (parens)\n"
    publish(site, pki, [image], "1")
    assert ec2_sync.run(ec2_sync.subs).failures == []
    ((_, ami),) = trusted(ec2_sync).values()
    assert tags(ami)["Name"] == "_aws:evil-31m title- with -parens-"
    assert ami["Description"].startswith("aws:evil [31m title, with (parens)  1 (vmtrust")
    assert ec2record.read_record(tags(ami))[0].title == image["hv:image"]["dc:title"]
