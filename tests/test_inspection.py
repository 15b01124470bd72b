"""The inspection on its own: every format vmtrust stores, how bytes are fed, hostile headers.

Real images made by ``qemu-img`` in each format are accepted whatever the size
of the chunks they arrive in; anything else (truncated headers, formats that
overlap, formats vmtrust does not store, random damage to real headers) is
refused with an :class:`UnsafeImageError`, never another exception that would
escape a sync pass.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import hostile_images as hostile
import pytest
from hostile_images import needs_qemu_img
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glance_sync.inspection import Inspection
from vmtrust.errors import UnsafeImageError

pytestmark = needs_qemu_img


def inspect(data: bytes, declared: str, chunk: int = 1024 * 1024) -> int:
    inspection = Inspection(declared, "img")
    for offset in range(0, len(data), chunk):
        inspection.feed(data[offset : offset + chunk])
    return inspection.finish()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, bytes]:
    work: Path = tmp_path_factory.mktemp("formats")
    mbr = bytearray(os.urandom(64 * 1024))
    mbr[446:462] = struct.pack("<B3BB3BII", 0x80, 0, 2, 0, 0x83, 0, 0, 0, 2048, 100)
    mbr[462:510] = bytes(48)
    mbr[0x10], mbr[0x15] = 0, 0  # not a FAT boot sector
    mbr[510:512] = b"\x55\xaa"
    gpt = bytearray(mbr)  # a protective MBR: one 0xEE entry from LBA 1, as GPT tools write
    gpt[446:462] = struct.pack("<B3BB3BII", 0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF, 1, 0xFFFFFFFF)
    iso = bytearray(64 * 1024)
    iso[32 * 1024 : 32 * 1024 + 6] = b"\x01CD001"
    return {
        "qcow2": hostile.qcow2(work),
        "vmdk": hostile.vmdk(work),
        "vmdk-stream": hostile.vmdk(work, "streamOptimized"),
        "vhd": hostile.made(work, "d.vhd", "vpc"),
        "vhdx": hostile.made(work, "d.vhdx", "vhdx"),
        "vdi": hostile.made(work, "d.vdi", "vdi"),
        "raw": os.urandom(300_000),
        "mbr": bytes(mbr),
        "gpt": bytes(gpt),
        "iso": bytes(iso),
    }


@pytest.mark.parametrize(
    ("name", "declared"),
    [("qcow2", "qcow2"), ("vmdk", "vmdk"), ("vmdk-stream", "vmdk"), ("vhd", "vhd"),
     ("vhdx", "vhdx"), ("vdi", "vdi"), ("raw", "raw"), ("mbr", "raw"), ("gpt", "raw"),
     ("iso", "iso")],
)  # fmt: skip
@pytest.mark.parametrize("chunk", [511, 65536, 1 << 20])
def test_every_stored_format_is_accepted_in_any_chunking(images, name, declared, chunk):
    size = inspect(images[name], declared, chunk)
    assert size >= 64 * 1024


def test_virtual_size_is_the_guest_disk_size(tmp_path):
    assert inspect(hostile.qcow2(tmp_path, "3G"), "qcow2") == 3 * 1024**3
    assert inspect(b"x" * 5000, "raw") == 5000


@pytest.mark.parametrize(
    ("name", "declared", "words"),
    [
        ("raw", "qcow2", "declares QCOW2 (hv:format) but the bytes are RAW"),
        ("vhd", "raw", "declares RAW (hv:format) but the bytes are VHD"),
        ("vdi", "vmdk", "not a valid VMDK image"),
        ("iso", "raw", "declares RAW (hv:format) but the bytes are ISO"),
        ("mbr", "qcow2", "declares QCOW2"),
    ],
)
def test_a_format_other_than_the_declared_one_is_refused(images, name, declared, words):
    with pytest.raises(UnsafeImageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        inspect(images[name], declared)


def test_formats_vmtrust_does_not_store_and_overlapping_formats_are_refused(images):
    with pytest.raises(UnsafeImageError, match="disk format 'cpio' cannot be inspected"):
        Inspection("cpio", "img")
    both = bytearray(images["qcow2"])
    both[510:512] = b"\x55\xaa"  # a qcow2 header that is also an MBR
    both[446:462] = struct.pack("<B3BB3BII", 0, 0, 2, 0, 0x83, 0, 0, 0, 1, 1)
    with pytest.raises(UnsafeImageError, match=r"match several disk formats \(gpt, qcow2\)"):
        inspect(bytes(both), "qcow2")


def test_truncated_headers_are_refused(images):
    with pytest.raises(UnsafeImageError, match="declares QCOW2"):
        inspect(images["qcow2"][:100], "qcow2")
    with pytest.raises(UnsafeImageError, match="VHDX"):
        inspect(images["vhdx"][:200_000], "vhdx")


def test_a_vmdk_naming_a_parent_by_cid_only_is_refused(images):
    data = images["vmdk"]
    patched = data.replace(b"parentCID=ffffffff", b"parentCID=12345678")
    assert patched != data
    with pytest.raises(UnsafeImageError, match="VMDK names a parent disk"):
        inspect(patched, "vmdk")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_headers_are_refused_or_accepted_never_a_crash(images, data):
    name = data.draw(st.sampled_from(["qcow2", "vmdk", "vmdk-stream", "vhd", "vhdx", "vdi"]))
    image = bytearray(images[name][: 128 * 1024])
    for _ in range(data.draw(st.integers(1, 8))):
        offset = data.draw(st.integers(0, min(4096, len(image) - 1)))
        image[offset] = data.draw(st.integers(0, 255))
    declared = {"vmdk-stream": "vmdk"}.get(name, name)
    try:
        inspect(bytes(image), declared, data.draw(st.sampled_from([512, 4096, 1 << 20])))
    except UnsafeImageError as exc:
        assert str(exc).startswith("image img: ") and str(exc).endswith("; refused")
