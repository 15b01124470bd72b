"""``vmtrust ec2 policy``: what each enforcement document says, linted by parliament, applied.

The documents' content is checked statement by statement (what is denied,
on which resources, under which condition), and every IAM document is linted
with parliament (PyPI), a maintained IAM policy linter that knows every
action, resource type and condition key: a misspelt action or a condition key
that does not exist for an action fails the test.  moto checks no IAM
condition (shared/reference/ec2.md), so what the policies *do* is asserted on
their text here; ``--apply`` is run against moto (the bucket policy and the
role policy are moto's own; the Allowed AMIs calls, which moto does not
implement, are answered by the gap stubs of tests/moto_ec2.py, which record
what vmtrust sent).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmtrust import ec2policy
from vmtrust.cli.main import main as vmtrust_main
from vmtrust.errors import ConfigError

SITE = ec2policy.Site(
    account="123456789012",
    region="eu-west-1",
    sync_role_arn="arn:aws:iam::123456789012:role/vmtrust-sync",
    record_bucket="site-records",
    vo_accounts=["111111111111", "222222222222"],
)
IAM_DOCUMENTS = ("vo-scp", "site-scp", "sync-role", "record-bucket")


def statement(document: dict, sid: str) -> dict:
    (found,) = [s for s in document["Statement"] if s["Sid"] == sid]
    return found


def lint(document: dict) -> list:
    import parliament

    policy = parliament.analyze_policy_string(json.dumps(document))
    return [(f.issue, f.detail) for f in policy.findings]


@pytest.mark.parametrize("name", IAM_DOCUMENTS)
def test_every_iam_document_passes_parliament(name):
    assert lint(ec2policy.document(name, SITE)) == []


def test_the_linter_does_find_mistakes():
    """The lint above can fail: parliament flags what a typo in these documents would be."""
    document = ec2policy.vo_scp(SITE)
    document["Statement"][0]["Action"] = "ec2:RunInstance"
    document["Statement"][0]["Condition"] = {"StringNotEquals": {"ec2:Owners": "1"}}
    issues = {issue for issue, _ in lint(document)}
    assert "UNKNOWN_ACTION" in issues
    wrong_resource = ec2policy.sync_role(SITE)
    wrong_resource["Statement"][-2]["Resource"] = "arn:aws:s3:::bucket/*"  # DeleteSnapshot
    assert "RESOURCE_MISMATCH" in {issue for issue, _ in lint(wrong_resource)}


def test_allowed_amis_allow_only_the_sites_images_and_none_deprecated():
    document = ec2policy.allowed_amis(SITE)
    assert document == {
        "AllowedImagesSettingsState": "enabled",
        "ImageCriteria": [
            {
                "ImageProviders": ["123456789012"],
                "DeprecationTimeCondition": {"MaximumDaysSinceDeprecated": 0},
            }
        ],
    }
    assert ec2policy.allowed_amis(SITE, "audit-mode")["AllowedImagesSettingsState"] == "audit-mode"


def test_vo_accounts_launch_only_site_images_make_none_and_keep_allowed_amis():
    document = ec2policy.vo_scp(SITE)
    launch = statement(document, "VmtrustLaunchOnlySiteImages")
    assert launch["Effect"] == "Deny" and launch["Action"] == "ec2:RunInstances"
    assert launch["Resource"] == "arn:aws:ec2:eu-west-1::image/*"
    # ec2:Owner, not a tag: tags of a shared AMI are not known to be seen by the launcher
    assert launch["Condition"] == {"StringNotEquals": {"ec2:Owner": "123456789012"}}
    own = statement(document, "VmtrustNoImagesOfTheirOwn")
    assert own["Effect"] == "Deny" and own["Resource"] == "*"
    assert {
        "ec2:RegisterImage",
        "ec2:CreateImage",
        "ec2:CopyImage",
        "ec2:ImportImage",
        "ec2:ImportSnapshot",
    } <= set(own["Action"])
    settings = statement(document, "VmtrustAllowedAmisStay")
    assert set(settings["Action"]) == {
        "ec2:EnableAllowedImagesSettings",
        "ec2:DisableAllowedImagesSettings",
        "ec2:ReplaceImageCriteriaInAllowedImagesSettings",
    }


def test_only_the_sync_role_writes_images_trust_tags_blocks_and_records_in_the_site_account():
    document = ec2policy.site_scp(SITE)
    role = {"ArnNotLike": {"aws:PrincipalArn": SITE.sync_role_arn}}
    images = statement(document, "VmtrustOnlySyncWritesImages")
    assert images["Effect"] == "Deny" and images["Condition"] == role
    assert {
        "ec2:RegisterImage",
        "ec2:ModifyImageAttribute",
        "ec2:EnableImageDeprecation",
        "ec2:DisableImageDeprecation",
        "ebs:StartSnapshot",
        "ebs:PutSnapshotBlock",
        "ebs:CompleteSnapshot",
        "ec2:DeregisterImage",
    } <= set(images["Action"])
    tags = statement(document, "VmtrustOnlySyncWritesTrustTags")
    assert set(tags["Action"]) == {"ec2:CreateTags", "ec2:DeleteTags"}
    assert tags["Condition"] == {**role, "ForAnyValue:StringLike": {"aws:TagKeys": ["vmtrust:*"]}}
    records = statement(document, "VmtrustOnlySyncWritesRecords")
    assert records["Resource"] == "arn:aws:s3:::site-records/vmtrust/records/*"


def test_the_sync_role_changes_only_managed_images_and_snapshots():
    document = ec2policy.sync_role(SITE)
    assert all(s["Effect"] == "Allow" for s in document["Statement"])
    managed = {"StringEquals": {"aws:ResourceTag/vmtrust:managed": "true"}}
    own = statement(document, "VmtrustManageOwnImages")
    assert own["Condition"] == managed and own["Resource"] == "arn:aws:ec2:eu-west-1::image/*"
    assert "ec2:DeregisterImage" in own["Action"] and "ec2:ModifyImageAttribute" in own["Action"]
    assert statement(document, "VmtrustRemoveOwnSnapshots")["Condition"] == managed
    unconditioned = {
        a
        for s in document["Statement"]
        if "Condition" not in s
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert not unconditioned & {"ec2:DeregisterImage", "ec2:DeleteSnapshot", "ec2:DisableImage"}


def test_the_record_bucket_is_read_by_vo_accounts_and_written_by_the_sync_only():
    document = ec2policy.record_bucket(SITE)
    read = statement(document, "VmtrustVOsReadRecords")
    assert read["Principal"] == {
        "AWS": ["arn:aws:iam::111111111111:root", "arn:aws:iam::222222222222:root"]
    }
    assert read["Action"] == "s3:GetObject"
    write = statement(document, "VmtrustOnlySyncWritesRecords")
    assert write["Effect"] == "Deny" and write["Principal"] == "*"
    assert write["Condition"] == {"ArnNotLike": {"aws:PrincipalArn": SITE.sync_role_arn}}


def test_missing_facts_are_one_line_configuration_errors():
    with pytest.raises(ConfigError, match="account_id '12': the site account's 12-digit id"):
        ec2policy.Site(account="12")
    with pytest.raises(ConfigError, match="sync_role_arn '': the ARN of the sync's IAM role"):
        ec2policy.site_scp(ec2policy.Site(account="123456789012"))
    with pytest.raises(ConfigError, match="record_bucket: needed"):
        ec2policy.record_bucket(
            ec2policy.Site(account="123456789012", sync_role_arn=SITE.sync_role_arn)
        )


# --- the command ------------------------------------------------------------------------------


def write_conf(path: Path, extra: str = "") -> Path:
    path.write_text(
        "[store_ec2]\naccount_id = 123456789012\nregion = eu-west-1\n"
        "sync_role_arn = arn:aws:iam::123456789012:role/vmtrust-sync\n"
        "record_bucket = site-records\nvo_account = cms:111111111111\n" + extra
    )
    return path


def test_policy_prints_every_document_with_where_it_goes(tmp_path, capsys):
    conf = write_conf(tmp_path / "vmtrust.conf")
    assert vmtrust_main(["--config-file", str(conf), "ec2", "policy"]) == 0
    out = capsys.readouterr().out
    for name in ec2policy.DOCUMENTS:
        assert f"# {name}: " in out
    assert vmtrust_main(["--config-file", str(conf), "ec2", "policy", "--json"]) == 0
    documents = json.loads(capsys.readouterr().out)
    assert list(documents) == list(ec2policy.DOCUMENTS)
    assert documents["vo-scp"] == ec2policy.vo_scp(
        SITE.__class__(account="123456789012", region="eu-west-1")
    )


def test_scps_are_never_applied(tmp_path, capsys):
    conf = write_conf(tmp_path / "vmtrust.conf")
    assert vmtrust_main(["--config-file", str(conf), "ec2", "policy", "vo-scp", "--apply"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "attached in AWS Organizations" in err


def test_policy_without_the_site_account_is_one_line(tmp_path, capsys):
    conf = tmp_path / "vmtrust.conf"
    conf.write_text("[store_ec2]\nregion = eu-west-1\n")
    assert vmtrust_main(["--config-file", str(conf), "ec2", "policy"]) == 4
    assert "account_id ''" in capsys.readouterr().err


@pytest.fixture
def apply_env(ec2_cloud, tmp_path, monkeypatch):
    """AWS credentials in the environment; the gap stubs on the session vmtrust makes."""
    from vmtrust import ec2client

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }.items():
        monkeypatch.setenv(name, value)
    made = ec2client.session

    def with_gaps(profile: str = "", region: str = ""):
        boto = made(profile, region)
        ec2_cloud.gaps.attach(boto)
        return boto

    monkeypatch.setattr(ec2client, "session", with_gaps)
    return write_conf(tmp_path / "vmtrust.conf", f"endpoint_url = {ec2_cloud.url}\n")


def test_apply_allowed_amis_sets_and_reads_back_the_settings(apply_env, ec2_cloud, capsys):
    argv = ["--config-file", str(apply_env), "ec2", "policy", "allowed-amis", "--apply"]
    assert vmtrust_main([*argv, "--state", "audit-mode"]) == 0
    assert "Allowed AMIs audit-mode in eu-west-1" in capsys.readouterr().out
    allowed = ec2_cloud.gaps.read()["allowed"]
    assert allowed["state"] == "audit-mode"
    assert allowed["criteria"] == ec2policy.allowed_amis(SITE)["ImageCriteria"]


def test_apply_record_bucket_and_sync_role_policies(apply_env, ec2_cloud, capsys):
    argv = ["--config-file", str(apply_env), "ec2", "policy"]
    assert vmtrust_main([*argv, "record-bucket", "--apply"]) == 0
    policy = json.loads(ec2_cloud.clients.s3.get_bucket_policy(Bucket="site-records")["Policy"])
    site = ec2policy.Site(
        account="123456789012",
        region="eu-west-1",
        sync_role_arn=SITE.sync_role_arn,
        record_bucket="site-records",
        vo_accounts=["111111111111"],
    )
    assert policy == ec2policy.record_bucket(site)
    from moto_ec2 import session

    iam = session().client("iam", endpoint_url=ec2_cloud.url)
    iam.create_role(
        RoleName="vmtrust-sync",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )
    assert vmtrust_main([*argv, "sync-role", "--apply"]) == 0
    got = iam.get_role_policy(RoleName="vmtrust-sync", PolicyName="vmtrust-sync")
    assert got["PolicyDocument"] == ec2policy.sync_role(site)
    capsys.readouterr()


def test_apply_to_a_missing_role_is_one_line(apply_env, capsys):
    argv = ["--config-file", str(apply_env), "ec2", "policy", "sync-role", "--apply"]
    assert vmtrust_main(argv) == 43
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "IAM PutRolePolicy: NoSuchEntity" in err, err
