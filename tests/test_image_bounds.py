"""Bounded expansion: what an image unpacks to is limited, not only what is downloaded.

``hv:size`` and the SHA-512 cover the downloaded bytes.  Before issue 10 a 1 MB
``.gz`` became a 1 GiB trusted image, a 10 KiB GNU-sparse OVA became 300 MiB,
and a small ``.ova.gz`` with one huge pax or long-name header made ``tarfile``
read the whole header into memory.  Each test here publishes such an image in a
signed list and runs a sync pass: the image is refused early, in one line
naming the bound, nothing is left behind, and (for the header bombs, measured
with tracemalloc) memory stays small.  The trust record of what *is* stored
names both hashes: the download's and the stored bytes'.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tarfile
import time
import tracemalloc
import zlib
from collections.abc import Iterator

import hostile_images as hostile
import pytest
from cli_support import run
from hostile_images import member, ovf, tar_bytes
from test_sync_local import entry, publish, trusted

from glance_sync.stores.local import LOCK_NAME

MiB = 1024 * 1024


def zeros(size: int) -> Iterator[bytes]:
    block = bytes(MiB)
    for offset in range(0, size, MiB):
        yield block[: min(MiB, size - offset)]


def compress(kind: str, chunks: Iterator[bytes]) -> bytes:
    """Stream-compress ``chunks`` (nothing of the uncompressed size is held in memory)."""
    if kind == "gz":
        engine = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip member
    elif kind == "bz2":
        engine = bz2.BZ2Compressor(9)
    else:
        engine = lzma.LZMACompressor(preset=1)
    out = [engine.compress(chunk) for chunk in chunks]
    out.append(engine.flush())
    return b"".join(out)


def publish_one(site, pki, data: bytes, hv_format: str, identifier: str = "bomb") -> None:
    image = entry(identifier, data, site)
    image["hv:image"]["hv:format"] = hv_format
    publish(site, pki, [image], "1")


def assert_refused(sync, report, *words: str) -> str:
    assert report.exit_code == 1 and len(report.failures) == 1, report.failures
    (line,) = report.failures
    assert line.startswith("image bomb: ") and all(w in line for w in words), line
    assert trusted(sync) == {} and sync.store.held() == []
    store = sync.store.root
    assert [p for p in store.rglob("*") if p.is_file() and p.name != LOCK_NAME] == []
    return line


def run_measured(sync) -> tuple:
    """A sync pass, with the peak of Python memory allocated during it (tracemalloc)."""
    tracemalloc.start()
    try:
        started = time.monotonic()
        report = sync.run(sync.subs)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return report, peak, elapsed


# --- decompression bombs -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_decompression_bomb_stops_at_the_expansion_ratio(sync, site, pki, kind):
    bomb = compress(kind, zeros(256 * MiB))  # a few hundred KB that unpack to 256 MiB
    publish_one(site, pki, bomb, f"raw.{kind}")
    report, peak, elapsed = run_measured(sync)
    line = assert_refused(sync, report, f"unpacks to more than {20 * len(bomb)} bytes")
    assert f"[sync] max_expansion_ratio: 20 times the {len(bomb)} bytes downloaded" in line
    assert peak < 40 * MiB and elapsed < 20


def test_bombs_are_bounded_by_max_image_size_and_the_room_in_the_store(sync, site, pki):
    bomb = compress("gz", zeros(64 * MiB))
    publish_one(site, pki, bomb, "raw.gz")
    sync.s.max_expansion_ratio = 100_000
    sync.s.max_image_size = 8 * MiB
    assert_refused(sync, sync.run(sync.subs), "more than 8388608 bytes ([sync] max_image_size)")
    sync.s.max_image_size = 1 << 40
    sync.store.free_bytes = lambda: 4 * MiB  # the file system's answer, at the boundary
    assert_refused(
        sync, sync.run(sync.subs), "more than 4194304 bytes (the room left in the store)"
    )


def test_an_image_larger_than_max_image_size_is_not_even_downloaded(sync, site, pki):
    publish_one(site, pki, os.urandom(300_000), "RAW")
    sync.s.max_image_size = 100_000
    line = assert_refused(sync, sync.run(sync.subs), "300000 bytes (hv:size), more than")
    assert "[sync] max_image_size (100000)" in line
    assert not any(path.startswith("/img/") for path, _ in site.requests)


def test_what_is_stored_records_both_hashes_and_vmtrust_images_shows_them(
    sync, site, pki, tmp_path, capsys
):
    disk = os.urandom(400_000) + bytes(2 * MiB)  # compresses about 6 times: within the ratio
    packed = gzip.compress(disk)
    publish_one(site, pki, packed, "raw.gz", identifier="ok")
    assert sync.run(sync.subs).failures == []
    (held,) = sync.store.held()
    assert held.record.source_sha512 == hashlib.sha512(packed).hexdigest()  # the download
    assert held.record.sha512 == hashlib.sha512(disk).hexdigest()  # what is stored
    assert held.record.size == len(disk) and held.record.disk_format == "raw"
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(
        f"[trust]\nseal_key = {tmp_path}/seal.key\n[store_local]\npath = {sync.store.root}\n"
    )
    rc, out, _ = run(capsys, "--config-file", conf, "images", "--json")
    (row,) = json.loads(out)
    assert rc == 0 and row["state"] == "trusted"
    assert row["source_sha512"] == hashlib.sha512(packed).hexdigest()
    assert row["sha512"] == hashlib.sha512(disk).hexdigest()
    assert (row["size"], row["disk_format"]) == (len(disk), "raw")


# --- tar bombs ------------------------------------------------------------------------------


def header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(tarfile.USTAR_FORMAT)


def ova_gz_with_header(kind: bytes, size: int) -> bytes:
    """An .ova.gz whose first entry is an extended header of ``size`` bytes (zeros)."""
    return compress("gz", iter([header("././@LongHeader", kind, size), *zeros(size)]))


@pytest.mark.parametrize(
    "kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME], ids=["pax", "pax-global",
                                                                               "gnu-longname"]
)  # fmt: skip
def test_one_huge_extended_header_is_refused_before_it_is_read(sync, site, pki, kind):
    bomb = ova_gz_with_header(kind, 300 * MiB)  # ~300 KB; tarfile would read 300 MiB at once
    publish_one(site, pki, bomb, "ova.gz")
    sync.s.max_expansion_ratio = 100_000  # the header bound, not the ratio, must stop it
    report, peak, elapsed = run_measured(sync)
    assert_refused(sync, report, f"extended (pax or long-name) header of {300 * MiB} bytes")
    assert peak < 40 * MiB and elapsed < 20


def test_many_extended_headers_and_many_members_are_refused(sync, site, pki):
    pax = header("././@PaxHeader", tarfile.XGLTYPE, 60_000) + bytes(60_416)  # padded block
    many_headers = compress("gz", iter([pax] * 20 + [bytes(1024)]))
    publish_one(site, pki, many_headers, "ova.gz")
    sync.s.max_expansion_ratio = 100_000
    assert_refused(sync, sync.run(sync.subs), "more than 1048576 bytes of extended headers")

    descriptor = member("vm.ovf", ovf([("disk.img", 1024)]))
    members = [descriptor] + [member(f"f{i}.txt", b"") for i in range(300)]
    publish_one(site, pki, gzip.compress(tar_bytes(members)), "ova.gz")
    assert_refused(sync, sync.run(sync.subs), "more than 256 members")


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
@pytest.mark.parametrize(
    "options",
    [["--format=gnu"], ["--format=pax", "--sparse-version=0.0"],
     ["--format=pax", "--sparse-version=0.1"], ["--format=pax", "--sparse-version=1.0"]],
    ids=["gnu", "pax-0.0", "pax-0.1", "pax-1.0"],
)  # fmt: skip
def test_sparse_ova_members_are_refused(sync, site, pki, tmp_path, options):
    """GNU tar's sparse members: 10 KiB of archive that unpack to 300 MiB."""
    work = tmp_path / "endorser"
    work.mkdir()
    disk = work / "disk.img"
    with open(disk, "wb") as handle:
        handle.truncate(300 * MiB)
    (work / "vm.ovf").write_bytes(ovf([("disk.img", 300 * MiB)]))
    archive = work / "vm.ova"
    subprocess.run(["tar", "--sparse", *options, "-cf", archive, "-C", work, "vm.ovf",
                    "disk.img"], check=True, timeout=60)  # fmt: skip
    assert archive.stat().st_size < 64 * 1024
    publish_one(site, pki, archive.read_bytes(), "OVA")
    assert_refused(sync, sync.run(sync.subs), "sparse")


# --- conversion ------------------------------------------------------------------------------


@hostile.needs_qemu_img
def test_a_disk_whose_raw_form_is_too_large_is_refused_before_qemu_img_runs(
    sync, site, pki, tmp_path
):
    work = tmp_path / "endorser"
    work.mkdir()
    publish_one(site, pki, hostile.qcow2(work, "8G"), "QCOW2")  # 196 KB that would be 8 GiB
    sync.store.target_format = "raw"
    sync.s.max_image_size = 1024**3
    line = assert_refused(sync, sync.run(sync.subs), "converted to raw it would be 8589934592")
    assert "[sync] max_image_size (1073741824)" in line
    sync.s.max_image_size = 1 << 40
    sync.store.free_bytes = lambda: 4 * 1024**3
    assert_refused(sync, sync.run(sync.subs), "needs 8589934592 bytes, the store has 4294967296")
    assert list((sync.s.state_dir / "work").iterdir()) == []
