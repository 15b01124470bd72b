"""Disk-format conversion with ``qemu-img``, only when a store asks for another format.

Conversion needs random access, so it is the one case where the image goes
through local files: the verified disk bytes are written to a temporary file
next to the store, converted with the system's ``qemu-img`` (run without a
shell, formats passed as lower-case driver names — ``QCOW2`` is not one), and
the result is streamed to the store, which hashes what it stores.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import IO

from glance_sync.transfer import TransferError, copy_stream

#: hv:format names → qemu-img driver names.
QEMU_DRIVERS = {"vhd": "vpc", "img": "raw"}
TIMEOUT = 3600


def qemu_driver(disk_format: str) -> str:
    return QEMU_DRIVERS.get(disk_format, disk_format)


def convert(
    stream: IO[bytes], source_format: str, target_format: str, workdir: Path, identifier: str
) -> Path:
    """Write ``stream`` to ``workdir`` and convert it; return the converted file's path.

    The caller removes ``workdir`` files it no longer needs.
    """
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise TransferError(
            f"image {identifier}: converting {source_format} to {target_format} "
            "needs qemu-img (install the qemu-utils package)"
        )
    work = uuid.uuid4().hex  # list data never becomes a file name
    source = workdir / f"{work}.source"
    target = workdir / f"{work}.{target_format}"
    with open(source, "wb") as out:
        copy_stream(stream, out.write, identifier)
    try:
        result = subprocess.run(
            [
                qemu_img,
                "convert",
                "-f",
                qemu_driver(source_format),
                "-O",
                qemu_driver(target_format),
                str(source),
                str(target),
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TransferError(f"image {identifier}: qemu-img convert timed out") from None
    finally:
        source.unlink(missing_ok=True)
    if result.returncode != 0:
        target.unlink(missing_ok=True)
        message = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise TransferError(
            f"image {identifier}: qemu-img convert {source_format} to {target_format}: {message}"
        )
    return target
