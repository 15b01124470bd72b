"""``vmtrust launch --cloud-type ec2`` through the command line, against moto in server mode.

The site's sync fills the moto account first (``ec2_sync``); the command then
runs in-process on boto3's own credential chain (test credentials in the
environment, nothing of the host) with options or a vmtrust.conf, as a VO
would run it.  moto runs every account as one, so the VO launches in the site
account (moto does not show a shared AMI to another account).  The only stubs
are the moto gap stubs of ``tests/moto_ec2.py`` (the AMI's block-device mapping
and deprecation moto ignores), attached at the botocore boundary to the session
the command makes; throttling and errors come from the fault proxy in front of
moto (``tests/httpfault.py``).
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_support import fails, run
from conftest import BUCKET
from context_support import site_file, vo_file
from httpfault import Fault, FaultProxy
from moto_ec2 import ACCOUNT, REGION
from test_ec2_config import aws_env  # noqa: F401 - a fixture: the test credentials only
from test_sync_local import IMAGE_A, IMAGE_B, entry, publish

from vmtrust import context, ec2client, ec2record, launch_ec2

VO_NAME = "vo.example.org"


@pytest.fixture
def cli(ec2_sync, site, pki, aws_env, monkeypatch, tmp_path):  # noqa: F811 - the fixture
    """A synced site account; the command's boto3 sessions carry the moto gap stubs."""
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site, "2")], "1")
    assert ec2_sync.run(ec2_sync.subs).failures == []
    made = ec2client.session

    def with_gaps(*args, **kw):
        boto = made(*args, **kw)
        ec2_sync.cloud.gaps.attach(boto)
        return boto

    monkeypatch.setattr(ec2client, "session", with_gaps)
    # the site's public key, made by the ec2_sync fixture
    return SimpleNamespace(cloud=ec2_sync.cloud, pub=tmp_path / "seal.key.pub")


def options(cli, *extra, endpoint: str = "", vo: str = VO_NAME) -> list:
    """The command line a VO gives when it has no vmtrust.conf."""
    return [
        "launch", "--cloud-type", "ec2", "--vo", vo, "--region", REGION,
        "--endpoint-url", endpoint or cli.cloud.url, "--site-account", ACCOUNT,
        "--record-bucket", BUCKET, "--seal-key", cli.pub, *extra,
    ]  # fmt: skip


def instances(cli) -> list[dict]:
    reply = cli.cloud.clients.ec2.describe_instances()
    return [i for r in reply["Reservations"] for i in r["Instances"]]


def user_data_of(cli, instance_id: str) -> bytes:
    attribute = cli.cloud.clients.ec2.describe_instance_attribute(
        InstanceId=instance_id, Attribute="userData"
    )
    return base64.b64decode(attribute["UserData"]["Value"])


def test_launch_runs_instances_of_the_newest_trusted_ami(cli, capsys, tmp_path):
    ec2 = cli.cloud.clients.ec2
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="wn", Description="wn", VpcId=vpc)["GroupId"]
    ec2.create_key_pair(KeyName="ops")
    data = tmp_path / "user-data"
    data.write_bytes(b"#cloud-config\nruncmd: [echo hello]\n")
    rc, out, err = run(capsys, *options(cli, "--instance-type", "t3.micro", "--count", "2",
                                        "--user-data", data, "--subnet", subnet,
                                        "--security-group", group, "--key-name", "ops",
                                        "--name", "cms-wn", "--json"))  # fmt: skip
    assert (rc, err) == (0, "")
    result = json.loads(out)
    assert (result["image"]["identifier"], result["image"]["version"]) == ("b", "2")
    assert [s["status"] for s in result["servers"]] == ["ACTIVE", "ACTIVE"]
    running = {i["InstanceId"]: i for i in instances(cli)}
    assert set(running) == {s["id"] for s in result["servers"]}
    for instance in running.values():
        assert instance["ImageId"] == result["image"]["id"]
        assert (instance["SubnetId"], instance["KeyName"]) == (subnet, "ops")
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group]
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        tags = ec2record.tag_dict(instance["Tags"])
        assert (tags["Name"], tags["vmtrust:vo"], tags["vmtrust:image_identifier"]) == (
            "cms-wn", VO_NAME, "b")  # fmt: skip
        sent = user_data_of(cli, instance["InstanceId"])
        assert gzip.decompress(sent) == data.read_bytes()


