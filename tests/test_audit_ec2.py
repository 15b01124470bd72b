"""``vmtrust audit --cloud-type ec2`` against moto in server mode: instances of a VO account.

The site's sync fills the site account (moto's default account) with sealed
AMIs and published records (``ec2_sync``); the VO account is a second moto
account, reached as the audit reaches it in AWS — STS AssumeRole of a role in
it, which moto implements across accounts.  Instances are run there from the
site's AMIs (moto accepts any AMI id; it does not show another account's AMI,
which is why the audit asks the site account about every AMI).  What the tests
then do to AMIs, records and volumes is done with EC2's and S3's own calls.

moto does not page DescribeInstances and DescribeImages, does not implement
EnableImageDeprecation, ignores an AMI's block-device mapping (so an
instance's root volume is not made from the AMI's snapshot): the gap stubs of
``tests/moto_ec2.py`` answer exactly those at the botocore boundary, nothing
else.  Errors come from the fault proxy in front of moto (``tests/httpfault.py``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import fails, run
from conftest import BUCKET, VO_ACCOUNT
from httpfault import Fault, FaultProxy
from moto_ec2 import ACCOUNT, REGION, session
from test_ec2_config import aws_env  # noqa: F401 - a fixture: the test credentials only
from test_sync_local import IMAGE_A, entry, publish

from vmtrust import audit, audit_ec2, ec2client, ec2record
from vmtrust.imagelist import parse_date

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "vmtrust/records/"


def vo_clients(service) -> ec2client.Clients:
    """Clients in the VO account, through an assumed role (moto keeps the accounts apart)."""
    cloud = service.cloud
    boto = session(cloud.gaps)
    role = f"arn:aws:iam::{VO_ACCOUNT}:role/wn-admin"
    credentials = ec2client.assume_role(boto, role, endpoint_url=cloud.url, what="test")
    return ec2client.clients(boto, endpoint_url=cloud.url, credentials=credentials)


def boot(clients, image_id: str, count: int = 1) -> list[str]:
    reply = clients.ec2.run_instances(
        ImageId=image_id, MinCount=count, MaxCount=count, InstanceType="t3.micro"
    )
    return [i["InstanceId"] for i in reply["Instances"]]


def synced(service, site, pki, names: list[str], version: str = "1") -> dict[str, str]:
    """identifier → AMI id of what the sync holds trusted after publishing ``names``."""
    publish(site, pki, [entry(name, IMAGE_A, site) for name in names], version)
    assert service.run(service.subs).failures == []
    reply = service.cloud.clients.ec2.describe_images(Owners=["self"], IncludeDisabled=True)
    found = {}
    for image in reply["Images"]:
        tags = ec2record.tag_dict(image.get("Tags"))
        if tags.get("vmtrust:state") == "trusted":
            found[tags["vmtrust:image_identifier"]] = image["ImageId"]
    return found


def run_audit(service, *, now=None, page_size=1000, calls=None, where=None):
    boto = session(service.cloud.gaps)
    if calls is not None:
        boto.events.register(
            "before-call.*.*", lambda model, **_: calls.append(model.name), unique_id="count"
        )
    reach = ec2client.Accounts(boto, role_name="audit", endpoint_url=service.cloud.url,
                               what="audit")  # fmt: skip
    site = audit_ec2.Site(ACCOUNT, BUCKET, PREFIX, (service.s.seal_key.public_key(),))
    where = where or [(VO_ACCOUNT, REGION)]
    return reach, audit_ec2.audit(reach, site, where, now=now, page_size=page_size)


def test_trusted_instances_give_no_findings_one_look_up_per_ami(ec2_sync, site, pki):
    held = synced(ec2_sync, site, pki, ["a", "b"])
    vo = vo_clients(ec2_sync)
    boot(vo, held["a"], 3)
    gone = boot(vo, held["b"], 5)[0]
    vo.ec2.terminate_instances(InstanceIds=[gone])
    ec2_sync.cloud.gaps.page_size = 5  # moto answers in one page: the stub pages as EC2 does
    calls: list[str] = []
    _, report = run_audit(ec2_sync, page_size=5, calls=calls)
    assert report.findings == []
    assert (report.servers, report.worker_servers, report.images) == (8, 7, 2)
    assert sorted(set(calls)) == ["AssumeRole", "DescribeImages", "DescribeInstances",
                                  "DescribeVolumes", "GetCallerIdentity", "GetObject"]  # fmt: skip
    assert [calls.count(c) for c in ("DescribeImages", "GetObject", "AssumeRole")] == [2, 2, 1]
    assert calls.count("DescribeInstances") == 2 and calls.count("DescribeVolumes") == 2


def test_every_reason_an_instance_s_ami_is_not_trusted(ec2_sync, site, pki):
    held = synced(ec2_sync, site, pki, ["ok", "retired", "disabled", "gone", "old", "sealed"])
    vo, ec2, s3 = vo_clients(ec2_sync), ec2_sync.cloud.clients.ec2, ec2_sync.cloud.clients.s3
    on = {name: boot(vo, image_id)[0] for name, image_id in held.items()}
    # the sync retires one (its list drops it) ...
    synced(ec2_sync, site, pki, ["ok", "disabled", "gone", "old", "sealed"], version="2")
    # ... and things happen to others in the site account
    ec2.disable_image(ImageId=held["disabled"])
    ec2.deregister_image(ImageId=held["gone"])
    ec2.enable_image_deprecation(ImageId=held["old"], DeprecateAt=datetime(2026, 1, 1, tzinfo=UTC))
    key = f"{PREFIX}{held['sealed']}.json"
    document = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    document["record"]["vo"] = "vo.evil.org"
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(document).encode())
    # an AMI the VO made itself, and one of the site account vmtrust did not make
    own = vo.ec2.register_image(Name="vo own", RootDeviceName="/dev/xvda")["ImageId"]
    stray = ec2.register_image(Name="site stray", RootDeviceName="/dev/xvda")["ImageId"]
    on["own"], on["stray"] = boot(vo, own)[0], boot(vo, stray)[0]

    _, report = run_audit(ec2_sync)
    found = {f.server: f for f in report.findings}
    got = {name: found[i].reason for name, i in on.items() if i in found}
    assert got == {
        "retired": "retired",
        "disabled": "disabled",
        "gone": "deregistered",
        "old": "deprecated",
        "sealed": "seal",
        "own": "not-vmtrust",
        "stray": "not-vmtrust",
    }
    retired = ec2record.tag_dict(
        ec2.describe_images(ImageIds=[held["retired"]], IncludeDisabled=True)["Images"][0]["Tags"]
    )
    assert found[on["retired"]].since == retired["vmtrust:retired_at"]
    assert found[on["retired"]].detail.startswith("retired by the sync (deactivate): ")
    assert found[on["old"]].since == "2026-01-01T00:00:00Z"
    assert "seal invalid" in found[on["sealed"]].detail
    assert found[on["own"]].detail == f"owned by {VO_ACCOUNT}, not the site account"
    assert found[on["stray"]].detail.startswith("not made by vmtrust: no published record")
    assert f"not found in the site account {ACCOUNT} or in {VO_ACCOUNT}" in found[on["gone"]].detail
    launched = {f.since for name, f in found.items() if f.reason in ("deregistered", "disabled")}
    assert all(stamp.endswith("Z") and len(stamp) == 20 for stamp in launched)  # the launch
    for finding in report.findings:
        assert (finding.project, finding.host, finding.status) == (VO_ACCOUNT, "eu-west-1a",
                                                                   "running")  # fmt: skip
    assert report.images == 8  # every distinct AMI once in the site account


def test_a_root_volume_not_made_from_the_ami_is_found(ec2_sync, site, pki):
    """Swapping the root volume of a stopped instance, or launching with another snapshot
    for the root device, keeps the ImageId: the audit looks at what the root volume was
    made from."""
    held = synced(ec2_sync, site, pki, ["a"])
    vo = vo_clients(ec2_sync)
    kept, swapped, stripped = boot(vo, held["a"], 3)
    mine = vo.ec2.create_volume(AvailabilityZone="eu-west-1a", Size=8)["VolumeId"]
    own_snapshot = vo.ec2.create_snapshot(VolumeId=mine)["SnapshotId"]
    overridden = vo.ec2.run_instances(
        ImageId=held["a"], MinCount=1, MaxCount=1, InstanceType="t3.micro",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": own_snapshot}}],
    )["Instances"][0]["InstanceId"]  # fmt: skip
    vo.ec2.stop_instances(InstanceIds=[swapped, stripped])
    described = vo.ec2.describe_instances(InstanceIds=[swapped, stripped])["Reservations"]
    roots = {i["InstanceId"]: (i["RootDeviceName"], i["BlockDeviceMappings"][0]["Ebs"]["VolumeId"])
             for r in described for i in r["Instances"]}  # fmt: skip
    for instance_id, (_, volume) in roots.items():
        vo.ec2.detach_volume(VolumeId=volume, InstanceId=instance_id)
    other = vo.ec2.create_volume(AvailabilityZone="eu-west-1a", Size=8)["VolumeId"]
    vo.ec2.attach_volume(VolumeId=other, InstanceId=swapped, Device=roots[swapped][0])
    _, report = run_audit(ec2_sync)
    found = {f.server: f for f in report.findings}
    assert set(found) == {swapped, stripped, overridden}
    assert {f.reason for f in found.values()} == {"volume"}
    assert f"was made from {own_snapshot}, not from the AMI's snap-" in found[overridden].detail
    assert found[swapped].detail.startswith(f"root volume {other} was made from no snapshot")
    assert found[stripped].detail == f"no EBS volume at its root device {roots[stripped][0]}"
    assert kept not in found


def test_an_expired_record_of_an_ami_not_deprecated(ec2_sync, site, pki):
    held = synced(ec2_sync, site, pki, ["a"])
    instance = boot(vo_clients(ec2_sync), held["a"])[0]
    with ec2_sync.cloud.gaps.state() as data:  # as if DisableImageDeprecation had been called
        data["deprecations"].pop(held["a"])
    (image,) = ec2_sync.cloud.clients.ec2.describe_images(ImageIds=[held["a"]])["Images"]
    expires = ec2record.read_record(ec2record.tag_dict(image["Tags"]))[0].expires
    _, report = run_audit(ec2_sync, now=parse_date(expires) + timedelta(hours=1))
    (finding,) = report.findings
    assert (finding.server, finding.reason, finding.since) == (instance, "expired", expires)
    assert finding.detail == f"expired at {expires}"


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ({"OwnerId": ACCOUNT, "State": "pending"}, "inactive"),
        ({"OwnerId": ACCOUNT, "State": "failed"}, "inactive"),
        ({"OwnerId": ACCOUNT, "State": "available",
          "Tags": [{"Key": "vmtrust:managed", "Value": "true"},
                   {"Key": "vmtrust:state", "Value": "uploading"}]}, "inactive"),
        ({"OwnerId": ACCOUNT, "State": "available",
          "Tags": [{"Key": "vmtrust:managed", "Value": "true"}]}, "seal"),
        ({"OwnerId": VO_ACCOUNT, "State": "available",  # a VO's own tags mean nothing
          "Tags": [{"Key": "vmtrust:state", "Value": "retired"}]}, "not-vmtrust"),
    ],
)  # fmt: skip
def test_labels_of_states_moto_cannot_show(image, reason):
    """EC2 states moto never reaches (its AMIs are always available): the label alone."""
    assert audit_ec2.label(image, "why", ACCOUNT, datetime.now(UTC))[0] == reason


def test_stop_once_per_instance_dry_run_and_failures(ec2_sync, site, pki, caplog):
    held = synced(ec2_sync, site, pki, ["a"])
    vo = vo_clients(ec2_sync)
    running = boot(vo, held["a"], 2)
    publish(site, pki, [], "2")
    assert ec2_sync.run(ec2_sync.subs).failures == []  # retired: both are findings
    vo.ec2.stop_instances(InstanceIds=[running[1]])
    reach, report = run_audit(ec2_sync)
    assert audit_ec2.act(reach, report, "stop", dry_run=True)
    assert {f.server: f.action for f in report.findings} == {
        running[0]: "would stop", running[1]: "already stopped"}  # fmt: skip
    assert vo.ec2.describe_instance_status(InstanceIds=[running[0]])["InstanceStatuses"][0][
        "InstanceState"]["Name"] == "running"  # fmt: skip
    assert audit_ec2.act(reach, report, "stop")
    assert {f.server: f.action for f in report.findings} == {
        running[0]: "stopped", running[1]: "already stopped"}  # fmt: skip
    assert f"audit: stopped instance {running[0]} of account {VO_ACCOUNT}" in caplog.text
    reply = vo.ec2.describe_instances(InstanceIds=[running[0]])["Reservations"][0]["Instances"]
    assert reply[0]["State"]["Name"] in ("stopping", "stopped")
    for action in ("shelve", "lock"):
        with pytest.raises(audit.AuditError, match=f"action '{action}' has no EC2 meaning"):
            audit_ec2.act(reach, report, action)


def test_paging_that_does_not_advance_stops_the_audit(ec2_sync, site, pki):
    held = synced(ec2_sync, site, pki, ["a"])
    boot(vo_clients(ec2_sync), held["a"])
    boto = session(ec2_sync.cloud.gaps)

    def hostile(parsed, **_):  # an endpoint that answers the same token for ever
        parsed["NextToken"] = "0"

    ec2_sync.cloud.gaps.page_size = 1000  # moto is not sent the token (it would fail on it)
    boto.events.register("after-call.ec2.DescribeInstances", hostile)
    reach = ec2client.Accounts(boto, role_name="audit", endpoint_url=ec2_sync.cloud.url,
                               what="audit")  # fmt: skip
    site_ = audit_ec2.Site(ACCOUNT, BUCKET, PREFIX, (ec2_sync.s.seal_key.public_key(),))
    with pytest.raises(audit.AuditError, match="paging does not advance"):
        audit_ec2.audit(reach, site_, [(VO_ACCOUNT, REGION)])


# --- the command ----------------------------------------------------------------------------


@pytest.fixture
def command(ec2_sync, site, pki, aws_env, monkeypatch, tmp_path):  # noqa: F811 - the fixture
    """A vmtrust.conf of the site; the command's boto3 sessions carry the moto gap stubs."""
    made = ec2client.session

    def with_gaps(*args, **kw):
        boto = made(*args, **kw)
        ec2_sync.cloud.gaps.attach(boto)
        return boto

    monkeypatch.setattr(ec2client, "session", with_gaps)
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(
        f"[trust]\nseal_key = {tmp_path}/seal.key\n"
        f"[store_ec2]\nregion = {REGION}\nendpoint_url = {ec2_sync.cloud.url}\n"
        f"account_id = {ACCOUNT}\nrecord_bucket = {BUCKET}\n"
        f"vo_account = vo.example.org:{VO_ACCOUNT}\n"
    )
    held = synced(ec2_sync, site, pki, ["a", "b"])
    vo = vo_clients(ec2_sync)
    ec2_sync.instances = {"a": boot(vo, held["a"], 2), "b": boot(vo, held["b"])}
    ec2_sync.conf = conf
    return ec2_sync


