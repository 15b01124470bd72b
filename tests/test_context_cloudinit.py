"""The user-data vmtrust composes, read by cloud-init's own code (22.4.2, from its Debian package).

cloud-init is not on the Python package index: ``make cloud-init`` extracts its
package into ``.cloud-init/root``.  Its schema validates every cloud-config part
(strict: errors, not warnings) and its ``UserDataProcessor`` — what an instance
runs on boot — splits the message into the parts it will handle.  Every shell
script vmtrust writes passes ``shellcheck``, and its systemd units pass
``systemd-analyze verify``.  Without these tools the tests are skipped, unless
``VMTRUST_REQUIRE_SERVICES=1`` (``.ci/run`` installs them).
"""

from __future__ import annotations

import copy
import gzip
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from context_boot import scratch_root

from vmtrust import context
from vmtrust.context import scripts
from vmtrust.context.compose import compose
from vmtrust.context.userdata import package

CLOUD_INIT = (
    Path(__file__).resolve().parent.parent / ".cloud-init/root/usr/lib/python3/dist-packages"
)
SECRET = "SECRET-TOKEN-123"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBexampleCAforTests\n-----END CERTIFICATE-----\n"
GPG_KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----\nmQINBexample\n-----END PGP PUBLIC KEY BLOCK-----\n"
CVMFS_KEY = "-----BEGIN PUBLIC KEY-----\nMIIBexampleCvmfsKey\n-----END PUBLIC KEY-----\n"

SITE_FULL: dict[str, Any] = {
    "site": "EXAMPLE-SITE",
    "cvmfs": {
        "proxy": "http://squid1.example.org:3128|http://squid2.example.org:3128;DIRECT",
        "quota_mb": 20000,
        "cache_base": "/scratch/cvmfs",
        "client_profile": "single",
        "repositories": ["grid.cern.ch"],
        "allowed_repositories": ["*.cern.ch"],
    },
    "syslog": ["@@syslog.example.org:514", "@syslog2.example.org"],
    "admin_ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKey admin@example.org"],
    "ca_certificates": [CA_PEM],
    "lifetime": {"max_seconds": 86400, "grace_seconds": 300},
    "pilot_user": "cmspilot",
    "vo_may": {"packages": ["python3*"], "file_prefixes": ["/opt/", "/etc/vo/"], "runcmd": True},
}
#: a site whose machines reach the world only through proxies, with every optional part
SITE_PROXIES: dict[str, Any] = {
    **SITE_FULL,
    "cvmfs": {
        "proxy": "auto;http://squid.example.org:3128",
        "pac_urls": ["http://wpad.example.org/wpad.dat"],
        "fallback_proxy": "http://fallback.example.org:3128",
        "install": "preinstalled",
        "repositories": ["sw.example.org"],
        "allowed_repositories": ["*.cern.ch", "*.example.org"],
        "domains": {"example.org": {"server_urls": ["http://s1.example.org/cvmfs/@fqrn@"],
                                    "keys": [CVMFS_KEY]}},
    },
    "package_sources": {"proxy": "http://squid.example.org:3128", "epel": True,
                        "cvmfs_mirror": {"el": "https://m.example.org/cvmfs/EL/$releasever/",
                                         "debian": "https://m.example.org/apt bookworm main",
                                         "gpg_key": GPG_KEY}},
    "scratch": {"device": "ephemeral0", "mount": "/scratch", "filesystem": "xfs"},
    "machine_features": {"hs06_per_cpu": 10.5, "jobslots": 2, "extra": {"site_tag": "x y"}},
    "joboutputs": {"upload_url": "https://outputs.example.org/site", "heartbeat_seconds": 60},
}  # fmt: skip
VO_FULL: dict[str, Any] = {
    "vo": "cms",
    "cvmfs": {"repositories": ["cms.cern.ch", "cms-ib.cern.ch"]},
    "lifetime": 43200,
    "packages": ["python3-requests"],
    "write_files": [
        {"path": "/opt/cms/site.json", "content": "{}\n", "permissions": "0644"},
        {"path": "/opt/cms/run.sh", "content": "#!/bin/sh\nexit 0\n", "permissions": "755"},
    ],
    "runcmd": ["echo vo-command-marker"],
    "pilot": {
        "command": "/opt/cms/pilot.sh",
        "arguments": ["--queue", "T2_XX", "$(not expanded)"],
        "config": {"path": "/etc/vo/pilot.cfg", "content": "queue=T2_XX\n"},
        "credential": {"path": "/etc/vo/token", "file": "token"},
        "environment": {"QUEUE": "T2_XX", "SLOTS": 8},
    },
}
VO_CONDOR: dict[str, Any] = {
    "vo": "cms",
    "cvmfs": {"repositories": ["cms.cern.ch"]},
    "pilot": {
        "command": "/cvmfs/cms.cern.ch/glidein/start-startd",
        "arguments": ["--pool", "pool.example.org:9618"],
        "credential": {"path": "/etc/vo/pilot.idtoken", "file": "token"},
    },
}
SITE_NO_CVMFS = {k: v for k, v in SITE_FULL.items() if k != "cvmfs"}
VO_NO_CVMFS = {k: v for k, v in VO_FULL.items() if k not in ("cvmfs", "packages")}