def test_defaults_come_from_vmtrust_conf_and_find_only_prints_one_line(cli, capsys, tmp_path):
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(
        f"[trust]\nseal_key = {tmp_path}/seal.key\n"
        f"[store_ec2]\nregion = {REGION}\nendpoint_url = {cli.cloud.url}\n"
        f"account_id = {ACCOUNT}\nrecord_bucket = {BUCKET}\n"
        "profile = the-sync-s-profile-which-a-vo-does-not-have\n"
    )
    base = ["--config-file", conf, "launch", "--cloud-type", "ec2", "--vo", VO_NAME]
    rc, out, err = run(capsys, *base, "--find-only", "--image-identifier", "a")
    assert (rc, err) == (0, "")
    (line,) = out.splitlines()
    assert re.fullmatch(rf"ami-\w+ .+ a 1 \(VO {re.escape(VO_NAME)}, expires \S+Z\)", line), line
    assert instances(cli) == []
    rc, out, _ = run(capsys, *base, "--instance-type", "t3.micro")
    assert rc == 0 and out.split()[1] == "ACTIVE"


def test_user_data_from_profiles_takes_the_instance_type_s_sizes(cli, capsys, tmp_path):
    site_path, vo_path = site_file(tmp_path), vo_file(tmp_path)
    rc, out, err = run(capsys, *options(cli, "--instance-type", "t3.micro", "--site", site_path,
                                        "--vo-profile", vo_path, "--json"))  # fmt: skip
    assert (rc, err) == (0, "")
    (server,) = json.loads(out)["servers"]
    t3_micro = context.Flavour(vcpus=2, ram_mb=1024, swap_mb=0, scratch_gb=None)  # AWS's figures
    assert launch_ec2.instance_type(cli.cloud.clients, "t3.micro") == t3_micro
    site = context.load_site(site_path)
    expected = context.build(site, context.load_vo(vo_path, site), cloud="ec2", flavour=t3_micro)
    assert user_data_of(cli, server["id"]) == launch_ec2.pack_user_data(expected)


def test_no_trusted_image_is_51_and_one_line(cli, capsys):
    line = fails(capsys, 51, *options(cli, "--instance-type", "t3.micro", vo="other.vo"))
    assert line.startswith("vmtrust: no trusted image of VO other.vo among the AMIs of")
    line = fails(capsys, 51, *options(cli, "--find-only", "--site-account", "999999999999"))
    assert "among the AMIs of 999999999999" in line
    assert instances(cli) == []


def test_an_instance_that_fails_is_50_with_ec2_s_reason(cli, capsys):
    site_ec2 = cli.cloud.clients.ec2

    def terminate(parsed, **_):  # EC2 ending the instance right after launch
        for item in parsed.get("Instances", []):
            site_ec2.terminate_instances(InstanceIds=[item["InstanceId"]])

    made = ec2client.session

    def failing(*args, **kw):
        boto = made(*args, **kw)
        boto.events.register("after-call.ec2.RunInstances", terminate)
        return boto

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ec2client, "session", failing)
        rc, out, err = run(capsys, *options(cli, "--instance-type", "t3.micro"))
    assert rc == 50
    (instance,) = instances(cli)
    assert out.startswith(f"{instance['InstanceId']} ERROR ")
    assert err.startswith(f"vmtrust: server {instance['InstanceId']} is ERROR: ")
    assert err.count("\n") == 1


