"""Contextualisation: site and VO profiles, what is refused, what is composed, size, secrets.

Every refusal is seen as a site admin or a VO sees it: one line per problem,
naming the file and the key.  The command line runs as a subprocess (the
installed ``vmtrust`` script) where stderr, exit status and file modes matter.
What the scripts *do* is tested by running them (test_context_boot.py), what a
site's check allows in test_context_check.py.
"""

from __future__ import annotations

import base64
import gzip
import logging
import random
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from context_support import (
    ADMIN_KEY,
    CA_PEM,
    CVMFS_KEY,
    DROP,
    GPG_KEY,
    PROXY,
    SECRET,
    SYSLOG,
    TOKEN_FILE,
    VO,
    assert_one_line_naming,
    cloud_config,
    files_by_path,
    load,
    part,
    refused,
    run_cli,
    shell_value,
    site_file,
    vo_file,
    write_yaml,
)

from vmtrust import context
from vmtrust.context import scripts
from vmtrust.context.compose import compose
from vmtrust.context.userdata import LIMITS
from vmtrust.errors import InvalidConfiguration, VmtrustError

# --- VO requests the site does not allow -------------------------------------------------

VO_REFUSALS = [
    ({"users": [{"name": "intruder", "sudo": "ALL=(ALL) NOPASSWD:ALL"}]}, "users"),
    ({"user": {"name": "vo", "ssh_authorized_keys": ["ssh-ed25519 AAAAvo"]}}, "user"),
    ({"system_info": {"default_user": {"name": "vo", "sudo": "ALL=(ALL) ALL"}}}, "system_info"),
    ({"password": "secret"}, "password"),
    ({"ssh_pwauth": True}, "ssh_pwauth"),
    ({"groups": ["wheel"]}, "groups"),
    ({"ssh_authorized_keys": ["ssh-ed25519 AAAAvokey vo@example.org"]}, "ssh_authorized_keys"),
    ({"bootcmd": ["echo early"]}, "bootcmd"),
    ({"disable_root": False}, "disable_root"),
    ({"ca_certs": {"trusted": [CA_PEM]}}, "ca_certs"),
    ({"rsyslog": {"remotes": {"vo": "@@vo.example.org:514"}}}, "rsyslog"),
    ({"yum_repos": {"evil": {"baseurl": "http://evil.example.org/"}}}, "yum_repos"),
    ({"apt": {"sources": {"evil": {"source": "deb http://evil.example.org/ x main"}}}}, "apt"),
    ({"snap": {"commands": ["snap install evil"]}}, "snap"),
    ({"power_state": {"mode": "poweroff", "delay": "now"}}, "power_state"),
    ({"mounts": [["/dev/vdb", "/data"]]}, "mounts"),
    ({"fs_setup": [{"device": "/dev/vda", "filesystem": "ext4"}]}, "fs_setup"),
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
    ({"write_files": [{"path": "/opt/x", "content": "x", "append": True}]},
     "write_files[0].append"),
    ({"lifetime": 86401}, "lifetime"),
    ({"lifetime": 10}, "lifetime"),
    ({"lifetime": 300}, "lifetime"),  # not more than the site's grace: no time for the pilot
    ({"packges": ["python3-requests"]}, "packges"),
    ({"run\ncmd": ["x"]}, "'run\\ncmd'"),
    ({"pilot.command": DROP}, "pilot.command"),
    ({"pilot.command": "pilot.sh"}, "pilot.command"),
    ({"pilot.command": "/opt/cms/pilot.sh --queue T2_XX"}, "pilot.command"),
    ({"pilot.command": "/opt/a=b"}, "pilot.command"),
    ({"pilot.arguments": ["--queue", "a\x1bb"]}, "pilot.arguments"),
    ({"pilot.arguments": "--queue T2"}, "pilot.arguments"),
    ({"pilot.environment": {"JOBOUTPUTS": "/tmp"}}, "pilot.environment.JOBOUTPUTS"),
    ({"pilot.environment": {"MACHINEFEATURES": "/tmp"}}, "pilot.environment.MACHINEFEATURES"),
    ({"pilot.environment": {"QUEUE": "a\x00b"}}, "pilot.environment.QUEUE"),
    ({"pilot.credential": {"path": "/root/token", "file": TOKEN_FILE}},
     "pilot.credential.path"),
    ({"pilot.credential": {"path": "/usr/share/token", "file": TOKEN_FILE}},
     "pilot.credential.path"),
    ({"pilot.credential": {"path": "/etc/vo/token", "content": SECRET}},
     "pilot.credential.content"),
    ({"pilot.credential": {"path": "/etc/vo/token", "file": "missing.token"}},
     "pilot.credential.file"),
    ({"pilot.credential": {"path": "/etc/vo/pilot.cfg", "file": TOKEN_FILE}},
     "write_files"),
    ({"write_files": [{"path": "/etc/vo/token", "content": "x\n"}]}, "write_files"),
    ({"pilot.systemd_unit": "[Service]\nExecStartPre=+/bin/chmod 4755 /bin/sh\n"},
     "pilot.systemd_unit"),
    ({"pilot.unit_name": "sshd.service"}, "pilot.unit_name"),
    ({"pilot.commnd": "/opt/pilot"}, "pilot.commnd"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "key"), VO_REFUSALS, ids=[k for _, k in VO_REFUSALS])
