"""The local store cannot be used against its owner (issue 10 §6).

Each test plants what someone with write access to the store directory could
plant — symbolic links, hard links, FIFOs, names that collide, a second sync —
next to "precious" files outside the store, runs real sync passes against a
loopback list server, and checks that nothing outside was deleted, read or
written, and that the sync said what it found in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import served_entry
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_sync_local import IMAGE_A, IMAGE_B, event_hook, publish

from glance_sync import lock
from glance_sync.stores import local
from glance_sync.stores.local import LOCK_NAME, LocalStore, safe_name
from vmtrust.errors import ConfigError, LockError
from vmtrust.record import TrustRecord, seal

PRECIOUS = {"notes.txt": b"keep me\n", "1-0000000000000000.img": b"looks like an image"}


@pytest.fixture
def precious(tmp_path: Path) -> Path:
    """A directory outside the store whose files must survive every attack."""
    folder = tmp_path / "precious"
    folder.mkdir()
    for name, data in PRECIOUS.items():
        (folder / name).write_bytes(data)
    return folder


def intact(folder: Path) -> bool:
    return {p.name: p.read_bytes() for p in folder.iterdir()} == PRECIOUS


def entry(identifier: str, data: bytes, site, version: str = "1") -> dict:
    """An image entry served at a path of its own, whatever the identifier holds."""
    path = f"/img/{hashlib.sha256(f'{identifier} {version}'.encode()).hexdigest()[:16]}.img"
    return served_entry(site, identifier, data, path=path, version=version)


def trusted(sync) -> dict[str, str]:
    """identifier → version of every image trusted now (valid seal, bytes as recorded)."""
    result = {}
    for held in sync.store.held():
        if held.seal_ok and not held.retired:
            data = Path(held.location).read_bytes()
            assert hashlib.sha512(data).hexdigest() == held.record.sha512
            result[held.record.image_identifier] = held.record.image_version
    return result


def store_root(sync) -> Path:
    return sync.store.root


def one_line(lines: list[str]) -> None:
    assert lines and all("\n" not in line for line in lines), lines


# --- symbolic links are never followed -----------------------------------------------------


def test_partial_as_a_link_is_refused_and_its_target_kept(sync, site, pki, precious):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    partial = store_root(sync) / ".partial"
    partial.rmdir()
    partial.symlink_to(precious)
    report = sync.run(sync.subs)
    assert intact(precious)  # before: every file in it was deleted as a "partial download"
    assert report.exit_code == 1 and len(report.failures) == 1
    assert f".partial is a symbolic link to {precious}" in report.failures[0]
    assert "not followed; remove it" in report.failures[0]
    assert list((store_root(sync) / "images").iterdir()) == []
    with pytest.raises(ConfigError, match=r"\.partial is a symbolic link"):
        LocalStore(store_root(sync), [])  # vmtrust-sync refuses at start too


@pytest.mark.parametrize("area", ["images", "retired"])
def test_an_area_as_a_link_is_refused(sync, site, pki, precious, area):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    path = store_root(sync) / area
    path.rmdir()
    path.symlink_to(precious)
    report = sync.run(sync.subs)
    assert report.exit_code == 1 and f"{area} is a symbolic link" in report.failures[0]
    assert intact(precious)


def test_a_link_in_images_is_reported_and_nothing_written_through_it(sync, site, pki, precious):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    (store_root(sync) / "images" / "a").symlink_to(precious)
    report = sync.run(sync.subs)
    assert intact(precious)  # before: the image and its record were written into it
    one_line(report.failures)
    assert all(f"images/a is a symbolic link to {precious}" in f for f in report.failures)
    assert trusted(sync) == {"b": "1"}  # the rest of the pass ran
    again = sync.run(sync.subs)  # reported on every pass until removed
    assert again.failures and intact(precious)
    (store_root(sync) / "images" / "a").unlink()
    assert sync.run(sync.subs).exit_code == 0 and trusted(sync) == {"a": "1", "b": "1"}


def test_a_link_in_retired_keeps_the_old_version_and_its_target(sync, site, pki, precious):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    assert sync.run(sync.subs).exit_code == 0
    (store_root(sync) / "retired" / "a").symlink_to(precious)
    publish(site, pki, [entry("a", IMAGE_A + b"v2", site, version="2")], "2")
    report = sync.run(sync.subs)
    assert intact(precious)  # before: version 1 was moved into it
    one_line(report.failures)
    assert any(f"retired/a is a symbolic link to {precious}" in f for f in report.failures)
    held = {(h.record.image_version if h.record else None, h.retired) for h in sync.store.held()}
    assert ("2", False) in held and ("1", False) in held  # retirement refused, not half done


def test_an_image_file_replaced_by_a_link_is_not_trusted_nor_touched(sync, site, pki, precious):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    sync.run(sync.subs)
    (held,) = sync.store.held()
    image = Path(held.location)
    image.unlink()
    target = precious / "1-0000000000000000.img"
    target.write_bytes(IMAGE_A)  # even the right bytes: a link is never trusted
    image.symlink_to(target)
    (held,) = sync.store.held()
    assert not held.seal_ok and "is a symbolic link" in held.problem
    report = sync.run(sync.subs)
    one_line(report.failures)
    assert any("not followed; remove it" in f for f in report.failures)
    assert image.is_symlink() and target.read_bytes() == IMAGE_A  # neither moved nor removed


def test_a_record_linked_to_a_file_outside_is_never_read(sync, site, pki, tmp_path):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    sync.run(sync.subs)
    (held,) = sync.store.held()
    record = Path(held.location).with_suffix(".json")
    outside = tmp_path / "outside.json"
    outside.write_bytes(record.read_bytes())  # a valid, sealed record: if read, trusted
    record.unlink()
    record.symlink_to(outside)
    (found,) = sync.store.held()
    assert found.record is None and not found.seal_ok  # before: read through and trusted
    assert f"images/a/{record.name} is a symbolic link to {outside}" in found.problem
    before = outside.read_bytes()
    report = sync.run(sync.subs)
    one_line(report.failures)
    assert outside.read_bytes() == before and record.is_symlink()


def test_a_fifo_as_a_record_does_not_hang_the_sync(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    folder = store_root(sync) / "images" / "x"
    folder.mkdir()
    os.mkfifo(folder / "1-0000000000000000.json")  # before: read_text blocked for ever
    report = sync.run(sync.subs)
    assert any("images/x/1-0000000000000000.json is a FIFO" in f for f in report.failures)
    assert trusted(sync) == {"a": "1"}


def test_links_and_hard_links_in_partial_are_removed_never_their_targets(sync, site, pki, precious):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    partial = store_root(sync) / ".partial"
    (partial / "dir-link").symlink_to(precious)
    (partial / "file-link").symlink_to(precious / "notes.txt")
    os.link(precious / "notes.txt", partial / "hard-link")
    (partial / "folder").mkdir()
    (partial / "folder" / "inner-link").symlink_to(precious)
    assert sync.run(sync.subs).exit_code == 0
    assert intact(precious) and os.stat(precious / "notes.txt").st_nlink == 1
    assert list(partial.iterdir()) == []
    assert trusted(sync) == {"a": "1"}


def test_a_link_at_the_lock_name_is_refused_not_truncated(sync, site, pki, precious):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    (store_root(sync) / LOCK_NAME).symlink_to(precious / "notes.txt")
    with pytest.raises(ConfigError, match="a symbolic link, not followed"):
        sync.run(sync.subs)
    assert intact(precious)


def test_partial_is_private_to_the_sync(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    partial = store_root(sync) / ".partial"
    partial.chmod(0o777)  # as an older version under umask 0 left it
    sync.run(sync.subs)
    assert stat.S_IMODE(partial.stat().st_mode) == 0o700


# --- one sync per store --------------------------------------------------------------------


def test_a_second_sync_with_another_state_directory_is_refused_on_the_same_store(
    sync, site, pki, tmp_path
):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    other = LocalStore(store_root(sync), [sync.s.seal_key.public_key()])
    with other.lock(lock.holder(tmp_path / "other-state")), pytest.raises(LockError) as caught:
        sync.run(sync.subs)
    message = str(caught.value)
    assert caught.value.exit_code == 75 and "\n" not in message
    assert f"local store {store_root(sync)} is in use by another vmtrust-sync" in message
    assert f"pid {os.getpid()}" in message and f"state directory {tmp_path / 'other-state'}" in (
        message
    )
    assert trusted(sync) == {}
    assert sync.run(sync.subs).exit_code == 0  # free again once the other is done


def test_a_store_root_gone_since_start_is_one_line_not_made_again(sync, site, pki):
    """An unmounted store must not be re-created on the file system below the mount point."""
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    shutil.rmtree(store_root(sync))
    with pytest.raises(local.LocalStoreError, match=r"^local store .*: No such file"):
        sync.run(sync.subs)
    assert not store_root(sync).exists()


def test_a_store_whose_folders_are_gone_is_not_filled_again(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    (store_root(sync) / ".partial").rmdir()  # alone: the sync's own, made again
    assert sync.run(sync.subs).exit_code == 0 and trusted(sync) == {"a": "1"}
    shutil.rmtree(store_root(sync))
    store_root(sync).mkdir()
    report = sync.run(sync.subs)
    assert report.exit_code == 1 and ": No such file or directory" in report.failures[0]
    assert list(store_root(sync).iterdir()) == [store_root(sync) / LOCK_NAME]


# --- names cannot collide ------------------------------------------------------------------


def _old_safe_name(text: str) -> str:
    """The folder names of stores written before names were made injective."""
    if local._SAFE.match(text) and ".." not in text:
        return text
    return "h-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def test_safe_names_are_injective_and_fit_file_name_limits():
    hashed = safe_name("a/b")
    assert hashed.startswith("_") and safe_name("h-" + hashed[1:33]) == "h-" + hashed[1:33]
    assert safe_name("h-" + hashlib.sha256(b"a/b").hexdigest()[:32]) != hashed
    for text in ("..", "a..b", "../../etc", ".hidden", "_x", "x" * 101, "é", "a b", ""):
        assert safe_name(text).startswith("_") and len(safe_name(text)) == 65, text
    for text in ("a", "A.b-c_d", "x" * 100, "h-0123"):
        assert safe_name(text) == text


def test_an_identifier_naming_another_ones_old_hash_folder_gets_its_own(sync, site, pki):
    """Before: 'a/b' and 'h-<sha256("a/b")[:32]>' shared a folder, and with the same
    bytes and version one record overwrote the other."""
    twin = "h-" + hashlib.sha256(b"a/b").hexdigest()[:32]
    images = [entry("a/b", IMAGE_A, site), entry(twin, IMAGE_A, site)]
    images[1]["hv:image"]["hv:uri"] = images[0]["hv:image"]["hv:uri"]
    publish(site, pki, images, "1")
    assert sync.run(sync.subs).exit_code == 0
    assert trusted(sync) == {"a/b": "1", twin: "1"}
    folders = sorted(p.name for p in (store_root(sync) / "images").iterdir())
    assert folders == sorted([safe_name("a/b"), twin])
    again = sync.run(sync.subs)
    assert again.done == [] and again.failures == []


def test_a_store_in_the_old_layout_keeps_working(sync, site, pki, monkeypatch):
    publish(site, pki, [entry("a/b", IMAGE_A, site), entry("c", IMAGE_B, site)], "1")
    with monkeypatch.context() as old:
        old.setattr(local, "safe_name", _old_safe_name)
        assert sync.run(sync.subs).exit_code == 0
    old_folder = _old_safe_name("a/b")
    assert (store_root(sync) / "images" / old_folder).is_dir()
    requests = len(site.requests)
    again = sync.run(sync.subs)  # read where it is: nothing downloaded again
    assert again.done == [] and again.failures == [] and len(site.requests) == requests + 1
    assert trusted(sync) == {"a/b": "1", "c": "1"}
    publish(site, pki, [entry("a/b", IMAGE_A + b"v2", site, "2"), entry("c", IMAGE_B, site)], "2")
    assert sync.run(sync.subs).exit_code == 0
    assert trusted(sync) == {"a/b": "2", "c": "1"}
    assert (store_root(sync) / "retired" / old_folder).is_dir()
    assert not (store_root(sync) / "images" / old_folder).exists()


def test_a_create_never_replaces_what_has_its_name(sync, site, pki, monkeypatch):
    """An old-layout image of 'a/b' and a new identifier equal to its old folder name,
    same bytes and version: the new one is refused, the old one's record is kept."""
    twin = _old_safe_name("a/b")
    publish(site, pki, [entry("a/b", IMAGE_A, site)], "1")
    with monkeypatch.context() as old:
        old.setattr(local, "safe_name", _old_safe_name)
        sync.run(sync.subs)
    (held,) = sync.store.held()
    record = Path(held.location).with_suffix(".json")
    images = [entry("a/b", IMAGE_A, site), entry(twin, IMAGE_A, site)]
    images[1]["hv:image"]["hv:uri"] = images[0]["hv:image"]["hv:uri"]
    publish(site, pki, images, "2")
    report = sync.run(sync.subs)
    assert json.loads(record.read_text())["record"]["image_identifier"] == "a/b"
    assert len(report.failures) == 1 and "already exists; not replaced" in report.failures[0]
    assert trusted(sync) == {"a/b": "1"}


