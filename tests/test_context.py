"""Contextualisation: site and VO profiles, what is refused, what is composed, size, secrets.

Profiles are written as YAML into ``tmp_path`` and read back through the public
API (:func:`vmtrust.context.load_site`, :func:`~vmtrust.context.load_vo`), so
every refusal is seen as a site admin or a VO sees it: one line naming the file
and the key.  The command line runs as a subprocess (the installed ``vmtrust``
script) where stderr, exit status and file modes matter.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import email
import gzip
import logging
import random
import stat
import subprocess
import sys
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmtrust import context
from vmtrust.context.compose import compose
from vmtrust.context.userdata import LIMITS, package
from vmtrust.errors import ConfigError, InvalidConfiguration

VMTRUST = Path(sys.executable).parent / "vmtrust"
SECRET = "SECRET-TOKEN-123"
PROXY = "http://squid1.example.org:3128|http://squid2.example.org:3128;DIRECT"
ADMIN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyForTestsOnly admin@example.org"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBexampleCAforTests\n-----END CERTIFICATE-----\n"
SYSLOG = "@@syslog.example.org:514"
DROP = object()  #: in ``changes``: remove the key

SITE: dict[str, Any] = {
    "site": "EXAMPLE-SITE",
    "cvmfs": {
        "proxy": PROXY,
        "quota_mb": 20000,
        "cache_base": "/scratch/cvmfs",
        "repositories": ["grid.cern.ch"],
        "allowed_repositories": ["*.cern.ch", "*.egi.eu"],
    },
    "syslog": [SYSLOG],
    "admin_ssh_keys": [ADMIN_KEY],
    "ca_certificates": [CA_PEM],
    "lifetime": {"max_seconds": 86400, "grace_seconds": 300},
    "pilot_user": "cmspilot",
    "vo_may": {
        "packages": ["python3*", "singularity"],
        "file_prefixes": ["/opt/", "/etc/vo/"],
        "runcmd": True,
    },
}

VO: dict[str, Any] = {
    "vo": "cms",
    "cvmfs": {"repositories": ["cms.cern.ch"]},
    "lifetime": 43200,
    "packages": ["python3-requests"],
    "write_files": [{"path": "/opt/cms/site.json", "content": "{}\n", "permissions": "0644"}],
    "runcmd": ["echo vo-command-marker"],
    "pilot": {
        "command": "/opt/cms/pilot.sh --queue T2_XX",
        "config": {"path": "/etc/vo/pilot.cfg", "content": "queue=T2_XX\n"},
        "credential": {"path": "/etc/vo/token", "content": SECRET},
        "environment": {"QUEUE": "T2_XX"},
    },
}


def _changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with dotted keys set (or removed with DROP)."""
    data = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        target = data
        for key in parents:
            target = target.setdefault(key, {})
        if value is DROP:
            target.pop(last, None)
        else:
            target[last] = value
    return data


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def site_file(tmp_path: Path, **changes: Any) -> Path:
    return write_yaml(tmp_path / "site.yaml", _changed(SITE, changes))


def vo_file(tmp_path: Path, base: dict[str, Any] | None = None, **changes: Any) -> Path:
    return write_yaml(tmp_path / "vo.yaml", _changed(VO if base is None else base, changes))


def load(tmp_path: Path, site: dict | None = None, vo: dict | None = None):
    s = context.load_site(site_file(tmp_path, **(site or {})))
    v = context.load_vo(vo_file(tmp_path, **(vo or {})), s)
    return s, v


def cloud_config(data: bytes) -> dict[str, Any]:
    """The (single) cloud-config of a user-data, as a dict."""
    parts = [p for p in context.unpack(data) if p.content_type == "text/cloud-config"]
    assert len(parts) == 1
    return yaml.safe_load(parts[0].body)


def files_by_path(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["path"]: item for item in config.get("write_files", [])}


def refused(call, *args) -> InvalidConfiguration:
    with pytest.raises(ConfigError) as info:
        call(*args)
    return info.value


def assert_one_line_naming(exc: Exception, path: Path, key: str) -> None:
    text = str(exc)
    assert "\n" not in text
    assert str(path) in text
    assert f": {key}:" in text


# --- VO requests the site does not allow -------------------------------------------------

VO_REFUSALS = [
    ({"users": [{"name": "intruder", "sudo": "ALL=(ALL) NOPASSWD:ALL"}]}, "users"),
    ({"groups": ["wheel"]}, "groups"),
    ({"ssh_authorized_keys": ["ssh-ed25519 AAAAvokey vo@example.org"]}, "ssh_authorized_keys"),
    ({"bootcmd": ["echo early"]}, "bootcmd"),
    ({"disable_root": False}, "disable_root"),
    ({"ca_certs": {"trusted": [CA_PEM]}}, "ca_certs"),
    ({"rsyslog": {"remotes": {"vo": "@@vo.example.org:514"}}}, "rsyslog"),
    ({"power_state": {"mode": "poweroff", "delay": "now"}}, "power_state"),
    ({"mounts": [["/dev/vdb", "/data"]]}, "mounts"),
    ({"cvmfs.proxy": "http://vo-squid.example.org:3128"}, "cvmfs.proxy"),
    ({"cvmfs.repositories": ["evil.example.org"]}, "cvmfs.repositories"),
    ({"packages": ["nginx"]}, "packages"),
    ({"write_files": [{"path": "/etc/cvmfs/default.local", "content": "x\n"}]},
     "write_files[0].path"),
    ({"write_files": [{"path": "/etc/cvmfs/domain.d/cern.ch.local", "content": "x\n"}]},
     "write_files[0].path"),
    ({"write_files": [{"path": "/etc/ssh/sshd_config", "content": "x\n"}]},
     "write_files[0].path"),
    ({"write_files": [{"path": "/root/.ssh/authorized_keys", "content": "x\n"}]},
     "write_files[0].path"),
    ({"write_files": [{"path": "/usr/local/bin/tool", "content": "x\n"}]},
     "write_files[0].path"),
    ({"write_files": [{"path": "/opt/../etc/passwd", "content": "x\n"}]},
     "write_files[0].path"),
    ({"write_files": [{"path": "/opt/a\nb", "content": "x\n"}]}, "write_files[0].path"),
    ({"write_files": [{"path": "/opt/tool", "content": "x\n", "permissions": "4755"}]},
     "write_files[0].permissions"),
    ({"write_files": [{"path": "/opt/tool", "content": "x\n", "permissions": "2755"}]},
     "write_files[0].permissions"),
    ({"write_files": [{"path": "/opt/tool", "content": "x\n", "permissions": 644}]},
     "write_files[0].permissions"),
    ({"write_files": [{"path": "/opt/tool", "content": "x\n", "permissions": "0999"}]},
     "write_files[0].permissions"),
    ({"write_files": [{"path": "/opt/tool", "content": "x\n", "permissions": "rwxr-xr-x"}]},
     "write_files[0].permissions"),
    ({"lifetime": 86401}, "lifetime"),
    ({"lifetime": 10}, "lifetime"),
    ({"packges": ["python3-requests"]}, "packges"),
    ({"run\ncmd": ["x"]}, "'run\\ncmd'"),
    ({"pilot.systemd_unit": "[Service]\nExecStart=/opt/pilot\n"}, "pilot"),
    ({"pilot.command": DROP}, "pilot"),
    ({"pilot.credential": {"path": "/root/token", "content": SECRET}},
     "pilot.credential.path"),
    ({"pilot.credential": {"path": "/usr/share/token", "content": SECRET}},
     "pilot.credential.path"),
    ({"pilot.command": DROP,
      "pilot.systemd_unit": "[Service]\nExecStartPre=+/bin/chmod 4755 /bin/sh\n"},
     "pilot.systemd_unit"),
    ({"pilot.commnd": "/opt/pilot"}, "pilot.commnd"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "key"), VO_REFUSALS, ids=[k for _, k in VO_REFUSALS])
