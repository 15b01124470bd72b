"""Launch on EC2 (:mod:`vmtrust.launch_ec2`) against moto: find the trusted AMI, run instances.

The site's sync fills the moto account first (the ``ec2_sync`` fixture of
tests/test_ec2_store.py); the VO side then sees only what a VO account sees —
the AMIs and the published records — and every attack on what it is given
(a record copied to another AMI, altered, missing; a deprecated, disabled or
expired AMI; another VO's image; the wrong key) must leave it without an image.
moto runs every account as one, so an AMI "of another owner" is tested by
naming a different site account.
"""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime, timedelta

import pytest
from conftest import BUCKET
from httpfault import Fault, FaultProxy
from moto_ec2 import ACCOUNT, session
from test_ec2_store import trusted
from test_sync_local import IMAGE_A, IMAGE_B, entry, publish

from vmtrust import ec2client, ec2record, launch_ec2
from vmtrust.errors import LaunchError, NoTrustedImage, UserDataError
from vmtrust.record import generate_key_pair, load_public_key

VO = "vo.example.org"


def find(service, **kw):
    options = dict(
        keys=[service.s.seal_key.public_key()], site_account=ACCOUNT, record_bucket=BUCKET
    )
    options.update(kw)
    return launch_ec2.find_trusted_image(service.cloud.clients, VO, **options)


def synced(service, site, pki, images_=None, version="1"):
    publish(site, pki, images_ or [entry("a", IMAGE_A, site)], version)
    report = service.run(service.subs)
    assert report.failures == [], report.failures
    return {k: image for k, (_, image) in trusted(service).items()}


def test_the_newest_trusted_image_of_the_vo_is_found(ec2_sync, site, pki):
    a = entry("a", IMAGE_A, site)
    b = entry("b", IMAGE_B, site, version="2.10")
    held = synced(ec2_sync, site, pki, [a, b])
    image = find(ec2_sync)
    assert (image.id, image.identifier, image.version) == (held["b"]["ImageId"], "b", "2.10")
    assert image.vo == VO and image.expires
    assert find(ec2_sync, identifier="a").id == held["a"]["ImageId"]
    with pytest.raises(NoTrustedImage, match=r"no trusted image of VO other\.vo"):
        launch_ec2.find_trusted_image(
            ec2_sync.cloud.clients,
            "other.vo",
            [ec2_sync.s.seal_key.public_key()],
            site_account=ACCOUNT,
            record_bucket=BUCKET,
        )


def test_a_record_copied_to_another_ami_is_refused(ec2_sync, site, pki):
    held = synced(ec2_sync, site, pki)
    ec2 = ec2_sync.cloud.clients.ec2
    s3 = ec2_sync.cloud.clients.s3
    good = held["a"]["ImageId"]
    body = s3.get_object(Bucket=BUCKET, Key=f"vmtrust/records/{good}.json")["Body"].read()
    copy = ec2.register_image(Name="copy v9", RootDeviceName="/dev/xvda")["ImageId"]
    s3.put_object(Bucket=BUCKET, Key=f"vmtrust/records/{copy}.json", Body=body)
    (image,) = ec2.describe_images(ImageIds=[copy])["Images"]
    verdict = launch_ec2.judge(
        ec2_sync.cloud.clients,
        image,
        keys=[ec2_sync.s.seal_key.public_key()],
        site_account=ACCOUNT,
        record_bucket=BUCKET,
        record_prefix="vmtrust/records/",
        now=datetime.now(UTC),
    )
    assert not verdict.trusted and verdict.reason.startswith(f"seal is bound to image {good}/snap-")
    assert find(ec2_sync).id == good
    s3.delete_object(Bucket=BUCKET, Key=f"vmtrust/records/{good}.json")
    with pytest.raises(NoTrustedImage, match="2 AMI"):
        find(ec2_sync)


def test_an_altered_or_missing_record_is_refused(ec2_sync, site, pki):
    held = synced(ec2_sync, site, pki)
    s3 = ec2_sync.cloud.clients.s3
    key = f"vmtrust/records/{held['a']['ImageId']}.json"
    body = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body["record"]["expires"] = "2099-01-01T00:00:00Z"
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(body).encode())
    with pytest.raises(NoTrustedImage, match=r"seal invalid: .* does not match"):
        find(ec2_sync)
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"<html>not a record</html>")
    with pytest.raises(NoTrustedImage, match="seal invalid: published record"):
        find(ec2_sync)
    s3.delete_object(Bucket=BUCKET, Key=key)
    with pytest.raises(NoTrustedImage, match="no published record at s3://site-records/"):
        find(ec2_sync)


def test_the_wrong_key_or_owner_finds_nothing(ec2_sync, site, pki, tmp_path):
    synced(ec2_sync, site, pki)
    generate_key_pair(tmp_path / "other.key")
    with pytest.raises(NoTrustedImage, match="sealed by unknown key"):
        find(ec2_sync, keys=[load_public_key(tmp_path / "other.key.pub")])
    with pytest.raises(NoTrustedImage, match="among the AMIs of 999999999999"):
        find(ec2_sync, site_account="999999999999")


def test_deprecated_disabled_and_expired_amis_are_refused(ec2_sync, site, pki):
    held = synced(ec2_sync, site, pki)
    image_id = held["a"]["ImageId"]
    expires = datetime.fromisoformat(held["a"]["DeprecationTime"])
    with pytest.raises(NoTrustedImage, match="deprecated since"):
        find(ec2_sync, now=expires + timedelta(seconds=1))
    ec2_sync.cloud.clients.ec2.disable_image(ImageId=image_id)
    with pytest.raises(NoTrustedImage, match="state is disabled"):
        find(ec2_sync)


