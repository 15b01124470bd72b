"""The user-data vmtrust composes, read by cloud-init's own code (22.4.2, from its Debian package).

cloud-init is not on the Python package index: ``make cloud-init`` extracts its
package into ``.cloud-init/root``.  Its schema validates every cloud-config part
(strict: errors, not warnings) and its ``UserDataProcessor`` — what an instance
runs on boot — splits the message into the parts it will handle.  Without the
extracted tree these tests are skipped, unless ``VMTRUST_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import copy
import gzip
import importlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from vmtrust import context
from vmtrust.context.compose import compose
from vmtrust.context.userdata import package

CLOUD_INIT = (
    Path(__file__).resolve().parent.parent / ".cloud-init/root/usr/lib/python3/dist-packages"
)
SECRET = "SECRET-TOKEN-123"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBexampleCAforTests\n-----END CERTIFICATE-----\n"

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
    "vo_may": {"packages": ["python3*"], "file_prefixes": ["/opt/", "/etc/vo/"]},
}
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
        "command": "/opt/cms/pilot.sh --queue T2_XX",
        "config": {"path": "/etc/vo/pilot.cfg", "content": "queue=T2_XX\n"},
        "credential": {"path": "/etc/vo/token", "content": SECRET},
        "environment": {"QUEUE": "T2_XX", "SLOTS": 8},
    },
}
VO_SYSTEMD: dict[str, Any] = {
    "vo": "lhcb",
    "cvmfs": {"repositories": ["lhcb.cern.ch"]},
    "pilot": {
        "systemd_unit": "[Unit]\nDescription=pilot\n[Service]\nExecStart=/opt/lhcb/pilot\n",
        "unit_name": "vo-lhcb-pilot.service",
        "credential": {"path": "/etc/vo/proxy.pem", "content": SECRET},
    },
}
SITE_NO_CVMFS = {k: v for k, v in SITE_FULL.items() if k != "cvmfs"}
VO_NO_CVMFS = {k: v for k, v in VO_FULL.items() if k != "cvmfs"}

#: name → (site, VO, compress, the parts expected in order: (filename, content type))
CFG = ("00-vmtrust.cfg", "text/cloud-config")
CVMFS = ("10-vmtrust-cvmfs.sh", "text/x-shellscript")
PILOT = ("30-vmtrust-pilot.sh", "text/x-shellscript")
COMBINATIONS = {
    "full": (SITE_FULL, VO_FULL, False, [CFG, CVMFS, PILOT]),
    "full-gzip": (SITE_FULL, VO_FULL, True, [CFG, CVMFS, PILOT]),
    "minimal": ({"site": "MINI"}, {"vo": "ops"}, False, None),
    "minimal-gzip": ({"site": "MINI"}, {"vo": "ops"}, True, None),
    "site-cvmfs-only": (SITE_FULL, {"vo": "ops"}, False, [CFG, CVMFS]),
    "no-cvmfs": (SITE_NO_CVMFS, VO_NO_CVMFS, False, [CFG, PILOT]),
    "systemd-pilot": (SITE_FULL, VO_SYSTEMD, False, [CFG, CVMFS, PILOT]),
    "systemd-pilot-gzip": (SITE_FULL, VO_SYSTEMD, True, [CFG, CVMFS, PILOT]),
}


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


def build(tmp_path: Path, site: dict, vo: dict, *, compress: bool = False) -> bytes:
    site_path = tmp_path / "site.yaml"
    vo_path = tmp_path / "vo.yaml"
    site_path.write_text(yaml.safe_dump(site), encoding="utf-8")
    vo_path.write_text(yaml.safe_dump(vo), encoding="utf-8")
    s = context.load_site(site_path)
    return context.build(s, context.load_vo(vo_path, s), compress=compress)


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
    if expected is None:
        assert len(parts) == 1
    else:
        assert [(filename, kind) for filename, kind, _ in parts] == expected
        scripts = [filename for filename, kind, _ in parts if kind == "text/x-shellscript"]
        assert scripts == sorted(scripts)  # scripts_user runs them in file-name order
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
    assert "runcmd" in configs[0]


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
    ],
    ids=["permissions-int", "content-int", "unknown-file-key", "runcmd-string", "users", "bool"],
)
def test_the_schema_validator_is_live(cloudinit, tmp_path, change, message):
    site_path = tmp_path / "site.yaml"
    vo_path = tmp_path / "vo.yaml"
    site_path.write_text(yaml.safe_dump(SITE_FULL), encoding="utf-8")
    vo_path.write_text(yaml.safe_dump(VO_FULL), encoding="utf-8")
    site = context.load_site(site_path)
    config, _ = compose(site, context.load_vo(vo_path, site))
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

    site_path = tmp_path / "site.yaml"
    site_path.write_text(yaml.safe_dump(SITE_FULL), encoding="utf-8")
    site = context.load_site(site_path)
    vo_path = tmp_path / "vo.yaml"
    vo_path.write_text(yaml.safe_dump({"vo": "ops"}), encoding="utf-8")
    config, _ = compose(site, context.load_vo(vo_path, site))
    theirs = "#cloud-config\nrsyslog: {remotes: {vo: '@@vo.example.org'}}\nruncmd: [x]\n"
    message = MIMEMultipart()
    for body in (package(config, []).decode(), theirs):
        message.attach(MIMEText(body, "cloud-config"))
    data = message.as_bytes()
    result = merged(cloudinit, data)
    assert result["rsyslog"] == {"remotes": {"vo": "@@vo.example.org"}}
    assert result["runcmd"] == ["x"]
    assert result["ca_certs"] == config["ca_certs"]
    assert context.explain(data, site)[1][-1].startswith("2 cloud-config parts")


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