def test_vo_request_the_site_does_not_allow_is_refused_naming_file_and_key(tmp_path, changes, key):
    site = context.load_site(site_file(tmp_path))
    path = vo_file(tmp_path, **changes)
    exc = refused(context.load_vo, path, site)
    assert isinstance(exc, context.ContextRefused)
    assert exc.exit_code == 20
    assert exc.problems == [p for p in exc.problems if p.startswith(f"VO profile {path}: ")]
    assert len(exc.problems) == 1, exc.problems
    assert_one_line_naming(exc, path, key)
    assert SECRET not in str(exc)


@pytest.mark.parametrize(
    "unit",
    [
        "[Service]\nExecStartPre=/bin/true ; +/bin/sh -c 'id > /root/x'\nExecStart=/opt/p\n",
        "[Service]\nExecStart=/opt/p \\\n+/bin/sh\n",
        "[Service]\nExecStart=/opt/p\nStandardOutput=file:/etc/sudoers.d/vo\n",
        "[Service]\nExecStart=/opt/p\nStandardInput=file:/etc/shadow\n",
        "[Service]\nExecStart=/opt/p\nLoadCredential=k:/etc/ssh/ssh_host_ed25519_key\n",
        "[Service]\nExecStart=/opt/p\nBindReadOnlyPaths=/etc/sudoers:/opt/sudoers\n",
    ],
    ids=["semicolon-plus", "continuation-plus", "stdout-file", "stdin-file", "load-credential",
         "bind-paths"],
)  # fmt: skip
def test_a_vo_supplies_no_unit_text_at_all(tmp_path, unit):
    """Each of these reached root through the VO's own unit; now no unit text is taken."""
    site = context.load_site(site_file(tmp_path))
    path = vo_file(tmp_path, **{"pilot.command": DROP, "pilot.systemd_unit": unit})
    exc = refused(context.load_vo, path, site)
    assert "pilot.systemd_unit: vmtrust writes the pilot's unit itself" in str(exc)


def test_runcmd_is_refused_unless_the_site_allows_it(tmp_path):
    site = context.load_site(site_file(tmp_path, **{"vo_may.runcmd": DROP}))
    assert site.runcmd is False  # the HEPiX policy: no root-level configuration by the VO
    path = vo_file(tmp_path)
    exc = refused(context.load_vo, path, site)
    assert exc.problems == [f"VO profile {path}: runcmd: not allowed by the site"]
    assert context.load_vo(vo_file(tmp_path, runcmd=DROP), site).runcmd == ()
    allowing = context.load_site(site_file(tmp_path, **{"vo_may.runcmd": True}))
    assert context.load_vo(vo_file(tmp_path), allowing).runcmd == ("echo vo-command-marker",)


def test_repositories_are_refused_by_a_site_without_cvmfs(tmp_path):
    site = context.load_site(site_file(tmp_path, cvmfs=DROP))
    path = vo_file(tmp_path)
    exc = refused(context.load_vo, path, site)
    assert_one_line_naming(exc, path, "cvmfs.repositories")
    assert "does not offer CVMFS" in str(exc)


def test_write_files_outside_allowed_prefixes_names_the_prefixes(tmp_path):
    site = context.load_site(site_file(tmp_path, **{"vo_may.file_prefixes": ["/srv/vo/"]}))
    path = vo_file(tmp_path, **{"pilot.config": DROP, "pilot.credential": DROP})
    exc = refused(context.load_vo, path, site)
    assert "/opt/cms/site.json is outside the locations the site allows (/srv/vo/)" in str(exc)


@pytest.mark.parametrize(
    "path",
    ["/usr/local/libexec/vmtrust/pilot-start", "/var/lib/vmtrust/joboutputs/x",
     "/etc/jobfeatures/job_id", "/etc/yum.repos.d/x.repo", "/etc/apt/sources.list.d/x.list",
     "/etc/systemd/system/vmtrust-pilot.service", "/etc/fstab", "/etc/profile.d/x.sh"],
)  # fmt: skip
def test_vmtrust_and_system_locations_stay_the_sites_even_under_a_broad_prefix(tmp_path, path):
    site = context.load_site(
        site_file(tmp_path, **{"vo_may.file_prefixes": ["/etc/", "/usr/", "/var/"]})
    )
    vo = vo_file(tmp_path, write_files=[{"path": path, "content": "x\n"}])
    exc = refused(context.load_vo, vo, site)
    assert f"write_files[0].path: {path} is a site-controlled location" in str(exc)


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


# --- the credential: from a file at build time, never printed ------------------------------