def test_vo_request_the_site_does_not_allow_is_refused_naming_file_and_key(tmp_path, changes, key):
    site = context.load_site(site_file(tmp_path))
    path = vo_file(tmp_path, **changes)
    exc = refused(context.load_vo, path, site)
    assert isinstance(exc, InvalidConfiguration)
    assert exc.problems == [p for p in exc.problems if p.startswith(f"VO profile {path}: ")]
    assert len(exc.problems) == 1, exc.problems
    assert_one_line_naming(exc, path, key)


def test_runcmd_is_refused_when_the_site_forbids_it(tmp_path):
    site = context.load_site(site_file(tmp_path, **{"vo_may.runcmd": False}))
    path = vo_file(tmp_path)
    exc = refused(context.load_vo, path, site)
    assert exc.problems == [f"VO profile {path}: runcmd: not allowed by the site"]
    # without runcmd the same VO is accepted by that site
    assert context.load_vo(vo_file(tmp_path, runcmd=DROP), site).runcmd == ()


def test_repositories_are_refused_by_a_site_without_cvmfs(tmp_path):
    site = context.load_site(site_file(tmp_path, cvmfs=DROP))
    path = vo_file(tmp_path)
    exc = refused(context.load_vo, path, site)
    assert_one_line_naming(exc, path, "cvmfs.repositories")
    assert "does not offer CVMFS" in str(exc)


def test_write_files_outside_allowed_prefixes_names_the_prefixes(tmp_path):
    site = context.load_site(site_file(tmp_path, **{"vo_may.file_prefixes": ["/srv/vo/"]}))
    path = vo_file(tmp_path, **{"pilot.config": DROP, "pilot.credential": DROP,
                                "pilot.environment": DROP})  # fmt: skip
    exc = refused(context.load_vo, path, site)
    assert "/opt/cms/site.json is outside the locations the site allows (/srv/vo/)" in str(exc)


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("4755", "setuid"),
        ("02755", "setgid"),
        ("6755", "setuid"),
        ("0644 ", "octal string"),
        ("12345", "octal string"),
        ("0x1ed", "octal string"),
    ],
)
def test_permissions_refusals_say_why(tmp_path, mode, why):
    site = context.load_site(site_file(tmp_path))
    path = vo_file(tmp_path, write_files=[{"path": "/opt/t", "content": "x", "permissions": mode}])
    exc = refused(context.load_vo, path, site)
    assert_one_line_naming(exc, path, "write_files[0].permissions")
    assert why in str(exc)


@pytest.mark.parametrize(("mode", "written"), [("644", "0644"), ("0750", "0750"), ("1777", "1777")])
def test_permissions_are_written_as_four_digit_octal_strings(tmp_path, mode, written):
    site = context.load_site(site_file(tmp_path))
    vo = context.load_vo(
        vo_file(tmp_path, write_files=[{"path": "/opt/t", "content": "x", "permissions": mode}]),
        site,
    )
    assert files_by_path(cloud_config(context.build(site, vo)))["/opt/t"]["permissions"] == written


def test_every_problem_of_a_vo_profile_is_reported_at_once(tmp_path):
    site = context.load_site(site_file(tmp_path))
    path = vo_file(tmp_path, users=["x"], bootcmd=["y"], packages=["nginx"])
    exc = refused(context.load_vo, path, site)
    keys = sorted(p.split(": ")[1] for p in exc.problems)
    assert keys == ["bootcmd", "packages", "users"]
    assert str(exc).endswith("(and 2 more problems)")
    assert "\n" not in str(exc)


# --- bad site profiles ------------------------------------------------------------------

SITE_REFUSALS = [
    ({"cvmfs.proxy": DROP}, "cvmfs.proxy"),
    ({"cvmfs.proxy": "squid.example.org:3128"}, "cvmfs.proxy"),
    ({"cvmfs.proxy": "http://squid.example.org:3128|ftp://x"}, "cvmfs.proxy"),
    ({"cvmfs.proxy": "http://squid example.org:3128"}, "cvmfs.proxy"),
    ({"cvmfs.quota_mb": 999}, "cvmfs.quota_mb"),
    ({"cvmfs.repositories": ["not a repo"]}, "cvmfs.repositories"),
    ({"cvmfs.client_profile": "multi"}, "cvmfs.client_profile"),
    ({"cvmfs.proxies": PROXY}, "cvmfs.proxies"),
    ({"syslog": ["syslog.example.org:514"]}, "syslog"),
    ({"syslog": ["@@syslog.example.org:514; rm -rf /"]}, "syslog"),
    ({"sitename": "X"}, "sitename"),
    ({"site": DROP}, "site"),
    ({"ca_certificates": ["not a certificate"]}, "ca_certificates"),
    ({"lifetime.max_seconds": 10}, "lifetime.max_seconds"),
    ({"lifetime.grace_seconds": -1}, "lifetime.grace_seconds"),
    ({"lifetime.max_second": 3600}, "lifetime.max_second"),
    ({"vo_may.packages": "python3*"}, "vo_may.packages"),
    ({"pilot_user": "Root User"}, "pilot_user"),
    ({"vo_may.file_prefixes": ["opt"]}, "vo_may.file_prefixes"),
    ({"vo_may.runcmd": "yes"}, "vo_may.runcmd"),
    ({"vo_may.run_cmd": True}, "vo_may.run_cmd"),
]


@pytest.mark.parametrize(("changes", "key"), SITE_REFUSALS, ids=[k for _, k in SITE_REFUSALS])
def test_bad_site_profile_is_refused_naming_file_and_key(tmp_path, changes, key):
    path = site_file(tmp_path, **changes)
    exc = refused(context.load_site, path)
    assert isinstance(exc, InvalidConfiguration)
    assert len(exc.problems) == 1, exc.problems
    assert exc.problems[0].startswith(f"site profile {path}: {key}: ")
    assert_one_line_naming(exc, path, key)


