"""The VO profile and the site's answer to it: what a VO may ask of a worker node.

Two steps, kept apart so that ``context build`` (reading a VO profile) and
``context check`` (reading a user-data back) refuse the same request with the
same words and the same exit status:

- :func:`load_vo` reads the YAML into a :class:`VoProfile` (form: types,
  unknown keys, keys that are the site's by policy, the credential's file);
- :func:`vo_problems` judges a :class:`VoProfile` against the site profile
  (repositories, packages, file locations and modes, lifetime, commands, the
  pilot's command and environment).

Following the HEPiX policy the VO gets no root-level configuration: its pilot
runs as the site's unprivileged user from a unit vmtrust writes itself, and
root commands (``runcmd``) only where the site says ``vo_may: {runcmd: true}``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Any

from vmtrust.context.profiles import (
    _PACKAGE,
    _REPO,
    SITE_ONLY,
    Fields,
    Pilot,
    PilotFile,
    SiteProfile,
    VoFile,
    VoProfile,
    read_yaml,
)
from vmtrust.errors import ContextRefused, Problems

__all__ = ["MAX_PILOT_FILE", "RESERVED_ENVIRONMENT", "SITE_PATHS", "load_vo", "vo_problems"]

#: locations a VO never writes, whatever the site's file_prefixes say
SITE_PATHS = ("/etc/cvmfs/", "/etc/ssh/", "/root/", "/etc/rsyslog", "/etc/sudoers",
              "/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/pki/",
              "/etc/ssl/", "/etc/cloud/", "/etc/systemd/", "/var/lib/cloud/",
              "/etc/machinefeatures", "/etc/jobfeatures", "/etc/vmtrust/", "/var/lib/vmtrust/",
              "/usr/", "/etc/yum.repos.d/", "/etc/yum", "/etc/dnf/", "/etc/apt/", "/etc/pam.d/",
              "/etc/security/", "/etc/fstab", "/etc/cron", "/etc/profile", "/etc/environment",
              "/etc/ld.so", "/etc/selinux/", "/boot/", "/bin/", "/sbin/", "/lib")  # fmt: skip
#: variables vmtrust sets for the pilot itself
RESERVED_ENVIRONMENT = frozenset(
    {"MACHINEFEATURES", "JOBFEATURES", "JOBOUTPUTS", "HOME", "USER", "LOGNAME", "SHELL"}
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: a credential or configuration read from a file at build time: at most this many bytes
MAX_PILOT_FILE = 1 << 16


def _allowed_path(path: str, site: SiteProfile) -> str | None:
    """None if a VO may write ``path``, else why not."""
    if not path.isprintable():
        return "must be a path of printable characters"
    if not path.startswith("/") or "/../" in path + "/" or "/./" in path + "/" or "//" in path:
        return "must be an absolute path without '..'"
    if path.endswith("/"):
        return "must be a file, not a directory"
    if any(path.startswith(s) or path + "/" == s for s in SITE_PATHS):
        return "is a site-controlled location"
    if not any(path.startswith(prefix) for prefix in site.file_prefixes):
        return f"is outside the locations the site allows ({', '.join(site.file_prefixes)})"
    return None


def _shown(text: str) -> str:
    return text if text.isprintable() else repr(text)


def vo_problems(vo: VoProfile, site: SiteProfile, p: Problems) -> None:
    """Add to ``p`` everything of ``vo`` the site's policy refuses."""
    for repo in vo.repositories:
        if not _REPO.match(repo):
            p.add("cvmfs.repositories", f"not a repository name: {_shown(repo)}")
        elif site.cvmfs is None:
            p.add("cvmfs.repositories", "this site does not offer CVMFS")
        elif not any(fnmatch.fnmatchcase(repo, pat) for pat in site.cvmfs.allowed):
            p.add("cvmfs.repositories", f"{repo} is not among the repositories the site allows")
    for name in vo.packages:
        if not _PACKAGE.match(name):
            p.add("packages", f"not a package name: {_shown(name)}")
        elif not any(fnmatch.fnmatchcase(name, pat) for pat in site.packages):
            p.add("packages", f"{name} is not on the site's package allow-list")
    if vo.lifetime is not None:
        if vo.lifetime > site.max_lifetime:
            p.add("lifetime", f"{vo.lifetime} s is more than the site allows "
                  f"({site.max_lifetime} s)")  # fmt: skip
        elif vo.lifetime <= site.grace or vo.lifetime < 60:
            p.add("lifetime", f"must be at least 60 s and more than the site's grace "
                  f"({site.grace} s)")  # fmt: skip
    for index, item in enumerate(vo.files):
        where = f"write_files[{index}]"
        why = _allowed_path(item.path, site)
        if why:
            p.add(f"{where}.path", f"{_shown(item.path)} {why}")
        if not re.fullmatch(r"[0-7]{4}", item.permissions):
            p.add(f"{where}.permissions", "must be an octal string such as '0644'")
        elif int(item.permissions, 8) & 0o6000:
            p.add(f"{where}.permissions", "setuid and setgid files are not allowed")
    written = [item.path for item in vo.files]
    written += [item.path for item in vo.pilot.files] if vo.pilot is not None else []
    for path in sorted({path for path in written if written.count(path) > 1}):
        p.add("write_files", f"{_shown(path)} is written twice (the last one would win)")
    if vo.runcmd and not site.runcmd:
        p.add("runcmd", "not allowed by the site")
    if vo.pilot is not None:
        _pilot_problems(vo.pilot, site, p)


