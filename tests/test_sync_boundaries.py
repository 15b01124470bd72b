"""Every pass boundary is total (issue 10 §3): no input stops a pass.

Each test performs an attack that used to raise a library exception out of
the pass — so that the other subscriptions were never synced, revocations in
the same pass never applied, ``--daemon`` exited and ``vmtrust status``
recorded nothing — and checks that it is now one line naming the subscription
or image, while the rest of the pass is done.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import list_document
from httpserve import Behaviour, Site
from test_sync_local import IMAGE_A, IMAGE_B, entry, publish, trusted

from glance_sync import cli as sync_cli
from glance_sync import lists as lists_mod
from glance_sync.state import StateDB
from vmtrust import imagelist, smime
from vmtrust.errors import StateError

BIN = Path(sys.executable).parent
IMAGE_C = b"C" * 150_000
LONG_LABEL = "a" * 64


def with_evil(sync, site: Site, path: str = "/evil.list") -> tuple:
    """The test subscription plus one named ``evil`` whose list lives at ``path``."""
    evil = dataclasses.replace(sync.subs[0], name="evil", url=site.url(path))
    return (evil, *sync.subs)


def second_list(site: Site, pki) -> None:
    """Version 2 of the good list: keeps a, revokes b, adds c."""
    publish(site, pki, [entry("a", IMAGE_A, site), entry("c", IMAGE_C, site)], "2")


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("file:///etc/passwd", "not an http or https URL"),
        ("/evil.list", "more than 5 redirects"),  # a loop
        ("http://[::1/x", "malformed redirect"),
        (f"http://{LONG_LABEL}.example.org/x.list", "invalid host name"),
        ("http://127.0.0.1:99999/x.list", "not a valid URL"),
        ("", "redirect without a Location"),
    ],
)
def test_a_hostile_redirect_of_one_list_is_one_line_and_the_pass_goes_on(
    sync, site, pki, location, reason
):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    assert sync.run(sync.subs).exit_code == 0
    second_list(site, pki)
    site.behaviour["/evil.list"] = Behaviour(status=302, location=location)
    report = sync.run(with_evil(sync, site))
    assert report.exit_code == 1
    (line,) = report.failures
    assert line.startswith("subscription evil: ") and reason in line
    assert trusted(sync) == {"a": "1", "c": "1"}  # the other list: revocation and new image
    state = sync.state.get("evil")
    assert state.last_error and reason in state.last_error and state.last_success is None
    assert sync.state.get("example").last_error is None


def test_an_image_uri_with_an_over_long_host_label_fails_that_image_only(sync, site, pki):
    bad = entry("bad", IMAGE_B, site)
    bad["hv:image"]["hv:uri"] = f"http://{LONG_LABEL}.example.org/bad.img"
    publish(site, pki, [entry("a", IMAGE_A, site), bad], "1")
    report = sync.run(sync.subs)
    assert report.exit_code == 1
    (line,) = report.failures
    assert line.startswith("image bad: ") and "invalid host name" in line
    assert trusted(sync) == {"a": "1"}
    (failed,) = report.images
    assert (failed.subscription, failed.identifier, failed.reason) == ("example", "bad", line)


def test_an_exception_nobody_foresaw_in_one_image_is_one_line(sync, site, pki, caplog):
    real = sync.store.create

    def create(want, stream, disk_format, finish):
        if want.identifier == "b":
            raise KeyError("surprise")  # what no handler names
        return real(want, stream, disk_format, finish)

    sync.store.create = create
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    with caplog.at_level(logging.DEBUG, logger="vmtrust.sync"):
        report = sync.run(sync.subs)
    assert report.failures == ["image b: unexpected KeyError: 'surprise' (traceback with -vv)"]
    assert trusted(sync) == {"a": "1"}
    traced = [r for r in caplog.records if r.exc_info and r.exc_info[0] is KeyError]
    assert traced and traced[0].levelno == logging.DEBUG


def test_an_exception_nobody_foresaw_in_one_subscription_is_one_line(sync, site, pki, monkeypatch):
    real = lists_mod.fetch_list

    def fetch(sub, *args):
        if sub.name == "evil":
            raise UnicodeError("encoding with 'idna' codec failed")
        return real(sub, *args)

    monkeypatch.setattr(lists_mod, "fetch_list", fetch)
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    report = sync.run(with_evil(sync, site))
    (line,) = report.failures
    assert line.startswith("subscription evil: unexpected UnicodeError: encoding with 'idna'")
    assert trusted(sync) == {"a": "1"}
    assert "UnicodeError" in sync.state.get("evil").last_error


def _pragma(db: StateDB, sql: str) -> int:
    """Run a PRAGMA on the database's one SQLite connection (a per-connection setting)."""
    assert db._engine is not None
    with db._engine.connect() as conn:
        return conn.exec_driver_sql(sql).scalar_one()


def _fill(db: StateDB) -> None:
    """No new page for the database from now on: SQLite's 'database or disk is full'."""
    pages = _pragma(db, "PRAGMA page_count")
    _pragma(db, f"PRAGMA max_page_count = {pages}")


