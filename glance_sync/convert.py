"""Disk-format conversion with ``qemu-img``, only when a store asks for another format.

Conversion needs random access, so it is the one case where an image goes
through files: every conversion gets a private folder in the sync's **work
folder** (``<state_dir>/work``), which holds nothing else; the folder is
removed when the conversion ends, however it ends, and the whole work folder is
emptied at the start of every pass (leftovers of a ``kill -9``).

The order is what makes it safe:

1. the disk bytes are written to ``source`` while they are inspected
   (:mod:`glance_sync.inspection`), the download is checked against the list,
   and the inspection's verdict is in — all before ``qemu-img`` runs;
2. ``qemu-img convert`` is told the input format (``-f``, never probed), opens
   the work file through the ``file`` protocol only, with ``backing: null``
   (no backing file is opened whatever the header says), under resource limits
   (oslo.concurrency's ``prlimit``: address space, CPU time, and the largest
   file it may write), and confined by Landlock to read that one file and
   write in its own folder (:mod:`glance_sync.confine`);
3. the output is inspected again, as the declared target format, while it is
   streamed to the store.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO

from glance_sync import confine
from glance_sync.transfer import DiskStream, read_disk
from vmtrust.errors import TransferError

__all__ = [
    "ADDRESS_SPACE",
    "CPU_SECONDS",
    "CPU_SECONDS_PER_GIB",
    "QEMU_DRIVERS",
    "TIMEOUT",
    "Conversion",
    "clear_work_folder",
    "open_private_folder",
    "qemu_driver",
    "work_folder",
]

LOG = logging.getLogger(__name__)

#: Glance's disk format names → qemu-img driver names.
QEMU_DRIVERS = {"vhd": "vpc", "img": "raw", "iso": "raw"}
TIMEOUT = 3600  #: seconds of wall time for one conversion
ADDRESS_SPACE = 1024**3  #: qemu-img convert needs well under 256 MiB
CPU_SECONDS = 60  #: plus CPU_SECONDS_PER_GIB for each GiB of the disk
CPU_SECONDS_PER_GIB = 30  #: observed: under 2 s per GiB (qcow2 → raw, 2-core VM)
_warned_unconfined = False


def qemu_driver(disk_format: str) -> str:
    return QEMU_DRIVERS.get(disk_format, disk_format)


def work_folder(state_dir: Path) -> Path:
    return state_dir / "work"


def open_private_folder(folder: Path) -> int:
    """Make ``folder`` if needed and open it: a descriptor of the sync's own private folder.

    Scratch bytes (spools, conversions) live here between their verification and
    their upload, so nobody else may reach them: a symbolic link planted in the
    folder's place is refused (never followed), so is a folder of another user;
    a folder of this user open to others is made private (0700) first.  Raises
    OSError whose ``strerror`` says which.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and folder.is_symlink():
            raise OSError(
                exc.errno, "a symbolic link, not the sync's own folder: refused"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise OSError(errno.EPERM, f"owned by uid {st.st_uid}, not by this user: refused")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def clear_work_folder(folder: Path) -> list[str]:
    """Empty the work folder (leftovers of an interrupted pass); return what was removed.

    Raises OSError when something cannot be removed.
    """
    if folder.is_symlink():  # the folder is the sync's own: never follow a planted link
        folder.unlink()
        return [f"link {folder}"]
    if folder.exists() and not folder.is_dir():
        folder.unlink()  # a file in the folder's place: conversions could not start
        return [f"file {folder}"]
    if not folder.is_dir():
        return []
    removed = []
    for leftover in folder.iterdir():
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
        removed.append(f"work file {leftover}")
    return removed


class Conversion:
    """One conversion in a private folder of the work folder, removed on exit."""

    def __init__(
        self, work: Path, identifier: str, source_format: str, target_format: str, max_size: int
    ) -> None:
        self.identifier = identifier
        self.source_format = source_format
        self.target_format = target_format
        self.max_size = max_size
        self.folder = work / uuid.uuid4().hex  # list data never becomes a file name
        self.source = self.folder / "source"
        self.target = self.folder / "target"
        try:
            fd = open_private_folder(work)
        except OSError as exc:
            raise self._os_error(exc, work) from None
        try:
            os.mkdir(self.folder.name, 0o700, dir_fd=fd)
        except OSError as exc:
            raise self._os_error(exc, self.folder) from None
        finally:
            os.close(fd)

    def __enter__(self) -> Conversion:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def write(self, stream: DiskStream) -> int:
        """Copy the disk bytes into the work file; return their number."""
        size = 0
        try:
            with open(self.source, "wb") as out:
                while chunk := read_disk(stream, self.identifier):  # read errors: one line
                    out.write(chunk)
                    size += len(chunk)
        except OSError as exc:  # only the work file's: opening, writing, closing
            raise self._os_error(exc, self.source) from None
        return size

    def run(self, virtual_size: int) -> Path:
        """Convert the (inspected, verified) work file; return the output's path."""
        qemu_img = shutil.which("qemu-img")
        if qemu_img is None:
            raise TransferError(
                f"image {self.identifier}: converting {self.source_format} to "
                f"{self.target_format} needs qemu-img (install the qemu-utils package)"
            )
        source = {"backing": None, "file": {"driver": "file", "filename": str(self.source)}}
        argv = [
            qemu_img, "convert",
            "-f", qemu_driver(self.source_format),
            "-O", qemu_driver(self.target_format),
            "json:" + json.dumps(source),
            str(self.target),
        ]  # fmt: skip
        if confine.abi_version() >= 1:
            argv = confine.command([self.source], [self.folder], argv)
        else:
            _warn_unconfined()
        from oslo_concurrency.processutils import ProcessLimits  # only when converting

        gib = -(-min(virtual_size, self.max_size) // 1024**3)
        limits = ProcessLimits(
            address_space=ADDRESS_SPACE,
            cpu_time=CPU_SECONDS + CPU_SECONDS_PER_GIB * gib,
            file_size=self.max_size,
        )
        argv = [sys.executable, "-m", "oslo_concurrency.prlimit", *limits.prlimit_args(),
                "--", *argv]  # fmt: skip
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise TransferError(
                f"image {self.identifier}: qemu-img convert took more than {TIMEOUT} s"
            ) from None
        if result.returncode != 0:
            raise TransferError(
                f"image {self.identifier}: qemu-img convert {self.source_format} to "
                f"{self.target_format}: {self._why(result)}"
            )
        return self.target

    def _why(self, result: subprocess.CompletedProcess[str]) -> str:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        message = lines[-1] if lines else f"failed (exit status {result.returncode})"
        # The file-size limit: EFBIG (Python's prlimit wrapper leaves SIGXFSZ ignored).
        if "File too large" in message or result.returncode == -signal.SIGXFSZ:
            return f"output larger than {self.max_size} bytes ([sync] max_image_size)"
        if result.returncode in (-signal.SIGKILL, -signal.SIGXCPU):
            return "stopped by its resource limits (CPU time or memory)"
        if "No space left on device" in message:
            return f"work folder {self.folder}: no space left on device"
        return message

    def _os_error(self, exc: OSError, path: Path) -> TransferError:
        reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or exc
        return TransferError(f"image {self.identifier}: work file {path}: {reason}")

    def open_output(self) -> IO[bytes]:
        try:
            return open(self.target, "rb")
        except OSError as exc:
            raise self._os_error(exc, self.target) from None


def _warn_unconfined() -> None:
    global _warned_unconfined
    if not _warned_unconfined:
        _warned_unconfined = True
        LOG.warning(
            "this kernel has no Landlock: qemu-img runs without file-system confinement "
            "(images are still inspected before conversion)"
        )
