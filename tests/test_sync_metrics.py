"""Prometheus metrics of ``vmtrust-sync``: scraped from the daemon over HTTP, read from the
node_exporter textfile of one-shot passes, both parsed with prometheus_client's own parser."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import requests
from glance_server import free_port
from ops_support import BIN, WN, make_site, run, wait_for
from prometheus_client.parser import text_string_to_metric_families

from glance_sync.metrics import parse_address
from vmtrust.errors import ConfigError


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) → value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted({"store": "local", **labels}.items())))
    assert key in found, f"{key} not among {sorted(k for k in found if k[0] == name)}"
    return found[key]


def check_one_pass(found: dict) -> None:
    """What the pass over the three subscriptions of ops_support must show."""
    p = "vmtrust_sync_"
    assert value(found, p + "last_success_timestamp_seconds", subscription="example") > 1e9
    assert value(found, p + "last_success_timestamp_seconds", subscription="broken") == 0
    assert value(found, p + "list_expiry_timestamp_seconds", subscription="example") > 1e9
    assert value(found, p + "images", subscription="example", state="trusted") == 1
    assert value(found, p + "images", subscription="example", state="failing") == 1
    assert value(found, p + "images", subscription="example", state="retired") == 0
    assert value(found, p + "transferred_bytes_total", subscription="example") >= len(WN)
    assert value(found, p + "transferred_bytes_total", subscription="broken") == 0
    failures = p + "verification_failures_total"
    assert value(found, failures, subscription="broken", rule="fetch") >= 1
    assert value(found, failures, subscription="revoked", rule="revoked") >= 1
    assert value(found, failures, subscription="example", rule="transfer") >= 1
    assert value(found, p + "last_pass_duration_seconds", subscription="example") > 0
    assert value(found, p + "pass_failures") == 3
    assert value(found, p + "pass_duration_seconds") > 0
    assert value(found, p + "pass_end_timestamp_seconds") > 1e9


def test_daemon_serves_metrics_that_a_scrape_reads(tmp_path, ca_dir, site, pki):
    port = free_port()
    conf = make_site(
        tmp_path, ca_dir, site, pki, sync=f"metrics_address = 127.0.0.1:{port}\ninterval = 60\n"
    )
    process = subprocess.Popen(
        [BIN / "vmtrust-sync", "--config-file", conf, "--daemon", "--interval", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"

    def scraped() -> bool:
        try:
            return "vmtrust_sync_pass_end_timestamp_seconds{" in requests.get(url, timeout=5).text
        except requests.ConnectionError:
            return False

    try:
        wait_for(scraped, what="the first pass's metrics")
        reply = requests.get(url, timeout=5)
        assert reply.status_code == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        found = samples(reply.text)
        check_one_pass(found)
        # the sync's own registry: no process or platform collectors of the library
        assert not [k for k in found if k[0].startswith(("process_", "python_"))]
        # a pass that fails as a whole (the subscriptions file broke) is counted too, and
        # what the state remembers stays
        (tmp_path / "subs.yaml").write_text("subscriptions: [")

        def whole_pass_failed() -> bool:
            now = samples(requests.get(url, timeout=5).text)
            return value(now, "vmtrust_sync_pass_failures") == 1

        wait_for(whole_pass_failed, what="a failed pass in the metrics")
        after = samples(requests.get(url, timeout=5).text)
        success = "vmtrust_sync_last_success_timestamp_seconds"
        assert value(after, success, subscription="example") == value(
            found, success, subscription="example"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    with pytest.raises(requests.ConnectionError):  # the server went with the daemon
        requests.get(url, timeout=5)


def test_one_shot_passes_write_the_textfile_atomically(tmp_path, ca_dir, site, pki):
    collector = tmp_path / "node-exporter"
    collector.mkdir()
    textfile = collector / "vmtrust.prom"
    conf = make_site(tmp_path, ca_dir, site, pki, sync=f"metrics_textfile = {textfile}\n")
    old = os.umask(0o077)  # as the systemd units run it: node_exporter must still read it
    try:
        first = run("vmtrust-sync", conf)
    finally:
        os.umask(old)
    assert first.returncode == 1  # three failures, one line each
    assert len(first.stderr.strip().splitlines()) == 3
    check_one_pass(samples(textfile.read_text()))
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
    inode = textfile.stat().st_ino
    second = run("vmtrust-sync", conf)
    assert second.returncode == 1
    assert textfile.stat().st_ino != inode  # replaced by a rename, never rewritten in place
    assert [p.name for p in collector.iterdir()] == ["vmtrust.prom"]  # no temporary left
    found = samples(textfile.read_text())
    # a new process: its counters are this pass's; the image was stored by the first
    assert value(found, "vmtrust_sync_transferred_bytes_total", subscription="example") < len(WN)
    assert value(found, "vmtrust_sync_images", subscription="example", state="trusted") == 1


def test_dry_run_writes_no_metrics(tmp_path, ca_dir, site, pki):
    textfile = tmp_path / "vmtrust.prom"
    conf = make_site(tmp_path, ca_dir, site, pki, sync=f"metrics_textfile = {textfile}\n")
    run("vmtrust-sync", conf, "--dry-run")
    assert not textfile.exists()


def test_a_textfile_that_cannot_be_written_is_one_line_and_exit_1(tmp_path, ca_dir, site, pki):
    textfile = tmp_path / "missing-dir" / "vmtrust.prom"
    conf = make_site(tmp_path, ca_dir, site, pki, sync=f"metrics_textfile = {textfile}\n")
    (tmp_path / "subs.yaml").write_text("subscriptions: []\n")
    result = run("vmtrust-sync", conf)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("vmtrust-sync: [sync] metrics_textfile: cannot write ")


def test_a_metrics_port_in_use_stops_the_daemon_before_it_starts(tmp_path, ca_dir, site, pki):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        conf = make_site(tmp_path, ca_dir, site, pki, sync=f"metrics_address = 127.0.0.1:{port}\n")
        result = run("vmtrust-sync", conf, "--daemon", timeout=60)
    assert result.returncode == 4
    (line,) = result.stderr.strip().splitlines()
    assert f"[sync] metrics_address 127.0.0.1:{port}: cannot listen" in line
    assert not list((tmp_path / "store").glob("images/*/*"))  # nothing was synced


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9731", ("127.0.0.1", 9731)),
        ("[::1]:9731", ("::1", 9731)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_metrics_address_forms(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9731", ":9731", "127.0.0.1:", "h:0", "h:70000", "::1:9731",
                                  "[nope]:1", "h:12ab"])  # fmt: skip
def test_bad_metrics_addresses_are_one_line_naming_the_option(text):
    with pytest.raises(ConfigError) as caught:
        parse_address(text)
    assert str(caught.value).startswith(f"[sync] metrics_address {text!r}: ")


def test_the_metrics_server_serves_on_ipv6_loopback(tmp_path, ca_dir, site, pki):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    port = free_port()
    conf = make_site(tmp_path, ca_dir, site, pki, sync=f"metrics_address = [::1]:{port}\n")
    (tmp_path / "subs.yaml").write_text("subscriptions: []\n")
    process = subprocess.Popen(
        [BIN / "vmtrust-sync", "--config-file", conf, "--daemon"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def up() -> bool:
            try:
                return (
                    "vmtrust_sync_pass_failures"
                    in requests.get(f"http://[::1]:{port}/metrics", timeout=5).text
                )
            except requests.ConnectionError:
                return process.poll() is not None  # it died: the assertion below says why

        wait_for(up, what="the IPv6 metrics server")
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def test_textfile_path_is_not_followed_into_another_file(tmp_path, ca_dir, site, pki):
    """A link planted at the textfile's name is replaced, not written through."""
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    textfile = tmp_path / "vmtrust.prom"
    textfile.symlink_to(victim)
    conf = make_site(tmp_path, ca_dir, site, pki, sync=f"metrics_textfile = {textfile}\n")
    run("vmtrust-sync", conf)
    assert victim.read_text() == "keep me\n"
    assert not textfile.is_symlink() and "vmtrust_sync_" in textfile.read_text()


def test_metrics_label_only_names_the_site_chose(tmp_path: Path, ca_dir, site, pki):
    """Labels carry subscription names and rule names, never list-supplied strings."""
    textfile = tmp_path / "vmtrust.prom"
    conf = make_site(tmp_path, ca_dir, site, pki, sync=f"metrics_textfile = {textfile}\n")
    run("vmtrust-sync", conf)
    labels = {
        key: val
        for (_, pairs) in samples(textfile.read_text())
        for key, val in pairs
    }  # fmt: skip
    assert set(labels) <= {"subscription", "store", "state", "rule"}
    names = {v for (_, pairs) in samples(textfile.read_text()) for k, v in pairs}
    assert "wn" not in names and "bad" not in names