def test_ec2_errors_are_50_and_one_line(cli, capsys):
    with FaultProxy(cli.cloud.url) as proxy:
        proxy.faults = [Fault("RunInstances", 500, "InsufficientInstanceCapacity", times=None)]
        line = fails(capsys, 50, *options(cli, "--instance-type", "t3.micro",
                                          endpoint=proxy.url))  # fmt: skip
        assert "EC2 RunInstances: InsufficientInstanceCapacity" in line
        proxy.faults = [Fault("DescribeImages", 503, "Unavailable", times=None)]
        line = fails(capsys, 50, *options(cli, "--find-only", endpoint=proxy.url))
        assert "EC2 DescribeImages: Unavailable" in line
        proxy.faults = [Fault("GetObject", 500, "InternalError", times=None)]
        line = fails(capsys, 50, *options(cli, "--find-only", endpoint=proxy.url))
        assert f"S3 GetObject s3://{BUCKET}/vmtrust/records/ami-" in line
        # a VO account without s3:ListBucket is refused a missing record: no record, no AMI
        proxy.faults = [Fault("GetObject", 403, "AccessDenied", times=None)]
        line = fails(capsys, 51, *options(cli, "--find-only", endpoint=proxy.url))
        assert f"no published record at s3://{BUCKET}/vmtrust/records/ami-" in line
    assert instances(cli) == []


def test_instances_not_yet_listed_are_waited_for_and_lost_ones_named(cli, capsys):
    """EC2 may not list an instance right after RunInstances: that is waited out; an error
    while waiting names the instances that run, so that nobody loses them."""
    with FaultProxy(cli.cloud.url) as proxy:
        proxy.faults = [Fault("DescribeInstances", 400, "InvalidInstanceID.NotFound", times=2)]
        rc, out, err = run(capsys, *options(cli, "--instance-type", "t3.micro",
                                            endpoint=proxy.url))  # fmt: skip
        assert (rc, err) == (0, "") and out.split()[1] == "ACTIVE"
        assert proxy.count("DescribeInstances") == 3
        before = {i["InstanceId"] for i in instances(cli)}
        proxy.faults = [Fault("DescribeInstances", 403, "UnauthorizedOperation", times=None)]
        line = fails(capsys, 50, *options(cli, "--instance-type", "t3.micro", "--count", "2",
                                          endpoint=proxy.url))  # fmt: skip
    started = {i["InstanceId"] for i in instances(cli)} - before
    assert len(started) == 2 and "EC2 DescribeInstances: UnauthorizedOperation" in line
    assert all(instance_id in line for instance_id in started)


def test_user_data_too_large_is_refused_before_ec2_is_asked(cli, capsys, tmp_path):
    import os

    big = tmp_path / "big"
    big.write_bytes(os.urandom(20000))
    with FaultProxy(cli.cloud.url) as proxy:
        line = fails(capsys, 5, *options(cli, "--instance-type", "t3.micro", "--user-data", big,
                                         endpoint=proxy.url))  # fmt: skip
        assert "ec2 allows 16384" in line and proxy.seen == []