def _text_ok(text: str) -> bool:
    """Text a script may quote: printable, with new lines and tabs (no other controls)."""
    return text.replace("\n", "").replace("\t", "").isprintable()


def _pilot_problems(pilot: Pilot, site: SiteProfile, p: Problems) -> None:
    command = pilot.command
    if command and (  # a missing command is the profile's form, reported by load_vo
        not command.startswith("/")
        or not command.isprintable()
        or any(c.isspace() or c == "=" for c in command)
    ):
        p.add("pilot.command", "must be the absolute path of the program, without spaces or "
              "'=' (its arguments go in pilot.arguments)")  # fmt: skip
    if not all(_text_ok(arg) for arg in pilot.arguments):
        p.add("pilot.arguments", "must be text (printable, new lines and tabs)")
    for name, value in pilot.environment:
        if not _NAME.match(name):
            p.add("pilot.environment", f"not a variable name: {_shown(name)}")
        elif name in RESERVED_ENVIRONMENT:
            p.add(f"pilot.environment.{name}", "is set by vmtrust for the pilot")
        elif not _text_ok(value):
            p.add(f"pilot.environment.{name}", "must be text (printable, new lines and tabs)")
    for item in pilot.files:
        why = _allowed_path(item.path, site)
        if why:
            p.add(f"pilot.{item.key}.path", f"{_shown(item.path)} {why}")
    if len(pilot.files) > 2:
        p.add("pilot", "at most a configuration and a credential file")


def load_vo(path: Path, site: SiteProfile) -> VoProfile:
    """Read a VO profile and judge it against ``site``: every problem, each naming its key."""
    data = read_yaml(path, "VO profile")
    p = Problems(f"VO profile {path}")
    f = Fields(p, data)
    for key in sorted(set(data) & set(SITE_ONLY)):
        f.add(key, f"not allowed by the site ({SITE_ONLY[key]})")
    f.known("vo", "cvmfs", "pilot", "lifetime", "packages", "write_files", "runcmd",
            *SITE_ONLY)  # fmt: skip
    cvmfs = data.get("cvmfs") or {}
    if not isinstance(cvmfs, dict):
        f.add("cvmfs", "must be a mapping with repositories")
        cvmfs = {}
    for key in sorted(set(cvmfs) - {"repositories"}, key=str):
        f.add(f"cvmfs.{_shown(str(key))}", "not allowed by the site (CVMFS proxies and cache "
              "are the site's)")  # fmt: skip
    lifetime = data.get("lifetime")
    if lifetime is not None and (not isinstance(lifetime, int) or isinstance(lifetime, bool)):
        f.add("lifetime", "must be a number of seconds")
        lifetime = None
    vo = VoProfile(
        vo=f.text("vo", required=True),
        repositories=Fields(p, cvmfs, "cvmfs.").texts("repositories"),
        pilot=_pilot(f, Path(path).parent),
        lifetime=lifetime,
        packages=f.texts("packages"),
        files=_files(f),
        runcmd=f.texts("runcmd"),
        source=str(path),
    )
    vo_problems(vo, site, p)
    if p.items:
        raise ContextRefused(p.items)
    return vo


