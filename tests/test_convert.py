"""Conversion: qemu-img's own walls, the work folder, and a full file system.

Inspection refuses hostile disks before ``qemu-img`` sees them
(``tests/test_image_safety.py``).  The tests here call the conversion step
*directly* with such disks — as if an inspector had missed one — to prove the
second wall: ``backing: null`` keeps a backing file closed, the Landlock
confinement keeps every other file of the host closed (VMDK extents, qcow2
data files), and the resource limits (oslo.concurrency's prlimit) stop a
conversion that writes or allocates too much.  Then the work folder: emptied
at the start of every pass, nothing left after a failure, and a full file
system is one line naming the path, with the next pass storing the image once
there is room.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import uuid
from pathlib import Path

import hostile_images as hostile
import pytest
from hostile_images import needs_qemu_img
from test_sync_local import entry, publish, trusted

from glance_sync import confine, convert
from glance_sync.convert import Conversion
from vmtrust.errors import TransferError

pytestmark = needs_qemu_img
landlock = pytest.mark.skipif(confine.abi_version() < 1, reason="this kernel has no Landlock")
SECRET = b"the site's seal key " * 3277  # 64 KiB, to recognise in an output


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "host-secret"
    path.write_bytes(SECRET[: 64 * 1024])
    return path


def convert_directly(
    tmp_path: Path, data: bytes, source: str, target: str, max_size: int = 1 << 30
):
    """The conversion step alone, on bytes no inspection has seen: the output's bytes."""
    with Conversion(tmp_path / "work", "img", source, target, max_size) as conversion:
        conversion.source.write_bytes(data)
        conversion.run(len(data))
        return conversion.target.read_bytes()


def test_a_backing_file_is_never_opened(tmp_path, secret):
    qcow2 = hostile.qcow2_with_backing_file(tmp_path, secret)
    output = convert_directly(tmp_path, qcow2, "qcow2", "raw")
    assert output == bytes(len(output)) and SECRET[:4096] not in output  # backing: null


@landlock
@pytest.mark.parametrize("subformat", ["monolithicFlat", "twoGbMaxExtentFlat"])
def test_a_vmdk_extent_naming_a_host_file_cannot_be_opened(tmp_path, secret, subformat):
    descriptor = hostile.vmdk_flat_naming(tmp_path, secret, subformat)
    with pytest.raises(TransferError, match=f"{secret}': Permission denied"):
        convert_directly(tmp_path, descriptor, "vmdk", "raw")


@landlock
def test_a_qcow2_data_file_naming_a_host_file_cannot_be_opened(tmp_path, secret):
    qcow2 = hostile.qcow2_with_data_file(tmp_path, secret)
    with pytest.raises(TransferError, match=f"{secret}': Permission denied"):
        convert_directly(tmp_path, qcow2, "qcow2", "raw")


@landlock
def test_the_confinement_allows_the_work_file_and_nothing_else(tmp_path, secret):
    allowed = tmp_path / "work-file"
    allowed.write_bytes(b"disk")
    folder = tmp_path / "folder"
    folder.mkdir()

    def cat(path: Path) -> subprocess.CompletedProcess[bytes]:
        argv = confine.command([allowed], [folder], ["/bin/cat", str(path)])
        return subprocess.run(argv, capture_output=True, timeout=30, check=False)

    assert cat(allowed).stdout == b"disk"
    for path in (secret, Path("/etc/passwd"), Path(sys.executable).resolve().parent.parent):
        result = cat(path)
        assert result.returncode != 0 and b"Permission denied" in result.stderr


def test_the_output_may_not_exceed_max_image_size(tmp_path):
    with pytest.raises(TransferError, match=r"output larger than 65536 bytes \(\[sync\] max_im"):
        convert_directly(tmp_path, os.urandom(1024 * 1024), "raw", "raw", max_size=64 * 1024)


def test_qemu_img_runs_under_an_address_space_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(convert, "ADDRESS_SPACE", 32 * 1024 * 1024)  # too little to start
    with pytest.raises(TransferError, match="qemu-img convert raw to qcow2"):
        convert_directly(tmp_path, os.urandom(64 * 1024), "raw", "qcow2")


def test_a_failed_conversion_leaves_nothing_in_the_work_folder(tmp_path):
    with pytest.raises(TransferError, match="qemu-img convert"):
        convert_directly(tmp_path, b"not a qcow2 at all" * 100, "qcow2", "raw")
    assert list((tmp_path / "work").iterdir()) == []


# --- the work folder in a sync pass ----------------------------------------------------------