def audit_argv(service, *extra, endpoint: str = "") -> list:
    argv = ["--config-file", service.conf, "audit", "--cloud-type", "ec2", "--role-name", "audit"]
    return [*argv, *(["--endpoint-url", endpoint] if endpoint else []), *extra]


def test_command_table_json_and_exit_statuses(command, site, pki, capsys):
    rc, out, err = run(capsys, *audit_argv(command))
    assert (rc, err) == (0, "")
    assert out == "no findings: 3 instance(s) of 3 checked, 2 AMI(s) looked up\n"
    synced(command, site, pki, ["b"], version="2")  # a is retired
    rc, out, err = run(capsys, *audit_argv(command))
    assert rc == 60 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["INSTANCE", "ACCOUNT", "ZONE", "AMI", "REASON", "SINCE", "DETAIL"]
    assert {line.split()[0] for line in lines[1:3]} == set(command.instances["a"])
    assert lines[-1] == ("2 finding(s) on 2 instance(s): 3 instance(s) of 3 checked, "
                         "2 AMI(s) looked up")  # fmt: skip
    rc, out, _ = run(capsys, *audit_argv(command, "--json", "--action", "stop", "--dry-run"))
    data = json.loads(out)
    assert rc == 60 and (data["servers"], data["worker_servers"], data["images"]) == (3, 3, 2)
    assert {(f["server"], f["reason"], f["action"]) for f in data["findings"]} == {
        (i, "retired", "would stop") for i in command.instances["a"]}  # fmt: skip
    assert set(data["findings"][0]) == {  # the fields of OpenStack's findings
        "server", "name", "project", "host", "image", "reason", "detail", "since", "status",
        "locked", "action"}  # fmt: skip

    with FaultProxy(command.cloud.url) as proxy:
        proxy.faults = [Fault("StopInstances", 403, "UnauthorizedOperation", times=1)]
        rc, out, err = run(capsys, *audit_argv(command, "--action", "stop", endpoint=proxy.url))
        assert rc == 62 and "failed: audit: stop i-" in out and "UnauthorizedOperation" in out
        assert proxy.count("StopInstances") == 2  # each instance once; the other one stopped
        rc, out, _ = run(capsys, *audit_argv(command, "--action", "stop", endpoint=proxy.url))
        actions = [line.split()[6] for line in out.splitlines()[1:3]]
        assert rc == 60 and sorted(actions) == ["already", "stopped"]  # "already stopped"


