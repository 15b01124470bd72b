"""Disk images and archives an attacker would publish, made with the real ``qemu-img``.

Each returns the bytes an endorser (or whoever controls the image URL and the
list) would serve.  The references inside them name files of the sync host —
the seal key, say — exactly as ``qemu-img`` writes them; where ``qemu-img``
cannot write such a reference directly (a VMDK extent, an external data file
that must not be overwritten), the image it made is changed only there.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

needs_qemu_img = pytest.mark.skipif(
    shutil.which("qemu-img") is None, reason="needs qemu-img (qemu-utils)"
)

VMDK_URI = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True, timeout=60)


def made(work: Path, name: str, fmt: str, size: str = "1M", *options: str) -> bytes:
    """A fresh image made by ``qemu-img create``."""
    path = work / name
    qemu_img("create", "-q", "-f", fmt, *options, path, size)
    return path.read_bytes()


def qcow2(work: Path, size: str = "1M") -> bytes:
    return made(work, "plain.qcow2", "qcow2", size)


def qcow2_with_backing_file(work: Path, host_file: Path) -> bytes:
    """qcow2 whose backing file is ``host_file`` (read as raw under the empty image)."""
    return made(work, "backed.qcow2", "qcow2", "64K", "-b", str(host_file), "-F", "raw")


def qcow2_with_data_file(work: Path, host_file: Path) -> bytes:
    """qcow2 whose guest data live in ``host_file`` (an external, raw data file).

    ``qemu-img create`` would format the data file, so the image is made with a
    scratch data file and ``qemu-img amend`` then names ``host_file`` (untouched).
    """
    path = work / "datafile.qcow2"
    scratch = work / "scratch.data"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={scratch},data_file_raw=on",
             path, "64K")  # fmt: skip
    qemu_img("amend", "-f", "qcow2", "-o", f"data_file={host_file}", path)
    return path.read_bytes()


def vmdk_flat_naming(work: Path, host_file: Path, subformat: str = "monolithicFlat") -> bytes:
    """A VMDK descriptor (monolithicFlat or twoGbMaxExtentFlat) whose extent is ``host_file``."""
    path = work / f"{subformat}.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", path, "1M")
    text = path.read_text()
    extent = next(line for line in text.splitlines() if line.startswith("RW "))
    own = extent.split('"')[1]
    return text.replace(f'"{own}"', f'"{host_file}"').encode()


def vmdk(work: Path, subformat: str = "monolithicSparse", size: str = "1M") -> bytes:
    return made(work, f"{subformat}.vmdk", "vmdk", size, "-o", f"subformat={subformat}")


def vmdk_with_parent(work: Path) -> bytes:
    """A monolithicSparse VMDK whose parent (a backing file) is another VMDK on the host."""
    parent = work / "parent.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", parent, "64K")
    return made(work, "child.vmdk", "vmdk", "64K", "-b", str(parent), "-F", "vmdk")


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.USTAR_FORMAT):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **attrs) -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def ovf(disks: list[tuple[str, int]], attached: list[int] | None = None, uri: str = ""):
    """An OVF 1.x descriptor with one File and Disk per (href, size); ``attached``: the
    indexes of the disks the virtual hardware uses (default: all); ``uri``: every Disk's
    ovf:format (default: VMware's for .vmdk files, none for others)."""
    attached = list(range(len(disks))) if attached is None else attached
    formats = [uri or (VMDK_URI if href.endswith(".vmdk") else "") for href, _ in disks]
    files = "".join(
        f'<File ovf:id="file{i}" ovf:href="{href}" ovf:size="{size}"/>'
        for i, (href, size) in enumerate(disks)
    )
    disk_elements = "".join(
        f'<Disk ovf:diskId="vmdisk{i}" ovf:fileRef="file{i}" ovf:capacity="1048576"'
        + (f' ovf:format="{fmt}"/>' if fmt else "/>")
        for i, fmt in enumerate(formats)
    )
    items = "".join(
        f"<Item><rasd:ElementName>disk{i}</rasd:ElementName>"
        f"<rasd:HostResource>ovf:/disk/vmdisk{i}</rasd:HostResource>"
        f"<rasd:InstanceID>{10 + i}</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType>"
        "</Item>"
        for i in attached
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" '
        'xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" '
        'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
        'CIM_ResourceAllocationSettingData">'
        f"<References>{files}</References>"
        f"<DiskSection><Info>Virtual disks</Info>{disk_elements}</DiskSection>"
        '<VirtualSystem ovf:id="vm"><Info>A VM</Info><VirtualHardwareSection>'
        f"<Info>hardware</Info>{items}</VirtualHardwareSection></VirtualSystem>"
        "</Envelope>\n"
    ).encode()


def ova(disks: list[tuple[str, bytes]], attached: list[int] | None = None, **kw) -> bytes:
    """A well-formed OVA: descriptor first, then a manifest, then the disks."""
    descriptor = ovf([(name, len(data)) for name, data in disks], attached, **kw)
    members = [member("vm.ovf", descriptor), member("vm.mf", b"SHA256(vm.ovf)= 00\n")]
    members += [member(name, data) for name, data in disks]
    return tar_bytes(members)