# --- more ways in ----------------------------------------------------------------------------


def test_a_planted_record_names_nothing_to_the_site_hook(sync, site, pki, tmp_path):
    """A record sealed by no site key is only ever quarantined: the ExpirePostfix hook
    gets its store id, never the identifier it claims.  (Before, the store passed the
    unverified record on, and a vmcatcher handler was told to expire image "a".)"""
    events = event_hook(
        sync,
        tmp_path,
        "VMCATCHER_EVENT_TYPE",
        "VMCATCHER_EVENT_DC_IDENTIFIER",
        "VMCATCHER_EVENT_HV_VERSION",
        "VMTRUST_STORE_ID",
    )
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    sync.run(sync.subs)
    (held,) = sync.store.held()
    stem = "1-" + "0" * 16
    planted = store_root(sync) / "images" / "planted"
    planted.mkdir()
    (planted / f"{stem}.img").write_bytes(IMAGE_A)
    claim = {**held.record.__dict__, "store_id": f"planted/{stem}"}
    forged = seal(TrustRecord.from_dict(claim), Ed25519PrivateKey.generate())
    (planted / f"{stem}.json").write_text(json.dumps({"record": claim, "seal": forged}))

    report = sync.run(sync.subs)
    assert events.read_text().splitlines() == [
        f"AvailablePostfix a 1 {held.store_id}",
        f"ExpirePostfix   planted/{stem}",
    ]
    (found,) = [h for h in sync.store.held() if h.store_id == f"planted/{stem}"]
    assert found.retired and found.record is None and found.identifier is None
    assert found.problem.startswith("seal invalid: image a: sealed by unknown key")
    assert report.done == [f"retired planted/{stem}: {found.problem}"]
    assert trusted(sync) == {"a": "1"}