SHAPE_ERRORS = [
    ("site", {"cvmfs": "http://squid.example.org:3128"}, "cvmfs"),
    ("site", {"lifetime": 86400}, "lifetime"),
    ("site", {"vo_may": ["packages"]}, "vo_may"),
    ("site", {"syslog": "@@syslog.example.org:514"}, "syslog"),
    ("site", {"site": ""}, "site"),
    ("vo", {"cvmfs": ["cms.cern.ch"]}, "cvmfs"),
    ("vo", {"cvmfs.repositories": ["CMS CERN"]}, "cvmfs.repositories"),
    ("vo", {"packages": ["python3-x; rm -rf /"]}, "packages"),
    ("vo", {"write_files": {"path": "/opt/x", "content": "x"}}, "write_files"),
    ("vo", {"write_files": ["/opt/x"]}, "write_files[0]"),
    ("vo", {"write_files": [{"path": "/opt/x"}]}, "write_files[0]"),
    ("vo", {"write_files": [{"path": "/opt/x", "content": "x", "owner": "root"}]},
     "write_files[0].owner"),
    ("vo", {"pilot": "/opt/pilot.sh"}, "pilot"),
    ("vo", {"pilot.unit_name": "vo-pilot.timer"}, "pilot.unit_name"),
    ("vo", {"pilot.environment": ["QUEUE=x"]}, "pilot.environment"),
    ("vo", {"pilot.environment": {"QUEUE": ["x"]}}, "pilot.environment.QUEUE"),
    ("vo", {"pilot.environment": {"BAD-NAME": "x"}}, "pilot.environment"),
    ("vo", {"pilot.config": {"path": "/etc/vo/pilot.cfg", "content": ""}}, "pilot.config"),
    ("vo", {"lifetime": "12h"}, "lifetime"),
    ("vo", {"vo": DROP}, "vo"),
    ("vo", {"runcmd": "echo not a list"}, "runcmd"),
]  # fmt: skip


@pytest.mark.parametrize(("which", "changes", "key"), SHAPE_ERRORS,
                         ids=[f"{w}-{k}" for w, _, k in SHAPE_ERRORS])  # fmt: skip
def test_malformed_values_are_refused_naming_the_key(tmp_path, which, changes, key):
    if which == "site":
        path = site_file(tmp_path, **changes)
        exc = refused(context.load_site, path)
    else:
        path = vo_file(tmp_path, **changes)
        exc = refused(context.load_vo, path, context.load_site(site_file(tmp_path)))
    assert len(exc.problems) == 1, exc.problems
    assert_one_line_naming(exc, path, key)


@pytest.mark.parametrize(
    "proxy", ["DIRECT", "auto", "auto;DIRECT", "http://a.example.org:3128;http://[::1]:3128"]
)
def test_valid_proxy_forms_are_accepted(tmp_path, proxy):
    assert context.load_site(site_file(tmp_path, **{"cvmfs.proxy": proxy})).cvmfs.proxy == proxy


@pytest.mark.parametrize("loader", ["site", "vo"])
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file"),
        ("dir", "directory"),
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"vo: cms\npilot: [unclosed\n", "not valid YAML (line"),
        (b"- a\n- list\n", "must be a mapping"),
        (b"", "must be a mapping"),
    ],
    ids=["missing", "directory", "not-utf8", "bad-yaml", "list", "empty"],
)
def test_unreadable_or_invalid_profile_file_is_one_line_naming_the_file(
    tmp_path, loader, content, reason
):
    path = tmp_path / "profile.yaml"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        if loader == "site":
            context.load_site(path)
        else:
            context.load_vo(path, context.load_site(site_file(tmp_path)))
    text = str(info.value)
    assert "\n" not in text
    assert str(path) in text
    assert reason.lower() in text.lower()
    assert text.startswith("site profile" if loader == "site" else "VO profile")


# --- composition: the site's parts are always there and win ------------------------------


@pytest.fixture
def built(tmp_path) -> tuple[context.SiteProfile, context.VoProfile, bytes]:
    site, vo = load(tmp_path)
    return site, vo, context.build(site, vo)