#: name → (site, VO, compress, the parts expected in order: (filename, content type))
CFG = ("00-vmtrust.cfg", "text/cloud-config")
MACHINE = (scripts.MACHINE, "text/x-shellscript")
SOFTWARE = (scripts.SOFTWARE, "text/x-shellscript")
VO_PART = (scripts.VO_COMMANDS, "text/x-shellscript")
PILOT = (scripts.PILOT, "text/x-shellscript")
COMBINATIONS = {
    "full": (SITE_FULL, VO_FULL, False, [CFG, MACHINE, SOFTWARE, VO_PART, PILOT]),
    "full-gzip": (SITE_FULL, VO_FULL, True, [CFG, MACHINE, SOFTWARE, VO_PART, PILOT]),
    "minimal": ({"site": "MINI"}, {"vo": "ops"}, False, [CFG, MACHINE]),
    "minimal-gzip": ({"site": "MINI"}, {"vo": "ops"}, True, [CFG, MACHINE]),
    "site-cvmfs-only": (SITE_FULL, {"vo": "ops"}, False, [CFG, MACHINE, SOFTWARE]),
    "no-cvmfs": (SITE_NO_CVMFS, VO_NO_CVMFS, False, [CFG, MACHINE, VO_PART, PILOT]),
    "proxy-only-site": (SITE_PROXIES, VO_CONDOR, False, [CFG, MACHINE, SOFTWARE, PILOT]),
    "proxy-only-site-gzip": (SITE_PROXIES, VO_CONDOR, True, [CFG, MACHINE, SOFTWARE, PILOT]),
}


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        why = f"{name} is not installed (Debian package {package}; .ci/run installs it)"
        if os.environ.get("VMTRUST_REQUIRE_SERVICES") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def cloudinit():
    """cloud-init's schema and user-data modules, from the extracted Debian package."""
    why_not = None
    if not (CLOUD_INIT / "cloudinit").is_dir():
        why_not = f"cloud-init is not extracted at {CLOUD_INIT} (run 'make cloud-init')"
    else:
        sys.path.insert(0, str(CLOUD_INIT))
        try:
            schema = importlib.import_module("cloudinit.config.schema")
            user_data = importlib.import_module("cloudinit.user_data")
        except ImportError as exc:
            why_not = f"cloud-init at {CLOUD_INIT} cannot be imported: {exc}"
        finally:
            sys.path.remove(str(CLOUD_INIT))
    if why_not:
        if os.environ.get("VMTRUST_REQUIRE_SERVICES") == "1":
            pytest.fail(why_not)
        pytest.skip(why_not)
    return SimpleNamespace(schema=schema, full_schema=schema.get_schema(), user_data=user_data)


def profiles(tmp_path: Path, site: dict, vo: dict) -> tuple[Any, Any]:
    site_path = tmp_path / "site.yaml"
    vo_path = tmp_path / "vo.yaml"
    site_path.write_text(yaml.safe_dump(site), encoding="utf-8")
    vo_path.write_text(yaml.safe_dump(vo), encoding="utf-8")
    token = tmp_path / "token"
    token.write_text(SECRET, encoding="utf-8")
    token.chmod(0o600)
    s = context.load_site(site_path)
    return s, context.load_vo(vo_path, s)


def build(tmp_path: Path, site: dict, vo: dict, *, compress: bool = False) -> bytes:
    return context.build(*profiles(tmp_path, site, vo), compress=compress)