@pytest.mark.parametrize(
    ("extra", "status", "words"),
    [
        (["--flavor", "wn"], 2, "--flavor is for --cloud-type openstack"),
        (["--owner", "p"], 2, "--owner is for --cloud-type openstack"),
        (["--network", "none"], 2, "--network is for --cloud-type openstack"),
        (["--count", "0"], 2, "--count"),
        ([], 4, "--instance-type is required"),
        (["--instance-type", "x", "--site-account", "12345"], 4, "'12345': expected 12 digits"),
        (["--instance-type", "x", "--region", "eu west 1"], 4, "not an AWS region name"),
        (["--instance-type", "x", "--endpoint-url", "ftp://x"], 4, "EC2 endpoint URL 'ftp://x'"),
        (["--instance-type", "x", "--seal-key", "/nonexistent.pub"], 3, "/nonexistent.pub"),
        (["--instance-type", "x", "--profile", "nobody"], 4, "launch: profile nobody"),
    ],
)
def test_bad_options_are_one_line_before_ec2_is_asked(
    ec2_cloud,
    aws_env,  # noqa: F811 - the fixture
    tmp_path,
    capsys,
    extra,
    status,
    words,
):
    from vmtrust.record import generate_key_pair

    cli = SimpleNamespace(cloud=ec2_cloud, pub=generate_key_pair(tmp_path / "seal.key"))
    with FaultProxy(ec2_cloud.url) as proxy:
        argv = [str(a) for a in options(cli, endpoint=proxy.url)]
        for flag, value in zip(extra[::2], extra[1::2], strict=True):
            if flag in argv:  # replace the option the base command line gives
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        if status == 2:
            with pytest.raises(SystemExit) as done:
                run(capsys, *argv)
            assert done.value.code == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and words in err
        else:
            assert words in fails(capsys, status, *argv)
        assert proxy.seen == []


def test_ec2_options_are_refused_on_openstack_and_cloud_is_required(capsys, tmp_path):
    key = tmp_path / "k.pub"
    for argv, words in [
        (["launch", "--cloud", "c", "--vo", "v", "--instance-type", "t3.micro"],
         "--instance-type is for --cloud-type ec2"),
        (["launch", "--cloud", "c", "--vo", "v", "--region", "eu-west-1"],
         "--region is for --cloud-type ec2"),
        (["launch", "--vo", "v", "--seal-key", key, "--owner", "p"],
         "the following arguments are required: --cloud"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as done:
            run(capsys, *argv)
        err = capsys.readouterr().err
        assert done.value.code == 2 and err.count("\n") == 1 and words in err, err


def test_an_html_error_page_where_ec2_should_answer_is_one_line(
    site,
    aws_env,  # noqa: F811 - the fixture
    tmp_path,
    capsys,
):
    """A web server that is not EC2 (a proxy's error page): botocore cannot parse the
    answer; that is a launch failure in one line, not a traceback."""
    from vmtrust.record import generate_key_pair

    cli = SimpleNamespace(cloud=SimpleNamespace(url=site.url("")),
                          pub=generate_key_pair(tmp_path / "seal.key"))  # fmt: skip
    line = fails(capsys, 50, *options(cli, "--find-only"))
    assert "EC2 DescribeImages: Unable to parse response" in line


def test_a_record_unreadable_for_a_broken_connection_is_one_line():
    """judge's S3 read through a dead endpoint: an EC2Error line, never a traceback."""
    import boto3

    from vmtrust.errors import EC2Error

    dead = ec2client.clients(
        boto3.Session(region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"),
        endpoint_url="http://127.0.0.1:9",
        attempts=1,
        timeout=2,
    )
    image = {"ImageId": "ami-1", "OwnerId": ACCOUNT, "State": "available"}
    with pytest.raises(EC2Error, match=r"S3 GetObject s3://b/p/ami-1\.json: Could not connect"):
        launch_ec2.judge(dead, image, keys=[], site_account=ACCOUNT, record_bucket="b",
                         record_prefix="p/", now=datetime.now(UTC))  # fmt: skip


def test_the_launch_command_s_ec2_path_imports_no_openstack(tmp_path):
    """A VO on EC2 installs vmtrust[ec2]: the command must not need openstacksdk."""
    import subprocess
    import sys

    code = (
        "import sys; from vmtrust.cli import main; "
        "main.main(['launch', '--cloud-type', 'ec2', '--vo', 'v', '--find-only', "
        "'--site-account', '123456789012', '--record-bucket', 'b', '--seal-key', '/none']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('glance_sync', 'openstack')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=120)  # fmt: skip
    # nothing of the sync side (a built-in command does not read its entry points), no openstack
    assert done.stdout.strip() == "[]", done.stderr
