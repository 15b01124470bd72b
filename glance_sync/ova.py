"""The disk of an OVA (or plain tar) archive, streamed, from an archive nobody trusts yet.

An OVA is a tar whose first member is the OVF descriptor (DSP0243); the
descriptor's ``References/File`` and ``DiskSection/Disk`` say which members are
disks.  The archive is read once, as it streams, so nothing is unpacked to
disk, and everything that could make it cost more than its bytes is bounded
*before* ``tarfile`` reads it into memory:

* extended headers (pax, GNU long names) — one at most :data:`MAX_EXTENDED_HEADER`
  bytes, all together :data:`MAX_EXTENDED_TOTAL`; tarfile would read a header of
  any size at once;
* the number of members (:data:`MAX_MEMBERS`; tarfile keeps each one's header);
* sparse members (GNU or pax sparse maps) are refused: their maps are unbounded
  lists and their holes expand without limit;
* the descriptor (:data:`MAX_DESCRIPTOR` bytes), parsed with defusedxml (no DTD,
  no entities, no external references).

Every member must be a regular file whose name is a plain relative path (no
links, devices, directories, ``..`` or absolute names) — checked for the members
after the disk too, when the disk's bytes have been read.

Which disk: the one the descriptor names.  One disk → it; several → the only one
attached to the virtual hardware (``HostResource ovf:/disk/<id>``), otherwise the
archive is refused: vmtrust never guesses.  A plain ``tar`` (no descriptor) must
hold exactly one member with a disk suffix.
"""

from __future__ import annotations

import contextlib
import tarfile as tar
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, NoReturn, cast
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as safe_xml

from glance_sync.transfer import CHUNK, DiskStream
from vmtrust.errors import ArchiveError

__all__ = [
    "DISK_SUFFIXES",
    "MAX_DESCRIPTOR",
    "MAX_EXTENDED_HEADER",
    "MAX_EXTENDED_TOTAL",
    "MAX_MEMBERS",
    "ArchiveDisk",
    "DiskRef",
]

MAX_MEMBERS = 256
MAX_EXTENDED_HEADER = 64 * 1024
MAX_EXTENDED_TOTAL = 1024 * 1024
MAX_DESCRIPTOR = 1024 * 1024

#: member name suffix → disk format (Glance's names)
DISK_SUFFIXES = {
    ".vmdk": "vmdk",
    ".qcow2": "qcow2",
    ".img": "raw",
    ".raw": "raw",
    ".vdi": "vdi",
    ".vhd": "vhd",
    ".vhdx": "vhdx",
    ".iso": "iso",
}
#: words of an OVF ``Disk/@format`` URI → disk format
_FORMAT_URIS = (("vmdk", "vmdk"), ("qcow", "qcow2"), ("vhdx", "vhdx"), ("vhd", "vhd"),
                ("bb676673", "vhd"), ("vdi", "vdi"), ("iso", "iso"))  # fmt: skip
_EXTENDED = (tar.GNUTYPE_LONGNAME, tar.GNUTYPE_LONGLINK, tar.XHDTYPE, tar.XGLTYPE,
             tar.SOLARIS_XHDTYPE)  # fmt: skip


class _Refused(Exception):
    """Raised from inside tarfile, which knows no image; turned into an ArchiveError."""


class _BoundedInfo(tar.TarInfo):
    """tarfile's header parser with limits, applied before it reads a header's body.

    ``_proc_member`` is tarfile's documented extension point; the ``_proc_gnusparse_*``
    hooks are where a pax header turns the next member into a sparse file.
    """

    def _proc_member(self, tarfile: Any) -> tar.TarInfo:
        if self.type == tar.GNUTYPE_SPARSE:
            raise _Refused(f"member {self.name!r} is a sparse file")
        if self.type in _EXTENDED:
            if self.size > MAX_EXTENDED_HEADER:
                raise _Refused(
                    f"an extended (pax or long-name) header of {self.size} bytes "
                    f"(at most {MAX_EXTENDED_HEADER})"
                )
            tarfile.extended_bytes += self.size
            if tarfile.extended_bytes > MAX_EXTENDED_TOTAL:
                raise _Refused(f"more than {MAX_EXTENDED_TOTAL} bytes of extended headers")
        return super()._proc_member(tarfile)  # type: ignore[misc]  # private hook, not in typeshed

    def _sparse(self, *args: Any) -> None:
        raise _Refused("a sparse member (pax GNU.sparse headers)")

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _sparse


