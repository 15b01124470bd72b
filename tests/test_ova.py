"""OVA and tar archives: the disk the descriptor names, and nothing an archive may hide.

Before issue 10 the sync stored "the first member with a disk suffix", read any
tar member type and parsed no descriptor.  Now a multi-disk OVA stores the
disk its OVF descriptor names (or is refused), every member must be a regular
file with a plain name, and the descriptor is hostile XML parsed safely.  The
sync-pass tests run a real ``SyncService`` against a loopback web server; the
others run the download–unpack–inspect pipeline of :mod:`test_transfer`.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time

import hostile_images as hostile
import pytest
from hostile_images import member, ovf, tar_bytes
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sync_local import entry, publish, trusted
from test_transfer import fetch

from glance_sync.ova import ArchiveDisk
from vmtrust.errors import ArchiveError, TransferError

DISK_A = os.urandom(150_000)
DISK_B = os.urandom(170_000)


def publish_ova(site, pki, data: bytes, identifier: str = "vm", hv_format: str = "OVA") -> None:
    image = entry(identifier, data, site)
    image["hv:image"]["hv:format"] = hv_format
    publish(site, pki, [image], "1")


def stored_bytes(sync) -> bytes:
    (held,) = sync.store.held()
    with open(held.location, "rb") as handle:
        return handle.read()


# --- which disk (through a sync pass) ------------------------------------------------------


def test_multi_disk_ova_stores_the_one_disk_attached_to_the_hardware(sync, site, pki):
    archive = hostile.ova([("data.img", DISK_A), ("boot.img", DISK_B)], attached=[1])
    publish_ova(site, pki, archive)
    report = sync.run(sync.subs)
    assert report.failures == []
    assert trusted(sync) == {"vm": "1"}
    assert stored_bytes(sync) == DISK_B  # not the first disk member
    (held,) = sync.store.held()
    assert held.record.source_sha512 == hashlib.sha512(archive).hexdigest()
    assert held.record.sha512 == hashlib.sha512(DISK_B).hexdigest()


def test_multi_disk_ova_that_does_not_say_which_disk_boots_is_refused(sync, site, pki):
    publish_ova(site, pki, hostile.ova([("disk1.img", DISK_A), ("disk2.img", DISK_B)]))
    report = sync.run(sync.subs)
    (line,) = report.failures
    assert line.startswith("image vm: OVA archive: descriptor vm.ovf: lists 2 disks")
    assert "disk1.img, disk2.img" in line and "does not say which one boots" in line
    assert trusted(sync) == {} and sync.store.held() == []


def test_the_disk_the_descriptor_names_wins_over_an_earlier_disk_member(sync, site, pki):
    archive = tar_bytes(
        [
            member("vm.ovf", ovf([("real.img", len(DISK_B))])),
            member("decoy.img", DISK_A),  # the "first disk member" the old code stored
            member("real.img", DISK_B),
        ]
    )
    publish_ova(site, pki, archive)
    assert sync.run(sync.subs).failures == []
    assert stored_bytes(sync) == DISK_B


def test_plain_tar_with_two_disks_is_refused_and_with_one_is_stored(sync, site, pki):
    two = tar_bytes([member("a.img", DISK_A), member("notes.txt", b"hi"), member("b.img", DISK_B)])
    publish_ova(site, pki, two, hv_format="tar")
    (line,) = sync.run(sync.subs).failures
    assert "TAR archive: more than one disk (a.img, b.img)" in line
    assert sync.store.held() == []
    one = tar_bytes([member("notes.txt", b"hi"), member("b.img", DISK_B)])
    publish_ova(site, pki, one, identifier="vm2", hv_format="tar")
    assert sync.run(sync.subs).failures == []
    assert stored_bytes(sync) == DISK_B


# --- descriptors and members (the pipeline) ---------------------------------------------


def refused(tmp_path, archive: bytes, fmt: str = "OVA") -> str:
    with pytest.raises(ArchiveError) as caught:
        fetch(tmp_path, archive, fmt)
    message = str(caught.value)
    assert message.startswith("image img: ") and message.endswith("; refused")
    return message


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (member("evil", kind=tarfile.SYMTYPE, linkname="/etc/shadow"), "'evil' is a link"),
        (member("hard", kind=tarfile.LNKTYPE, linkname="disk.img"), "'hard' is a link"),
        (member("dir", kind=tarfile.DIRTYPE), "'dir' is not a regular file"),
        (member("tty", kind=tarfile.CHRTYPE), "'tty' is not a regular file"),
        (member("pipe", kind=tarfile.FIFOTYPE), "'pipe' is not a regular file"),
        (member("../up.txt", b"x"), "'../up.txt' is not a plain relative path"),
        (member("/abs.txt", b"x"), "'/abs.txt' is not a plain relative path"),
    ],
    ids=["symlink", "hardlink", "directory", "device", "fifo", "dotdot", "absolute"],
)
@pytest.mark.parametrize("where", ["before", "after"])
def test_members_that_are_not_plain_regular_files_are_refused(tmp_path, bad, words, where):
    descriptor = member("vm.ovf", ovf([("disk.img", len(DISK_A))]))
    disk = member("disk.img", DISK_A)
    members = [descriptor, bad, disk] if where == "before" else [descriptor, disk, bad]
    assert words in refused(tmp_path, tar_bytes(members, tarfile.GNU_FORMAT))


def test_a_member_that_appears_twice_is_refused(tmp_path):
    """Extracting tools keep the last copy, vmtrust would stream the first: never guess."""
    descriptor = member("vm.ovf", ovf([("disk.img", len(DISK_A))]))
    twice = tar_bytes([descriptor, member("disk.img", DISK_A), member("disk.img", DISK_A)])
    assert "member 'disk.img' appears twice" in refused(tmp_path, twice)


def test_descriptor_must_come_first_and_name_a_member(tmp_path):
    late = tar_bytes([member("disk.img", DISK_A), member("vm.ovf", ovf([("disk.img", 1)]))])
    assert "first member is 'disk.img', not the OVF descriptor" in refused(tmp_path, late)
    missing = tar_bytes([member("vm.ovf", ovf([("other.img", 5)])), member("disk.img", DISK_A)])
    assert "the disk 'other.img' the descriptor names is not in it" in refused(tmp_path, missing)
    wrong_size = tar_bytes([member("vm.ovf", ovf([("disk.img", 5)])), member("disk.img", DISK_A)])
    assert "disk.img has 150000 bytes, the descriptor says 5" in refused(tmp_path, wrong_size)


@pytest.mark.parametrize(
    ("href", "words"),
    [
        ("http://evil.example/x.img", "is not a member name"),
        ("../x.img", "is not a member name"),
        ("/etc/shadow", "is not a member name"),
    ],
)
def test_descriptor_file_references_outside_the_archive_are_refused(tmp_path, href, words):
    archive = tar_bytes([member("vm.ovf", ovf([(href, 5)])), member("disk.img", DISK_A)])
    assert words in refused(tmp_path, archive)


def test_compressed_or_chunked_disk_files_are_refused(tmp_path):
    text = ovf([("disk.img", len(DISK_A))]).replace(
        b"ovf:size=", b'ovf:compression="gzip" ovf:size='
    )
    archive = tar_bytes([member("vm.ovf", text), member("disk.img", DISK_A)])
    assert "is compressed or chunked" in refused(tmp_path, archive)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE Envelope [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
<!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;"><!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">
<!ENTITY i "&h;&h;&h;&h;&h;&h;&h;&h;&h;&h;">]>
<Envelope><References><File href="&i;"/></References></Envelope>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE Envelope [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Envelope><References><File id="f" href="&x;"/></References></Envelope>"""