def processed(ci, data: bytes) -> list[tuple[str | None, str, bytes]]:
    """(filename, content type, payload) of each part, as cloud-init hands them to handlers."""
    message = ci.user_data.UserDataProcessor({}).process(data)
    return [
        (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
        for part in message.walk()
        if not part.is_multipart()
    ]


def validate(ci, config: dict) -> None:
    ci.schema.validate_cloudconfig_schema(config, ci.full_schema, strict=True)


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_cloud_init_sees_the_intended_parts_in_order(cloudinit, tmp_path, name):
    site, vo, compress, expected = COMBINATIONS[name]
    data = build(tmp_path, site, vo, compress=compress)
    assert (data[:2] == b"\x1f\x8b") is compress
    parts = processed(cloudinit, data)
    types = [kind for _, kind, _ in parts]
    # exactly one cloud-config and it comes first: no later part can merge over the site's
    assert types[0] == "text/cloud-config"
    assert types.count("text/cloud-config") == 1
    assert [(filename, kind) for filename, kind, _ in parts] == expected
    names = [filename for filename, kind, _ in parts if kind == "text/x-shellscript"]
    assert names == sorted(names)  # scripts_user runs them in file-name order
    assert names[0] == scripts.MACHINE  # the lifetime is armed first
    for filename, kind, payload in parts:
        assert kind in ("text/cloud-config", "text/x-shellscript"), (filename, kind)
        if kind == "text/x-shellscript":
            assert payload.startswith(b"#!/bin/sh\n"), filename
        else:
            assert payload.startswith(b"#cloud-config\n")


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_every_cloud_config_part_passes_cloud_init_schema_strictly(cloudinit, tmp_path, name):
    site, vo, compress, _ = COMBINATIONS[name]
    parts = processed(cloudinit, build(tmp_path, site, vo, compress=compress))
    configs = [yaml.safe_load(payload) for _, kind, payload in parts if kind == "text/cloud-config"]
    assert len(configs) == 1
    validate(cloudinit, configs[0])
    assert configs[0]["disable_root"] is True
    assert "runcmd" not in configs[0]  # cloud-init would run it after every user script


SAMPLES = Path(__file__).resolve().parent.parent / "etc" / "vmtrust" / "context"


@pytest.mark.parametrize("site_name", ["site.yaml", "site-proxy-only.yaml"])
def test_the_shipped_samples_pass_cloud_init_schema(cloudinit, site_name):
    site = context.load_site(SAMPLES / site_name)
    data = context.build(site, context.load_vo(SAMPLES / "vo.yaml", site))
    parts = processed(cloudinit, data)
    assert [kind for _, kind, _ in parts].count("text/cloud-config") == 1
    validate(cloudinit, yaml.safe_load(parts[0][2]))


def test_site_keys_reach_cloud_init_intact(cloudinit, tmp_path):
    parts = processed(cloudinit, build(tmp_path, SITE_FULL, VO_FULL, compress=True))
    config = yaml.safe_load(parts[0][2])
    assert set(config["rsyslog"]["remotes"].values()) == set(SITE_FULL["syslog"])
    assert config["ca_certs"]["trusted"] == [CA_PEM]
    assert config["ssh_authorized_keys"] == SITE_FULL["admin_ssh_keys"]
    files = {item["path"]: item for item in config["write_files"]}
    assert "CVMFS_HTTP_PROXY='http://squid1" in files["/etc/cvmfs/default.local"]["content"]
    assert files["/opt/cms/run.sh"]["permissions"] == "0755"
    assert files["/etc/vo/token"]["permissions"] == "0600"
    assert files["/etc/vo/token"]["defer"] is True
    assert config["disable_ec2_metadata"] is True


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["write_files"][0].update(permissions=0o644), "permissions"),
        (lambda c: c["write_files"][0].update(content=1), "content"),
        (lambda c: c["write_files"][0].update(mode="0644"), "Additional properties"),
        (lambda c: c.update(runcmd="echo not a list"), "runcmd"),
        (lambda c: c["users"][1].update(lock_passwd="yes"), "lock_passwd"),
        (lambda c: c.update(disable_ec2_metadata="true"), "disable_ec2_metadata"),
        (lambda c: c.update(mounts=[["ephemeral0", "/scratch", 1]]), "mounts"),
    ],
    ids=[
        "permissions-int",
        "content-int",
        "unknown-file-key",
        "runcmd-string",
        "users",
        "bool",
        "mounts",
    ],
)
def test_the_schema_validator_is_live(cloudinit, tmp_path, change, message):
    config, _ = compose(*profiles(tmp_path, SITE_FULL, VO_FULL))
    validate(cloudinit, copy.deepcopy(config))
    change(config)
    with pytest.raises(cloudinit.schema.SchemaValidationError, match=message):
        validate(cloudinit, config)