def test_a_refused_read_or_a_failed_call_stops_the_audit_before_any_action(command, site, pki,
                                                                           capsys):  # fmt: skip
    synced(command, site, pki, ["b"], version="2")
    with FaultProxy(command.cloud.url) as proxy:
        for fault, words in [
            (
                Fault("GetObject", 403, "AccessDenied", times=None),
                "S3 GetObject s3://site-records/",
            ),
            (Fault("DescribeImages", 500, "InternalError", times=None), "EC2 DescribeImages"),
            (Fault("DescribeVolumes", 503, "Unavailable", times=None), "EC2 DescribeVolumes"),
        ]:
            proxy.faults = [fault]
            line = fails(capsys, 61, *audit_argv(command, "--action", "stop", endpoint=proxy.url))
            assert words in line and fault.code in line
        assert proxy.count("StopInstances") == 0


def test_no_role_for_another_account_is_one_line_before_anything_is_listed(command, capsys):
    with FaultProxy(command.cloud.url) as proxy:
        argv = ["--config-file", command.conf, "audit", "--cloud-type", "ec2",
                "--endpoint-url", proxy.url]  # fmt: skip
        line = fails(capsys, 4, *argv)
        assert f"account {VO_ACCOUNT}: the credentials are of account {ACCOUNT}" in line
        assert "--role-name" in line and proxy.seen == ["sts POST"]
        # the credentials' own account needs no role
        assert run(capsys, *argv, "--account", ACCOUNT)[0] == 0