def test_a_full_state_database_is_one_line_and_the_next_pass_recovers(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    assert sync.run(sync.subs).exit_code == 0
    second_list(site, pki)
    broken = tuple(
        dataclasses.replace(sync.subs[0], name=f"gone-{n:02d}", url=site.url(f"/gone-{n}.list"))
        for n in range(80)
    )  # eighty 404s to remember: more than the pages the database has left
    _fill(sync.state)
    report = sync.run((*sync.subs, *broken))
    full = [line for line in report.failures if "database or disk is full" in line]
    assert len(full) == 1 and full[0].startswith(f"state database {sync.state.path}: ")
    assert len(report.failures) == 81  # the eighty 404s and the state
    assert trusted(sync) == {"a": "1", "c": "1"}  # the verified list was applied all the same
    # Room again: the next pass records everything.
    _pragma(sync.state, "PRAGMA max_page_count = 1073741823")
    report = sync.run((*sync.subs, *broken))
    assert not [line for line in report.failures if "state database" in line]
    assert all("404" in sync.state.get(sub.name).last_error for sub in broken)
    assert sync.state.get("example").list_version == "2"


def test_state_database_errors_are_state_errors(tmp_path):
    db = StateDB(tmp_path)
    _fill(db)
    with pytest.raises(StateError, match="database or disk is full"):
        db.record_failure("x", "why " * 5000)
    db.close()
    (tmp_path / "vmtrust.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StateError, match=r"vmtrust\.sqlite: file is not a database"):
        StateDB(tmp_path)


def test_a_whole_pass_that_fails_is_one_line_and_the_daemon_goes_on(tmp_path, capsys):
    class Broken:
        def run(self, *args, **kwargs):
            raise RecursionError("maximum recursion depth exceeded")

    subs = tmp_path / "subs.yaml"
    assert sync_cli._guarded_pass(Broken(), subs, False) == 4  # the file is missing
    subs.write_text(
        "subscriptions:\n  - name: x\n    url: https://example.org/x.list\n"
        "    endorsers: [{dn: /DC=org/CN=x, ca: /DC=org/CN=y}]\n    approve: all\n"
    )
    assert sync_cli._guarded_pass(Broken(), subs, False) == sync_cli.INTERNAL_ERROR
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "not found" in err[0]
    assert err[1].startswith("vmtrust-sync: pass: unexpected RecursionError: maximum recursion")


# --- the command, as a daemon ------------------------------------------------------------


@pytest.fixture
def conf(tmp_path: Path, ca_dir: Path, site: Site, pki) -> Path:
    image = entry("wn", IMAGE_A, site)
    document = list_document(pki.endorser, images=[image])
    site.files["/site.list"] = smime.sign(
        imagelist.dumps(document), pki.endorser.cert, pki.endorser.key
    )
    site.behaviour["/evil.list"] = Behaviour(status=302, location="file:///etc/passwd")
    endorsers = f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
    (tmp_path / "subs.yaml").write_text(
        "subscriptions:\n"
        f"  - name: evil\n    url: {site.url('/evil.list')}\n{endorsers}    approve: all\n"
        f"  - name: example\n    url: {site.url('/site.list')}\n{endorsers}    approve: all\n"
    )
    path = tmp_path / "vmtrust.conf"
    path.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
        f"[trust]\nca_dir = {ca_dir}\nseal_key = {tmp_path}/seal.key\n"
        f"[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\nhttp_backoff = 0.01\n"
        f"[store_local]\npath = {tmp_path}/store\n"
    )
    subprocess.run(
        [BIN / "vmtrust", "keygen", "--out", tmp_path / "seal.key"], check=True, capture_output=True
    )
    return path


def test_a_list_redirected_to_a_local_file_does_not_stop_the_daemon(conf):
    process = subprocess.Popen(
        [BIN / "vmtrust-sync", "--config-file", conf, "--daemon", "--interval", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        store = conf.parent / "store"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(store.glob("images/*/*.json")):
            time.sleep(0.1)
        time.sleep(1.5)  # at least one more pass
        assert process.poll() is None, "the daemon must still run"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    lines = err.strip().splitlines()
    assert len(lines) >= 2 and all("subscription evil" in line for line in lines)
    assert "file:///etc/passwd" in lines[0] and "Traceback" not in err
    assert list(store.glob("images/wn/*.img"))
    status = subprocess.run(
        [BIN / "vmtrust", "--config-file", conf, "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {r["name"]: r for r in json.loads(status.stdout)}
    assert "file:///etc/passwd" in rows["evil"]["last_error"]
    assert rows["example"]["last_error"] is None and rows["example"]["list_version"] == "3"


def test_one_pass_reports_the_redirect_and_exits_1(conf):
    result = subprocess.run(
        [BIN / "vmtrust-sync", "--config-file", conf],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("vmtrust-sync: subscription evil: ") and "redirect refused" in line