def test_cloud_init_reads_our_unpacking_the_same_way(cloudinit, tmp_path):
    """vmtrust's own unpack (used by 'context check') agrees with cloud-init on every part."""
    data = build(tmp_path, SITE_FULL, VO_FULL)
    ours = [(p.filename, p.content_type, p.body.encode()) for p in context.unpack(data)]
    theirs = processed(cloudinit, gzip.compress(data))
    assert ours == theirs


def merged(ci, data: bytes) -> dict[str, Any]:
    """The configuration cloud-init's cloud-config part handler merges from all parts."""
    handlers = importlib.import_module("cloudinit.handlers")
    module = importlib.import_module("cloudinit.handlers.cloud_config")
    handler = module.CloudConfigPartHandler(SimpleNamespace(get_ipath=lambda name: None))
    handler.handle_part(None, handlers.CONTENT_START, None, None, None, None)
    message = ci.user_data.UserDataProcessor({}).process(data)
    for part in message.walk():
        if part.get_content_type() == "text/cloud-config":
            payload = part.get_payload(decode=True).decode()
            handler.handle_part(None, "text/cloud-config", part.get_filename() or "part",
                                payload, None, dict(part.items()))  # fmt: skip
    return handler.cloud_buf


def test_cloud_init_merges_our_config_unchanged(cloudinit, tmp_path):
    data = build(tmp_path, SITE_FULL, VO_FULL, compress=True)
    ours = yaml.safe_load(processed(cloudinit, data)[0][2])
    assert merged(cloudinit, data) == ours


def test_a_second_cloud_config_would_override_the_site(cloudinit, tmp_path):
    """Why exactly one cloud-config matters: cloud-init replaces top-level keys of earlier parts.

    With a VO part after the site's, cloud-init's default merge keeps only the VO's
    ``rsyslog`` and ``runcmd`` — the reason vmtrust composes a single document and
    ``context check`` refuses a second one.
    """
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    site, vo = profiles(tmp_path, SITE_FULL, {"vo": "ops"})
    config, _ = compose(site, vo)
    theirs = "#cloud-config\nrsyslog: {remotes: {vo: '@@vo.example.org'}}\nruncmd: [x]\n"
    message = MIMEMultipart()
    for body in (package(config, []).decode(), theirs):
        message.attach(MIMEText(body, "cloud-config"))
    data = message.as_bytes()
    result = merged(cloudinit, data)
    assert result["rsyslog"] == {"remotes": {"vo": "@@vo.example.org"}}
    assert result["runcmd"] == ["x"]
    assert result["ca_certs"] == config["ca_certs"]
    assert any(p.startswith("2 cloud-config parts") for p in context.explain(data, site)[1])


TRICKY_PARTS = [
    ("x-shellscript", "#cloud-config\nusers: [intruder]\n"),
    ("x-shellscript", "#part-handler\ndef handle_part(*a):\n    pass\n"),
    ("x-shellscript", "echo no shebang\n"),
    ("plain", "#Cloud-Boothook\necho early\n"),
    ("plain", "  #include https://evil.example.org/more\n"),
    ("plain", "#include-once\nhttps://evil.example.org/\n"),
    ("plain", "## template: jinja\n#!/bin/sh\necho {{ v1.instance_id }}\n"),
    ("plain", "#cloud-config-archive\n- type: text/x-shellscript\n"),
    ("plain", "#cloud-config-jsonp\n[]\n"),
    ("plain", "just text\n"),
    ("x-not-multipart", "#!/bin/sh\necho hi\n"),
    ("x-shellscript-per-boot", "#!/bin/sh\necho every boot\n"),
    ("cloud-boothook", "#!/bin/sh\necho early\n"),
    ("x-unknown", "#!/bin/sh\n"),
]


def offline_types(ci, data: bytes) -> list[str]:
    """The content type cloud-init gives each part, without fetching #include URLs."""
    from email.mime.base import MIMEBase

    handlers = importlib.import_module("cloudinit.handlers")

    class Offline(ci.user_data.UserDataProcessor):
        def _marker(self, kind: str, append_msg) -> None:
            self._attach_part(append_msg, MIMEBase(*kind.split("/", 1)))

        def _do_include(self, content, append_msg):  # cloud-init would fetch the URLs
            kind = handlers.type_from_starts_with(content, "text/x-include-url")
            self._marker(kind, append_msg)

        def _explode_archive(self, archive, append_msg):
            self._marker("text/cloud-config-archive", append_msg)

    message = Offline({}).process(data)
    return [part.get_content_type() for part in message.walk() if not part.is_multipart()]