def _files(f: Fields) -> tuple[VoFile, ...]:
    value = f.data.get("write_files", [])
    if not isinstance(value, list):
        f.add("write_files", "must be a list of {path, content, permissions}")
        return ()
    files = []
    for index, item in enumerate(value):
        where = f"write_files[{index}]"
        if not isinstance(item, dict):
            f.add(where, "must be a mapping")
            continue
        Fields(f.p, item, f"{where}.").known("path", "content", "permissions")
        path, content = item.get("path"), item.get("content")
        perms = item.get("permissions", "0644")
        if not isinstance(path, str) or not isinstance(content, str):
            f.add(where, "needs a string path and a string content")
            continue
        if not isinstance(perms, str) or not re.fullmatch(r"0?[0-7]{3,4}", perms):
            f.add(f"{where}.permissions", "must be an octal string such as '0644'")
            continue
        files.append(VoFile(path, content, perms[1:] if len(perms) == 5 else perms.rjust(4, "0")))
    return tuple(files)


def _pilot(f: Fields, base: Path) -> Pilot | None:
    value = f.data.get("pilot")
    if value is None:
        return None
    if not isinstance(value, dict):
        f.add("pilot", "must be a mapping")
        return None
    g = Fields(f.p, value, "pilot.")
    for key in ("systemd_unit", "unit_name"):
        if key in value:
            g.add(key, "vmtrust writes the pilot's unit itself (unprivileged, read-only "
                  "system): give command, arguments and environment")  # fmt: skip
    g.known("command", "arguments", "environment", "config", "credential",
            "systemd_unit", "unit_name")  # fmt: skip
    command = g.text("command", required=True)
    arguments = g.data.get("arguments", [])
    if not isinstance(arguments, list) or not all(isinstance(a, str | int) for a in arguments):
        g.add("arguments", "must be a list of strings")
        arguments = []
    env = value.get("environment") or {}
    pairs: list[tuple[str, str]] = []
    if not isinstance(env, dict):
        g.add("environment", "must be a mapping of names to strings")
    else:
        for name, text in env.items():
            if not isinstance(text, str | int) or isinstance(text, bool):
                g.add(f"environment.{_shown(str(name))}", "must be a string")
            else:
                pairs.append((str(name), str(text)))
    files = []
    for key in ("config", "credential"):
        item = _pilot_file(g, key, base)
        if item is not None:
            files.append(item)
    return Pilot(
        command=command,
        arguments=tuple(str(a) for a in arguments),
        environment=tuple(pairs),
        files=tuple(files),
    )


def _pilot_file(g: Fields, key: str, base: Path) -> PilotFile | None:
    """``{path, file}`` (read now), or for the configuration also ``{path, content}``."""
    item = g.data.get(key)
    if item is None:
        return None
    shape = "{path, file}" if key == "credential" else "{path, file} or {path, content}"
    if not isinstance(item, dict) or not isinstance(item.get("path"), str):
        g.add(key, f"must be {shape}")
        return None
    if key == "credential" and "content" in item:
        g.add(f"{key}.content", "a credential is read from a file at build time "
              "({path, file}), never written into the profile")  # fmt: skip
        return None
    if set(item) not in ({"path", "file"}, {"path", "content"}):
        g.add(key, f"must be {shape}")
        return None
    if "content" in item:
        content = item["content"]
        if not isinstance(content, str) or not content:
            g.add(key, "needs a non-empty string content")
            return None
        return PilotFile(item["path"], content, key)
    content = _read_secret(g, f"{key}.file", item["file"], base)
    return PilotFile(item["path"], content, key) if content is not None else None


def _read_secret(g: Fields, key: str, name: Any, base: Path) -> str | None:
    """The text of a file named in a profile (relative to it); errors never show content."""
    if not isinstance(name, str) or not name.strip():
        g.add(key, "must be the name of a file")
        return None
    path = (base / name).expanduser()
    try:
        with open(path, "rb") as stream:
            info = os.fstat(stream.fileno())
            data = stream.read(MAX_PILOT_FILE + 1)
    except IsADirectoryError:
        g.add(key, f"{_shown(name)}: is a directory")
        return None
    except OSError as exc:
        g.add(key, f"{_shown(name)}: {exc.strerror or exc}")
        return None
    if info.st_mode & 0o004:
        g.add(key, f"{_shown(name)}: readable by every user of this machine (chmod o-r)")
        return None
    if len(data) > MAX_PILOT_FILE:
        g.add(key, f"{_shown(name)}: larger than {MAX_PILOT_FILE} bytes")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        g.add(key, f"{_shown(name)}: not UTF-8 text")
        return None
    if not text.strip():
        g.add(key, f"{_shown(name)}: empty")
        return None
    return text
