"""One stream of disk bytes read by several stores at once, with bounded memory.

A pass with several targets downloads each image version once and hands the
same bytes to every target that needs them (docs/federation.md).  The bytes go
through a :class:`Tee`: the producer (the download, unpacked and inspected)
feeds chunks in; every target reads its own :class:`Branch` at its own pace.

* **Memory is bounded.**  The newest ``buffer`` bytes stay in memory (a ring of
  chunks).  The producer goes at the pace of the *fastest* reader (it waits
  when that one is ``buffer`` bytes behind), as a single store's download goes
  at the store's pace; a branch that falls further behind than the ring is
  served from a spool file in the work folder (``<state_dir>/work``), which the
  tee starts writing the moment the oldest chunk still needed would leave the
  ring.  So a slow target never stalls the others, and targets that keep up
  with each other need no spool at all.
* **Nothing ends before it is verified.**  A branch's end of stream (the ``b""``
  that lets a store finish its upload and reach its commit point) comes only
  after the producer reached the end of the download and the download's size
  and SHA-512 matched the list and the inspection passed.  When they do not,
  every branch raises the producer's error instead, so every store aborts.
* **One reader's failure is its own.**  A store that fails detaches its branch;
  the others go on.  When every branch detached, the producer stops reading
  the download (nobody needs it any more).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import errno
import os
import threading
import time
import uuid
from pathlib import Path

from glance_sync.convert import open_private_folder
from glance_sync.transfer import CHUNK
from vmtrust.errors import TransferError, VmtrustError

__all__ = ["DEFAULT_BUFFER", "Branch", "NoReaders", "Tee"]

DEFAULT_BUFFER = 32 * CHUNK  #: bytes a branch may fall behind before it reads the spool


class NoReaders(Exception):
    """Every branch detached: the producer stops (each store reported its own failure)."""


class Tee:
    """One producer, several branches; see the module docstring.

    ``spool_dir`` is where a spool file is made when a branch falls behind (the
    work folder, private to the sync); ``identifier`` names the image in errors.
    """

    def __init__(self, spool_dir: Path, identifier: str, buffer: int = DEFAULT_BUFFER) -> None:
        self.spool_dir = spool_dir
        self.identifier = identifier
        self.buffer = max(buffer, CHUNK)
        self._cond = threading.Condition()
        self._ring: collections.deque[tuple[int, bytes]] = collections.deque()
        self._ring_bytes = 0
        self.written = 0  #: bytes fed so far
        self._ended = False
        self._error: BaseException | None = None
        self._branches: list[Branch] = []
        self._spool_fd: int | None = None
        self._spool_path: Path | None = None
        self._spool_start = 0  #: stream offset of the spool file's first byte
        self._spool_error: str | None = None
        self.spooled = 0  #: bytes written to the spool (benchmarks and tests read it)
        self.sha512 = ""  #: SHA-512 of the whole stream, set by :meth:`end`
        self.source_sha512 = ""  #: SHA-512 of the download, set by the producer before the end
        self.peak_ring = 0  #: most bytes the ring held at once
        self.ended_at = 0.0  #: time.monotonic() of :meth:`end`

    # --- the readers ----------------------------------------------------------------

    def branch(self, name: str) -> Branch:
        """A new reader starting at the first byte (before the first :meth:`feed`)."""
        with self._cond:
            if self.written:
                raise RuntimeError("branches are made before the first byte")
            branch = Branch(self, name)
            self._branches.append(branch)
            return branch

    def _active(self) -> list[Branch]:
        return [b for b in self._branches if not b.detached]

    # --- the producer ---------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        """Add the next bytes; raises :class:`NoReaders` when nobody reads any more."""
        if not chunk:
            return
        with self._cond:
            while True:  # the pace of the fastest reader: slower ones fall behind
                active = self._active()
                if not active:
                    raise NoReaders(self.identifier)
                if self.written - max(b.offset for b in active) < self.buffer:
                    break
                self._cond.wait()
            if self._spool_fd is not None:
                self._spool_write(chunk)
            self._ring.append((self.written, chunk))
            self._ring_bytes += len(chunk)
            self.written += len(chunk)
            self.peak_ring = max(self.peak_ring, self._ring_bytes)
            while self._ring_bytes > self.buffer:
                self._drop_oldest()
            self._cond.notify_all()

    def _drop_oldest(self) -> None:
        """Let the oldest chunk leave memory, spooling first if a reader still needs it."""
        offset, chunk = self._ring[0]
        end = offset + len(chunk)
        behind = any(b.offset < end for b in self._active())
        if behind and self._spool_fd is None and self._spool_error is None:
            self._start_spool(offset)
        self._ring.popleft()
        self._ring_bytes -= len(chunk)

    def _start_spool(self, offset: int) -> None:
        """The spool begins with what the ring holds, then gets every new chunk."""
        path = self.spool_dir / f"{uuid.uuid4().hex}.spool"  # list data never names a file
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            folder = open_private_folder(self.spool_dir)  # never a planted link or another's
        except OSError as exc:
            self._spool_error = f"work folder {self.spool_dir}: {exc.strerror or exc}"
            return
        try:
            fd = os.open(path.name, flags, 0o600, dir_fd=folder)
        except OSError as exc:
            self._spool_error = f"spool file {path}: {exc.strerror or exc}"
            return
        finally:
            os.close(folder)
        self._spool_fd, self._spool_path, self._spool_start = fd, path, offset
        for _, chunk in self._ring:
            self._spool_write(chunk)

    def _spool_write(self, chunk: bytes) -> None:
        assert self._spool_fd is not None
        if self._spool_error is not None:
            return
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._spool_fd, view) :]
            self.spooled += len(chunk)
        except OSError as exc:
            why = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror
            self._spool_error = f"spool file {self._spool_path}: {why or exc}"

    def end(self, sha512: str) -> None:
        """Every byte was fed, and the download and the inspection were verified."""
        with self._cond:
            self.sha512 = sha512
            self.ended_at = time.monotonic()
            self._ended = True
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """The producer failed: every branch raises ``error`` (one line) at its next read."""
        with self._cond:
            if not self._ended:
                self._error = error
            self._cond.notify_all()

    def wait(self) -> str:
        """Block until the producer ended; its verified SHA-512, or its error raised."""
        with self._cond:
            while not self._ended and self._error is None:
                self._cond.wait()
            self._raise()
            return self.sha512

    def _raise(self) -> None:
        if self._error is not None:
            if isinstance(self._error, VmtrustError):
                raise copy.copy(self._error)  # a copy: each reader raises its own
            raise TransferError(f"image {self.identifier}: {self._error}")

    def close(self) -> None:
        """Remove the spool file (the work folder is emptied at each pass's start anyway)."""
        with self._cond:
            if self._error is None and not self._ended:
                self._error = TransferError(f"image {self.identifier}: transfer abandoned")
            self._cond.notify_all()
            fd, self._spool_fd = self._spool_fd, None
        if fd is not None:
            os.close(fd)
        if self._spool_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._spool_path.unlink()

    # --- for the branches -----------------------------------------------------------

    def _read(self, branch: Branch, size: int) -> bytes:
        with self._cond:
            while branch.offset >= self.written and not self._ended and self._error is None:
                self._cond.wait()
            self._raise()
            if branch.offset >= self.written:
                return b""  # ended: the end was verified
            first = self._ring[0][0] if self._ring else self.written
            if branch.offset >= first:
                data = self._from_ring(branch.offset, size)
                branch.offset += len(data)
                self._cond.notify_all()  # the producer may be waiting for this reader
                return data
            if self._spool_error is not None or self._spool_fd is None:
                raise TransferError(
                    f"image {self.identifier}: target {branch.name} fell behind and "
                    f"{self._spool_error or 'there is no spool file'}"
                )
            fd, start, limit = self._spool_fd, self._spool_start, first
        # the spool is read outside the lock: pread needs no shared position
        count = min(size, limit - branch.offset)
        data = os.pread(fd, count, branch.offset - start)
        if len(data) != count:
            raise TransferError(f"image {self.identifier}: spool file {self._spool_path} short")
        with self._cond:
            branch.offset += len(data)
            self._cond.notify_all()
        return data

    def _from_ring(self, offset: int, size: int) -> bytes:
        for start, chunk in self._ring:
            if start <= offset < start + len(chunk):
                if start == offset and len(chunk) <= size:
                    return chunk  # the common case: the whole chunk, no copy
                at = offset - start
                return chunk[at : at + size]
        raise AssertionError("offset in the ring but in no chunk")


class Branch:
    """One target's reader of a :class:`Tee` (file-like: ``read``)."""

    #: reads come from the tee's ring (or spool): no read-ahead thread needed
    #: (:func:`glance_sync.transfer.upload_chunks`)
    buffered = True

    def __init__(self, tee: Tee, name: str) -> None:
        self.tee = tee
        self.name = name
        self.offset = 0
        self.detached = False
        self.eof = False

    def read(self, size: int = CHUNK) -> bytes:
        if size is None or size < 0:
            size = CHUNK
        data = self.tee._read(self, size)  # which moves the offset on
        if not data:
            self.eof = True
        return data

    def source_digest(self) -> str:
        """SHA-512 of the bytes (``transfer.iter_chunks`` then hashes nothing itself)."""
        return self.tee.wait()

    def detach(self) -> None:
        """This reader stopped: the tee no longer keeps or spools bytes for it."""
        with self.tee._cond:
            self.detached = True
            self.tee._cond.notify_all()

    def close(self) -> None:
        self.detach()