def test_credential_is_read_from_its_file_beside_the_profile(tmp_path):
    site, vo = load(tmp_path)
    (credential,) = [f for f in vo.pilot.files if f.key == "credential"]
    assert (credential.path, credential.content) == ("/etc/vo/token", SECRET)
    files = files_by_path(cloud_config(context.build(site, vo)))
    assert files["/etc/vo/token"]["content"] == SECRET


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda p: p.chmod(0o644), "readable by every user of this machine"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"\xff\xfe" + SECRET.encode()), "not UTF-8 text"),
        (lambda p: p.write_bytes(b"x" * 70000), "larger than 65536 bytes"),
        (lambda p: (p.unlink(), p.mkdir()), "is a directory"),
    ],
    ids=["world-readable", "empty", "not-utf8", "too-big", "directory"],
)
def test_a_credential_file_that_is_not_fit_is_refused_without_its_content(tmp_path, setup, reason):
    site = context.load_site(site_file(tmp_path))
    path = vo_file(tmp_path)
    setup(tmp_path / TOKEN_FILE)
    exc = refused(context.load_vo, path, site)
    (problem,) = exc.problems
    assert problem.startswith(f"VO profile {path}: pilot.credential.file: {TOKEN_FILE}: {reason}")
    assert SECRET not in str(exc)


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
        {"pilot.credential": {"path": "/root/token", "file": TOKEN_FILE}},
        {"pilot.credential": {"path": "/etc/vo/token", "file": TOKEN_FILE, "mode": "0400"}},
        {"pilot.credential": {"path": "/etc/vo/token", "content": SECRET}},
        {"pilot.environment": {"BAD-NAME": SECRET}},
        {"pilot.credential": SECRET},
    ],
    ids=["other-key", "bad-path", "extra-key", "pasted", "env", "not-a-mapping"],
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


# --- bad site profiles ------------------------------------------------------------------

SITE_REFUSALS = [
    ({"cvmfs.proxy": DROP}, "cvmfs.proxy"),
    ({"cvmfs.proxy": "squid.example.org:3128"}, "cvmfs.proxy"),
    ({"cvmfs.proxy": "http://squid.example.org:3128|ftp://x"}, "cvmfs.proxy"),
    ({"cvmfs.proxy": "http://squid example.org:3128"}, "cvmfs.proxy"),
    ({"cvmfs.quota_mb": 999}, "cvmfs.quota_mb"),
    ({"cvmfs.repositories": ["not a repo"]}, "cvmfs.repositories"),
    ({"cvmfs.allowed_repositories": ["*.cern.ch; rm"]}, "cvmfs.allowed_repositories"),
    ({"cvmfs.client_profile": "multi"}, "cvmfs.client_profile"),
    ({"cvmfs.proxies": PROXY}, "cvmfs.proxies"),
    ({"cvmfs.install": "yes"}, "cvmfs.install"),
    ({"cvmfs.pac_urls": ["http://wpad.example.org/wpad.dat"]}, "cvmfs.pac_urls"),  # no 'auto'
    ({"cvmfs.proxy": "auto;DIRECT", "cvmfs.pac_urls": ["wpad.dat"]}, "cvmfs.pac_urls"),
    ({"cvmfs.fallback_proxy": "DIRECT"}, "cvmfs.fallback_proxy"),
    ({"cvmfs.cache_base": "relative/cache"}, "cvmfs.cache_base"),
    ({"cvmfs.cache_base": "/scratch/$(reboot)"}, "cvmfs.cache_base"),
    ({"cvmfs.domains": {"example.org": {"server_urls": ["http://s1/'x"], "keys": [CVMFS_KEY]}}},
     "cvmfs.domains.example.org.server_urls"),
    ({"cvmfs.domains": {"example.org": {"server_urls": ["http://s1.example.org/cvmfs/@fqrn@"],
                                        "keys": ["not a key"]}}},
     "cvmfs.domains.example.org.keys"),
    ({"cvmfs.domains": {"example.org": {"server_urls": [], "keys": [CVMFS_KEY]}}},
     "cvmfs.domains.example.org.server_urls"),
    ({"cvmfs.domains": {"bad domain": {}}}, "cvmfs.domains"),
    ({"package_sources": {"proxy": "squid:3128"}}, "package_sources.proxy"),
    ({"package_sources": {"cvmfs_mirror": {"el": "https://m.example.org/el/"}}},
     "package_sources.cvmfs_mirror.gpg_key"),
    ({"package_sources": {"cvmfs_mirror": {"debian": "https://m.example.org/apt",
                                           "gpg_key": GPG_KEY}}},
     "package_sources.cvmfs_mirror.debian"),
    ({"package_sources": {"cvmfs_mirror": {"el": "ftp://m/", "gpg_key": GPG_KEY}}},
     "package_sources.cvmfs_mirror.el"),
    ({"package_sources": {"epel": "yes"}}, "package_sources.epel"),
    ({"package_sources": {"mirror": "x"}}, "package_sources.mirror"),
    ({"scratch": {"device": "vdb", "mount": "/scratch"}}, "scratch.device"),
    ({"scratch": {"device": "ephemeral0", "mount": "/etc"}}, "scratch.mount"),
    ({"scratch": {"device": "ephemeral0", "mount": "/usr/local/scratch"}}, "scratch.mount"),
    ({"scratch": {"device": "ephemeral0"}}, "scratch.mount"),
    ({"scratch": {"device": "ephemeral0", "mount": "/scratch", "filesystem": "vfat"}},
     "scratch.filesystem"),
    ({"machine_features": {"hs06_per_cpu": "fast"}}, "machine_features.hs06_per_cpu"),
    ({"machine_features": {"jobslots": 0}}, "machine_features.jobslots"),
    ({"machine_features": {"extra": {"total_cpu": 8}}}, "machine_features.extra"),
    ({"machine_features": {"extra": {"Bad Name": 1}}}, "machine_features.extra"),
    ({"machine_features": {"extra": {"site_x": "a\nb"}}}, "machine_features.extra.site_x"),
    ({"joboutputs": {"upload_url": "http://x/'; reboot"}}, "joboutputs.upload_url"),
    ({"joboutputs": {"heartbeat_seconds": 5}}, "joboutputs.heartbeat_seconds"),
    ({"syslog": ["syslog.example.org:514"]}, "syslog"),
    ({"syslog": ["@@syslog.example.org:514; rm -rf /"]}, "syslog"),
    ({"sitename": "X"}, "sitename"),
    ({"site": DROP}, "site"),
    ({"ca_certificates": ["not a certificate"]}, "ca_certificates"),
    ({"lifetime.max_seconds": 10}, "lifetime.max_seconds"),
    ({"lifetime.grace_seconds": -1}, "lifetime.grace_seconds"),
    ({"lifetime.grace_seconds": 86400}, "lifetime.grace_seconds"),
    ({"lifetime.max_second": 3600}, "lifetime.max_second"),
    ({"vo_may.packages": "python3*"}, "vo_may.packages"),
    ({"pilot_user": "Root User"}, "pilot_user"),
    ({"pilot_user": "root"}, "pilot_user"),
    ({"vo_may.file_prefixes": ["opt"]}, "vo_may.file_prefixes"),
    ({"vo_may.runcmd": "yes"}, "vo_may.runcmd"),
    ({"vo_may.run_cmd": True}, "vo_may.run_cmd"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "key"), SITE_REFUSALS, ids=[k for _, k in SITE_REFUSALS])
