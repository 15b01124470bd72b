"""Reading a user-data back into the request that would make vmtrust write it.

``context check`` needs the VO's request (its repositories, packages, files,
pilot command, arguments and environment, lifetime) and the machine's flavour
to judge them as ``context build`` judges a VO profile, and then to rebuild
the user-data and compare.  Each value is read from the one place vmtrust
writes it: ``default.local``, the ``NAME=value`` block of a script, the pilot's
start script, the VO's own files.  Anything read here only *proposes* a
request: the comparison with the rebuild decides.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from vmtrust.context import scripts
from vmtrust.context.compose import DEFAULT_LOCAL, GIB, MEASURED, MIB, site_files
from vmtrust.context.profiles import Flavour, Pilot, PilotFile, SiteProfile, VoFile, VoProfile

__all__ = ["own_paths", "request"]


def own_paths(site: SiteProfile) -> set[str]:
    """Files vmtrust writes from the site profile alone (compared, never read as the VO's)."""
    return {item["path"] for item in site_files(site, [])} | {
        f"{scripts.UNITS}/{scripts.PILOT_UNIT}"
    }


def _parameters(body: str) -> dict[str, str]:
    """The ``NAME=value`` block at the top of a vmtrust script (values as written)."""
    found = {}
    for line in body.splitlines()[1:]:
        if line == "set -u":
            break
        match = re.fullmatch(r"([A-Z_]+)=(.*)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def _number(text: str | None, name: str, unit: int = 1) -> int | None:
    """A flavour value as the machine script states it (None: measured at boot)."""
    if text is None or text == MEASURED.get(name):
        return None
    try:
        words = shlex.split(text)
    except ValueError:  # unbalanced quotes: not a number vmtrust wrote
        return -1
    value = int(words[0]) if len(words) == 1 and words[0].isdigit() else -1
    return value // unit if value >= 0 and value % unit == 0 else -1


def _shell_value(text: str, name: str) -> str | None:
    """The last value ``text`` (a KEY=value file sourced by /bin/sh) gives ``name``."""
    value = None
    for line in text.splitlines():
        if line.startswith(f"{name}="):
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                return ""
            value = words[0].split("=", 1)[1] if len(words) == 1 else ""
    return value


def _words(text: str) -> list[str]:
    """The package names of ``VO_PACKAGES='a b'`` (or the text itself when unreadable)."""
    try:
        words = shlex.split(text)
    except ValueError:
        return [text]
    return words[0].split() if len(words) == 1 else words


def _launcher(text: Any) -> tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]] | None:
    """(command, arguments, environment) from vmtrust's pilot-start, or None."""
    marker = '  JOBOUTPUTS="$R/var/lib/vmtrust/joboutputs" \\\n'
    if not isinstance(text, str) or marker not in text:
        return None
    try:  # each line ends in ' \\' + newline: to shlex a word of one newline, dropped
        words = [w for w in shlex.split(text.split(marker, 1)[1]) if w != "\n"]
    except ValueError:
        return None
    env: list[tuple[str, str]] = []
    while words and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        key, value = words.pop(0).split("=", 1)
        env.append((key, value))
    if not words:
        return None
    return words[0], tuple(words[1:]), tuple(env)


def request(config: dict, bodies: dict[str, str], site: SiteProfile) -> tuple[VoProfile, Flavour]:
    """The VO profile and flavour that would make vmtrust write this user-data."""
    own = own_paths(site)
    owner = f"{site.pilot_user}:{site.pilot_user}"
    files: list[VoFile] = []
    private: list[PilotFile] = []
    start = None
    items = config.get("write_files") or []
    repos: tuple[str, ...] = ()
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        path, content, mode = item.get("path"), item.get("content"), item.get("permissions")
        if path == DEFAULT_LOCAL and isinstance(content, str) and not repos:
            value = _shell_value(content, "CVMFS_REPOSITORIES") or ""
            always = site.cvmfs.repositories if site.cvmfs else ()
            repos = tuple(r for r in value.split(",") if r and r not in always)
        if path in own or not isinstance(path, str) or not isinstance(content, str):
            continue
        if path == scripts.LAUNCHER:
            start = _launcher(content)
        elif item == {"path": path, "content": content, "owner": owner, "permissions": "0600",
                      "defer": True}:  # fmt: skip
            private.append(PilotFile(path, content, "credential" if private else "config"))
        elif (
            set(item) == {"path", "content", "owner", "permissions"}
            and isinstance(mode, str)
            and item["owner"] == "root:root"
        ):
            files.append(VoFile(path, content, mode))
    pilot = None
    if start is not None:
        command, arguments, environment = start
        pilot = Pilot(command, arguments, environment, tuple(private))
    machine = _parameters(bodies.get(scripts.MACHINE, ""))
    lifetime = _number(machine.get("LIFETIME"), "LIFETIME")
    flavour = Flavour(
        vcpus=_number(machine.get("TOTAL_CPU"), "TOTAL_CPU"),
        ram_mb=_number(machine.get("MAX_RSS_BYTES"), "MAX_RSS_BYTES", MIB),
        swap_mb=_number(machine.get("MAX_SWAP_BYTES"), "MAX_SWAP_BYTES", MIB),
        scratch_gb=_number(machine.get("SCRATCH_BYTES"), "SCRATCH_BYTES", GIB),
    )
    packages = _words(_parameters(bodies.get(scripts.SOFTWARE, "")).get("VO_PACKAGES", ""))
    runcmd: tuple[str, ...] = ()
    if scripts.VO_COMMANDS in bodies:
        body, header = bodies[scripts.VO_COMMANDS], scripts.vo_commands(())
        text = body[len(header) :] if body.startswith(header) else body
        runcmd = (text.removesuffix("\n"),)
    return VoProfile(
        vo="",
        repositories=repos,
        pilot=pilot,
        lifetime=None if lifetime in (None, site.max_lifetime) else lifetime,
        packages=tuple(packages),
        files=tuple(files),
        runcmd=runcmd,
    ), flavour