@pytest.mark.parametrize(
    ("descriptor", "words"),
    [
        (BILLION_LAUGHS, "not a safe, valid XML document"),
        (EXTERNAL_ENTITY, "not a safe, valid XML document"),
        (b"<Envelope><unclosed>", "not a safe, valid XML document"),
        (b"<Project/>", "not an OVF Envelope"),
        (bytes(2 * 1024 * 1024), "has 2097152 bytes (at most 1048576)"),
    ],
    ids=["billion-laughs", "external-entity", "malformed", "not-ovf", "too-large"],
)
def test_hostile_descriptors_are_refused_quickly(tmp_path, descriptor, words):
    archive = tar_bytes([member("vm.ovf", descriptor), member("disk.img", DISK_A)])
    started = time.monotonic()
    assert words in refused(tmp_path, archive)
    assert time.monotonic() - started < 2


def test_disk_format_comes_from_the_descriptor_and_is_inspected(tmp_path):
    """A member named .vmdk whose bytes are raw: the descriptor's format is checked."""
    archive = hostile.ova([("disk.vmdk", DISK_A)])
    with pytest.raises(Exception, match="not a valid VMDK image"):
        fetch(tmp_path, archive, "OVA")


_FUZZ_BASES = {
    fmt: tar_bytes(
        [
            member("vm.ovf", ovf([("disk.img", 3000)])),
            member("n" * 150 + ".txt", b"long name: pax or GNU headers"),
            member("disk.img", DISK_A[:3000]),
        ],
        fmt,
    )
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT)
}


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_damaged_archives_are_refused_never_a_crash(data):
    """Random damage to tar headers (a fuzzer found a LookupError escaping before)."""
    archive = bytearray(_FUZZ_BASES[data.draw(st.sampled_from(sorted(_FUZZ_BASES)))])
    for _ in range(data.draw(st.integers(1, 6))):
        block = data.draw(st.integers(0, len(archive) // 512 - 1)) * 512
        archive[block + data.draw(st.integers(0, 511))] = data.draw(st.integers(0, 255))
    try:
        disk = ArchiveDisk(io.BufferedReader(io.BytesIO(bytes(archive))), "ova", "img")
        while disk.read(4096):
            pass
    except TransferError as exc:
        assert str(exc).startswith("image img: ")
