"""Profiles and helpers the contextualisation tests share.

Profiles are written as YAML into a test's directory and read back through the
public API (:func:`vmtrust.context.load_site`, :func:`~vmtrust.context.load_vo`),
so every refusal is seen as a site admin or a VO sees it.  The pilot's
credential comes from a file beside the VO profile, as a VO gives it.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmtrust import context
from vmtrust.errors import ConfigError, InvalidConfiguration

VMTRUST = Path(sys.executable).parent / "vmtrust"
SECRET = "SECRET-TOKEN-123"
PROXY = "http://squid1.example.org:3128|http://squid2.example.org:3128;DIRECT"
ADMIN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyForTestsOnly admin@example.org"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBexampleCAforTests\n-----END CERTIFICATE-----\n"
SYSLOG = "@@syslog.example.org:514"
GPG_KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----\nmQINBexample\n-----END PGP PUBLIC KEY BLOCK-----\n"
CVMFS_KEY = "-----BEGIN PUBLIC KEY-----\nMIIBexampleCvmfsKey\n-----END PUBLIC KEY-----\n"
DROP = object()  #: in ``changes``: remove the key
TOKEN_FILE = "pilot.token"  #: beside the VO profile, mode 0600

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
        "command": "/opt/cms/pilot.sh",
        "arguments": ["--queue", "T2_XX"],
        "config": {"path": "/etc/vo/pilot.cfg", "content": "queue=T2_XX\n"},
        "credential": {"path": "/etc/vo/token", "file": TOKEN_FILE},
        "environment": {"QUEUE": "T2_XX"},
    },
}


def changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
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


def site_file(tmp_path: Path, base: dict[str, Any] | None = None, **changes: Any) -> Path:
    return write_yaml(tmp_path / "site.yaml", changed(SITE if base is None else base, changes))


def vo_file(tmp_path: Path, base: dict[str, Any] | None = None, **changes: Any) -> Path:
    token = tmp_path / TOKEN_FILE
    if not token.exists():
        token.write_text(SECRET, encoding="utf-8")
        token.chmod(0o600)
    return write_yaml(tmp_path / "vo.yaml", changed(VO if base is None else base, changes))


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


def part(data: bytes, name: str) -> str:
    return next(p.body for p in context.unpack(data) if p.filename == name)


def refused(call, *args) -> InvalidConfiguration:
    with pytest.raises(ConfigError) as info:
        call(*args)
    return info.value


def assert_one_line_naming(exc: Exception, path: Path, key: str) -> None:
    text = str(exc)
    assert "\n" not in text
    assert str(path) in text
    assert f": {key}:" in text


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VMTRUST), *args], input=stdin, capture_output=True, timeout=60, check=False
    )


def shell_value(text: str, name: str, tmp_path: Path) -> str:
    """A variable as /bin/sh sees it after sourcing ``text`` (as cvmfs does its files)."""
    script = tmp_path / "sourced.conf"
    script.write_text(text, encoding="utf-8")
    out = subprocess.run(
        ["/bin/sh", "-c", f'. "$1"; printf %s "${name}"', "sh", str(script)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout
