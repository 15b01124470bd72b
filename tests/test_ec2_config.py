"""``[sync] store = ec2`` from vmtrust.conf: ``vmtrust-sync``, ``vmtrust images`` and bad options.

The commands run in-process on a real vmtrust.conf and boto3's own credential
chain (environment variables, config files made here); only the moto gap stubs
(tests/moto_ec2.py) are attached to the session boto3 makes.  No test here lets
boto3 ask an instance metadata service: ``AWS_EC2_METADATA_DISABLED`` is set.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_sync_local import IMAGE_A, IMAGE_B, entry, publish

from glance_sync import cli as sync_cli
from vmtrust import ec2client
from vmtrust.cli.main import main as vmtrust_main
from vmtrust.record import generate_key_pair


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch):
    """boto3's chain sees test credentials from the environment, nothing of the host."""
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def site_conf(tmp_path: Path, ca_dir: Path, site, pki, ec2_cloud, aws_env, monkeypatch):
    """A vmtrust.conf storing into the moto account; the gap stubs ride on boto3's session."""
    made = ec2client.session

    def with_gaps(profile: str = "", region: str = ""):
        boto = made(profile, region)
        ec2_cloud.gaps.attach(boto)
        return boto

    monkeypatch.setattr(ec2client, "session", with_gaps)
    generate_key_pair(tmp_path / "seal.key")
    (tmp_path / "subs.yaml").write_text(
        f"subscriptions:\n  - name: example\n    url: {site.url('/site.list')}\n"
        f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
        "    approve: all\n"
    )
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
        f"[trust]\nca_dir = {ca_dir}\nseal_key = {tmp_path}/seal.key\n"
        f"[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\nstore = ec2\n"
        f"[store_ec2]\nregion = eu-west-1\nendpoint_url = {ec2_cloud.url}\n"
        "record_bucket = site-records\nvo_account = vo.example.org:111111111111\n"
        "api_retries = 1\n"
    )
    return conf


def test_vmtrust_sync_and_images_on_ec2(site_conf, site, pki, capsys):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    assert sync_cli.main(["--config-file", str(site_conf)]) == 0
    capsys.readouterr()
    assert vmtrust_main(["--config-file", str(site_conf), "images", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["identifier"]: r["state"] for r in rows} == {"a": "trusted", "b": "trusted"}
    for row in rows:
        assert row["location"].startswith("ec2:eu-west-1:ami-")
        assert row["store_id"].startswith("ami-") and "/snap-" in row["store_id"]
        assert row["problem"] is None and row["vo"] == "vo.example.org"
    assert vmtrust_main(["--config-file", str(site_conf), "images"]) == 0
    table = capsys.readouterr().out
    assert "trusted" in table and "ec2:eu-west-1:ami-" in table
    assert vmtrust_main(["--config-file", str(site_conf), "status", "--json"]) == 0
    (status,) = json.loads(capsys.readouterr().out)
    assert status["list_version"] == "1" and status["last_error"] is None
    assert sync_cli.main(["--config-file", str(site_conf), "--dry-run"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_vmtrust_images_shows_an_altered_record_as_invalid(site_conf, site, pki, ec2_cloud, capsys):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    assert sync_cli.main(["--config-file", str(site_conf)]) == 0
    (image,) = ec2_cloud.clients.ec2.describe_images(Owners=["self"])["Images"]
    ec2_cloud.clients.ec2.create_tags(
        Resources=[image["ImageId"]],
        Tags=[{"Key": "vmtrust:expires", "Value": "2099-01-01T00:00:00Z"}],
    )
    capsys.readouterr()
    assert vmtrust_main(["--config-file", str(site_conf), "images", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["state"] == "invalid" and "seal" in row["problem"]


@pytest.mark.parametrize(
    "option,message",
    [
        ("vo_account = cms:12345", "[store_ec2] vo_account 'cms:12345': expected VO:ACCOUNT_ID"),
        ("vo_account = :111111111111", "expected VO:ACCOUNT_ID (12 digits)"),
        ("profile = nosuchprofile", "[store_ec2] profile nosuchprofile:"),
        ("boot_mode = bios", "[store_ec2] boot_mode: "),
        ("upload_threads = 0", "[store_ec2] upload_threads: "),
    ],
)
def test_bad_options_are_one_line_before_anything_is_touched(site_conf, capsys, option, message):
    site_conf.write_text(site_conf.read_text() + option + "\n")
    code = sync_cli.main(["--config-file", str(site_conf)])
    err = capsys.readouterr().err
    assert code == 4 and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err


def test_vo_accounts_need_a_record_bucket(site_conf, capsys):
    site_conf.write_text(site_conf.read_text().replace("record_bucket = site-records\n", ""))
    assert sync_cli.main(["--config-file", str(site_conf)]) == 4
    assert "[store_ec2] record_bucket: needed with vo_account" in capsys.readouterr().err


def test_no_region_anywhere_is_a_configuration_error(site_conf, capsys):
    site_conf.write_text(site_conf.read_text().replace("region = eu-west-1\n", ""))
    assert vmtrust_main(["--config-file", str(site_conf), "images"]) == 4
    assert "[store_ec2] region: not set" in capsys.readouterr().err


def test_no_credentials_is_one_line(site_conf, monkeypatch, capsys):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert sync_cli.main(["--config-file", str(site_conf)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no AWS credentials" in err, err


def test_a_profile_with_a_region_is_used(site_conf, tmp_path, site, pki, capsys):
    (tmp_path / "aws-config").write_text("[profile sync]\nregion = eu-west-1\n")
    (tmp_path / "aws-credentials").write_text(
        "[sync]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
    )
    text = site_conf.read_text().replace("region = eu-west-1\n", "profile = sync\n")
    site_conf.write_text(text)
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    assert sync_cli.main(["--config-file", str(site_conf)]) == 0
    capsys.readouterr()
    assert vmtrust_main(["--config-file", str(site_conf), "images", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "trusted"