def test_all_regions_of_the_accounts(command, capsys):
    rc, out, err = run(capsys, *audit_argv(command, "--all-regions", "--json"))
    assert err == ""
    data = json.loads(out)
    assert rc == 0 and (data["servers"], data["images"]) == (3, 2)


def with_options(argv: list, extra: list[str]) -> list:
    """``argv`` with the options of ``extra``: a value replaces the one given, else added."""
    argv = list(argv)
    for n, flag in enumerate(extra):
        if not flag.startswith("--"):
            continue
        value = extra[n + 1 : n + 2]
        value = value if value and not value[0].startswith("--") else []
        if flag in argv and value:
            argv[argv.index(flag) + 1] = value[0]
        else:
            argv += [flag, *value]
    return argv


@pytest.mark.parametrize(
    ("extra", "status", "words"),
    [
        (["--action", "shelve"], 2, "--action shelve has no EC2 meaning"),
        (["--action", "lock"], 2, "--action lock has no EC2 meaning"),
        (["--owner", "p"], 2, "--owner is for --cloud-type openstack"),
        (["--all-regions", "--region", REGION], 2, "--all-regions and --region exclude"),
        (["--page-size", "4"], 4, "EC2 takes 5 to 1000"),
        (["--account", "1234"], 4, "account '1234': expected 12 digits"),
        (["--role-name", "a/b"], 4, "not an IAM role name"),
        (["--site-account", "x"], 4, "site account 'x': expected 12 digits"),
        (["--region", "eu_west"], 4, "not an AWS region name"),
    ],
)
def test_bad_options_are_one_line_before_anything_is_asked(
    ec2_cloud,
    aws_env,  # noqa: F811 - the fixture
    tmp_path,
    capsys,
    extra,
    status,
    words,
):
    from vmtrust.record import generate_key_pair

    key = generate_key_pair(tmp_path / "seal.key")
    with FaultProxy(ec2_cloud.url) as proxy:
        argv = ["audit", "--cloud-type", "ec2", "--endpoint-url", proxy.url, "--seal-key", key,
                "--site-account", ACCOUNT, "--record-bucket", BUCKET, "--account", VO_ACCOUNT,
                "--role-name", "audit"]  # fmt: skip
        argv = with_options(argv, extra)
        if status == 2:
            with pytest.raises(SystemExit) as done:
                run(capsys, *argv)
            err = capsys.readouterr().err
            assert done.value.code == 2 and err.count("\n") == 1 and words in err, err
        else:
            assert words in fails(capsys, status, *argv)
        assert proxy.seen == []


