"""What the operator sees (issue 10 §5): failing images, no credentials, no terminal tricks.

The commands run as processes, as a site runs them: ``vmtrust-sync`` and
``vmtrust status`` against loopback servers and a local store.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import list_document, local_site
from httpserve import Behaviour, Site
from test_sync_local import IMAGE_A, IMAGE_B, entry

from glance_sync.state import StateDB
from vmtrust import imagelist, smime
from vmtrust.errors import InvalidConfiguration
from vmtrust.policy import parse_subscriptions
from vmtrust.safetext import SafeFormatter, clean, redact, shown

BIN = Path(sys.executable).parent
HOSTILE_TITLE = "\x1b[2J\x1b]0;pwned\x07Worker \u202enigol\u202c\nvmtrust-sync: forged line"
HOSTILE_ID = "evil\x1b[31m\u2067id"


def sign_list(site: Site, pki, images: list[dict], version: str = "1") -> None:
    document = list_document(pki.endorser, version=version, images=images)
    site.files["/site.list"] = smime.sign(
        imagelist.dumps(document), pki.endorser.cert, pki.endorser.key
    )


@pytest.fixture
def conf(tmp_path: Path, ca_dir: Path, site: Site, pki) -> Path:
    return local_site(
        tmp_path,
        ca_dir,
        "  - name: example\n"
        f"    url: {site.url('/site.list')}\n"
        f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
        "    approve: all\n",
    )


def sync(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "vmtrust-sync", "--config-file", conf, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def status(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "vmtrust", "--config-file", conf, "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def rows(conf: Path) -> dict[str, dict]:
    result = status(conf, "--json")
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


# --- failing images ---------------------------------------------------------------------


def test_status_shows_the_images_that_fail_although_the_list_is_fine(conf, site, pki):
    sign_list(site, pki, [entry("wn", IMAGE_A, site)], "1")
    assert sync(conf).returncode == 0
    sign_list(site, pki, [entry("wn", IMAGE_B, site, version="2")], "2")
    site.behaviour["/img/wn-2.img"] = Behaviour(status=404)
    for _ in range(2):  # stuck on version 1, pass after pass
        assert sync(conf).returncode == 1
    row = rows(conf)["example"]
    assert row["last_error"] is None and row["list_version"] == "2"
    (failing,) = row["failing_images"]
    assert failing["identifier"] == "wn" and failing["version"] == "2"
    assert failing["title"] == "Example worker node"
    assert "HTTP 404" in failing["reason"] and failing["failed_at"]
    text = status(conf).stdout
    assert "FAILING" in text and "Images that failed in the last pass:" in text
    assert "example: wn 2 (Example worker node): image wn: " in text
    del site.behaviour["/img/wn-2.img"]
    assert sync(conf).returncode == 0
    assert rows(conf)["example"]["failing_images"] == []


def test_status_reads_without_creating_or_changing_anything(conf, tmp_path):
    result = status(conf, "--json")
    assert result.returncode == 0
    (row,) = json.loads(result.stdout)
    assert row["last_success"] is None and row["failing_images"] == []
    assert not (tmp_path / "state").exists()


# --- credentials in URLs ---------------------------------------------------------------------


def test_credentials_in_a_subscription_url_are_refused_without_showing_them():
    text = (
        "subscriptions:\n  - name: x\n    url: https://jane:hunter2@lists.example.org/x.list\n"
        "    endorsers: [{dn: /DC=org/CN=x, ca: /DC=org/CN=y}]\n    approve: all\n"
    )
    with pytest.raises(InvalidConfiguration) as caught:
        parse_subscriptions(text)
    message = str(caught.value)
    assert "credentials in the URL are refused" in message and "use credentials:" in message
    assert "hunter2" not in message and "https://***@lists.example.org/x.list" in message
    for bad in ("https://user@h/x", "ftp://u:p@h/x", "https://u:p@[::1/x"):
        with pytest.raises(InvalidConfiguration) as caught:
            parse_subscriptions(text.replace("https://jane:hunter2@lists.example.org/x.list", bad))
        assert ":p@" not in str(caught.value)


def test_a_password_in_an_image_uri_is_never_shown_or_stored(conf, site, pki, tmp_path):
    image = entry("wn", IMAGE_A, site)
    image["hv:image"]["hv:uri"] = site.url("/missing.img").replace("//", "//jane:hunter2@")
    sign_list(site, pki, [image])
    result = sync(conf, "-vv")
    assert result.returncode == 1
    assert "http://***@127.0.0.1" in result.stderr and "HTTP 404" in result.stderr
    outputs = [result.stderr, result.stdout, status(conf).stdout, status(conf, "--json").stdout]
    database = b"".join(p.read_bytes() for p in (tmp_path / "state").glob("vmtrust.sqlite*"))
    assert b"404" in database
    assert b"hunter2" not in database
    assert all("hunter2" not in output for output in outputs)


def test_redact_and_clean():
    assert redact("get https://u:p@h:1/x?y=a@b failed") == "get https://***@h:1/x?y=a@b failed"
    assert redact("a http://u:p@ss@h/ b") == "a http://***@h/ b"
    assert redact("no url, user@example.org") == "no url, user@example.org"
    assert clean("a\x1b[31mb\u202ec\nd") == "a\\x1b[31mb\\u202ec\\nd"
    assert shown("http://u:p@h/\x07") == "http://***@h/\\x07"


def test_log_lines_stay_single_and_clean(caplog):
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "stored %s", (HOSTILE_TITLE,), None)
    try:
        raise ValueError("bad\x1b[0m https://u:pw@h/")
    except ValueError:
        record.exc_info = sys.exc_info()
    text = SafeFormatter("%(levelname)s %(message)s").format(record)
    first, *trace = text.splitlines()
    assert first.startswith("ERROR stored \\x1b[2J") and "\\nvmtrust-sync: forged" in first
    assert trace[-1] == "ValueError: bad\\x1b[0m https://***@h/"
    assert "\x1b" not in text and "\u202e" not in text


# --- hostile strings from lists ---------------------------------------------------------------


def test_strings_from_a_list_are_neutralised_in_output_and_logs(conf, site, pki):
    good = entry("wn", IMAGE_A, site)
    good["hv:image"]["dc:title"] = HOSTILE_TITLE
    bad = entry(HOSTILE_ID, IMAGE_B, site)
    bad["hv:image"]["hv:uri"] = site.url("/gone.img")
    sign_list(site, pki, [good, bad])
    plan = sync(conf, "--dry-run")
    result = sync(conf, "-v")
    assert result.returncode == 1
    for output in (plan.stdout, plan.stderr, result.stdout, result.stderr):
        assert "\x1b" not in output and "\u202e" not in output and "\u2067" not in output
        assert "\x07" not in output
    assert "\\x1b[2J" in plan.stdout and "\\nvmtrust-sync: forged line" in plan.stdout
    assert len(plan.stdout.strip().splitlines()) == 2  # one line per planned image
    lines = result.stderr.strip().splitlines()
    assert not [line for line in lines if line.startswith("vmtrust-sync: forged")]
    (failure,) = [line for line in lines if line.startswith("vmtrust-sync: ")]
    assert failure.startswith("vmtrust-sync: image evil\\x1b[31m\\u2067id: ")
    assert any("stored wn 1 (\\x1b[2J\\x1b]0;pwned\\x07Worker \\u202enigol" in ln for ln in lines)


# --- the state directory is private ---------------------------------------------------------


def test_state_dir_is_created_private(tmp_path):
    old = os.umask(0o022)
    try:
        db = StateDB(tmp_path / "state")
        db.record_failure("x", "why")
        db.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for path in (tmp_path / "state").glob("vmtrust.sqlite*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_loose_modes_of_an_existing_state_dir_are_tightened_with_a_warning(tmp_path, caplog):
    state = tmp_path / "state"
    StateDB(state).close()
    state.chmod(0o755)
    (state / "vmtrust.sqlite").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="vmtrust.sync"):
        StateDB(state).close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "vmtrust.sqlite").stat().st_mode) == 0o600
    assert [r.getMessage() for r in caplog.records] == [
        f"{state} was mode 755; set to 700",
        f"{state / 'vmtrust.sqlite'} was mode 644; set to 600",
    ]