def test_vmtrust_types_parts_as_cloud_init_does(cloudinit):
    """'context check' judges the part types cloud-init will actually handle."""
    from email.mime.application import MIMEApplication
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    message = MIMEMultipart()
    for subtype, body in TRICKY_PARTS:
        message.attach(MIMEText(body, subtype))
    for body in (b"#part-handler\ndef handle_part(*a): pass\n", b"#!/bin/sh\necho hi\n"):
        message.attach(MIMEApplication(gzip.compress(body), "x-gzip"))
    data = message.as_bytes()
    theirs = offline_types(cloudinit, data)
    ours = [part.content_type for part in context.unpack(data)]
    assert len(theirs) == len(TRICKY_PARTS) + 2
    assert ours == theirs
    for single in (b"#!/bin/sh\necho hi\n", b"  #CLOUD-CONFIG\n{}\n", b"#include\nhttp://x\n"):
        for blob in (single, gzip.compress(single)):
            ours = [p.content_type for p in context.unpack(blob)]
            assert ours == offline_types(cloudinit, blob)


# --- shellcheck and systemd-analyze on everything vmtrust writes ---------------------------


def _shell_texts(tmp_path: Path, site: dict, vo: dict) -> dict[str, str]:
    """Every shell script of a user-data: its parts and the scripts it writes."""
    config, parts = compose(*profiles(tmp_path, site, vo))
    texts = {part.filename: part.body for part in parts}
    for item in config["write_files"]:
        if item["content"].startswith("#!/bin/sh"):
            texts[item["path"]] = item["content"]
    return texts


@pytest.mark.parametrize("name", [n for n in COMBINATIONS if not n.endswith("gzip")])
def test_every_script_passes_shellcheck(tmp_path, name):
    shellcheck = _tool("shellcheck", "shellcheck")
    site, vo, _, _ = COMBINATIONS[name]
    texts = _shell_texts(tmp_path, site, vo)
    assert scripts.NODE in texts
    assert (scripts.LAUNCHER in texts) == ("pilot" in vo)
    for index, (where, text) in enumerate(texts.items()):
        path = tmp_path / f"script-{index}.sh"
        path.write_text(text, encoding="utf-8")
        result = subprocess.run(
            [shellcheck, "--shell=sh", "--severity=style", str(path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{where}:\n{result.stdout}"


def test_shellcheck_is_live(tmp_path):
    shellcheck = _tool("shellcheck", "shellcheck")
    path = tmp_path / "bad.sh"
    path.write_text("#!/bin/sh\nrm -rf $DIR/*\n", encoding="utf-8")
    result = subprocess.run([shellcheck, "--shell=sh", str(path)], capture_output=True, check=False)
    assert result.returncode != 0 and b"SC2086" in result.stdout


@pytest.fixture
def unit_root(cloudinit):
    """A scratch root with systemd's own units, for ``systemd-analyze verify --root``."""
    root = scratch_root()
    (root / "usr/lib/systemd").mkdir(parents=True)
    units = Path("/usr/lib/systemd/system")
    if not units.is_dir():
        units = Path("/lib/systemd/system")
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _verify(analyze: str, root: Path, unit: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [analyze, "verify", f"--root={root}", "--man=no", f"/etc/systemd/system/{unit}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["full", "proxy-only-site"])
def test_systemd_analyze_verifies_the_units_vmtrust_writes(tmp_path, unit_root, name):
    analyze = _tool("systemd-analyze", "systemd")
    site, vo, _, _ = COMBINATIONS[name]
    config, _ = compose(*profiles(tmp_path, site, vo))
    for item in config["write_files"]:  # the units and the programs they start
        if item["path"].startswith(("/etc/systemd/", scripts.LIBEXEC)):
            target = unit_root / item["path"].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(item["content"], encoding="utf-8")
            target.chmod(int(item["permissions"], 8))
    for unit in (scripts.WATCHDOG_UNIT, scripts.PILOT_UNIT):
        result = _verify(analyze, unit_root, unit)
        # a misspelt setting is only a warning: nothing at all may be printed
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), unit


def test_systemd_analyze_is_live(unit_root):
    analyze = _tool("systemd-analyze", "systemd")
    unit = unit_root / "etc/systemd/system/typo.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text("[Service]\nExecStart=/bin/true\nNoNewPrivilege=yes\n")
    result = _verify(analyze, unit_root, "typo.service")
    assert "Unknown key" in result.stderr