class _Archive(tar.TarFile):
    tarinfo = _BoundedInfo
    extended_bytes = 0

    def next(self) -> tar.TarInfo | None:
        member = super().next()
        if len(self.members) > MAX_MEMBERS:  # type: ignore[attr-defined]  # typeshed omits it
            raise _Refused(f"more than {MAX_MEMBERS} members")
        return member


@dataclass(frozen=True)
class DiskRef:
    """The disk member an OVF descriptor names."""

    name: str
    disk_format: str
    size: int | None = None


class ArchiveDisk:
    """The disk member's bytes; at their end, the rest of the archive is read and checked."""

    def __init__(self, stream: DiskStream, kind: str, identifier: str) -> None:
        self.identifier = identifier
        self.kind = kind
        self.described = False  #: the archive starts with an OVF descriptor
        self._names: set[str] = set()
        with self._guard():
            # stream mode ("r|") only ever calls read(), all a DiskStream has
            self.archive = _Archive.open(fileobj=cast(IO[bytes], stream), mode="r|")
            self._members = iter(self.archive)
            self.member, self.disk_format = self._find_disk()
            extracted = self.archive.extractfile(self.member)
        assert extracted is not None  # a regular file, checked by _find_disk
        self._data: IO[bytes] = extracted
        self._finished = False

    # --- reading -------------------------------------------------------------------------

    def read(self, size: int = CHUNK) -> bytes:
        chunk = self._data.read(size)
        if not chunk and not self._finished:
            self._finished = True
            self._check_rest()
        return chunk

    def close(self) -> None:
        self._data.close()

    # --- the archive ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except _Refused as exc:
            self._refuse(str(exc))
        except (tar.TarError, EOFError, RecursionError, LookupError, ValueError) as exc:
            self._refuse(f"not a valid tar archive ({exc})")

    def _refuse(self, reason: str) -> NoReturn:
        raise ArchiveError(
            f"image {self.identifier}: {self.kind.upper()} archive: {reason}; refused"
        )

    def _next(self) -> tar.TarInfo | None:
        with self._guard():
            member = next(self._members, None)
        if member is not None:
            problem = _member_problem(member)
            if problem:
                self._refuse(problem)
            if member.name in self._names:  # tools disagree on which copy counts
                self._refuse(f"member {member.name!r} appears twice")
            self._names.add(member.name)
        return member

    def _find_disk(self) -> tuple[tar.TarInfo, str]:
        first = self._next()
        if first is None:
            self._refuse("empty")
        self.described = first.name.lower().endswith(".ovf")
        if self.described:
            wanted = self._descriptor(first)
            member: tar.TarInfo | None = first
            while (member := self._next()) is not None:
                if member.name == wanted.name:
                    if wanted.size is not None and member.size != wanted.size:
                        self._refuse(
                            f"{member.name} has {member.size} bytes, the descriptor "
                            f"says {wanted.size}"
                        )
                    return member, wanted.disk_format
            self._refuse(f"the disk {wanted.name!r} the descriptor names is not in it")
        if self.kind == "ova":
            self._refuse(f"the first member is {first.name!r}, not the OVF descriptor")
        member = first
        while member is not None:
            fmt = _suffix_format(member.name)
            if fmt:
                return member, fmt
            member = self._next()
        self._refuse(f"no member with a disk suffix ({', '.join(DISK_SUFFIXES)})")

    def _descriptor(self, member: tar.TarInfo) -> DiskRef:
        if member.size > MAX_DESCRIPTOR:
            self._refuse(
                f"descriptor {member.name} has {member.size} bytes (at most {MAX_DESCRIPTOR})"
            )
        with self._guard():
            handle = self.archive.extractfile(member)
            data = handle.read() if handle is not None else b""
        try:
            return _choose_disk(data)
        except ValueError as exc:
            self._refuse(f"descriptor {member.name}: {exc}")

    def _check_rest(self) -> None:
        """Every member after the disk is checked too; a plain tar holds one disk only."""
        while (member := self._next()) is not None:
            if not self.described and _suffix_format(member.name):
                self._refuse(
                    f"more than one disk ({self.member.name}, {member.name}); which one "
                    "to store is ambiguous"
                )