def _source(default_local: str, tmp_path: Path, name: str) -> str:
    """A variable as /bin/sh sees it after sourcing default.local (as cvmfs does)."""
    script = tmp_path / "default.local"
    script.write_text(default_local, encoding="utf-8")
    out = subprocess.run(
        ["/bin/sh", "-c", f'. "$1"; printf %s "${name}"', "sh", str(script)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


@pytest.mark.parametrize(
    "proxy",
    [
        PROXY,
        "http://a.example.org:3128|http://b.example.org:3128",
        "http://a.example.org:3128;http://b.example.org:3128",
        "DIRECT",
    ],
)
def test_default_local_carries_the_site_proxy_cache_and_all_repositories(tmp_path, proxy):
    site, vo = load(tmp_path, site={"cvmfs.proxy": proxy})
    local = files_by_path(cloud_config(context.build(site, vo)))["/etc/cvmfs/default.local"]
    assert local["permissions"] == "0644"
    assert local["owner"] == "root:root"
    body = local["content"]
    assert _source(body, tmp_path, "CVMFS_HTTP_PROXY") == proxy
    assert _source(body, tmp_path, "CVMFS_QUOTA_LIMIT") == "20000"
    assert _source(body, tmp_path, "CVMFS_CACHE_BASE") == "/scratch/cvmfs"
    assert _source(body, tmp_path, "CVMFS_REPOSITORIES") == "grid.cern.ch,cms.cern.ch"
    assert "CVMFS_CONFIG_REPOSITORY" not in body


def test_site_parts_are_present(built):
    _, _, data = built
    config = cloud_config(data)
    assert config["ssh_authorized_keys"] == [ADMIN_KEY]
    assert config["disable_root"] is True
    assert config["ssh_pwauth"] is False
    assert config["rsyslog"] == {"remotes": {"site0": SYSLOG}}
    assert config["ca_certs"] == {"trusted": [CA_PEM]}
    assert config["users"][0] == "default"
    assert config["users"][1]["name"] == "cmspilot"
    assert config["users"][1]["lock_passwd"] is True
    assert set(config["users"][1]) == {"name", "gecos", "shell", "lock_passwd", "no_user_group"}
    assert config["packages"] == ["python3-requests"]
    assert "merge_how" not in config and "bootcmd" not in config


def test_vo_cannot_displace_the_site_default_local(tmp_path):
    site = context.load_site(site_file(tmp_path, **{"vo_may.file_prefixes": ["/etc/", "/opt/"]}))
    path = vo_file(
        tmp_path,
        write_files=[{"path": "/etc/cvmfs/default.local", "content": "CVMFS_HTTP_PROXY=DIRECT\n"}],
    )
    exc = refused(context.load_vo, path, site)
    assert "write_files[0].path: /etc/cvmfs/default.local is a site-controlled location" in str(exc)


def test_pilot_config_and_credential_are_private_to_the_pilot_user(built):
    _, _, data = built
    files = files_by_path(cloud_config(data))
    for path, content in (("/etc/vo/pilot.cfg", "queue=T2_XX\n"), ("/etc/vo/token", SECRET)):
        item = files[path]
        assert item["content"] == content
        assert item["permissions"] == "0600"
        assert item["owner"] == "cmspilot:cmspilot"
        assert item["defer"] is True
    env = files["/etc/vo/pilot.env"]
    assert (env["permissions"], env["owner"], env["defer"]) == ("0600", "cmspilot:cmspilot", True)
    assert env["content"] == "QUEUE=T2_XX\n"
    vo_file_item = files["/opt/cms/site.json"]
    assert (vo_file_item["owner"], vo_file_item["permissions"]) == ("root:root", "0644")
    assert "defer" not in vo_file_item


def test_metadata_is_blocked_only_when_pilot_secrets_are_carried(tmp_path):
    site, vo = load(tmp_path)
    assert cloud_config(context.build(site, vo))["disable_ec2_metadata"] is True
    # the pilot's configuration and environment files (mode 0600) may hold secrets too
    site, vo = load(tmp_path, vo={"pilot.credential": DROP})
    assert cloud_config(context.build(site, vo))["disable_ec2_metadata"] is True
    plain = {"pilot.credential": DROP, "pilot.config": DROP, "pilot.environment": DROP}
    site, vo = load(tmp_path, vo=plain)
    assert cloud_config(context.build(site, vo))["disable_ec2_metadata"] is False
    site, vo = load(tmp_path, vo={"pilot": DROP})
    assert cloud_config(context.build(site, vo))["disable_ec2_metadata"] is False


@pytest.mark.parametrize(("asked", "expected"), [(43200, 43200), (None, 86400), (3600, 3600)])
def test_lifetime_is_the_vo_lifetime_within_the_site_maximum(tmp_path, asked, expected):
    site, vo = load(tmp_path, vo={"lifetime": DROP if asked is None else asked})
    runcmd = cloud_config(context.build(site, vo))["runcmd"]
    text = "\n".join(runcmd)
    assert f"+ {expected} )) > /etc/machinefeatures/shutdowntime" in text
    assert "echo 300 > /etc/machinefeatures/grace_secs" in text
    assert f"--on-active={expected} /bin/systemctl poweroff" in text
    assert f"shutdown -h +{(expected + 59) // 60}" in text


def test_scripts_run_cvmfs_before_the_pilot_as_the_pilot_user(built):
    _, _, data = built
    parts = context.unpack(data)
    assert [(p.filename, p.content_type) for p in parts] == [
        ("00-vmtrust.cfg", "text/cloud-config"),
        ("10-vmtrust-cvmfs.sh", "text/x-shellscript"),
        ("30-vmtrust-pilot.sh", "text/x-shellscript"),
    ]
    scripts = [p.filename for p in parts[1:]]
    assert scripts == sorted(scripts)  # cloud-init runs user scripts in file-name order
    cvmfs, pilot = parts[1].body, parts[2].body
    assert "cvmfs_config setup" in cvmfs
    assert "for repo in grid.cern.ch cms.cern.ch; do" in cvmfs
    assert "cvmfs_config probe" in cvmfs
    assert "/run/vmtrust/cvmfs.failed" in pilot  # the pilot does not start without CVMFS
    lines = pilot.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("runuser -u cmspilot -- "))
    assert "/opt/cms/pilot.sh --queue T2_XX" in lines[start]
    assert lines.index("echo vo-command-marker") < start
    assert lines[-1] == "systemctl poweroff"
    assert not any("runuser" not in line and "pilot.sh" in line for line in lines)


def test_systemd_unit_pilot_is_written_started_and_runs_as_the_pilot_user(tmp_path):
    unit = "[Unit]\nDescription=pilot\n[Service]\nUser=root\nExecStart=/opt/cms/pilot\n"
    site, vo = load(
        tmp_path,
        vo={"pilot.command": DROP, "pilot.systemd_unit": unit, "pilot.unit_name": "vo-cms.service"},
    )
    data = context.build(site, vo)
    files = files_by_path(cloud_config(data))
    assert files["/etc/systemd/system/vo-cms.service"]["content"] == unit
    drop_in = files["/etc/systemd/system/vo-cms.service.d/50-vmtrust.conf"]["content"]
    # a drop-in is read after the unit: its User= wins over the VO's User=root
    assert [line for line in drop_in.splitlines() if not line.startswith("#")] == [
        "[Service]",
        "User=cmspilot",
        "Group=cmspilot",
        "SupplementaryGroups=",
        "AmbientCapabilities=",
        # machine/job features and the VO's variables, as the command variant gets them
        "Environment=MACHINEFEATURES=/etc/machinefeatures JOBOUTPUTS=/etc/joboutputs",
        "EnvironmentFile=-/etc/vo/pilot.env",
    ]
    pilot = context.unpack(data)[-1].body
    assert "systemctl daemon-reload\nsystemctl start --wait vo-cms.service\n" in pilot
    assert "runuser" not in pilot
    assert context.explain(data, site)[1] == []


@pytest.mark.parametrize("name", ["sshd.service", "rsyslog.service", "vo-pilot.timer", "vo-"])
def test_a_vo_unit_cannot_replace_a_system_service(tmp_path, name):
    site = context.load_site(site_file(tmp_path))
    path = vo_file(
        tmp_path,
        **{"pilot.command": DROP, "pilot.systemd_unit": "[Service]\nExecStart=/opt/p\n",
           "pilot.unit_name": name},
    )  # fmt: skip
    exc = refused(context.load_vo, path, site)
    assert_one_line_naming(exc, path, "pilot.unit_name")


def test_without_cvmfs_and_pilot_the_user_data_is_one_cloud_config(tmp_path):
    site = context.load_site(site_file(tmp_path, cvmfs=DROP))
    vo = context.load_vo(write_yaml(tmp_path / "vo.yaml", {"vo": "ops", "lifetime": 600}), site)
    data = context.build(site, vo)
    assert data.startswith(b"#cloud-config\n")
    assert b"mime-version" not in data.lower()
    config = yaml.safe_load(data)
    assert "write_files" not in config
    assert config["rsyslog"] == {"remotes": {"site0": SYSLOG}}
    assert "--on-active=600 " in "\n".join(config["runcmd"])


def test_site_cvmfs_without_vo_pilot_has_only_the_cvmfs_script(tmp_path):
    site = context.load_site(site_file(tmp_path))
    vo = context.load_vo(write_yaml(tmp_path / "vo.yaml", {"vo": "ops"}), site)
    parts = context.unpack(context.build(site, vo))
    assert [p.filename for p in parts] == ["00-vmtrust.cfg", "10-vmtrust-cvmfs.sh"]


def test_output_is_deterministic(tmp_path):
    first = context.build(*load(tmp_path))
    second = context.build(*load(tmp_path))
    assert first == second
    assert context.build(*load(tmp_path), compress=True) == context.build(
        *load(tmp_path), compress=True
    )
    other = context.build(*load(tmp_path, vo={"lifetime": 3600}))
    assert other != first


def test_unknown_cloud_is_refused(built):
    site, vo, _ = built
    with pytest.raises(context.UserDataError, match="cloud 'azure'"):
        context.build(site, vo, cloud="azure")


def test_parts_are_7bit_us_ascii_unless_their_text_is_not(tmp_path):
    site, vo = load(tmp_path)
    data = context.build(site, vo)
    assert data.count(b'charset="us-ascii"') == 3
    assert b"Content-Transfer-Encoding: base64" not in data
    assert b"cvmfs_config setup ||" in data  # readable as it is
    # non-ASCII text: YAML escapes it in the cloud-config; a script part becomes utf-8
    site, vo = load(
        tmp_path,
        vo={
            "write_files": [{"path": "/opt/cms/caf\u00e9.txt", "content": "d\u00e9j\u00e0\n"}],
            "runcmd": ["echo d\u00e9j\u00e0"],
        },
    )
    data = context.build(site, vo)
    assert data.count(b'charset="us-ascii"') == 2
    assert data.count(b'charset="utf-8"') == 1
    config = cloud_config(data)
    assert files_by_path(config)["/opt/cms/caf\u00e9.txt"]["content"] == "d\u00e9j\u00e0\n"
    assert "echo d\u00e9j\u00e0\n" in context.unpack(data)[-1].body


# --- size limits ------------------------------------------------------------------------


def _big_vo(tmp_path: Path, content: str, **changes: Any) -> tuple[Any, Any]:
    return load(
        tmp_path,
        vo={"write_files": [{"path": "/opt/cms/big.txt", "content": content}], **changes},
    )


def test_too_big_for_ec2_raw_is_gzipped_automatically(tmp_path):
    content = "".join(f"line {n} of a compressible pilot configuration\n" for n in range(600))
    site, vo = _big_vo(tmp_path, content)
    plain = context.build(site, vo, cloud="openstack")
    assert plain[:2] != b"\x1f\x8b"
    assert len(plain) > LIMITS["ec2"][0]
    assert len(base64.b64encode(plain)) <= LIMITS["openstack"][0]
    for_ec2 = context.build(site, vo, cloud="ec2")
    assert for_ec2[:2] == b"\x1f\x8b"
    assert len(for_ec2) <= 16384
    assert gzip.decompress(for_ec2) == plain


def _incompressible(size: int) -> str:
    text = base64.b64encode(random.Random(7).randbytes(size * 3 // 4)).decode()
    return "\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + "\n"


def test_incompressible_content_too_big_for_ec2_names_size_and_limit(tmp_path):
    site, vo = _big_vo(tmp_path, _incompressible(30000))
    assert context.build(site, vo, cloud="openstack")  # fits there
    with pytest.raises(context.UserDataError) as info:
        context.build(site, vo, cloud="ec2")
    text = str(info.value)
    size = int(text.split()[2])
    assert size > 16384
    assert "even gzipped" in text and "ec2 allows 16384" in text


def test_incompressible_content_too_big_for_openstack_names_size_and_limit(tmp_path):
    site, vo = _big_vo(tmp_path, _incompressible(90000))
    with pytest.raises(context.UserDataError) as info:
        context.build(site, vo, cloud="openstack")
    text = str(info.value)
    assert int(text.split()[2]) > 65535
    assert "(base64)" in text and "openstack allows 65535" in text


def test_compress_always_gzips(built):
    site, vo, plain = built
    packed = context.build(site, vo, compress=True)
    assert packed[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed) == plain
    assert context.build(site, vo, cloud="ec2", compress=True) == packed


@pytest.mark.parametrize(
    ("cloud", "max_plain"),
    [("openstack", 65535 // 4 * 3), ("ec2", 16384)],  # base64 of 49149 bytes is 65532 chars
)
def test_limit_boundary_is_measured_as_the_cloud_measures(tmp_path, cloud, max_plain):
    site = context.load_site(site_file(tmp_path, cvmfs=DROP))

    def sized(n: int) -> bytes:
        vo_data = {"vo": "ops", "write_files": [{"path": "/opt/x", "content": "y" * n + "\n"}]}
        vo = context.load_vo(write_yaml(tmp_path / "vo.yaml", vo_data), site)
        return context.build(site, vo, cloud=cloud)

    overhead = len(sized(1000)) - 1000
    at_limit = sized(max_plain - overhead)
    assert len(at_limit) == max_plain and at_limit.startswith(b"#cloud-config")
    over = sized(max_plain - overhead + 1)
    assert len(gzip.decompress(over)) == max_plain + 1
    if cloud == "openstack":
        assert len(base64.b64encode(at_limit)) == 65532
        assert len(base64.b64encode(gzip.decompress(over))) == 65536


# --- secrets ----------------------------------------------------------------------------


def test_credential_never_appears_in_repr_or_logs_of_a_build(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    site, vo = load(tmp_path)
    context.build(site, vo, cloud="ec2")
    context.explain(context.build(site, vo), site)
    assert SECRET not in repr(vo)
    assert SECRET not in caplog.text
    assert all(SECRET not in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    "changes",
    [
        {"users": ["intruder"]},
        {"pilot.credential": {"path": "/root/token", "content": SECRET}},
        {"pilot.credential": {"path": "/etc/vo/token", "content": SECRET, "mode": "0400"}},
        {"pilot.credential": {"path": "/etc/vo/token", "content": [SECRET]}},
        {"pilot.environment": {"BAD-NAME": SECRET}},
        {"pilot.credential": SECRET},
    ],
    ids=["other-key", "bad-path", "extra-key", "not-a-string", "env", "not-a-mapping"],
)
def test_credential_never_appears_in_a_refusal(tmp_path, caplog, changes):
    caplog.set_level(logging.DEBUG)
    site = context.load_site(site_file(tmp_path))
    path = vo_file(tmp_path, **changes)
    exc = refused(context.load_vo, path, site)
    assert SECRET not in str(exc)
    assert all(SECRET not in problem for problem in exc.problems)
    assert SECRET not in caplog.text


def test_credential_is_not_echoed_from_broken_yaml(tmp_path):
    site = context.load_site(site_file(tmp_path))
    path = tmp_path / "vo.yaml"
    path.write_text(f"vo: cms\npilot:\n  credential: {{path: /etc/vo/token, content: {SECRET}\n")
    exc = refused(context.load_vo, path, site)
    assert "not valid YAML" in str(exc) and SECRET not in str(exc)


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VMTRUST), *args], input=stdin, capture_output=True, timeout=60, check=False
    )


def test_cli_build_refusal_is_one_line_without_secret_or_traceback(tmp_path):
    site = site_file(tmp_path)
    vo = vo_file(tmp_path, bootcmd=["echo early"])
    result = run_cli("context", "build", "--site", str(site), "--vo", str(vo))
    assert result.returncode == 4
    assert result.stdout == b""
    err = result.stderr.decode()
    assert err.count("\n") == 1 and err.startswith(f"vmtrust: VO profile {vo}: bootcmd: ")
    assert "Traceback" not in err
    assert SECRET not in err


def test_cli_build_too_big_is_one_line_with_exit_status(tmp_path):
    site = site_file(tmp_path)
    vo = vo_file(
        tmp_path, write_files=[{"path": "/opt/cms/big.txt", "content": _incompressible(30000)}]
    )
    result = run_cli("context", "build", "--site", str(site), "--vo", str(vo), "--cloud", "ec2")
    assert result.returncode == context.UserDataError.exit_code
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "ec2 allows 16384" in err and "Traceback" not in err


def test_cli_build_out_file_is_private_and_stderr_has_no_secret(tmp_path):
    out = tmp_path / "user-data"
    result = run_cli(
        "context", "build", "--site", str(site_file(tmp_path)), "--vo", str(vo_file(tmp_path)),
        "--cloud", "ec2", "--gzip", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert result.stdout == b""
    assert SECRET.encode() not in result.stderr
    assert b"user-data for VO cms written to" in result.stderr
    data = out.read_bytes()
    assert data[:2] == b"\x1f\x8b"
    assert data == context.build(*load(tmp_path), cloud="ec2", compress=True)


def test_cli_build_to_stdout_gives_the_same_bytes(tmp_path):
    result = run_cli(
        "context", "build", "--site", str(site_file(tmp_path)), "--vo", str(vo_file(tmp_path))
    )
    assert result.returncode == 0
    assert result.stdout == context.build(*load(tmp_path))
    assert result.stderr == b""


# --- explain and check ------------------------------------------------------------------


def mime(*parts: tuple[str, str, str]) -> bytes:
    """A multipart user-data of (filename, subtype, body) parts, as other tools make them."""
    message = MIMEMultipart(boundary="==test==")
    for filename, subtype, body in parts:
        item = MIMEText(body, subtype, "us-ascii")
        item.add_header("Content-Disposition", "attachment", filename=filename)
        message.attach(item)
    return message.as_bytes()


def test_explain_describes_each_part(built):
    site, _, data = built
    lines, problems = context.explain(data, site)
    assert problems == []
    assert lines[0] == f"3 part(s), {len(data)} bytes"
    assert "00-vmtrust.cfg: cloud-config" in lines
    assert "  writes /etc/vo/token (mode 0600, owner cmspilot:cmspilot, after users exist)" in lines
    assert "  forwards syslog to " + SYSLOG in lines
    assert "  blocks access to the metadata service" in lines
    assert "  creates users: default, cmspilot" in lines
    assert any(line.startswith("10-vmtrust-cvmfs.sh: shell script") for line in lines)
    assert any(line.startswith("30-vmtrust-pilot.sh: shell script") for line in lines)
    assert SECRET not in "\n".join(lines)


def test_explain_handles_gzip_like_plain(built):
    site, vo, data = built
    packed = context.build(site, vo, compress=True)
    lines, problems = context.explain(packed, site)
    assert problems == []
    assert lines[1:] == context.explain(data, site)[0][1:]


def test_explain_damaged_gzip_is_an_error(built):
    site, vo, _ = built
    packed = context.build(site, vo, compress=True)
    with pytest.raises(context.UserDataError, match="gzip data is damaged"):
        context.explain(packed[:-20], site)
    corrupt = bytearray(packed)
    corrupt[len(corrupt) // 2] ^= 0xFF  # inside the deflate stream: a zlib error
    with pytest.raises(context.UserDataError, match="gzip data is damaged"):
        context.explain(bytes(corrupt), site)


def test_explain_survives_random_damage(built):
    site, _, plain = built
    rng = random.Random(3)
    for n in range(400):
        data = bytearray(plain if n % 2 else gzip.compress(plain, mtime=0))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(context.UserDataError):
            context.explain(bytes(data), site)


@pytest.mark.parametrize(
    ("subtype", "body", "kind"),
    [
        ("part-handler", "#part-handler\ndef handle_part(*a):\n    pass\n", "text/part-handler"),
        ("x-include-url", "#include\nhttps://evil.example.org/more\n", "text/x-include-url"),
        ("plain", "#include\nhttps://evil.example.org/more\n", "text/x-include-url"),
        ("cloud-boothook", "#cloud-boothook\n#!/bin/sh\necho early\n", "text/cloud-boothook"),
        ("plain", "## template: jinja\n#!/bin/sh\necho {{ v1.instance_id }}\n", "text/jinja2"),
        (
            "plain",
            "#cloud-config-archive\n- type: text/x-shellscript\n",
            "text/cloud-config-archive",
        ),
        ("x-unknown", "whatever\n", "text/x-unknown"),
    ],
    ids=["part-handler", "include", "include-as-plain", "boothook", "jinja", "archive", "unknown"],
)
def test_check_refuses_risky_part_types(built, subtype, body, kind):
    site, vo, _ = built
    config, parts = compose(site, vo)
    own = [(p.filename, p.content_type.split("/")[1], p.body) for p in parts]
    cfg = ("00-vmtrust.cfg", "cloud-config", package(config, []).decode())
    data = mime(cfg, *own, ("99-extra", subtype, body))
    assert context.explain(mime(cfg, *own), site)[1] == []  # the same without the extra part
    lines, problems = context.explain(data, site)
    assert problems == [f"99-extra: {kind} not allowed: it {problems[0].split(': it ', 1)[1]}"]
    assert any(line.startswith(f"99-extra: {kind} — ") for line in lines)
    # without a site the parts are explained, nothing is refused
    assert context.explain(data)[1] == []


@pytest.mark.parametrize(
    ("subtype", "body", "kind"),
    [
        # cloud-init re-types text/x-shellscript and text/plain parts by their first line
        ("x-shellscript", "#cloud-config\nusers: [intruder]\n", "text/cloud-config"),
        ("x-shellscript", "#part-handler\ndef handle_part(*a):\n    pass\n",
         "text/part-handler"),
        ("plain", "#Cloud-Boothook\necho early\n", "text/cloud-boothook"),
        ("plain", "  #include https://evil.example.org/more\n", "text/x-include-url"),
        ("x-not-multipart", "#include-once\nhttps://evil.example.org/\n",
         "text/x-include-once-url"),
        ("x-shellscript-per-boot", "#!/bin/sh\necho every boot\n",
         "text/x-shellscript-per-boot"),
    ],
    ids=["script-is-config", "script-is-handler", "boothook-case", "include-space",
         "include-once", "per-boot"],
)  # fmt: skip
def test_check_sees_parts_as_cloud_init_types_them(built, subtype, body, kind):
    site, _, data = built
    parts = [(p.filename, p.content_type.split("/")[1], p.body) for p in context.unpack(data)]
    extra = mime(*parts, ("40-extra.sh", subtype, body))
    assert context.explain(mime(*parts), site)[1] == []
    assert context.unpack(extra)[-1].content_type == kind
    assert context.explain(extra, site)[1] != []


def test_check_gunzips_gzip_parts_and_types_them_by_content(built):
    from email.mime.application import MIMEApplication

    site, _, data = built
    message = email.message_from_bytes(data)
    handler = MIMEApplication(gzip.compress(b"#part-handler\ndef handle_part(*a): pass\n"), "gzip")
    message.attach(handler)
    parts = context.unpack(message.as_bytes())
    assert parts[-1].content_type == "text/part-handler"
    problems = context.explain(message.as_bytes(), site)[1]
    assert len(problems) == 1 and "text/part-handler not allowed" in problems[0]
    broken = MIMEApplication(gzip.compress(b"#!/bin/sh\n")[:-6], "gzip")
    message.attach(broken)
    with pytest.raises(context.UserDataError, match="gzip part is damaged"):
        context.explain(message.as_bytes(), site)


@pytest.mark.parametrize(
    ("body", "problem"),
    [("#cloud-config\nusers: [a\n", "not valid YAML"), ("#cloud-config\n- a\n", "not a mapping")],
)
def test_check_refuses_unreadable_cloud_config(built, body, problem):
    site, _, _ = built
    _, problems = context.explain(body.encode(), site)
    assert problems[0] == f"part-001: cloud-config is {problem}"


@pytest.mark.parametrize(
    "config",
    [
        {"users": [None]},
        {"users": [{"name": {"x": 1}}]},
        {"rsyslog": ["@@x:514"]},
        {"rsyslog": {"remotes": {"a": ["@@x"]}}},
        {"ca_certs": "PEM"},
        {"ca_certs": {"trusted": [{"a": 1}]}},
    ],
)
def test_check_refuses_cloud_config_of_unexpected_shape_without_crashing(built, config):
    site, _, _ = built
    data = f"#cloud-config\n{yaml.safe_dump(config)}".encode()
    problems = context.explain(data, site)[1]
    assert "part-001: cloud-config has values of unexpected types" in problems


def test_cli_check_of_unexpected_shape_is_a_refusal_not_a_crash(tmp_path):
    data = tmp_path / "ud"
    data.write_bytes(b"#cloud-config\nrsyslog: [1]\nwrite_files: [{path: 5}]\n")
    result = run_cli("context", "check", str(data), "--site", str(site_file(tmp_path)))
    assert result.returncode == 20
    assert b"internal error" not in result.stderr


def test_check_refuses_two_cloud_config_parts(built):
    site, vo, _ = built
    config, _ = compose(site, vo)
    text = package(config, []).decode()
    # even a second copy of the site's own config is refused: the count is the problem
    data = mime(("a.cfg", "cloud-config", text), ("b.cfg", "cloud-config", text))
    lines, problems = context.explain(data, site)
    assert len(problems) == 1 and problems[0].startswith("2 cloud-config parts")
    assert context.explain(mime(("a.cfg", "cloud-config", text)), site)[1] == []
    assert "note: later cloud-config parts replace top-level keys of earlier ones" in lines


def _check_changed(site, vo, change) -> list[str]:
    config, parts = compose(site, vo)
    change(config)
    return context.explain(package(config, parts), site)[1]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["users"].append({"name": "intruder"}), "users: intruder"),
        (lambda c: c["users"][1].update(sudo="ALL=(ALL) NOPASSWD:ALL"), "users: cmspilot: sudo"),
        (lambda c: c.update(groups=["wheel"]), "groups: "),
        (
            lambda c: c["ssh_authorized_keys"].append("ssh-ed25519 AAAAother"),
            "ssh_authorized_keys: a key that is not the site's",
        ),
        (lambda c: c.update(bootcmd=["echo early"]), "bootcmd: "),
        (lambda c: c.update(mounts=[["/dev/vdb", "/data"]]), "mounts: "),
        (lambda c: c.update(disable_root=False), "disable_root: "),
        (lambda c: c.update(merge_how="list(append)+dict(no_replace)"), "merge_how"),
        (lambda c: c.update(merge_type="list(append)"), "merge_how"),
        (lambda c: c.pop("rsyslog"), "rsyslog: not forwarding to the site's syslog"),
        (
            lambda c: c["rsyslog"]["remotes"].update(site0="@@elsewhere.example.org:514"),
            "rsyslog: not forwarding to the site's syslog",
        ),
        (lambda c: c.pop("ca_certs"), "ca_certs: the site's CA certificates are missing"),
        (lambda c: c["write_files"].pop(0), "the site's CVMFS proxy is not configured"),
        (
            lambda c: c["write_files"].append({"path": "/etc/ssh/sshd_config", "content": "x"}),
            "write_files: /etc/ssh/sshd_config is a site-controlled location",
        ),
        (lambda c: c["packages"].append("nginx"), "packages: nginx is not on"),
        (lambda c: c.update(power_state={"mode": "poweroff"}), "power_state: "),
        (
            lambda c: c["write_files"].append(
                {"path": "/opt/vo/tool", "content": "x", "permissions": "4755"}
            ),
            "write_files: /opt/vo/tool is setuid or setgid (4755)",
        ),
        (
            lambda c: c.update(disable_ec2_metadata=False),
            "disable_ec2_metadata: files with secrets",
        ),
    ],
    ids=[
        "user",
        "pilot-sudo",
        "groups",
        "ssh-key",
        "bootcmd",
        "mounts",
        "disable-root",
        "merge-how",
        "merge-type",
        "no-syslog",
        "other-syslog",
        "no-ca",
        "no-proxy",
        "site-path",
        "package",
        "power-state",
        "setuid",
        "metadata-open",
    ],
)
def test_check_refuses_what_reaches_into_the_site_share(built, change, expected):
    site, vo, _ = built
    assert _check_changed(site, vo, lambda c: None) == []
    problems = _check_changed(site, vo, change)
    assert len(problems) == 1, problems
    assert expected in problems[0]


DEFAULT_LOCAL = "/etc/cvmfs/default.local"


def _local(config: dict[str, Any]) -> dict[str, Any]:
    return next(i for i in config["write_files"] if i["path"] == DEFAULT_LOCAL)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: _local(c).update(content=f"# {PROXY}\nCVMFS_HTTP_PROXY=DIRECT\n"),
         "sets CVMFS_HTTP_PROXY to 'DIRECT'"),
        (lambda c: _local(c).update(content=_local(c)["content"] + "CVMFS_HTTP_PROXY=DIRECT\n"),
         "sets CVMFS_HTTP_PROXY to 'DIRECT'"),
        (lambda c: c["write_files"].append({"path": DEFAULT_LOCAL, "content": "X=1\n"}),
         "the site's CVMFS proxy is not configured"),
        (lambda c: c["write_files"].append(
            {"path": DEFAULT_LOCAL, "content": "CVMFS_HTTP_PROXY=DIRECT\n", "append": True}),
         "sets CVMFS_HTTP_PROXY to 'DIRECT'"),
        (lambda c: _local(c).update(encoding="b64"), "the site's CVMFS proxy is not configured"),
        (lambda c: _local(c).update(content=f"CVMFS_HTTP_PROXY='{PROXY}\n"),
         "sets CVMFS_HTTP_PROXY to ''"),
        (lambda c: _local(c).update(content=f"CVMFS_HTTP_PROXY='{PROXY}'; rm -rf /\n"),
         "sets CVMFS_HTTP_PROXY to ''"),
        (lambda c: c["write_files"].append(
            {"path": "/etc/systemd/system/sshd.service", "content": "[Service]\n"}),
         "/etc/systemd/system/sshd.service is a site-controlled location"),
        (lambda c: c["write_files"].append(
            {"path": "/etc/systemd/system/vo-x.service", "content": "[Service]\n"}),
         "vo-x.service is a service that does not run as cmspilot"),
        (lambda c: c["write_files"].extend([
            {"path": "/etc/systemd/system/vo-x.service", "content": "[Service]\n"},
            {"path": "/etc/systemd/system/vo-x.service.d/50-vmtrust.conf",
             "content": "[Service]\nUser=root\n"}]),
         "vo-x.service is a service that does not run as cmspilot"),
        (lambda c: c["write_files"].append(
            {"path": "/etc/systemd/system/multi-user.target.wants/x.service", "content": ""}),
         "is a site-controlled location"),
    ],
    ids=["proxy-in-comment", "proxy-reassigned", "replaced", "appended", "encoded", "unquoted",
         "extra-command",
         "system-unit", "vo-unit-no-dropin", "vo-unit-bad-dropin", "wants"],
)  # fmt: skip
def test_check_reads_what_cloud_init_will_write(built, change, expected):
    site, vo, _ = built
    problems = _check_changed(site, vo, change)
    assert expected in problems[0]
    # a bad drop-in is refused too, as a file of its own
    assert len(problems) == 1 or problems[1].endswith(
        "50-vmtrust.conf is a site-controlled location"
    )


