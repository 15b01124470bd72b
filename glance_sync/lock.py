"""Exclusive locks that tell the second taker who holds them.

One sync at a time per state directory, and one per store: two syncs with
different state directories pointed at the same local store would each
clean the other's downloads in progress and retire each other's images.
Both locks are ``flock`` on a file that names its holder, so the refusal can
say who to look for; the lock goes with the process (also on ``kill -9``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from glance_sync.stores.localfs import kind_of
from vmtrust.cli.render import clean
from vmtrust.errors import ConfigError, LockError

__all__ = ["hold", "holder"]


def holder(state_dir: Path) -> str:
    """How a sync describes itself in a lock it holds."""
    return f"pid {os.getpid()} on {socket.gethostname()}, state directory {state_dir}"


@contextlib.contextmanager
def hold(
    path: Path, holder: str, busy: Callable[[str], str], *, dir_fd: int | None = None
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, with ``holder`` written in it.

    When another process holds it, raise :class:`LockError` with
    ``busy(what the holder wrote)``.  With ``dir_fd``, ``path.name`` is opened
    in that directory (``path`` is only shown).  The file is opened without
    following a link: a link planted at its name is refused, never written
    through.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path.name if dir_fd is not None else path, flags, 0o644, dir_fd=dir_fd)
    except OSError as exc:
        why = "a symbolic link, not followed" if exc.errno == errno.ELOOP else exc.strerror
        raise ConfigError(f"lock {path}: {why}") from None
    with os.fdopen(fd, "r+", encoding="utf-8", errors="replace") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"lock {path}: {kind_of(os.fstat(fd).st_mode)}, not a file")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise LockError(busy(clean(handle.read(300).strip()) or "unknown")) from None
        handle.seek(0)
        handle.truncate()
        handle.write(holder)
        handle.flush()
        yield
