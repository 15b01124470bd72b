"""vmtrust.conf: options, the generated sample, and one-line errors for bad values."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from vmtrust import conf as conf_module
from vmtrust.conf import list_opts, make_conf
from vmtrust.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "etc" / "vmtrust" / "vmtrust.conf.sample"
GENERATOR_CONF = ROOT / "etc" / "vmtrust" / "vmtrust-config-generator.conf"


def test_sample_config_is_current(tmp_path):
    generator = Path(sys.executable).with_name("oslo-config-generator")
    assert generator.exists(), f"{generator} missing: install oslo.config in the venv"
    output = tmp_path / "vmtrust.conf.sample"
    proc = subprocess.run(
        [generator, "--config-file", GENERATOR_CONF, "--output-file", output],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert output.read_text() == SAMPLE.read_text(), (
        f"{SAMPLE.relative_to(ROOT)} is out of date with vmtrust/conf.py: run `make sample` "
        "and commit the result"
    )


def test_nova_filter_sample_is_current(tmp_path):
    """etc/nova/nova-vmtrust.conf.sample documents nova_filter.conf's [vmtrust] options."""
    generator = Path(sys.executable).with_name("oslo-config-generator")
    output = tmp_path / "nova-vmtrust.conf.sample"
    proc = subprocess.run(
        [generator, "--config-file", ROOT / "etc/nova/vmtrust-nova-config-generator.conf",
         "--output-file", output],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sample = ROOT / "etc/nova/nova-vmtrust.conf.sample"
    assert output.read_text() == sample.read_text(), f"{sample} is out of date: run make sample"


def test_entry_point_and_groups():
    (point,) = [e for e in entry_points(group="oslo.config.opts") if e.name == "vmtrust"]
    assert point.value == "vmtrust.conf:list_opts"
    assert point.load() is conf_module.list_opts
    groups = {group: {opt.name for opt in opts} for group, opts in list_opts()}
    glance = groups.pop("store_glance")
    own = {"cloud", "clouds_file", "project_id", "visibility", "vo_project", "disk_formats",
           "name_prefix", "api_timeout", "hypervisor_type", "check_cloud"}  # fmt: skip
    # the rest are keystoneauth's own (auth, session, adapter), as nova has for [glance]
    assert own <= glance
    assert {"auth_type", "auth_section", "cafile", "insecure", "endpoint-override"} <= glance
    assert groups == {
        "trust": {
            "ca_dir",
            "require_crls",
            "require_namespaces",
            "allow_sha1",
            "clock_skew",
            "max_list_bytes",
            "seal_key",
        },
        "endorser": {"cert", "key", "digest", "lifetime_days"},
        "DEFAULT": {"state_dir"},
        "sync": {
            "subscriptions_file",
            "store",
            "retire",
            "retire_grace_hours",
            "parallel_downloads",
            "http_timeout",
            "http_retries",
            "http_backoff",
            "interval",
            "parallel_lists",
            "list_retries",
            "list_deadline",
            "registry_deadline",
            "image_deadline",
            "min_rate",
            "max_redirects",
            "max_image_size",
            "max_expansion_ratio",
            "metrics_address",
            "metrics_textfile",
            "log_format",
            "state_connection",
            "targets",
            "fanout_buffer",
        },
        "coordination": {"backend_url", "member_id", "lease"},
        "target:name": {"store", "groups", "retire"},
        "store_local": {"path", "hook", "disk_format"},
        "store_ec2": {
            "region",
            "profile",
            "endpoint_url",
            "account_id",
            "vo_account",
            "record_bucket",
            "record_prefix",
            "sync_role_arn",
            "boot_mode",
            "ena_support",
            "imds_v2",
            "root_device",
            "volume_type",
            "name_prefix",
            "upload_threads",
            "api_retries",
            "api_timeout",
        },
    }


def test_defaults_without_files():
    conf = make_conf([])
    assert conf.trust.ca_dir == "/etc/grid-security/certificates"
    assert (conf.trust.require_crls, conf.trust.require_namespaces) == (True, True)
    assert (conf.trust.allow_sha1, conf.trust.clock_skew) == (False, 300)
    assert conf.trust.max_list_bytes == 8 * 1024 * 1024
    assert (conf.endorser.digest, conf.endorser.lifetime_days) == ("sha256", 28)
    assert conf.endorser.cert == "~/.globus/usercert.pem"


def test_file_values_are_read(tmp_path):
    path = tmp_path / "vmtrust.conf"
    path.write_text(
        "[trust]\n"
        f"ca_dir = {tmp_path / 'certificates'}\n"
        "require_crls = false\n"
        "clock_skew = 60\n"
        "[endorser]\n"
        "digest = sha512\n"
        "lifetime_days = 14\n"
    )
    conf = make_conf([str(path)])
    assert conf.trust.ca_dir == str(tmp_path / "certificates")
    assert conf.trust.require_crls is False
    assert conf.trust.require_namespaces is True  # untouched options keep their default
    assert conf.trust.clock_skew == 60
    assert (conf.endorser.digest, conf.endorser.lifetime_days) == ("sha512", 14)


def test_later_file_overrides_earlier(tmp_path):
    first, second = tmp_path / "a.conf", tmp_path / "b.conf"
    first.write_text("[trust]\nca_dir = /first\nallow_sha1 = true\n")
    second.write_text("[trust]\nca_dir = /second\n")
    conf = make_conf([str(first), str(second)])
    assert (conf.trust.ca_dir, conf.trust.allow_sha1) == ("/second", True)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[trust]\nrequire_crls = maybe\n", ["[trust] require_crls", "maybe"]),
        ("[trust]\nclock_skew = -5\n", ["[trust] clock_skew", "greater than or equal to 0"]),
        ("[trust]\nclock_skew = soon\n", ["[trust] clock_skew"]),
        ("[trust]\nmax_list_bytes = 10\n", ["[trust] max_list_bytes"]),
        ("[endorser]\ndigest = md5\n", ["[endorser] digest", "md5"]),
        ("[endorser]\nlifetime_days = 0\n", ["[endorser] lifetime_days"]),
    ],
)
def test_bad_values_name_the_option(text, names, tmp_path):
    path = tmp_path / "vmtrust.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        make_conf([str(path)])
    message = str(info.value)
    assert "\n" not in message
    assert "LocationInfo" not in message
    assert message.startswith(f"configuration file {path}: ")
    for name in names:
        assert name in message
    assert info.value.exit_code == 4


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "not found"),
        ("[trust\nca_dir = /x\n", "Invalid section"),
        (b"[trust]\nca_dir = \xff\n", "not UTF-8"),
        ("directory", "Is a directory"),
    ],
)
def test_unreadable_files(content, expected, tmp_path):
    path = tmp_path / "vmtrust.conf"
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        make_conf([str(path)])
    message = str(info.value)
    assert expected in message and str(path) in message
    assert "\n" not in message


def test_environment_value_errors_name_the_source(monkeypatch):
    monkeypatch.setenv("OS_TRUST__CLOCK_SKEW", "-1")
    with pytest.raises(ConfigError, match=r"OS_TRUST__CLOCK_SKEW.*\[trust\] clock_skew"):
        make_conf([])