def test_check_follows_appends_to_default_local(built):
    site, vo, _ = built
    extra = {"path": DEFAULT_LOCAL, "content": "CVMFS_NFILES=131072\n", "append": True}
    assert _check_changed(site, vo, lambda c: c["write_files"].append(extra)) == []


def test_pilot_config_without_credential_also_closes_the_metadata_service(tmp_path):
    """Every 0600 pilot file may hold a secret; vmtrust's own output passes its own check."""
    site_path = tmp_path / "site.yaml"
    site_path.write_text("site: S\nlifetime: {max_seconds: 3600}\n")
    vo_path = tmp_path / "vo.yaml"
    vo_path.write_text(
        "vo: v\npilot:\n  command: /opt/pilot\n"
        "  config: {path: /etc/vo/pilot.cfg, content: 'token = abc'}\n"
    )
    site = context.load_site(site_path)
    data = context.build(site, context.load_vo(vo_path, site))
    config = yaml.safe_load(context.unpack(data)[0].body)
    assert config["disable_ec2_metadata"] is True
    assert context.explain(data, site)[1] == []


def test_check_allows_vmtrust_output_for_a_cvmfs_site_without_repositories(tmp_path):
    site = context.load_site(site_file(tmp_path, **{"cvmfs.repositories": DROP}))
    vo = context.load_vo(write_yaml(tmp_path / "vo.yaml", {"vo": "ops", "runcmd": ["true"]}), site)
    data = context.build(site, vo)
    assert [p.filename for p in context.unpack(data)] == ["00-vmtrust.cfg", "30-vmtrust-pilot.sh"]
    local = files_by_path(cloud_config(data))[DEFAULT_LOCAL]["content"]
    assert _source(local, tmp_path, "CVMFS_HTTP_PROXY") == PROXY
    assert context.explain(data, site)[1] == []


