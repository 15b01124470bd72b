"""Reading bounded inputs and writing outputs atomically.

Every file vmtrust writes is written to a temporary name in the same
directory, flushed to disk and renamed over the target, so a crash or a full
disk never leaves a half-written list or key where a good one was.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

from vmtrust.errors import FileTooLarge, InputError, ListTooLarge

__all__ = ["read_bytes", "write_atomic", "write_output"]


def read_bytes(
    path: str | Path,
    *,
    what: str,
    limit: int | None = None,
    too_large: type[FileTooLarge] | type[ListTooLarge] = FileTooLarge,
) -> bytes:
    """Read a whole file (``-`` is standard input), refusing more than ``limit`` bytes.

    A file over the limit is a :class:`FileTooLarge`; an image list over it is
    refused as lists are (``too_large=ListTooLarge``), with the status scripts
    know from vmcatcher.
    """
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(limit + 1 if limit else -1)
        else:
            with open(Path(path).expanduser(), "rb") as stream:
                data = stream.read(limit + 1 if limit else -1)
    except IsADirectoryError:
        raise InputError(f"{what} {path}: is a directory") from None
    except OSError as exc:
        raise InputError(f"{what} {path}: {exc.strerror or exc}") from None
    if limit is not None and len(data) > limit:
        raise too_large(f"{what} {path}: larger than the limit of {limit} bytes")
    return data


def write_atomic(path: str | Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` all at once (temporary file, fsync, rename)."""
    target = Path(path).expanduser()
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:  # also Ctrl-C: never leave the temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {target}: {exc.strerror or exc}") from None
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_output(path: str | None, data: bytes, *, mode: int = 0o644) -> None:
    """Write to ``path`` atomically, or to standard output when ``path`` is None or ``-``."""
    if path is None or path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(path, data, mode=mode)
