"""The sync service against real HTTP servers on loopback and the local store.

Each test publishes signed lists and image bytes on a loopback server, runs a
sync pass, and checks what the store holds — the guarantees of issue 3 that
this version covers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import list_document, served_entry
from httpserve import Behaviour, Site

from glance_sync.service import SyncService, exclusive_lock
from vmtrust import imagelist, smime
from vmtrust.errors import LockError
from vmtrust.policy import Credentials
from vmtrust.record import check_seal

IMAGE_A = b"A" * 300_000
IMAGE_B = b"B" * 200_000


def entry(identifier: str, data: bytes, site: Site, version: str = "1") -> dict:
    return served_entry(site, identifier, data, version=version)


def publish(site: Site, pki, images: list[dict], version: str) -> None:
    document = list_document(pki.endorser, version=version, images=images)
    document["hv:imagelist"]["hv:uri"] = site.url("/site.list")
    site.files["/site.list"] = smime.sign(
        imagelist.dumps(document), pki.endorser.cert, pki.endorser.key
    )


def trusted(service: SyncService) -> dict[str, str]:
    """identifier → image version of every trusted image, checking each seal."""
    result = {}
    for held in service.store.held():
        if held.retired:
            continue
        assert held.seal_ok, held.problem
        check_seal(held.record, _seal_of(held), [service.s.seal_key.public_key()])
        assert hashlib.sha512(Path(held.location).read_bytes()).hexdigest() == held.record.sha512
        result[held.record.image_identifier] = held.record.image_version
    return result


def _seal_of(held) -> str:
    return json.loads(Path(held.location).with_suffix(".json").read_text())["seal"]


def test_first_sync_stores_sealed_images_and_second_is_a_no_op(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    report = sync.run(sync.subs)
    assert report.failures == [] and report.exit_code == 0
    assert trusted(sync) == {"a": "1", "b": "1"}
    before = len(site.requests)
    again = sync.run(sync.subs)
    assert again.done == [] and again.failures == []
    assert [p for p, _ in site.requests[before:]] == ["/site.list"]  # no image downloaded


def test_tampered_list_keeps_images_and_fails_the_run(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    assert sync.run(sync.subs).exit_code == 0
    site.files["/site.list"] = site.files["/site.list"].replace(
        b"Example worker node", b"Evil worker nodes"
    )
    report = sync.run(sync.subs)
    assert report.exit_code == 1
    assert len(report.failures) == 1 and "subscription example" in report.failures[0]
    assert trusted(sync) == {"a": "1"}


def test_unreachable_list_keeps_images_until_its_expiry(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    sync.run(sync.subs)
    site.behaviour["/site.list"] = Behaviour(status=503)
    report = sync.run(sync.subs)
    assert report.exit_code == 1 and "unreachable" in report.failures[0]
    assert trusted(sync) == {"a": "1"}
    later = datetime.now(UTC) + timedelta(days=60)  # past the list's dc:date:expires
    sync.run(sync.subs, now=later)
    assert trusted(sync) == {}


def test_wrong_checksum_is_not_stored_and_other_images_are(sync, site, pki):
    bad = entry("bad", IMAGE_B, site)
    site.files["/img/bad-1.img"] = b"C" * len(IMAGE_B)
    publish(site, pki, [entry("a", IMAGE_A, site), bad], "1")
    report = sync.run(sync.subs)
    assert report.exit_code == 1
    assert any("SHA-512" in line and "bad" in line for line in report.failures)
    assert trusted(sync) == {"a": "1"}
    assert list((sync.store.root / ".partial").iterdir()) == []


def test_new_version_replaces_old_and_revoked_image_is_retired(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    sync.run(sync.subs)
    publish(site, pki, [entry("a", IMAGE_A + b"v2", site, version="2")], "2")
    report = sync.run(sync.subs)
    assert report.exit_code == 0, report.failures
    assert trusted(sync) == {"a": "2"}
    retired = {
        h.record.image_version + h.record.image_identifier for h in sync.store.held() if h.retired
    }
    assert retired == {"1a", "1b"}


def test_failed_download_of_new_version_keeps_old(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    sync.run(sync.subs)
    publish(site, pki, [entry("a", IMAGE_A + b"v2", site, version="2")], "2")
    site.behaviour["/img/a-2.img"] = Behaviour(status=404)
    report = sync.run(sync.subs)
    assert report.exit_code == 1 and "HTTP 404" in report.failures[0]
    assert trusted(sync) == {"a": "1"}


def test_broken_connection_is_resumed_with_range(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    site.behaviour["/img/a-1.img"] = Behaviour(cut_after=100_000)
    assert sync.run(sync.subs).exit_code == 0
    assert trusted(sync) == {"a": "1"}
    ranges = [r for p, r in site.requests if p == "/img/a-1.img"]
    assert ranges[0] is None and ranges[-1] and ranges[-1].startswith("bytes=")


def test_rollback_to_an_older_list_is_refused(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "2")
    old = site.files["/site.list"]
    sync.run(sync.subs)
    publish(site, pki, [entry("b", IMAGE_B, site)], "1")
    report = sync.run(sync.subs)
    assert report.exit_code == 1 and "rollback" in report.failures[0]
    assert trusted(sync) == {"a": "1"}
    assert old  # the accepted list stays the reference


def test_a_second_sync_is_refused_while_one_runs(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    with exclusive_lock(sync.s.state_dir), pytest.raises(LockError, match="another vmtrust-sync"):
        sync.run(sync.subs)
    assert trusted(sync) == {}


def test_leftovers_of_a_killed_run_are_cleaned_and_the_sync_converges(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    root = sync.store.root
    (root / ".partial" / "dead.img").write_bytes(b"half")
    orphan = root / "images" / "a" / "1-0000000000000000.img"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"no record")
    assert sync.run(sync.subs).exit_code == 0
    assert trusted(sync) == {"a": "1"}
    assert not orphan.exists() and list((root / ".partial").iterdir()) == []


def test_dry_run_changes_nothing(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    lines: list[str] = []
    sync.run(sync.subs, dry_run=True, out=lines.append)
    assert lines and lines[0].startswith("create  a 1")
    assert trusted(sync) == {}


def test_altered_record_breaks_the_seal_and_is_retired(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    sync.run(sync.subs)
    (held,) = sync.store.held()
    meta = Path(held.location).with_suffix(".json")
    meta.write_text(
        meta.read_text()
        .replace('"vo.example.org"', '"vo.evil.org"')
        .replace('"vo": ""', '"vo": "vo.evil.org"')
    )
    problems = [h for h in sync.store.held() if not h.seal_ok]
    assert problems and "seal" in problems[0].problem
    sync.run(sync.subs)
    assert trusted(sync) == {"a": "1"}  # re-created from the list, the altered copy retired


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img (qemu-utils)")
def test_store_asking_for_qcow2_gets_a_converted_image(sync, site, pki):
    sync.store.target_format = "qcow2"
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    report = sync.run(sync.subs)
    assert report.exit_code == 0, report.failures
    (held,) = sync.store.held()
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", held.location],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(info.stdout)["format"] == "qcow2"
    assert held.record.disk_format == "qcow2"
    assert held.record.source_sha512 == hashlib.sha512(IMAGE_A).hexdigest()
    assert trusted(sync) == {"a": "1"}  # seal and stored-bytes hash checked
    assert list((sync.s.state_dir / "work").iterdir()) == []  # the work folder, emptied


def test_conversion_failure_is_reported_and_nothing_is_stored(sync, site, pki):
    sync.store.target_format = "no-such-format"
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    report = sync.run(sync.subs)
    assert report.exit_code == 1
    assert "a" in report.failures[0] and ("qemu-img" in report.failures[0])
    assert trusted(sync) == {}


def test_no_room_in_the_store_is_refused_before_downloading(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    sync.store.free_bytes = lambda: 1000  # the file system's answer, at the boundary
    report = sync.run(sync.subs)
    assert report.exit_code == 1 and "bytes free" in report.failures[0]
    assert not any(p.startswith("/img/") for p, _ in site.requests)


def test_retired_images_are_purged_after_the_grace_period_in_delete_mode(sync, site, pki):
    sync.s.retire_mode = "delete"
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    sync.run(sync.subs)
    publish(site, pki, [], "2")
    sync.run(sync.subs)
    retired = [h for h in sync.store.held() if h.retired]
    assert len(retired) == 1 and Path(retired[0].location).exists()
    sync.run(sync.subs, now=datetime.now(UTC) + timedelta(days=8))
    assert sync.store.held() == [] and not Path(retired[0].location).exists()


def test_same_image_in_two_subscriptions_is_a_conflict_and_not_trusted(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    site.files["/other.list"] = site.files["/site.list"]
    other = dataclasses.replace(sync.subs[0], name="other", url=site.url("/other.list"))
    report = sync.run((*sync.subs, other))
    assert report.exit_code == 1
    assert "several subscriptions" in report.failures[0] and "example, other" in report.failures[0]
    assert trusted(sync) == {}


def test_withdrawn_approval_retires_the_image(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    sync.run(sync.subs)
    only_a = (dataclasses.replace(sync.subs[0], approve_all=False, identifiers=frozenset({"a"})),)
    assert sync.run(only_a).exit_code == 0
    assert trusted(sync) == {"a": "1"}


def event_hook(sync: SyncService, folder: Path, *variables: str) -> Path:
    """Make ``sync`` run a site hook that logs ``variables`` (space-separated) per event."""
    log, hook = folder / "events.log", folder / "hook.sh"
    line = " ".join(f"${name}" for name in variables)
    hook.write_text(f'#!/bin/sh\necho "{line}" >> {log}\n')
    hook.chmod(0o755)
    sync.store.hook = hook
    return log


def test_site_hook_runs_after_store_and_retire_with_vmcatcher_events(sync, site, pki, tmp_path):
    event = ("VMCATCHER_EVENT_TYPE", "VMCATCHER_EVENT_DC_IDENTIFIER", "VMCATCHER_EVENT_HV_VERSION")
    log = event_hook(sync, tmp_path, *event)
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    sync.run(sync.subs)
    publish(site, pki, [entry("a", IMAGE_A + b"2", site, version="2")], "2")
    sync.run(sync.subs)
    assert log.read_text().splitlines() == [
        "AvailablePostfix a 1",
        "AvailablePostfix a 2",
        "ExpirePostfix a 1",
    ]


def test_new_images_wait_for_approval_when_the_site_refuses_them(sync, site, pki):
    careful = (dataclasses.replace(sync.subs[0], new_images="refuse"),)
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    sync.run(careful)
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "2")
    assert sync.run(careful).exit_code == 0
    assert trusted(sync) == {"a": "1"}
    approved = (dataclasses.replace(careful[0], identifiers=frozenset({"b"})),)
    sync.run(approved)
    assert trusted(sync) == {"a": "1", "b": "1"}


def test_list_identifier_is_pinned_on_first_use(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    sync.run(sync.subs)
    document = list_document(
        pki.endorser, version="2", identifier="another-list", images=[entry("b", IMAGE_B, site)]
    )
    site.files["/site.list"] = smime.sign(
        imagelist.dumps(document), pki.endorser.cert, pki.endorser.key
    )
    report = sync.run(sync.subs)
    assert report.exit_code == 1 and "expected identifier" in report.failures[0]
    assert trusted(sync) == {"a": "1"}


def test_appdb_token_credentials_from_a_file(sync, site, pki, tmp_path, caplog):
    site.basic_auth = "s3cret-token:x-oauth-basic"  # AppDB's form for private VO lists
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    denied = sync.run(sync.subs)
    assert denied.exit_code == 1 and "HTTP 401" in denied.failures[0]
    assert "credentials" in denied.failures[0]
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    sub = dataclasses.replace(sync.subs[0], credentials=Credentials(token_file=str(token)))
    report = sync.run((sub,))
    assert report.exit_code == 0, report.failures
    assert trusted(sync) == {"a": "1"}
    assert all("s3cret" not in r.getMessage() for r in caplog.records)
