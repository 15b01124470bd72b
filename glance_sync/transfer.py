"""Copying disk bytes to a store: in chunks, counted and hashed as they are stored.

The other steps of the pipeline live beside this module: :mod:`glance_sync.download`
(the HTTP download, checked against the list and resumed) and
:mod:`glance_sync.unpack` (decompression and OVA members).  Stores take their
bytes through :func:`copy_stream` (push) or :func:`iter_chunks` (pull).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from vmtrust.errors import TransferError

__all__ = [
    "CHUNK",
    "DiskStream",
    "Tally",
    "copy_stream",
    "iter_chunks",
    "read_disk",
    "write_behind",
]

CHUNK = 1024 * 1024


class DiskStream(Protocol):
    """What each stage of the pull pipeline reads from the one before it.

    The download, a decompressor, the OVA member, the inspection and Glance's own
    data (adoption) are all just ``read(size)`` and ``close()``: no file methods beyond.
    """

    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


@dataclass
class Tally:
    """Size and SHA-512 of the bytes a stream yielded, set when it is exhausted."""

    size: int = 0
    sha512: str = ""


def iter_chunks(stream: DiskStream, identifier: str, tally: Tally) -> Iterator[bytes]:
    """Yield the disk bytes in chunks, for stores that pull (an HTTP upload body).

    The SHA-512 comes from the download hasher when nothing was unpacked (the
    bytes are the same), else it is computed here; both end up in ``tally``.
    """
    passthrough = getattr(stream, "source_digest", None)
    digest = hashlib.sha512()
    while chunk := read_disk(stream, identifier):
        if passthrough is None:
            digest.update(chunk)
        tally.size += len(chunk)
        yield chunk
    tally.sha512 = passthrough() if passthrough is not None else digest.hexdigest()


def read_disk(stream: DiskStream, identifier: str, size: int = CHUNK) -> bytes:
    """The next disk bytes; what a broken archive or compressed file raises, as one line."""
    try:
        return stream.read(size)
    except (OSError, EOFError, lzma.LZMAError, tarfile.TarError, zlib.error) as exc:
        raise TransferError(f"image {identifier}: cannot unpack ({exc})") from None


def copy_stream(
    stream: DiskStream, write: Callable[[bytes], Any], identifier: str
) -> tuple[int, str]:
    """Copy disk bytes to ``write`` in chunks; return (size, sha512) of what was written."""
    tally = Tally()
    for chunk in iter_chunks(stream, identifier, tally):
        write(chunk)
    return tally.size, tally.sha512


#: how much is written before the kernel is asked to start writing it to the disk
WRITE_BEHIND = 32 * CHUNK


def write_behind(out: BinaryIO, every: int = WRITE_BEHIND) -> Callable[[bytes], Any]:
    """``out.write`` that has the kernel write the file to disk while it is still coming.

    The file is fsynced at the end, so every byte reaches the disk anyway; without
    this, a host with plenty of memory holds the whole image as dirty pages and the
    final fsync writes all of it while nothing else happens (about 0.5 s a GiB on the
    project's VM).  Every ``every`` bytes the buffer is flushed and
    ``POSIX_FADV_DONTNEED`` is given for the whole file: it starts the writeback of the
    dirty pages without waiting for it, and drops the pages already written, which
    nobody reads again (an image is read next by the hypervisor, much later).  It is
    advice only: where the call is missing or refused, the final fsync does the work.
    """
    advise = getattr(os, "posix_fadvise", None)
    fd = out.fileno()
    pending = 0

    def write(chunk: bytes) -> None:
        nonlocal pending, advise
        out.write(chunk)
        pending += len(chunk)
        if pending >= every and advise is not None:
            pending = 0
            out.flush()
            try:
                advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                advise = None

    return write
