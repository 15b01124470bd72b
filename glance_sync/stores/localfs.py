"""File operations inside the local store that never follow a symbolic link.

Whoever can write into the store directory can plant a link there
(``.partial`` → ``/etc``, ``images/x`` → ``/home``, a record → ``/etc/shadow``);
a sync that followed it would delete, read or overwrite the target with its
own rights.  So every operation here works on an open directory descriptor
and one plain name in it (``openat`` with ``O_NOFOLLOW``, ``unlinkat``,
``renameat``): the kernel resolves no link below the store root, and a name
that is not what the store put there (a link, a FIFO, a device) raises
:class:`Unexpected` instead of being opened.

Only the root is opened by path, following links: where the store lives is
the operator's choice.  Files are created with ``O_EXCL`` and written once;
records are replaced by renaming a new file over the old name, never by
writing into an existing file, so a hard link planted in the store never
carries a write to the file it shares.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import BinaryIO

from vmtrust.cli.render import clean

__all__ = ["Dir", "Unexpected", "kind_of"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Unexpected(Exception):
    """A name in the store that is not the kind of file the store put there."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path} is {what}")
        self.path = path


def kind_of(mode: int) -> str:
    """What a file is, in words, from its ``st_mode``."""
    for test, name in (
        (stat.S_ISREG, "a file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a device"


class Dir:
    """An open directory of the store; ``rel`` is its path inside the store, for messages."""

    def __init__(self, fd: int, rel: str) -> None:
        self.fd = fd
        self.rel = rel

    @classmethod
    def root(cls, path: Path) -> Dir:
        """The store root itself, following a link: the operator put the store there."""
        return cls(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), "")

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def path(self, name: str) -> str:
        """``name`` as a path inside the store (printable: names may come from anyone)."""
        return clean(f"{self.rel}/{name}" if self.rel else name)

    # --- looking ----------------------------------------------------------------------

    def mode(self, name: str) -> int | None:
        """``st_mode`` of ``name`` itself (a link is a link), None when there is none."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return None

    def describe(self, name: str, mode: int) -> str:
        """What ``name`` is, with a link's target (read, never followed)."""
        if stat.S_ISLNK(mode):
            with contextlib.suppress(OSError):
                return f"a symbolic link to {clean(os.readlink(name, dir_fd=self.fd))}"
        return kind_of(mode)

    def entries(self) -> list[tuple[str, int]]:
        """(name, st_mode) of everything in the directory, links not followed."""
        found = []
        for name in sorted(os.listdir(self.fd)):
            mode = self.mode(name)
            if mode is not None:  # gone since the listing
                found.append((name, mode))
        return found

    def regular(self, name: str) -> bool:
        """True if ``name`` is a regular file, False if there is nothing of that name;
        :class:`Unexpected` if it is anything else (a link, a directory, a FIFO…)."""
        mode = self.mode(name)
        if mode is None:
            return False
        if not stat.S_ISREG(mode):
            raise Unexpected(self.path(name), self.describe(name, mode))
        return True

    # --- directories ------------------------------------------------------------------

    def subdir(self, name: str, *, create: bool = False, mode: int = 0o755) -> Dir:
        """Open the directory ``name`` in this one (made with ``mode`` if asked and missing)."""
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=self.fd)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            found = self.mode(name)
            if found is None or stat.S_ISDIR(found):
                raise exc from None
            raise Unexpected(self.path(name), self.describe(name, found)) from None
        return Dir(fd, self.path(name))

    def remove_dir_if_empty(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=self.fd)

    def remove_tree(self, name: str) -> None:
        """Remove the directory ``name`` and all in it; links inside are removed, not followed."""
        shutil.rmtree(name, dir_fd=self.fd)

    def sync(self) -> None:
        os.fsync(self.fd)

    # --- files ------------------------------------------------------------------------

    def read(self, name: str, limit: int) -> bytes:
        """The bytes of the regular file ``name``, at most ``limit`` + 1 of them."""
        try:
            # O_NONBLOCK: a FIFO swapped in after a check must not hang the sync
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd
            )
        except OSError:
            self.regular(name)  # says what it is when it is not a file
            raise
        with os.fdopen(fd, "rb") as stream:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise Unexpected(self.path(name), kind_of(mode))
            return stream.read(limit + 1)

    def create(self, name: str, mode: int = 0o644) -> BinaryIO:
        """A new file ``name`` for writing; fails if anything has that name."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.fdopen(os.open(name, flags, mode, dir_fd=self.fd), "wb")

    def write_atomic(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Replace ``name`` with ``data`` all at once: a new file, fsync, rename over the name.

        :func:`vmtrust.fileio.write_atomic` does the same by path; this one
        stays inside this directory whatever happens to the path around it.
        """
        temporary = f".{name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            with self.create(temporary, mode) as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.rename(temporary, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=self.fd)
            raise
        self.sync()

    def move(self, name: str, to: Dir, new_name: str) -> None:
        """Rename ``name`` into ``to`` (replacing what has ``new_name`` there: a link
        there is replaced itself, never followed)."""
        os.rename(name, new_name, src_dir_fd=self.fd, dst_dir_fd=to.fd)

    def remove(self, name: str) -> None:
        """Remove the name ``name``: a link goes, its target stays; a hard link's other
        names keep the file."""
        os.unlink(name, dir_fd=self.fd)
