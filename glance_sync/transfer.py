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
import queue
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from vmtrust.errors import TransferError

__all__ = [
    "CHUNK",
    "CHUNKED_PIECE",
    "DiskStream",
    "Tally",
    "copy_stream",
    "iter_chunks",
    "read_ahead",
    "read_disk",
    "sized",
    "upload_chunks",
    "write_behind",
]

CHUNK = 1024 * 1024
AHEAD = 8  #: chunks :func:`read_ahead` may hold (8 MiB)
#: the largest piece of a body sent in HTTP chunks: uWSGI, which serves Glance in most
#: deployments (devstack's too), answers 500 to a chunk of 1 MiB or more by default
#: (its ``chunked-input-limit``), and Glance reads a chunked body through it
CHUNKED_PIECE = 256 * 1024


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


def read_ahead(chunks: Iterator[bytes], depth: int = AHEAD) -> Iterator[bytes]:
    """``chunks``, produced on a thread of their own up to ``depth`` chunks ahead.

    A store that pulls (an HTTP upload body) would otherwise download, unpack,
    inspect and hash a chunk, then send it, then download the next: each side
    idles while the other works, and only socket buffers hide it.  Here the
    download runs while the upload sends, decoupled by at most ``depth`` chunks of
    memory.  Whatever the producer raises is raised here, in order, after the
    chunks before it; closing this generator early (a failed upload) stops the
    producer at its next chunk and waits for it, so the stream is never read by
    two threads and the caller may close it at once.
    """
    box: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                box.put(("chunk", chunk))
            box.put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            box.put(("error", exc))
        finally:
            if stop.is_set():
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()

    worker = threading.Thread(target=produce, name="vmtrust-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = box.get()
            if kind == "chunk":
                yield value  # type: ignore[misc]
            elif kind == "error":
                raise value  # type: ignore[misc]
            else:
                return
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting for room, then wait for it
            try:
                box.get(timeout=0.1)
            except queue.Empty:
                continue
        worker.join()


def upload_chunks(stream: DiskStream, identifier: str, tally: Tally) -> Iterator[bytes]:
    """The chunks of an upload body: read ahead on a thread of their own (:func:`read_ahead`),
    unless ``stream`` is a buffer already (``buffered``: a fan-out branch, which reads the
    tee's memory ring; a read-ahead there would hold 8 MiB more per target and a thread
    for nothing, the download running on the tee's producer anyway)."""
    chunks = iter_chunks(stream, identifier, tally)
    return chunks if getattr(stream, "buffered", False) else read_ahead(chunks)


class _Sized:
    """Chunks of a known total length, as an HTTP body: sent with ``Content-Length``."""

    def __init__(self, chunks: Iterator[bytes], length: int) -> None:
        self.chunks = chunks
        self.length = length

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks

    def __len__(self) -> int:
        return self.length


def sized(chunks: Iterator[bytes], stream: object) -> Iterator[bytes | memoryview] | _Sized:
    """``chunks`` as an upload body: of known length when ``stream`` says how many bytes it
    yields (the download passed through as it is), else in HTTP chunks of at most
    :data:`CHUNKED_PIECE` bytes.

    A body with ``Content-Length`` skips HTTP's chunk framing on both sides (a copy of
    every chunk here, and the server's chunk parser, in Glance's one worker).  The length
    is the list's ``hv:size``, which the download enforces: one byte more, or fewer at the
    end, raises before the body is complete, so the server never waits for bytes that do
    not come.  A chunked body is sent in pieces uWSGI accepts (:data:`CHUNKED_PIECE`).
    """
    length = getattr(stream, "expected_size", None)
    if isinstance(length, int) and length > 0:
        return _Sized(chunks, length)
    return _pieces(chunks)


def _pieces(chunks: Iterator[bytes]) -> Iterator[bytes | memoryview]:
    """``chunks`` cut to at most :data:`CHUNKED_PIECE` bytes each (views, not copies)."""
    try:
        for chunk in chunks:
            if len(chunk) <= CHUNKED_PIECE:
                yield chunk
                continue
            view = memoryview(chunk)
            for start in range(0, len(view), CHUNKED_PIECE):
                yield view[start : start + CHUNKED_PIECE]
    finally:  # an upload that failed: stop the producer now, not when collected
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
