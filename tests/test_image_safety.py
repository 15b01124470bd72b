"""Only the endorsed bytes become a trusted image: hostile disks through a whole sync pass.

Each test publishes a disk an attacker would make (with the real ``qemu-img``:
qcow2 with a backing file or an external data file naming the site's seal key,
VMDK descriptors whose extents or parent are host files, disks in another
format than the list declares) with the *correct* size and SHA-512 in a
signed list, serves it from a loopback web server, runs a ``SyncService``
pass, and checks that nothing was stored — not as trusted, not half-written,
not left in the work folder — and that the failure line names the image and
the reason.  The same for each packaging (as it is, gzip, OVA, OVA in gzip),
with and without conversion, in the local store and in a real Glance.

Before issue 10 every one of these images was stored as trusted (the
converted ones with the seal key inside).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import hostile_images as hostile
import pytest
from hostile_images import needs_qemu_img
from test_glance_store import _store, judge, project_images
from test_sync_local import entry, publish, trusted

from glance_sync.stores.local import LOCK_NAME

pytestmark = needs_qemu_img

#: name → (make(work, host_file) → bytes, hv:format declared, words the refusal names)
ATTACKS: dict[str, tuple[Callable[[Path, Path], bytes], str, str]] = {
    "qcow2-backing-file": (hostile.qcow2_with_backing_file, "QCOW2", "backing file"),
    "qcow2-data-file": (hostile.qcow2_with_data_file, "QCOW2", "data_file"),
    "vmdk-monolithicFlat": (hostile.vmdk_flat_naming, "VMDK", "'monolithicflat'"),
    "vmdk-twoGbMaxExtentFlat": (
        lambda work, key: hostile.vmdk_flat_naming(work, key, "twoGbMaxExtentFlat"),
        "VMDK",
        "'twogbmaxextentflat'",
    ),
    "vmdk-parent": (lambda work, key: hostile.vmdk_with_parent(work), "VMDK", "parent disk"),
    "qcow2-declared-raw": (
        hostile.qcow2_with_backing_file,
        "RAW",
        "declares RAW (hv:format) but the bytes are QCOW2",
    ),
    "vmdk-declared-raw": (
        hostile.vmdk_flat_naming,
        "RAW",
        "declares RAW (hv:format) but the bytes are VMDK",
    ),
    "raw-declared-qcow2": (
        lambda work, key: os.urandom(300_000),
        "QCOW2",
        "declares QCOW2 (hv:format) but the bytes are RAW",
    ),
    "vmdk-declared-qcow2": (
        lambda work, key: hostile.vmdk(work),
        "QCOW2",
        "declares QCOW2 (hv:format) but the bytes are VMDK",
    ),
    "qed": (lambda work, key: hostile.made(work, "x.qed", "qed"), "RAW", "bytes are QED"),
}
SUFFIX = {"RAW": ".img", "QCOW2": ".qcow2", "VMDK": ".vmdk"}


def pack(data: bytes, declared: str, packaging: str) -> tuple[bytes, str]:
    """The disk as published: as it is, gzip-compressed, in an OVA, or an OVA in gzip."""
    if packaging == "plain":
        return data, declared
    if packaging == "gz":
        return gzip.compress(data, compresslevel=1), f"{declared}.gz"
    archive = hostile.ova([(f"disk{SUFFIX[declared]}", data)])
    if packaging == "ova":
        return archive, "OVA"
    return gzip.compress(archive, compresslevel=1), "ova.gz"


def publish_one(site, pki, identifier: str, data: bytes, hv_format: str) -> None:
    image = entry(identifier, data, site)
    image["hv:image"]["hv:format"] = hv_format
    publish(site, pki, [image], "1")


def assert_nothing_stored(sync, identifier: str, words: str, report, secret: bytes) -> None:
    assert report.exit_code == 1
    assert len(report.failures) == 1, report.failures
    line = report.failures[0]
    assert line.startswith(f"image {identifier}: ") and words in line, line
    assert "\n" not in line
    assert trusted(sync) == {} and sync.store.held() == []
    store = sync.store.root
    leftovers = [p for p in store.rglob("*") if p.is_file() and p.name != LOCK_NAME]
    assert leftovers == [], leftovers
    work = sync.s.state_dir / "work"
    assert not work.exists() or list(work.iterdir()) == []
    for path in (*store.rglob("*"), *work.rglob("*")):
        assert not path.is_file() or secret not in path.read_bytes()


@pytest.mark.parametrize("target", ["", "raw", "qcow2"], ids=["as-is", "to-raw", "to-qcow2"])
@pytest.mark.parametrize("attack", ATTACKS)
def test_hostile_disk_is_refused_by_the_local_store(sync, site, pki, tmp_path, attack, target):
    make, declared, words = ATTACKS[attack]
    key = tmp_path / "seal.key"  # the site's own seal key is the file the images name
    work = tmp_path / "attacker"
    work.mkdir()
    publish_one(site, pki, attack, make(work, key), declared)
    sync.store.target_format = target
    report = sync.run(sync.subs)
    assert_nothing_stored(sync, attack, words, report, key.read_bytes())


@pytest.mark.parametrize("packaging", ["gz", "ova", "ova.gz"])
@pytest.mark.parametrize(
    "attack", ["qcow2-backing-file", "vmdk-monolithicFlat", "qcow2-declared-raw", "qcow2-data-file"]
)
@pytest.mark.parametrize("target", ["", "raw"], ids=["as-is", "to-raw"])
def test_hostile_disk_is_refused_after_decompression_and_inside_an_ova(
    sync, site, pki, tmp_path, attack, packaging, target
):
    make, declared, words = ATTACKS[attack]
    key = tmp_path / "seal.key"
    work = tmp_path / "attacker"
    work.mkdir()
    data, hv_format = pack(make(work, key), declared, packaging)
    publish_one(site, pki, attack, data, hv_format)
    sync.store.target_format = target
    sync.s.max_expansion_ratio = 1000  # these nearly empty disks compress 170 times
    report = sync.run(sync.subs)
    assert_nothing_stored(sync, attack, words, report, key.read_bytes())


@pytest.mark.parametrize("packaging", ["plain", "gz", "ova", "ova.gz"])
@pytest.mark.parametrize("target", ["", "raw", "qcow2"], ids=["as-is", "to-raw", "to-qcow2"])
def test_benign_disks_still_pass_every_packaging_and_conversion(
    sync, site, pki, tmp_path, packaging, target
):
    """The control: what the inspection lets through, in every form it is published."""
    work = tmp_path / "endorser"
    work.mkdir()
    disks = {
        "q": ("QCOW2", hostile.qcow2(work)),
        "v": ("VMDK", hostile.vmdk(work, "streamOptimized")),
        "r": ("RAW", os.urandom(200_000)),
    }
    images = []
    for identifier, (declared, disk) in disks.items():
        data, hv_format = pack(disk, declared, packaging)
        image = entry(identifier, data, site)
        image["hv:image"]["hv:format"] = hv_format
        images.append(image)
    publish(site, pki, images, "1")
    sync.store.target_format = target
    sync.s.max_expansion_ratio = 1000  # qemu-img's empty test disks compress 170 times
    report = sync.run(sync.subs)
    assert report.failures == []
    assert trusted(sync) == {"q": "1", "v": "1", "r": "1"}
    formats = {h.record.image_identifier: h.record.disk_format for h in sync.store.held()}
    assert formats == {"q": target or "qcow2", "v": target or "vmdk", "r": target or "raw"}


# --- the same attacks against the real Glance -------------------------------------------


@pytest.mark.parametrize(
    ("attack", "disk_formats"),
    [
        ("qcow2-backing-file", ["raw"]),  # converted by [store_glance] disk_formats
        ("vmdk-monolithicFlat", ["qcow2"]),
        ("qcow2-declared-raw", []),  # stored as it is: Glance would hold a "raw" qcow2
        ("qcow2-data-file", []),
    ],
)
def test_hostile_disk_never_reaches_glance(glance_sync, site, pki, glance, tmp_path, attack,
                                           disk_formats):  # fmt: skip
    make, declared, words = ATTACKS[attack]
    key = tmp_path / "seal.key"
    work = tmp_path / "attacker"
    work.mkdir()
    publish_one(site, pki, attack, make(work, key), declared)
    glance_sync.store = _store(glance_sync, disk_formats=disk_formats)
    report = glance_sync.run(glance_sync.subs)
    assert report.exit_code == 1 and len(report.failures) == 1, report.failures
    line = report.failures[0]
    assert line.startswith(f"image {attack}: ") and words in line, line
    images = project_images(glance, glance_sync.project)
    assert images == {}, [judge(glance_sync, image) for image in images.values()]
    work_folder = glance_sync.s.state_dir / "work"
    assert not work_folder.exists() or list(work_folder.iterdir()) == []


def test_benign_ova_is_converted_into_glance(glance_sync, site, pki, glance, tmp_path):
    disk = hostile.vmdk(tmp_path, "streamOptimized")
    publish_one(site, pki, "ova-ok", hostile.ova([("disk.vmdk", disk)]), "OVA")
    glance_sync.store = _store(glance_sync, disk_formats=["qcow2", "raw"])
    report = glance_sync.run(glance_sync.subs)
    assert report.failures == []
    (image,) = project_images(glance, glance_sync.project).values()
    verdict = judge(glance_sync, image)
    assert verdict.trusted, verdict.reason
    assert image["disk_format"] == "qcow2" and verdict.record.disk_format == "qcow2"


def test_a_conversion_output_that_is_another_format_is_refused(sync, site, pki, tmp_path):
    """A clean qcow2 whose *guest disk* holds a qcow2 with a backing file: converted to raw,
    the stored bytes would be that inner qcow2 — the output is inspected too."""
    key = tmp_path / "seal.key"
    work = tmp_path / "attacker"
    work.mkdir()
    inner = work / "inner.qcow2"
    inner.write_bytes(hostile.qcow2_with_backing_file(work, key))
    outer = work / "outer.qcow2"
    hostile.qemu_img("convert", "-f", "raw", "-O", "qcow2", inner, outer)
    publish_one(site, pki, "nested", outer.read_bytes(), "QCOW2")
    sync.store.target_format = "raw"
    report = sync.run(sync.subs)
    words = "qemu-img converted it to RAW but the bytes are QCOW2"
    assert_nothing_stored(sync, "nested", words, report, key.read_bytes())
    sync.store.target_format = ""  # stored as it is, the outer qcow2 is harmless
    assert sync.run(sync.subs).failures == [] and trusted(sync) == {"nested": "1"}