def publish_raw(site, pki, data: bytes, identifier: str = "big") -> None:
    publish(site, pki, [entry(identifier, data, site)], "1")


def test_leftovers_of_a_killed_pass_are_removed_at_the_start_of_the_next(sync, site, pki, tmp_path):
    work = sync.s.state_dir / "work"
    leftover = work / uuid.uuid4().hex
    leftover.mkdir(parents=True)
    (leftover / "source").write_bytes(b"half a disk")
    (work / "stray").write_bytes(b"x")
    publish_raw(site, pki, os.urandom(10_000))
    assert sync.run(sync.subs).failures == []
    assert list(work.iterdir()) == []


def test_a_planted_work_folder_link_is_removed_not_followed(sync, site, pki, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_bytes(b"keep me")
    sync.s.state_dir.mkdir(exist_ok=True)
    (sync.s.state_dir / "work").symlink_to(elsewhere)
    publish_raw(site, pki, os.urandom(10_000))
    sync.store.target_format = "qcow2"
    assert sync.run(sync.subs).failures == []
    assert (elsewhere / "precious").read_bytes() == b"keep me"
    assert not (sync.s.state_dir / "work").is_symlink()


def test_a_full_work_folder_is_one_line_and_the_next_pass_stores(sync, site, pki, monkeypatch):
    """ENOSPC injected at the file boundary (``open`` of the work file); see also the tmpfs test."""
    publish_raw(site, pki, os.urandom(3 * 1024 * 1024))
    sync.store.target_format = "qcow2"
    real_open = open

    class Full:
        def __init__(self, path, mode):
            self.file = real_open(path, mode)
            self.path = path

        def write(self, data):
            if self.file.tell() + len(data) > 1024 * 1024:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            return self.file.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(convert, "open", Full, raising=False)
    report = sync.run(sync.subs)
    (line,) = report.failures
    work = sync.s.state_dir / "work"
    assert line.startswith(f"image big: work file {work}/") and "/source: no space left" in line
    assert list(work.iterdir()) == [] and trusted(sync) == {}
    monkeypatch.undo()
    assert sync.run(sync.subs).failures == []
    assert trusted(sync) == {"big": "1"}


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                             str(path)], capture_output=True, timeout=30, check=False)  # fmt: skip
    return result.returncode == 0


def test_a_really_full_file_system_then_room_again(sync, site, pki):
    """A real size-limited file system (tmpfs) as the work folder: needs root to mount."""
    work = sync.s.state_dir / "work"
    work.mkdir(parents=True)
    if not _mount_tmpfs(work, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root); see the ENOSPC injection test")
    try:
        publish_raw(site, pki, os.urandom(2 * 1024 * 1024))
        sync.store.target_format = "qcow2"
        (line,) = sync.run(sync.subs).failures  # the source work file does not fit
        assert line.startswith(f"image big: work file {work}/") and "no space left" in line
        subprocess.run(["mount", "-o", "remount,size=3m", str(work)], check=True, timeout=30)
        (line,) = sync.run(sync.subs).failures  # the source fits, qemu-img's output does not
        assert line.startswith("image big: qemu-img convert raw to qcow2: work folder ")
        assert "no space left on device" in line
        assert list(work.iterdir()) == []
        subprocess.run(["mount", "-o", "remount,size=16m", str(work)], check=True, timeout=30)
        assert sync.run(sync.subs).failures == []
        assert trusted(sync) == {"big": "1"}
        assert list(work.iterdir()) == []
    finally:
        subprocess.run(["umount", str(work)], check=False, timeout=30)


def test_a_link_planted_between_the_clean_up_and_a_conversion_is_refused(tmp_path):
    """The pass start removes a planted link; one planted after it must not be followed
    either: whoever owns the folder it points to could swap the verified work file
    before qemu-img reads it."""
    attacker = tmp_path / "attacker"
    attacker.mkdir(mode=0o777)
    work = tmp_path / "work"
    work.symlink_to(attacker)
    with pytest.raises(TransferError) as caught:
        Conversion(work, "img", "raw", "qcow2", 1 << 30)
    assert str(caught.value) == (
        f"image img: work file {work}: a symbolic link, not the sync's own folder: refused"
    )
    assert list(attacker.iterdir()) == []


def test_a_conversion_makes_an_open_work_folder_private(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)
    with Conversion(work, "img", "raw", "qcow2", 1 << 30) as conversion:
        assert conversion.folder.parent == work and conversion.folder.is_dir()
        assert work.stat().st_mode & 0o777 == 0o700