def _member_problem(member: tar.TarInfo) -> str | None:
    """Why a member may not be in an image archive, or None."""
    name = member.name
    if member.type not in (tar.REGTYPE, tar.AREGTYPE):
        kind = "a link" if member.issym() or member.islnk() else "not a regular file"
        return f"member {name!r} is {kind}"
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith("/") or ".." in parts or "\x00" in name:
        return f"member name {name!r} is not a plain relative path"
    return None


def _suffix_format(name: str) -> str | None:
    lowered = name.lower()
    return next((fmt for suffix, fmt in DISK_SUFFIXES.items() if lowered.endswith(suffix)), None)


# --- the OVF descriptor ----------------------------------------------------------------


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


def _attr(element: Element, name: str) -> str | None:
    """An attribute by local name: ``ovf:href`` and a bare ``href`` alike."""
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return None


def _elements(root: Element, name: str) -> list[Element]:
    return [element for element in root.iter() if _local(element.tag) == name]


def _choose_disk(descriptor: bytes) -> DiskRef:
    """The disk an OVF descriptor names; ValueError says why none can be chosen."""
    try:
        root = safe_xml.fromstring(descriptor, forbid_dtd=True)
    except (ParseError, defusedxml.DefusedXmlException) as exc:
        raise ValueError(f"not a safe, valid XML document ({exc})") from None
    if _local(root.tag) != "Envelope":
        raise ValueError(f"root element is {_local(root.tag)!r}, not an OVF Envelope")
    files = {}
    for ref in root:
        if _local(ref.tag) == "References":
            files.update({_attr(f, "id"): f for f in ref if _local(f.tag) == "File"})
    disks = [
        disk
        for section in root
        if _local(section.tag) == "DiskSection"
        for disk in section
        if _local(disk.tag) == "Disk" and _attr(disk, "fileRef")
    ]
    if not disks:
        raise ValueError("names no disk (DiskSection/Disk with a fileRef)")
    if len(disks) > 1:
        attached = {
            (element.text or "").strip().rsplit("/", 1)[-1]
            for element in _elements(root, "HostResource")
            if "/disk/" in (element.text or "")
        }
        used = [disk for disk in disks if _attr(disk, "diskId") in attached]
        if len(used) != 1:
            names = ", ".join(_href(files.get(_attr(d, "fileRef"))) or "?" for d in disks)
            raise ValueError(
                f"lists {len(disks)} disks ({names}) and does not say which one boots "
                f"({len(used)} attached to the virtual hardware)"
            )
        disks = used
    disk = disks[0]
    file = files.get(_attr(disk, "fileRef"))
    if file is None:
        raise ValueError(f"disk {_attr(disk, 'diskId')!r} refers to no References/File")
    href = _href(file)
    if not href or ":" in href or href.startswith("/") or ".." in href.split("/"):
        raise ValueError(f"disk file {href!r} is not a member name (no URLs or paths)")
    if (_attr(file, "compression") or "identity") != "identity" or _attr(file, "chunkSize"):
        raise ValueError(f"disk file {href!r} is compressed or chunked (not supported)")
    fmt = _uri_format(_attr(disk, "format") or "") or _suffix_format(href)
    if fmt is None:
        raise ValueError(f"the format of disk file {href!r} is unknown")
    size = _attr(file, "size")
    return DiskRef(href, fmt, int(size) if size and size.isdigit() else None)


def _href(file: Element | None) -> str:
    return (_attr(file, "href") or "") if file is not None else ""


def _uri_format(uri: str) -> str | None:
    lowered = uri.lower()
    return next((fmt for word, fmt in _FORMAT_URIS if word in lowered), None)
