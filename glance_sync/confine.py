"""Run a program that may open only the files it is given: Linux Landlock, then exec.

``qemu-img`` follows references inside an image — a qcow2 backing file, a VMDK
extent or parent — to any file it can open.  Inspection refuses such images
before ``qemu-img`` sees them (:mod:`glance_sync.inspection`); this is the second
wall, for whatever an inspector misses: the kernel itself lets the process read
only the system's programs and libraries, the one work file it converts, and
write only in its own work folder.  Nothing under ``/etc`` (the seal key), the
state directory, the store or ``/home`` can be opened, and no TCP connection
can be made.

Used as ``python -m glance_sync.confine --read FILE --write DIR -- PROGRAM ARGS…``
(after oslo.concurrency's ``prlimit`` wrapper has set the resource limits); a
separate process, because Landlock restricts the calling thread and its
children for good, and the sync itself is multi-threaded.  Landlock is in Linux
since 5.13; :func:`abi_version` tells whether this kernel has it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path

__all__ = [
    "EXECUTE",
    "MAKE_REG",
    "READ_DIR",
    "READ_FILE",
    "REMOVE_FILE",
    "SYSTEM_READ",
    "TRUNCATE",
    "WRITE_FILE",
    "abi_version",
    "command",
    "main",
]

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # the same on every architecture
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# access rights (linux/landlock.h)
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_FILE, MAKE_REG = 1 << 5, 1 << 8
TRUNCATE = 1 << 14  # ABI 3
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_NET_ALL = (1 << 0) | (1 << 1)  # bind and connect TCP (ABI 4)
_SCOPE_ALL = (1 << 0) | (1 << 1)  # abstract unix sockets, signals (ABI 6)

#: what a dynamically linked program needs to start: read and execute, nothing else
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ld.so.cache")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or it is disabled)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        version = _libc().syscall(_CREATE_RULESET, None, ctypes.c_size_t(0),
                                  ctypes.c_uint32(_CREATE_RULESET_VERSION))  # fmt: skip
    except (OSError, AttributeError):
        return 0
    return max(version, 0)


def _handled_fs(abi: int) -> int:
    return _FS_BY_ABI[max(v for v in _FS_BY_ABI if v <= abi)]


def _restrict(read: list[str], write: list[str]) -> None:
    """Confine this process: read/execute ``SYSTEM_READ`` and ``read``, write in ``write``.

    Raises OSError when the kernel refuses; irreversible when it succeeds.
    """
    abi = abi_version()
    if abi < 1:
        raise OSError("this kernel has no Landlock (Linux 5.13 or later, lsm=landlock)")
    libc = _libc()
    fs = _handled_fs(abi)
    attr = _RulesetAttr(fs, _NET_ALL if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                           ctypes.c_uint32(0))  # fmt: skip
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        file_read = READ_FILE | EXECUTE
        rules = [(path, file_read | READ_DIR) for path in SYSTEM_READ if os.path.exists(path)]
        rules += [(path, READ_FILE) for path in read]
        rules.append(("/dev/null", READ_FILE | WRITE_FILE))  # qemu probes file locking on it
        writable = READ_FILE | READ_DIR | WRITE_FILE | MAKE_REG | REMOVE_FILE
        rules += [(path, writable | (TRUNCATE if abi >= 3 else 0)) for path in write]
        for path, access in rules:
            if not os.path.isdir(path):
                access &= READ_FILE | WRITE_FILE | EXECUTE | TRUNCATE  # file-only rights
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneathAttr(access & fs, fd)
                if libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule),
                                ctypes.c_uint32(0)) < 0:  # fmt: skip
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def command(read: list[Path], write: list[Path], argv: list[str]) -> list[str]:
    """``argv`` run through this module with the given files."""
    args = [sys.executable, "-m", "glance_sync.confine"]
    for path in read:
        args += ["--read", str(path)]
    for path in write:
        args += ["--write", str(path)]
    return [*args, "--", *argv]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m glance_sync.confine")
    parser.add_argument("--read", action="append", default=[])
    parser.add_argument("--write", action="append", default=[])
    parser.add_argument("program")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    try:
        _restrict(options.read, options.write)
    except OSError as exc:
        print(f"confine: cannot restrict file access: {exc}", file=sys.stderr)
        sys.exit(126)
    os.execv(options.program, [options.program, *options.args])


if __name__ == "__main__":
    main()
