"""Inspection of disk bytes before they become a trusted image, or reach ``qemu-img``.

A list's SHA-512 proves the bytes are the endorser's; it does not prove they are
harmless.  A qcow2 image may name a *backing file* or an *external data file*, a
VMDK may name *extents* or a *parent* — any file of the sync host, such as the
site's seal key — and ``qemu-img`` (or the hypervisor that boots the image later)
reads that file into the disk.  And bytes published as RAW may really be qcow2 or
VMDK, which a hypervisor probing the format would follow.

Every disk is therefore fed, as it streams, to the format inspectors nova, Glance
and Cinder share since CVE-2024-32498 (``oslo.utils``
:mod:`~oslo_utils.imageutils.format_inspector`, see
``docs/decisions/0002-image-inspection.md``), and refused unless:

* the bytes are in exactly the format the list declares (``hv:format``; a raw
  disk with a partition table counts as raw, an ISO with a GPT boot loader as
  ISO, as in nova);
* the inspector's safety checks pass: no qcow2 backing file, no qcow2 external
  data file, no unknown qcow2 features, VMDK only monolithicSparse or
  streamOptimized with extents inside the file, no QED, a sane MBR/GPT;
* a VMDK names no parent (``parentFileNameHint``/``parentCID``): the inspector
  lets that through, ``qemu-img`` opens the parent as a backing file.

Most refusals come with the first few hundred kilobytes (headers), long before
the image is downloaded; the VMDK footer and the final verdict come at the end
of the stream — always before anything is committed to a store or converted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, NoReturn

from glance_sync.transfer import CHUNK, DiskStream
from vmtrust.errors import UnsafeImageError

if TYPE_CHECKING:
    from oslo_utils.imageutils import format_inspector as fi

__all__ = ["INSPECTED", "VMDK_SUBFORMATS", "InspectedStream", "Inspection", "inspect_stream"]

#: The disk formats vmtrust stores (Glance's names), each with an inspector.
INSPECTED = ("raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso")
#: VMDK subformats whose data are inside the one file (the inspector's lower-case names).
VMDK_SUBFORMATS = ("monolithicsparse", "streamoptimized")


@functools.cache
def _inspectors() -> ModuleType:
    """oslo.utils' format inspector, imported when a disk is first inspected (a pass
    that stores nothing never needs it, and it is a tenth of the sync's start-up)."""
    from oslo_utils.imageutils import format_inspector

    # The inspector logs every failed check at WARNING with no image name; the
    # sync's own one-line refusal says it all.
    logging.getLogger(format_inspector.__name__).setLevel(logging.CRITICAL)
    return format_inspector