def test_a_retired_image_is_not_found(ec2_sync, site, pki):
    synced(ec2_sync, site, pki)
    publish(site, pki, [], "2")
    assert ec2_sync.run(ec2_sync.subs).failures == []
    with pytest.raises(NoTrustedImage):
        find(ec2_sync)


def test_launch_runs_instances_with_gzipped_user_data_and_waits(ec2_sync, site, pki):
    synced(ec2_sync, site, pki)
    image = find(ec2_sync)
    user_data = b"#cloud-config\n" + b"runcmd: [echo hello]\n" * 50
    servers = launch_ec2.launch(
        ec2_sync.cloud.clients,
        image,
        instance_type="m6i.large",
        user_data=user_data,
        count=2,
        poll=0.1,
        timeout=30,
    )
    assert [s.status for s in servers] == ["ACTIVE", "ACTIVE"]
    ec2 = ec2_sync.cloud.clients.ec2
    for server in servers:
        attribute = ec2.describe_instance_attribute(InstanceId=server.id, Attribute="userData")
        sent = base64.b64decode(attribute["UserData"]["Value"])
        assert sent[:2] == b"\x1f\x8b" and gzip.decompress(sent) == user_data
        (reservation,) = ec2.describe_instances(InstanceIds=[server.id])["Reservations"]
        (instance,) = reservation["Instances"]
        assert instance["ImageId"] == image.id
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        tags = ec2record.tag_dict(instance.get("Tags"))
        assert tags["vmtrust:vo"] == VO and tags["vmtrust:image_identifier"] == "a"


def test_an_instance_that_fails_is_reported_with_its_reason(ec2_sync, site, pki):
    synced(ec2_sync, site, pki)
    image = find(ec2_sync)
    clients = ec2_sync.cloud.clients

    def terminate(parsed, **_):  # EC2 ending the instance right after launch
        for item in parsed.get("Instances", []):
            clients.ec2.terminate_instances(InstanceIds=[item["InstanceId"]])

    clients.ec2.meta.events.register("after-call.ec2.RunInstances", terminate)
    try:
        (server,) = launch_ec2.launch(
            clients, image, instance_type="m6i.large", user_data=b"#cloud-config\n", poll=0.1
        )
    finally:
        clients.ec2.meta.events.unregister("after-call.ec2.RunInstances", terminate)
    assert server.status == "ERROR" and server.fault


def test_user_data_too_large_even_gzipped_is_refused_before_launch(ec2_sync, site, pki):
    import os

    synced(ec2_sync, site, pki)
    image = find(ec2_sync)
    with pytest.raises(UserDataError, match="ec2 allows 16384"):
        launch_ec2.launch(
            ec2_sync.cloud.clients, image, instance_type="t3.micro", user_data=os.urandom(20000)
        )
    already = gzip.compress(b"#cloud-config\n")
    assert launch_ec2.pack_user_data(already) == already  # never gzipped twice
    found = ec2_sync.cloud.clients.ec2.describe_instances()["Reservations"]
    assert found == []


def test_a_launch_ec2_refuses_is_one_line(ec2_sync, site, pki):
    synced(ec2_sync, site, pki)
    image = find(ec2_sync)
    with pytest.raises(LaunchError, match="count 0: must be at least 1"):
        launch_ec2.launch(
            ec2_sync.cloud.clients, image, instance_type="t3.micro", user_data=b"x", count=0
        )
    with FaultProxy(ec2_sync.cloud.url) as proxy:
        proxy.faults = [Fault("RunInstances", 500, "InsufficientInstanceCapacity", times=None)]
        clients = ec2client.clients(session(), endpoint_url=proxy.url, attempts=2)
        with pytest.raises(LaunchError) as failed:
            launch_ec2.launch(clients, image, instance_type="t3.micro", user_data=b"x")
    message = str(failed.value)
    assert "EC2 RunInstances: InsufficientInstanceCapacity" in message and "\n" not in message
    assert ec2_sync.cloud.clients.ec2.describe_instances()["Reservations"] == []


@pytest.mark.parametrize(
    "image,why",
    [
        ({"ImageId": "ami-1", "OwnerId": "999999999999", "State": "available"}, "owned by 9999"),
        ({"ImageId": "ami-1", "OwnerId": ACCOUNT, "State": "pending"}, "state is pending"),
        (
            {"ImageId": "ami-1", "OwnerId": ACCOUNT, "State": "available", "DeprecationTime": "x"},
            "unreadable deprecation time 'x'",
        ),
        # without a zone it cannot be compared with now (a TypeError once), nor a number
        (
            {
                "ImageId": "ami-1",
                "OwnerId": ACCOUNT,
                "State": "available",
                "DeprecationTime": "2020-01-01T00:00:00",
            },
            "unreadable deprecation time '2020-01-01T00:00:00'",
        ),
        (
            {"ImageId": "ami-1", "OwnerId": ACCOUNT, "State": "available", "DeprecationTime": 5},
            "unreadable deprecation time 5",
        ),
    ],
)
def test_amis_are_refused_before_their_record_is_fetched(image, why):
    verdict = launch_ec2.judge(
        None,
        image,
        keys=[],
        site_account=ACCOUNT,
        record_bucket=BUCKET,
        record_prefix="p/",
        now=datetime.now(UTC),
    )
    assert not verdict.trusted and verdict.record is None and verdict.reason.startswith(why)