def test_a_sealed_record_naming_a_store_id_outside_moves_nothing_outside(sync, site, pki, precious):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    sync.run(sync.subs)
    (held,) = sync.store.held()
    meta = Path(held.location).with_suffix(".json")
    body = json.loads(meta.read_text())
    escaped = {**body["record"], "store_id": f"../../{precious.name}/1-0000000000000000"}
    record = TrustRecord.from_dict(escaped)
    meta.write_text(json.dumps({"record": escaped, "seal": seal(record, sync.s.seal_key)}))
    (found,) = sync.store.held()
    assert not found.seal_ok and "seal is bound to image ../../" in found.problem
    assert found.location == held.location  # where it is, never where the record says
    sync.run(sync.subs)
    assert intact(precious)
    assert trusted(sync) == {"a": "1"}  # quarantined from inside the store and re-created


def test_long_identifiers_and_dot_dot_versions_stay_inside_the_store(sync, site, pki):
    long_id = "x" * 1000
    images = [entry(long_id, IMAGE_A, site), entry("dots", IMAGE_B, site, version="../../..")]
    publish(site, pki, images, "1")
    assert sync.run(sync.subs).exit_code == 0, sync.run(sync.subs).failures
    assert trusted(sync) == {long_id: "1", "dots": "../../.."}
    root = store_root(sync).resolve()
    for held in sync.store.held():
        path = Path(held.location)
        assert path.resolve().is_relative_to(root / "images")
        assert all(len(part) <= 255 for part in path.parts)


