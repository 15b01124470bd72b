"""Unpacking on the fly: decompressors and OVA archives in the middle of the stream.

The pipeline is pull-based, so that standard-library decompressors and
``tarfile`` can sit between the download and the store unchanged::

    SourceReader ─▶ (gzip | bz2 | xz) ─▶ bound ─▶ (OVA member) ─▶ inspection ─▶ store
    hashes what the    decompresses      counts      glance_sync.ova  judges the   hashes what
    list describes     on the fly                                     disk format  it stores

Nothing is written to disk on the way: decompression needs no work file.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from dataclasses import dataclass

from glance_sync.download import SourceReader
from glance_sync.ova import ArchiveDisk
from glance_sync.transfer import CHUNK, DiskStream
from vmtrust.errors import ExpansionError

__all__ = ["Bound", "normalise_format", "open_disk"]


def normalise_format(value: str | None) -> tuple[str | None, str]:
    """Split ``hv:format`` into (compression, disk format), case-insensitively.

    ``"QCOW2"`` → (None, "qcow2"); ``"raw.gz"`` → ("gz", "raw"); ``"OVA"`` →
    (None, "ova").  A missing ``hv:format`` means a raw disk, as in HEPiX lists
    that predate the field; other names pass through lower-cased.
    """
    if not value:
        return None, "raw"
    text = value.strip().lower()
    compression = None
    for suffix in ("gz", "bz2", "xz"):
        if text.endswith("." + suffix):
            compression, text = suffix, text[: -len(suffix) - 1]
            break
    aliases = {"vpc": "vhd", "img": "raw", "ext3": "raw", "ext4": "raw"}
    return compression, aliases.get(text, text)


@dataclass(frozen=True)
class Bound:
    """The most bytes an image may unpack to, and the setting or fact that says so."""

    limit: int
    reason: str

    @classmethod
    def of(cls, downloaded: int, max_image_size: int, max_ratio: int, free: int | None) -> Bound:
        """The tightest of ``[sync] max_image_size``, the expansion ratio and the store's room."""
        bounds = [
            cls(max_image_size, "[sync] max_image_size"),
            cls(
                max_ratio * downloaded,
                f"[sync] max_expansion_ratio: {max_ratio} times the {downloaded} bytes downloaded",
            ),
        ]
        if free is not None:
            bounds.append(cls(free, "the room left in the store"))
        return min(bounds, key=lambda bound: bound.limit)


def open_disk(reader: SourceReader, fmt: str | None, bound: Bound) -> tuple[DiskStream, str]:
    """Wrap the download in the decompressor or OVA unpacker its format needs.

    Returns the stream of disk bytes and the disk format of those bytes.
    Decompressed bytes are counted and stopped at ``bound``: a download's
    ``hv:size`` and SHA-512 say nothing about what it expands to.
    """
    compression, disk = normalise_format(fmt)
    if compression is None and disk not in ("ova", "tar"):
        return _Passthrough(reader), disk
    buffered = io.BufferedReader(reader, CHUNK)
    stream: DiskStream = buffered
    if compression == "gz":
        stream = gzip.GzipFile(fileobj=buffered, mode="rb")
    elif compression == "bz2":
        stream = bz2.BZ2File(buffered, mode="rb")
    elif compression == "xz":
        stream = lzma.LZMAFile(buffered, mode="rb")  # noqa: SIM115 - returned
    if compression is not None:
        stream = _Bounded(stream, bound, reader.source.identifier)
    if disk in ("ova", "tar"):
        archive = ArchiveDisk(stream, disk, reader.source.identifier)
        return archive, archive.disk_format
    return stream, disk


class _Bounded:
    """Decompressed bytes, counted; the byte past the bound is refused.

    The bytes up to the bound are still handed on, so that the inspection sees
    the headers and names what is wrong with them when that is the first problem.
    """

    def __init__(self, stream: DiskStream, bound: Bound, identifier: str) -> None:
        self.stream = stream
        self.bound = bound
        self.identifier = identifier
        self.count = 0

    def read(self, size: int = CHUNK) -> bytes:
        if self.count > self.bound.limit:
            raise ExpansionError(
                f"image {self.identifier}: unpacks to more than {self.bound.limit} bytes "
                f"({self.bound.reason}); refused"
            )
        chunk = self.stream.read(min(size, CHUNK) if size >= 0 else CHUNK)
        self.count += len(chunk)
        if self.count > self.bound.limit:
            return chunk[: len(chunk) - (self.count - self.bound.limit)] or self.read(size)
        return chunk

    def close(self) -> None:
        self.stream.close()


class _Passthrough:
    """Disk bytes that *are* the download: the reader's SHA-512 is the stored bytes' too.

    Hands the reader's chunks through without copying them and saves hashing
    every byte twice — the common case of QCOW2 or raw images stored as they are.
    """

    def __init__(self, reader: SourceReader) -> None:
        self.reader = reader
        #: exactly the bytes it yields: the reader refuses one more and checks the count
        self.expected_size = reader.source.size

    def read(self, size: int = CHUNK) -> bytes:
        return self.reader.read_chunk(size)

    def source_digest(self) -> str:
        return self.reader.digest.hexdigest()

    def close(self) -> None:
        """The reader is closed by whoever opened it."""