def test_bad_site_profile_is_refused_naming_file_and_key(tmp_path, changes, key):
    path = site_file(tmp_path, **changes)
    exc = refused(context.load_site, path)
    assert isinstance(exc, InvalidConfiguration)
    assert exc.exit_code == 4  # the site's own configuration, not a policy refusal
    assert len(exc.problems) == 1, exc.problems
    assert exc.problems[0].startswith(f"site profile {path}: {key}: ")
    assert_one_line_naming(exc, path, key)


SHAPE_ERRORS = [
    ("site", {"cvmfs": "http://squid.example.org:3128"}, "cvmfs"),
    ("site", {"lifetime": 86400}, "lifetime"),
    ("site", {"vo_may": ["packages"]}, "vo_may"),
    ("site", {"syslog": "@@syslog.example.org:514"}, "syslog"),
    ("site", {"site": ""}, "site"),
    ("site", {"scratch": "/dev/vdb"}, "scratch"),
    ("site", {"cvmfs.domains": ["example.org"]}, "cvmfs.domains"),
    ("vo", {"cvmfs": ["cms.cern.ch"]}, "cvmfs"),
    ("vo", {"cvmfs.repositories": ["CMS CERN"]}, "cvmfs.repositories"),
    ("vo", {"packages": ["python3-x; rm -rf /"]}, "packages"),
    ("vo", {"write_files": {"path": "/opt/x", "content": "x"}}, "write_files"),
    ("vo", {"write_files": ["/opt/x"]}, "write_files[0]"),
    ("vo", {"write_files": [{"path": "/opt/x"}]}, "write_files[0]"),
    ("vo", {"write_files": [{"path": "/opt/x", "content": "x", "owner": "root"}]},
     "write_files[0].owner"),
    ("vo", {"pilot": "/opt/pilot.sh"}, "pilot"),
    ("vo", {"pilot.environment": ["QUEUE=x"]}, "pilot.environment"),
    ("vo", {"pilot.environment": {"QUEUE": ["x"]}}, "pilot.environment.QUEUE"),
    ("vo", {"pilot.environment": {"BAD-NAME": "x"}}, "pilot.environment"),
    ("vo", {"pilot.config": {"path": "/etc/vo/pilot.cfg", "content": ""}}, "pilot.config"),
    ("vo", {"pilot.config": {"path": "/etc/vo/pilot.cfg"}}, "pilot.config"),
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
    with pytest.raises(VmtrustError) as info:
        if loader == "site":
            context.load_site(path)
        else:
            context.load_vo(path, context.load_site(site_file(tmp_path)))
    text = str(info.value)
    assert "\n" not in text
    assert str(path) in text
    assert reason.lower() in text.lower()
    assert text.startswith("site profile" if loader == "site" else "VO profile")
    assert info.value.exit_code == 4


# --- composition: the site's parts are always there and win ------------------------------


@pytest.fixture
def built(tmp_path) -> tuple[context.SiteProfile, context.VoProfile, bytes]:
    site, vo = load(tmp_path)
    return site, vo, context.build(site, vo)


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
    assert shell_value(body, "CVMFS_HTTP_PROXY", tmp_path) == proxy
    assert shell_value(body, "CVMFS_QUOTA_LIMIT", tmp_path) == "20000"
    assert shell_value(body, "CVMFS_CACHE_BASE", tmp_path) == "/scratch/cvmfs"
    assert shell_value(body, "CVMFS_REPOSITORIES", tmp_path) == "grid.cern.ch,cms.cern.ch"
    assert "CVMFS_CONFIG_REPOSITORY" not in body
    assert "CVMFS_SERVER_URL" not in body  # Stratum 1s are per domain, never for all


def test_a_proxy_only_site_gets_pac_fallback_and_its_own_domains(tmp_path):
    site, vo = load(
        tmp_path,
        site={
            "cvmfs.proxy": "auto;http://squid.example.org:3128",
            "cvmfs.pac_urls": ["http://wpad.example.org/wpad.dat", "auto"],
            "cvmfs.fallback_proxy": "http://fallback.example.org:3128",
            "cvmfs.allowed_repositories": ["*.cern.ch", "*.example.org"],
            "cvmfs.domains": {"example.org": {
                "server_urls": ["http://s1.example.org/cvmfs/@fqrn@",
                                "http://s2.example.org/cvmfs/@fqrn@"],
                "keys": [CVMFS_KEY]}},
        },
        vo={"cvmfs.repositories": ["cms.cern.ch", "sw.example.org"]},
    )  # fmt: skip
    files = files_by_path(cloud_config(context.build(site, vo)))
    local = files["/etc/cvmfs/default.local"]["content"]
    assert shell_value(local, "CVMFS_PAC_URLS", tmp_path) == "http://wpad.example.org/wpad.dat;auto"
    assert (
        shell_value(local, "CVMFS_FALLBACK_PROXY", tmp_path) == "http://fallback.example.org:3128"
    )
    assert "sw.example.org" in shell_value(local, "CVMFS_REPOSITORIES", tmp_path)
    domain = files["/etc/cvmfs/domain.d/example.org.local"]["content"]
    assert shell_value(domain, "CVMFS_SERVER_URL", tmp_path) == (
        "http://s1.example.org/cvmfs/@fqrn@;http://s2.example.org/cvmfs/@fqrn@"
    )
    assert shell_value(domain, "CVMFS_KEYS_DIR", tmp_path) == "/etc/cvmfs/keys/example.org"
    key = files["/etc/cvmfs/keys/example.org/example.org-1.pub"]
    assert (key["content"], key["permissions"], key["owner"]) == (CVMFS_KEY, "0644", "root:root")


def test_a_site_mirror_replaces_the_release_packages(tmp_path):
    mirror = {"el": "https://mirror.example.org/cvmfs/EL/$releasever/$basearch/",
              "debian": "https://mirror.example.org/cvmfs/apt bookworm-prod main",
              "gpg_key": GPG_KEY}  # fmt: skip
    site, vo = load(tmp_path, site={"package_sources": {"proxy": "http://squid.example.org:3128",
                                                        "cvmfs_mirror": mirror}})  # fmt: skip
    data = context.build(site, vo)
    files = files_by_path(cloud_config(data))
    repo = files["/etc/yum.repos.d/vmtrust-cvmfs.repo"]["content"]
    assert f"baseurl={mirror['el']}\n" in repo and "gpgcheck=1\n" in repo
    assert "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-vmtrust-cvmfs\n" in repo
    assert files["/etc/pki/rpm-gpg/RPM-GPG-KEY-vmtrust-cvmfs"]["content"] == GPG_KEY
    assert files["/etc/apt/sources.list.d/vmtrust-cvmfs.list"]["content"] == (
        "deb [signed-by=/etc/apt/keyrings/vmtrust-cvmfs.asc] "
        "https://mirror.example.org/cvmfs/apt bookworm-prod main\n"
    )
    software = part(data, scripts.SOFTWARE)
    assert "MIRROR_EL=yes\nMIRROR_DEBIAN=yes\n" in software
    assert "PROXY=http://squid.example.org:3128\n" in software


def test_site_parts_are_present(built):
    _, _, data = built
    config = cloud_config(data)
    assert config["ssh_authorized_keys"] == [ADMIN_KEY]
    assert config["disable_root"] is True
    assert config["ssh_pwauth"] is False
    assert config["rsyslog"] == {"remotes": {"site0": SYSLOG}}
    assert config["ca_certs"] == {"trusted": [CA_PEM]}
    assert config["users"][0] == "default"
    pilot = config["users"][1]
    assert (pilot["name"], pilot["homedir"], pilot["lock_passwd"]) == (
        "cmspilot", "/home/cmspilot", True,
    )  # fmt: skip
    assert set(pilot) == {"name", "gecos", "homedir", "shell", "lock_passwd", "no_user_group"}
    # vmtrust runs nothing through cloud-init's runcmd, bootcmd or packages: they run too late
    # (runcmd after every script) or too early (before the lifetime is armed)
    assert not {"runcmd", "bootcmd", "packages", "merge_how"} & set(config)


def test_scratch_slot_is_formatted_mounted_and_given_to_the_pilot(tmp_path):
    site, vo = load(
        tmp_path, site={"scratch": {"device": "ephemeral0", "mount": "/scratch",
                                    "filesystem": "xfs"}}
    )  # fmt: skip
    data = context.build(site, vo)
    config = cloud_config(data)
    assert config["fs_setup"] == [{"label": "scratch", "filesystem": "xfs",
                                   "device": "ephemeral0", "partition": "auto",
                                   "overwrite": True}]  # fmt: skip
    assert config["mounts"] == [["ephemeral0", "/scratch", "xfs",
                                 "defaults,nofail,x-systemd.requires=cloud-init.service", "0",
                                 "2"]]  # fmt: skip
    assert "SCRATCH_DIR=/scratch/cmspilot\n" in part(data, scripts.MACHINE)
    files = files_by_path(config)
    assert 'WORKDIR="$R"/scratch/cmspilot\n' in files[scripts.LAUNCHER]["content"]
    unit = files["/etc/systemd/system/vmtrust-pilot.service"]["content"]
    assert "ReadWritePaths=-/home/cmspilot /var/lib/vmtrust/joboutputs -/scratch\n" in unit


def test_pilot_files_are_private_to_the_pilot_user(built):
    _, _, data = built
    files = files_by_path(cloud_config(data))
    for path, content in (("/etc/vo/pilot.cfg", "queue=T2_XX\n"), ("/etc/vo/token", SECRET)):
        item = files[path]
        assert item["content"] == content
        assert item["permissions"] == "0600"
        assert item["owner"] == "cmspilot:cmspilot"
        assert item["defer"] is True
    start = files[scripts.LAUNCHER]
    assert (start["permissions"], start["owner"], start["defer"]) == (
        "0500", "cmspilot:cmspilot", True,
    )  # fmt: skip
    vo_file_item = files["/opt/cms/site.json"]
    assert (vo_file_item["owner"], vo_file_item["permissions"]) == ("root:root", "0644")
    assert "defer" not in vo_file_item


def test_metadata_is_blocked_only_when_pilot_secrets_are_carried(tmp_path):
    site, vo = load(tmp_path)
    assert cloud_config(context.build(site, vo))["disable_ec2_metadata"] is True
    # the pilot's configuration and environment may hold secrets too
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
    machine = part(context.build(site, vo), scripts.MACHINE)
    assert f"\nLIFETIME={expected}\nGRACE=300\n" in machine
    # the shutdown time leaves the pilot its grace before the machine's lifetime ends
    assert "$(( $(date +%s) + LIFETIME - GRACE ))" in machine


def test_the_pilot_unit_is_vmtrusts_own_and_unprivileged(built):
    _, _, data = built
    files = files_by_path(cloud_config(data))
    unit = files["/etc/systemd/system/vmtrust-pilot.service"]["content"]
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["User"] == settings["Group"] == "cmspilot"
    assert settings["ExecStart"] == scripts.LAUNCHER
    assert settings["NoNewPrivileges"] == "yes"
    assert settings["ProtectSystem"] == "strict"
    assert settings["PrivateTmp"] == "yes"
    assert settings["CapabilityBoundingSet"] == ""
    assert settings["TimeoutStopSec"] == "300"  # the site's grace
    assert "/opt/cms" not in unit and "T2_XX" not in unit  # no VO text in the unit at all
    start = files[scripts.LAUNCHER]["content"]
    tail = start.split('JOBOUTPUTS="$R/var/lib/vmtrust/joboutputs" \\\n')[1]
    words = shlex.split(tail.replace(" \\\n", " "))  # one word per continued line
    assert words == ["QUEUE=T2_XX", "/opt/cms/pilot.sh", "--queue", "T2_XX"]


@pytest.mark.parametrize(
    "argument",
    ["$(reboot)", "`id`", "a'b", 'a"b', "; rm -rf /", "--x=$HOME", "\\", "*"],
)
def test_pilot_arguments_and_environment_are_never_shell_code(tmp_path, argument):
    """Each VO word reaches the pilot exactly as written (run through the real /bin/sh)."""
    site, vo = load(
        tmp_path, vo={"pilot.arguments": [argument], "pilot.environment": {"X": argument}}
    )
    start = files_by_path(cloud_config(context.build(site, vo)))[scripts.LAUNCHER]["content"]
    words = start.split('JOBOUTPUTS="$R/var/lib/vmtrust/joboutputs" \\\n')[1]
    probe = tmp_path / "probe.sh"
    probe.write_text(f"printf '%s\\n' {words}", encoding="utf-8")
    out = subprocess.run(["/bin/sh", str(probe)], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [f"X={argument}", "/opt/cms/pilot.sh", argument]


def test_without_cvmfs_and_pilot_the_lifetime_is_still_armed(tmp_path):
    site = context.load_site(site_file(tmp_path, cvmfs=DROP))
    vo = context.load_vo(write_yaml(tmp_path / "vo.yaml", {"vo": "ops", "lifetime": 600}), site)
    data = context.build(site, vo)
    assert [p.filename for p in context.unpack(data)] == ["00-vmtrust.cfg", scripts.MACHINE]
    config = cloud_config(data)
    assert "/etc/cvmfs/default.local" not in files_by_path(config)
    assert config["rsyslog"] == {"remotes": {"site0": SYSLOG}}
    assert "\nLIFETIME=600\n" in part(data, scripts.MACHINE)


def test_site_cvmfs_without_vo_pilot_has_no_pilot_part(tmp_path):
    site = context.load_site(site_file(tmp_path))
    vo = context.load_vo(write_yaml(tmp_path / "vo.yaml", {"vo": "ops"}), site)
    parts = context.unpack(context.build(site, vo))
    assert [p.filename for p in parts] == ["00-vmtrust.cfg", scripts.MACHINE, scripts.SOFTWARE]


def test_output_is_deterministic(tmp_path):
    first = context.build(*load(tmp_path))
    second = context.build(*load(tmp_path))
    assert first == second
    assert context.build(*load(tmp_path), compress=True) == context.build(
        *load(tmp_path), compress=True
    )
    other = context.build(*load(tmp_path, vo={"lifetime": 3600}))
    assert other != first


def test_the_flavour_fixes_the_machine_features_else_the_machine_measures(tmp_path):
    site, vo = load(tmp_path)
    measured = part(context.build(site, vo), scripts.MACHINE)
    assert "\nTOTAL_CPU=$(nproc)\n" in measured and "\nSCRATCH_BYTES=\n" in measured
    flavour = context.Flavour(vcpus=8, ram_mb=16000, swap_mb=0, scratch_gb=40)
    sized = part(context.build(site, vo, flavour=flavour), scripts.MACHINE)
    assert "\nTOTAL_CPU=8\nMAX_RSS_BYTES=16777216000\nMAX_SWAP_BYTES=0\n" in sized
    assert "\nSCRATCH_BYTES=42949672960\n" in sized


def test_unknown_cloud_is_refused(built):
    site, vo, _ = built
    with pytest.raises(context.UserDataError, match="cloud 'azure'"):
        context.build(site, vo, cloud="azure")


def test_parts_are_7bit_us_ascii_unless_their_text_is_not(tmp_path):
    site, vo = load(tmp_path)
    data = context.build(site, vo)
    assert data.count(b'charset="us-ascii"') == 5
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
    assert data.count(b'charset="us-ascii"') == 4
    assert data.count(b'charset="utf-8"') == 1
    config = cloud_config(data)
    assert files_by_path(config)["/opt/cms/caf\u00e9.txt"]["content"] == "d\u00e9j\u00e0\n"
    assert "echo d\u00e9j\u00e0\n" in part(data, scripts.VO_COMMANDS)


# --- size limits ------------------------------------------------------------------------


def _big_vo(tmp_path: Path, content: str, **changes: Any) -> tuple[Any, Any]:
    return load(
        tmp_path,
        vo={"write_files": [{"path": "/opt/cms/big.txt", "content": content}], **changes},
    )


def test_too_big_for_ec2_raw_is_gzipped_automatically(tmp_path):
    content = "".join(f"line {n} of a compressible pilot configuration\n" for n in range(200))
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
    assert len(at_limit) == max_plain and at_limit[:2] != b"\x1f\x8b"
    over = sized(max_plain - overhead + 1)
    assert len(gzip.decompress(over)) == max_plain + 1
    if cloud == "openstack":
        assert len(base64.b64encode(at_limit)) == 65532
        assert len(base64.b64encode(gzip.decompress(over))) == 65536


def test_a_full_site_and_vo_fit_ec2_without_gzip(tmp_path):
    """The scripts are a fixed cost; a typical request must leave room under EC2's 16 KiB."""
    site, vo = load(tmp_path)
    assert len(context.build(site, vo, cloud="ec2")) <= 16384
    assert context.build(site, vo, cloud="ec2")[:2] != b"\x1f\x8b"


# --- the command line -------------------------------------------------------------------


def test_cli_build_prints_every_refusal_one_line_each_with_the_policy_status(tmp_path):
    site = site_file(tmp_path)
    vo = vo_file(tmp_path, bootcmd=["echo early"], packages=["nginx"], users=["x"])
    result = run_cli("context", "build", "--site", str(site), "--vo", str(vo))
    assert result.returncode == 20
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"vmtrust: VO profile {vo}: ") for line in lines)
    assert {line.split(": ")[2] for line in lines} == {"bootcmd", "packages", "users"}
    assert "more problem" not in result.stderr.decode()
    assert b"Traceback" not in result.stderr and SECRET.encode() not in result.stderr