def test_check_refuses_user_data_without_any_cloud_config(built):
    site, _, _ = built
    data = b"#!/bin/sh\necho hello\n"
    lines, problems = context.explain(data, site)
    assert lines[1].startswith("part-001: shell script")
    assert any("rsyslog" in p for p in problems)
    assert any("ca_certs" in p for p in problems)
    assert "the site's CVMFS proxy is not configured" in problems


def test_check_of_user_data_built_for_another_site_is_refused(tmp_path, built):
    site, _, data = built
    other = context.load_site(
        site_file(
            tmp_path,
            **{
                "cvmfs.proxy": "http://other.example.org:3128",
                "syslog": ["@other.example.org:514"],
            },
        )
    )
    problems = context.explain(data, other)[1]
    assert any("rsyslog" in p for p in problems)
    assert problems[-1] == (
        "the site's CVMFS proxy is not configured: /etc/cvmfs/default.local sets "
        f"CVMFS_HTTP_PROXY to {PROXY!r}"
    )
    assert context.explain(data, site)[1] == []


def test_cli_check_exit_status(tmp_path, built):
    site, vo, _ = built
    site_path = site_file(tmp_path)
    good = tmp_path / "good"
    good.write_bytes(context.build(site, vo, compress=True))
    result = run_cli("context", "check", str(good), "--site", str(site_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines()[-1] == "allowed by the policy of site EXAMPLE-SITE"
    assert result.stderr == b""

    config, parts = compose(site, vo)
    config["bootcmd"] = ["echo early"]
    bad = tmp_path / "bad"
    bad.write_bytes(package(config, parts))
    result = run_cli("context", "check", str(bad), "--site", str(site_path))
    assert result.returncode == 20
    assert "refused: 00-vmtrust.cfg: bootcmd: " in result.stdout.decode()
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "1 thing(s) the policy of site EXAMPLE-SITE refuses" in err
    assert "Traceback" not in err

    # without a site it only explains; from stdin too
    result = run_cli("context", "check", "-", stdin=bad.read_bytes())
    assert result.returncode == 0
    assert "  sets bootcmd" in result.stdout.decode()


def test_cli_check_prints_untrusted_text_as_single_lines(tmp_path, built):
    site, vo, _ = built
    config, parts = compose(site, vo)
    config["write_files"].append({"path": "/opt/x\nallowed by the policy\x1b[2J", "content": ""})
    data = tmp_path / "ud"
    data.write_bytes(package(config, parts))
    result = run_cli("context", "check", str(data), "--site", str(site_file(tmp_path)))
    assert result.returncode == 20
    out = result.stdout.decode()
    assert "must be a path of printable characters" in out
    assert "\x1b" not in out and "\x1b" not in result.stderr.decode()
    assert not any(line.startswith("allowed by the policy") for line in out.splitlines())
    assert "  writes /opt/x\\nallowed by the policy\\x1b[2J (mode 0644, owner root:root)" in out


def test_cli_check_unreadable_user_data(tmp_path):
    result = run_cli("context", "check", str(tmp_path / "missing"))
    assert result.returncode == 3
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err


def test_shipped_sample_profiles_build_and_pass_their_own_check():
    """etc/vmtrust/context/ stays a working example."""
    root = Path(__file__).resolve().parent.parent / "etc" / "vmtrust" / "context"
    site = context.load_site(root / "site.yaml")
    data = context.build(site, context.load_vo(root / "vo.yaml", site))
    assert context.explain(data, site)[1] == []
    assert site.cvmfs is not None and site.cvmfs.proxy in data.decode()
