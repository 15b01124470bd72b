"""atrope itself, populating the session's real Glance the way a site's cron job does.

atrope 2.0.0 (the release on PyPI, ``make venv-atrope``) runs unchanged from its own
environment: ``atrope --config-file atrope.conf dispatch`` fetches the lists of its
sources file over HTTP from the test web server, verifies them with ``openssl smime
-verify -CApath`` against the test CA directory, downloads and checks the images
into its cache, and uploads them with python-glanceclient.  It authenticates with
keystoneauth's ``v3password`` plugin (its ``[glance]`` section) against the Keystone
stand-in (``tests/openstack_standin.py``), which issues tokens the test Glance
accepts for the project asked for — atrope's own, and each source's project it
shares the images with and accepts them as.

atrope requires AppDB's keys in every entry (``ad:group``, ``ad:mpuri``,
``ad:user:*``): :func:`appdb_entry` adds them.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import served_entry

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("VMTRUST_ATROPE_VENV", ROOT / ".venv-atrope"))
USER, PASSWORD = "atrope", "secret"


def require_atrope() -> Path:
    """atrope's command, or skip (fail where services are required, as in make test)."""
    command = VENV / "bin" / "atrope"
    if not command.exists():
        why = f"no atrope environment at {VENV} (run 'make venv-atrope')"
        if os.environ.get("VMTRUST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"atrope is required here: {why}")
        pytest.skip(why)
    return command


def appdb_entry(
    identifier: str, data: bytes, site: Any, *, fmt: str = "raw", version: str = "1", **extra: Any
) -> dict:
    """A list entry atrope accepts (AppDB keys), its bytes published on ``site``."""
    return served_entry(
        site,
        identifier,
        data,
        path=f"/img/{identifier}-{version}",
        version=version,
        **{
            "hv:format": fmt,
            "ad:group": "EGI",
            "ad:mpuri": f"https://appdb.example.org/store/vm/image/{identifier}:{version}/",
            "ad:user:fullname": "Jane Endorser",
            "ad:user:guid": "0123-4567",
            "ad:user:uri": "https://appdb.example.org/store/person/jane",
            **extra,
        },
    )


@dataclass
class Source:
    """One entry of atrope's sources file."""

    url: str
    dn: str
    ca: str
    project: str = ""  #: the VO project atrope shares the images with (and accepts as)
    #: atrope makes images public when a source has no token (Glance's admin right)
    token: str = "list-token"
    prefix: str = ""


def run_atrope(
    base: Path, auth_url: str, project: str, ca_dir: Path, sources: dict[str, Source]
) -> subprocess.CompletedProcess[str]:
    """One ``atrope dispatch`` (fetch, verify, cache, upload, prune) as ``project``."""
    command = require_atrope()
    base.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, source in sources.items():
        lines += [
            f"{name}:",
            f"  url: {source.url}",
            "  enabled: true",
            f"  endorser: {{dn: '{source.dn}', ca: '{source.ca}'}}",
            f"  token: '{source.token}'",
            f"  prefix: '{source.prefix}'",
            f"  project: '{source.project}'",
        ]
    (base / "sources.yaml").write_text("\n".join(lines) + "\n")
    (base / "state").mkdir(exist_ok=True)
    conf = base / "atrope.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_path = {base}/state\nca_path = {ca_dir}\n"
        f"[sources]\nhepix_sources = {base}/sources.yaml\n"
        f"[cache]\npath = {base}/cache\n"
        "[dispatchers]\ndispatcher = glance\n"
        f"[glance]\nauth_type = v3password\nauth_url = {auth_url}\nusername = {USER}\n"
        f"password = {PASSWORD}\nuser_domain_name = Default\nproject_id = {project}\n"
    )
    return subprocess.run(
        [str(command), "--config-file", str(conf), "dispatch"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_PROXY": "*"},
    )
