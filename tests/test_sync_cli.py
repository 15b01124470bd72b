"""``vmtrust-sync`` and the site commands as processes, including kill -9 mid-transfer."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import image_entry, list_document, local_site
from httpserve import Behaviour, Server, Site

from vmtrust import imagelist, smime

BIN = Path(sys.executable).parent
IMAGE = os.urandom(2 * 1024 * 1024)


@pytest.fixture
def site():
    with Server(Site()) as running:
        yield running


@pytest.fixture
def conf(tmp_path: Path, ca_dir: Path, site: Site, pki) -> Path:
    image = image_entry(
        "wn",
        **{
            "hv:uri": site.url("/wn.img"),
            "hv:size": len(IMAGE),
            "sl:checksum:sha512": hashlib.sha512(IMAGE).hexdigest(),
            "hv:format": "RAW",
        },
    )
    site.files["/wn.img"] = IMAGE
    document = list_document(pki.endorser, images=[image])
    site.files["/site.list"] = smime.sign(
        imagelist.dumps(document), pki.endorser.cert, pki.endorser.key
    )
    return local_site(
        tmp_path,
        ca_dir,
        "  - name: example\n"
        f"    url: {site.url('/site.list')}\n"
        f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
        "    vo: vo.example.org\n    approve: all\n"
        "  - name: broken\n"
        f"    url: {site.url('/missing.list')}\n"
        f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
        "    approve: all\n",
        sync="http_retries = 1\n",
    )


def sync(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "vmtrust-sync", "--config-file", conf, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def images(conf: Path) -> list[dict]:
    out = subprocess.run(
        [BIN / "vmtrust", "--config-file", conf, "images", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_one_failing_list_is_one_line_and_exit_1_after_the_rest(conf):
    result = sync(conf)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "subscription broken" in lines[0] and "HTTP 404" in lines[0]
    (row,) = images(conf)
    assert row["identifier"] == "wn" and row["state"] == "trusted"
    assert row["sha512"] == hashlib.sha512(IMAGE).hexdigest()
    assert {"identifier", "version", "state", "sha512", "location", "vo", "expires"} <= set(row)
    status = subprocess.run(
        [BIN / "vmtrust", "--config-file", conf, "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    by_name = {r["name"]: r for r in json.loads(status.stdout)}
    assert by_name["example"]["last_error"] is None and by_name["example"]["list_version"]
    assert "404" in by_name["broken"]["last_error"]


def test_kill_9_mid_transfer_then_rerun_converges(conf, site):
    site.behaviour["/wn.img"] = Behaviour(stall=0.05)
    process = subprocess.Popen(
        [BIN / "vmtrust-sync", "--config-file", conf],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = conf.parent / "store"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any((store / ".partial").glob("*")):
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert any((store / ".partial").glob("*")), "the kill should land mid-transfer"
    site.behaviour.clear()
    assert sync(conf).returncode == 1  # only the broken subscription fails
    assert [r["state"] for r in images(conf)] == ["trusted"]
    assert list((store / ".partial").iterdir()) == []
    assert len(list(store.glob("images/*/*.img"))) == 1
    second = sync(conf)
    assert second.returncode == 1 and len(images(conf)) == 1


def test_bad_configuration_is_one_line_before_anything_happens(conf, tmp_path):
    (tmp_path / "subs.yaml").write_text("subscriptions:\n  - name: x\n    url: ftp://nope\n")
    result = sync(conf)
    assert result.returncode == 4
    assert result.stderr.count("\n") == 1 and "subscriptions[0].url" in result.stderr
    assert not (tmp_path / "store").exists()


def test_dry_run_prints_the_plan_and_changes_nothing(conf, tmp_path):
    result = sync(conf, "--dry-run")
    assert "create  wn" in result.stdout
    assert not list((tmp_path / "store").glob("images/*/*.img"))


def test_daemon_syncs_then_stops_cleanly_on_sigterm(conf):
    process = subprocess.Popen(
        [BIN / "vmtrust-sync", "--config-file", conf, "--daemon", "--interval", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        store = conf.parent / "store"
        while time.monotonic() < deadline and not list(store.glob("images/*/*.json")):
            time.sleep(0.1)
        assert list(store.glob("images/*/*.json")), "the daemon should have stored the image"
        time.sleep(1.5)  # at least one more pass
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    assert err.count("subscription broken") >= 2  # reported on every pass, daemon goes on
    assert len(images(conf)) == 1


def test_progress_bar_on_a_terminal_and_none_otherwise(conf, tmp_path: Path):
    """On a TTY each image gets a tqdm bar; captured output (above) stays one line per failure."""
    import fcntl
    import pty
    import struct
    import termios

    primary, secondary = pty.openpty()
    # A new pseudo-terminal is 0x0 and tqdm draws nothing in no columns: be 100x30.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    try:
        process = subprocess.Popen(
            [BIN / "vmtrust-sync", "--config-file", conf],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=secondary,
        )
        os.close(secondary)
        output = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=120) == 1  # the 'broken' subscription still fails
    finally:
        os.close(primary)
    text = output.decode(errors="replace")
    assert "Example worker node" in text  # the bar is labelled with the image title
    assert "100%" in text and "2.10M" in text  # it reached the full 2 MiB (2.10 MB)
    assert "subscription broken" in text
    assert [row["state"] for row in images(conf)] == ["trusted"]