def test_an_oversized_record_is_not_read_whole(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    sync.run(sync.subs)
    (held,) = sync.store.held()
    with open(Path(held.location).with_suffix(".json"), "r+b") as record:
        record.truncate(4 << 30)  # sparse: 4 GiB that read_text() would have loaded
    (found,) = sync.store.held()
    assert "unreadable trust record" in found.problem and "larger than" in found.problem


def test_the_store_root_may_be_a_link_chosen_by_the_operator(tmp_path, sync, site, pki):
    real = tmp_path / "real-store"
    real.mkdir()
    linked = tmp_path / "store-link"
    linked.symlink_to(real)
    sync.store = LocalStore(linked, [sync.s.seal_key.public_key()])
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    assert sync.run(sync.subs).exit_code == 0
    assert (real / "images" / "a").is_dir() and trusted(sync) == {"a": "1"}


@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode"),
    [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750), (0, 0o644, 0o755)],
)
def test_created_files_are_never_writable_by_others(sync, site, pki, umask, file_mode, dir_mode):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    previous = os.umask(umask)
    try:
        assert sync.run(sync.subs).exit_code == 0
    finally:
        os.umask(previous)
    (held,) = sync.store.held()
    image = Path(held.location)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(image) == file_mode and mode(image.with_suffix(".json")) == file_mode
    assert mode(image.parent) == dir_mode
    assert mode(store_root(sync) / ".partial") == 0o700