class Inspection:
    """Judges one disk's bytes, fed chunk by chunk, against the declared format."""

    def __init__(self, declared: str, identifier: str, converted: bool = False) -> None:
        if declared not in INSPECTED:
            raise UnsafeImageError(
                f"image {identifier}: disk format {declared!r} cannot be inspected "
                f"(vmtrust stores {', '.join(INSPECTED)}); refused"
            )
        self.declared = declared
        self.identifier = identifier
        #: who says which format it is: the list, or vmtrust's own conversion
        self.claim = (
            "qemu-img converted it to {}" if converted else "the list declares {} (hv:format)"
        )
        self.size = 0  #: bytes seen
        self.virtual_size = 0  #: the guest disk's size (header, or the bytes for raw), at the end
        #: every specific format's inspector, until the format is known; then the one found
        self._live: list[fi.FileInspector] = [
            inspector() for name, inspector in _inspectors().ALL_FORMATS.items() if name != "raw"
        ]
        self.detected: fi.FileInspector | None = None  #: None while undecided or raw
        self._decided = False
        self._checked: set[fi.FileInspector] = set()  #: inspectors whose checks passed early
        self.done = False  #: the whole disk was seen and passed

    # --- feeding ----------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        with self._guard():
            self._feed(chunk)

    def finish(self) -> int:
        """Judge the whole disk: refuse it, or return its virtual size in bytes."""
        with self._guard():
            for inspector in self._live:
                inspector.finish()
            if not self._decided:
                self._decide()
            if self.detected is not None:
                self._check(self.detected, final=True)  # some need the end (VMDK footer)
            detected = self.detected
            if detected is None or str(detected) == "gpt":  # raw
                self.virtual_size = self.size
            else:
                self.virtual_size = detected.virtual_size or self.size
        self.done = True
        return self.virtual_size

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Whatever an inspector raises on hostile bytes is a refusal, never a crash."""
        try:
            yield
        except UnsafeImageError:
            raise
        except Exception as exc:
            self._refuse(f"cannot be inspected ({type(exc).__name__}: {exc})")

    def _feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        for inspector in list(self._live):
            try:
                inspector.eat_chunk(chunk)
            except Exception as exc:  # a parser's way of saying "not mine"
                if self._decided or str(inspector) == self.declared:
                    self._refuse(f"not a valid {self._name(self.declared)} image ({exc})")
                self._live.remove(inspector)
        if self._decided:
            if self.detected is not None and self.detected.complete:
                self._check(self.detected)
            return
        for inspector in self._live:
            # Refused early, from the headers, whatever the other inspectors find later:
            # a format that is not the declared one (a GPT may still turn out to be the
            # boot loader of an ISO), or a declared format whose checks fail.
            if inspector.complete and inspector.format_match:
                if str(inspector) == self.declared:
                    self._check(inspector)
                elif str(inspector) != "gpt":
                    self._mismatch(str(inspector))
        if all(i.complete for i in self._live):
            self._decide()

    # --- judging ----------------------------------------------------------------------

    def _decide(self) -> None:
        """Which format the bytes are, once every inspector has seen enough (or EOF)."""
        found = {str(i): i for i in self._live if i.format_match}
        if set(found) == {"iso", "gpt"}:
            found.pop("gpt")  # a bootable ISO carries a GPT boot loader (nova allows it)
        if len(found) > 1:
            self._refuse(f"the bytes match several disk formats ({', '.join(sorted(found))})")
        self.detected = next(iter(found.values()), None)
        self._live = [self.detected] if self.detected is not None else []
        self._decided = True
        got = str(self.detected) if self.detected is not None else "raw"
        if got == "gpt" and self.declared == "raw":
            pass  # a whole-disk image with a partition table is raw (as in nova)
        elif got != self.declared:
            self._mismatch(got)
        if self.detected is not None and self.detected.complete:
            self._check(self.detected)

    def _mismatch(self, got: str) -> None:
        self._refuse(
            f"{self.claim.format(self._name(self.declared))} but the bytes are {self._name(got)}"
        )

    def _check(self, inspector: fi.FileInspector, final: bool = False) -> None:
        """The inspector's safety checks and vmtrust's own, once its headers are complete."""
        if inspector in self._checked and not final:
            return
        fi = _inspectors()
        subformat = getattr(inspector, "vmdktype", None)  # set once the descriptor is read
        if isinstance(inspector, fi.VMDKInspector) and subformat not in (None, *VMDK_SUBFORMATS):
            self._refuse(
                f"VMDK subformat {subformat!r} keeps its data in other files "
                "(only monolithicSparse and streamOptimized are accepted)"
            )
        try:
            inspector.safety_check()
        except fi.SafetyCheckFailed as exc:
            reasons = "; ".join(f"{name}: {failure}" for name, failure in exc.failures.items())
            self._refuse(f"{self._name(str(inspector))} image fails the safety checks ({reasons})")
        except fi.ImageFormatError as exc:
            self._refuse(f"not a valid {self._name(str(inspector))} image ({exc})")
        if isinstance(inspector, fi.VMDKInspector):
            self._check_vmdk_parent(inspector)
        self._checked.add(inspector)

    def _check_vmdk_parent(self, inspector: fi.VMDKInspector) -> None:
        """A VMDK naming a parent disk: qemu-img opens it as a backing file."""
        for line in (inspector.desc_text or "").splitlines():
            key, _, value = line.strip().partition("=")
            key, value = key.strip(), value.strip().strip('"')
            if key == "parentfilenamehint" or (key == "parentcid" and value != "ffffffff"):
                self._refuse("VMDK names a parent disk (parentFileNameHint/parentCID)")

    @staticmethod
    def _name(fmt: str) -> str:
        return {"gpt": "a raw disk with a partition table"}.get(fmt, fmt.upper())

    def _refuse(self, reason: str) -> NoReturn:
        raise UnsafeImageError(f"image {self.identifier}: {reason}; refused")


class InspectedStream:
    """Disk bytes that are inspected as they are read; EOF is where the verdict comes.

    Reading the end of the stream raises :class:`UnsafeImageError` when the disk
    is refused, so a store never reaches its commit point with such bytes.
    """

    def __init__(self, stream: DiskStream, inspection: Inspection) -> None:
        self.stream = stream
        self.inspection = inspection
        digest = getattr(stream, "source_digest", None)
        if digest is not None:  # keep the pass-through shortcut of transfer.iter_chunks
            self.source_digest = digest
        size = getattr(stream, "expected_size", None)
        if size is not None:  # and the length a store may announce (Content-Length)
            self.expected_size = size

    def read(self, size: int = CHUNK) -> bytes:
        chunk = self.stream.read(size)
        if chunk:
            self.inspection.feed(chunk)
        elif not self.inspection.done:
            self.inspection.finish()
        return chunk

    def close(self) -> None:
        self.stream.close()


def inspect_stream(
    stream: DiskStream, declared: str, identifier: str, converted: bool = False
) -> InspectedStream:
    """``stream`` inspected as it is read; ``converted``: the output of a conversion."""
    return InspectedStream(stream, Inspection(declared, identifier, converted))