def test_openstack_needs_its_cloud_and_refuses_ec2_options(capsys):
    for argv, words in [
        (["audit", "--owner", "p"], "the following arguments are required: --cloud"),
        (["audit", "--cloud", "c", "--account", VO_ACCOUNT], "--account is for --cloud-type ec2"),
        (["audit", "--cloud", "c", "--role-name", "r"], "--role-name is for --cloud-type ec2"),
    ]:
        with pytest.raises(SystemExit) as done:
            run(capsys, *argv)
        err = capsys.readouterr().err
        assert done.value.code == 2 and err.count("\n") == 1 and words in err, err


def test_the_ec2_audit_imports_nothing_of_the_sync_service_or_openstack():
    tree = ast.parse((ROOT / "vmtrust/audit_ec2.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}  # fmt: skip
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not [m for m in imported if m.split(".")[0] in ("glance_sync", "openstack")]
    code = (
        "import sys; from vmtrust.cli import main; "
        "main.main(['audit', '--cloud-type', 'ec2', '--account', '111111111111', "
        "'--site-account', '123456789012', '--record-bucket', 'b', '--seal-key', '/none']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('glance_sync', 'openstack')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip
    # nothing of the sync side (a built-in command does not read its entry points), no openstack
    assert done.stdout.strip() == "[]", done.stderr
