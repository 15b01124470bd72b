# ruff: noqa: F401, F811  (pytest fixtures imported from pg_server, then requested by name)
"""``vmtrust-sync --worker`` as an operator runs it: embedded, on PostgreSQL state, and failing.

The embedded worker (no ``[coordination] backend_url``) needs no service: it
owns every target and locks each with a file; its state can still be a shared
PostgreSQL database, which ``vmtrust status`` then reads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from etcd_server import free_port
from pg_server import PASSWORD, pg_url, postgres
from test_sync_local import IMAGE_A, entry, publish

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def _conf(tmp_path: Path, ca_dir: Path, site, pki, extra: str = "") -> Path:
    subprocess.run(
        [sys.executable, "-m", "vmtrust", "keygen", "--out", tmp_path / "seal.key"],
        check=True, capture_output=True, env=ENV,
    )  # fmt: skip
    (tmp_path / "subs.yaml").write_text(
        f"subscriptions:\n  - name: example\n    url: {site.url('/site.list')}\n"
        f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
        "    approve: all\n"
    )
    path = tmp_path / "vmtrust.conf"
    path.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
        f"[trust]\nca_dir = {ca_dir}\nseal_key = {tmp_path}/seal.key\n"
        f"[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\nhttp_retries = 0\n"
        f"[store_local]\npath = {tmp_path}/store\n{extra}"
    )
    return path


def _sync(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glance_sync", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=ENV,
    )  # fmt: skip


def test_an_embedded_worker_syncs_on_postgresql_state_and_stops_on_sigterm(
    tmp_path, ca_dir, site, pki, pg_url
):
    conf = _conf(tmp_path, ca_dir, site, pki)
    conf.write_text(conf.read_text().replace("[store_local]", f"state_connection = {pg_url}\n"
                                             "[store_local]"))  # fmt: skip
    publish(site, pki, [entry("wn", IMAGE_A, site)], "1")
    worker = subprocess.Popen(
        [sys.executable, "-m", "glance_sync", "--worker", "--config-file", conf,
         "--interval", "3600"],
        stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "store").glob("images/*/*.json")):
            assert worker.poll() is None, worker.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert (tmp_path / "state" / "locks" / "target-default.lock").exists()
    finally:
        worker.send_signal(signal.SIGTERM)  # the pass in progress ends first, state written
        assert worker.wait(30) == 0
    assert not (tmp_path / "state" / "vmtrust.sqlite").exists()  # the state is PostgreSQL's
    done = subprocess.run(
        [sys.executable, "-m", "vmtrust", "--config-file", conf, "status", "--json"],
        capture_output=True, text=True, env=ENV, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["list_version"] == "1" and row["last_success"] is not None


def test_worker_goes_with_nothing_that_makes_it_stop_or_pretend(tmp_path):
    for other in ("--daemon", "--dry-run", "--check"):
        done = _sync("--worker", other)
        assert done.returncode == 2 and "--worker keeps running on its own" in done.stderr


def test_an_unreachable_etcd_stops_the_worker_with_one_line(tmp_path, ca_dir, site, pki):
    url = f"etcd3+http://root:{PASSWORD}@127.0.0.1:{free_port()}"
    conf = _conf(tmp_path, ca_dir, site, pki, f"[coordination]\nbackend_url = {url}\nlease = 5\n")
    done = _sync("--worker", "--config-file", conf)
    assert done.returncode == 69, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("vmtrust-sync: coordination etcd3+http://***@127.0.0.1:")
    assert PASSWORD not in done.stderr and "Traceback" not in done.stderr


def test_an_unreachable_state_database_stops_a_pass_with_one_line(tmp_path, ca_dir, site, pki):
    url = f"postgresql://vmtrust:{PASSWORD}@127.0.0.1:{free_port()}/vmtrust"
    conf = _conf(tmp_path, ca_dir, site, pki)
    conf.write_text(conf.read_text().replace("http_retries = 0\n", f"http_retries = 0\n"
                                             f"state_connection = {url}\n"))  # fmt: skip
    for args in (("--upgrade-state",), ()):
        done = _sync("--config-file", conf, *args)
        assert done.returncode == 74, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("vmtrust-sync: state database postgresql://***@127.0.0.1:")
        assert PASSWORD not in done.stderr and "Traceback" not in done.stderr


def test_a_connection_url_that_splits_its_password_shows_none_of_it_anywhere(
    tmp_path, ca_dir, site, pki
):
    """``vmtrust:top@secret@host``: before the fix, '…@secret@…' and the host
    'secret@127.0.0.1' psycopg could not resolve named part of the password."""
    url = f"postgresql://vmtrust:top@secret@127.0.0.1:{free_port()}/vmtrust"
    conf = _conf(tmp_path, ca_dir, site, pki)
    conf.write_text(conf.read_text().replace("http_retries = 0\n", f"http_retries = 0\n"
                                             f"state_connection = {url}\n"))  # fmt: skip
    runs = [
        _sync("--config-file", conf, *args)
        for args in ((), ("--check",), ("--log-format", "json", "-v"))
    ]
    for args in ((), ("--json",), ("--nagios",)):
        runs.append(
            subprocess.run(
                [sys.executable, "-m", "vmtrust", "--config-file", str(conf), "status", *args],
                capture_output=True,
                text=True,
                timeout=60,
                env=ENV,
            )
        )
    for done in runs:
        assert done.returncode != 0, done.args
        assert "secret" not in done.stdout + done.stderr, done.args
        assert "Traceback" not in done.stderr and "'@'" in done.stdout + done.stderr, done.args


def test_a_worker_whose_state_database_cannot_be_used_stops_at_start(tmp_path, ca_dir, site, pki):
    """Before: the worker started, took its share of the targets by the ring and then
    failed every round — its targets were never synced, and no other worker took them."""
    bad = {
        f"postgresql://vmtrust:{PASSWORD}@127.0.0.1:{free_port()}/vmtrust": 74,  # unreachable
        f"postgresql://vmtrust:top@{PASSWORD}@127.0.0.1:1/vmtrust": 4,  # not a usable URL
    }
    for n, (url, status) in enumerate(bad.items()):
        (tmp_path / str(n)).mkdir()
        conf = _conf(tmp_path / str(n), ca_dir, site, pki)
        conf.write_text(conf.read_text().replace("http_retries = 0\n", f"http_retries = 0\n"
                                                 f"state_connection = {url}\n"))  # fmt: skip
        for log in ((), ("--log-format", "json", "-v")):  # the event log's lines too
            done = _sync("--worker", "--config-file", conf, *log, timeout=60)
            assert done.returncode == status, done.stderr
            assert PASSWORD not in done.stdout + done.stderr
            assert "Traceback" not in done.stderr and done.stderr.strip()