def test_cli_build_of_a_bad_site_profile_prints_every_problem_with_the_config_status(tmp_path):
    site = site_file(tmp_path, sitename="X", **{"cvmfs.quota_mb": 1, "pilot_user": "root"})
    result = run_cli("context", "build", "--site", str(site), "--vo", str(vo_file(tmp_path)))
    assert result.returncode == 4
    assert len(result.stderr.decode().splitlines()) == 3


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


def test_cli_build_takes_the_flavour(tmp_path):
    result = run_cli(
        "context", "build", "--site", str(site_file(tmp_path)), "--vo", str(vo_file(tmp_path)),
        "--vcpus", "4", "--ram-mb", "8000", "--swap-mb", "0", "--scratch-gb", "20",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    flavour = context.Flavour(vcpus=4, ram_mb=8000, swap_mb=0, scratch_gb=20)
    assert result.stdout == context.build(*load(tmp_path), flavour=flavour)
    bad = run_cli("context", "build", "--site", "s", "--vo", "v", "--vcpus", "0")
    assert bad.returncode == 2 and b"--vcpus" in bad.stderr


def test_cli_launch_refuses_a_vo_profile_before_any_cloud_is_contacted(tmp_path):
    from vmtrust.record import generate_key_pair

    key = generate_key_pair(tmp_path / "seal.key")
    result = run_cli(
        "launch", "--cloud", "nowhere", "--clouds-file", str(tmp_path / "none.yaml"),
        "--vo", "cms", "--flavor", "wn", "--seal-key", str(key), "--owner", "p",
        "--site", str(site_file(tmp_path)),
        "--vo-profile", str(vo_file(tmp_path, bootcmd=["x"], packages=["nginx"])),
    )  # fmt: skip
    assert result.returncode == 20
    lines = result.stderr.decode().splitlines()
    assert [line.split(": ")[2] for line in lines] == ["bootcmd", "packages"]


def find_flavour_from(reply: dict) -> tuple[str, context.Flavour]:
    """find_flavour against nova's /flavors/detail answer (the cloud is the boundary here;
    tests/with_nova asks nova's own API)."""
    from types import SimpleNamespace

    from vmtrust import launch

    answer = SimpleNamespace(status_code=200, text="", json=lambda: reply)
    compute = SimpleNamespace(request=lambda url, method, **kw: answer)
    return launch.find_flavour(SimpleNamespace(compute=compute), "wn")


@pytest.mark.parametrize(
    ("item", "flavour"),
    [
        ({"vcpus": 8, "ram": 16384, "disk": 20, "OS-FLV-EXT-DATA:ephemeral": 80, "swap": 1024},
         context.Flavour(8, 16384, 1024, 80)),
        ({"vcpus": 2, "ram": 4096, "disk": 40, "OS-FLV-EXT-DATA:ephemeral": 0, "swap": ""},
         context.Flavour(2, 4096, 0, 40)),
        ({"vcpus": 2, "ram": 4096, "disk": 0, "swap": ""}, context.Flavour(2, 4096, 0, None)),
        ({"vcpus": "2", "ram": None}, context.Flavour(None, None, 0, None)),
    ],
    ids=["ephemeral", "root-disk", "boot-from-volume", "odd-values"],
)  # fmt: skip
def test_the_flavour_is_read_as_nova_gives_it(item, flavour):
    reply = {"flavors": [{"id": "f1", "name": "other"}, {"id": "f2", "name": "wn", **item}]}
    assert find_flavour_from(reply) == ("f2", flavour)


def test_shipped_sample_profiles_build_and_pass_their_own_check():
    """etc/vmtrust/context/ stays a working example, each site with the sample VO."""
    root = Path(__file__).resolve().parent.parent / "etc" / "vmtrust" / "context"
    sites = sorted(root.glob("site*.yaml"))
    assert len(sites) >= 2
    for path in sites:
        site = context.load_site(path)
        data = context.build(site, context.load_vo(root / "vo.yaml", site))
        assert context.explain(data, site)[1] == [], path
        assert site.cvmfs is not None and site.cvmfs.proxy in data.decode()


def test_compose_gives_the_parts_in_the_order_cloud_init_runs_them(built):
    site, vo, _ = built
    _, parts = compose(site, vo)
    names = [p.filename for p in parts]
    assert (
        names
        == sorted(names)
        == [scripts.MACHINE, scripts.SOFTWARE, scripts.VO_COMMANDS, scripts.PILOT]
    )
    assert all(p.body.startswith("#!/bin/sh\n") for p in parts)
    assert VO["pilot"]["command"] not in "".join(p.body for p in parts)  # only in pilot-start
