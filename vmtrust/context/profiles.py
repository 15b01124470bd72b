"""Site and VO profiles: the two inputs of contextualisation, read and checked strictly.

The **site profile** (the site's, YAML) says what the site always injects —
its CernVM-FS proxies and cache, syslog forwarding, admin ssh keys, CA
certificates, the machine's maximum lifetime, the unprivileged user pilots run
as — and what a VO may ask for (repositories, packages, file locations,
commands).  The **VO profile** (the VO's or a pilot framework's) asks: which
CVMFS repositories, which pilot with which configuration and credential, how
long the machine should live, a few packages, files and commands.

Following the HEPiX contextualisation policy, everything touching the
machine's control (accounts, keys, boot hooks, logging, proxies, credentials
of the host) is the site's: a VO profile key that reaches into it is refused
with an error naming the file and key, before anything is built.  Unknown keys
are refused too — cloud-init itself ignores unknown top-level keys silently,
which is how a typo becomes a hole.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vmtrust import yamlsafe
from vmtrust.errors import ConfigError, Problems

#: VO keys that are the site's business by policy, with the reason given to the VO.
SITE_ONLY = {
    "users": "accounts are injected by the site, never by a VO",
    "groups": "accounts are injected by the site, never by a VO",
    "ssh_authorized_keys": "ssh keys are injected by the site, never by a VO",
    "ssh_keys": "host keys are the site's",
    "disable_root": "root access is the site's decision",
    "bootcmd": "boot hooks run before site policy is applied",
    "boothooks": "boot hooks run before site policy is applied",
    "ca_certs": "trusted CAs are the site's",
    "rsyslog": "logging is the site's (traceability policy)",
    "syslog": "logging is the site's (traceability policy)",
    "power_state": "the machine's lifetime is set with 'lifetime', within the site's maximum",
    "mounts": "mounts are the site's",
    "disable_ec2_metadata": "metadata access is the site's",
    "cvmfs_proxy": "CVMFS proxies are the site's",
    "proxy": "proxies are the site's",
}
_REPO = re.compile(r"[a-z0-9][a-z0-9.-]*\.[a-z]{2,}\Z")
_PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]*\Z")
#: "vo-" so that a VO unit cannot replace a system service (sshd, rsyslog …)
_UNIT = re.compile(r"vo-[A-Za-z0-9_.@-]*\.service\Z")


@dataclass(frozen=True)
class CvmfsSite:
    proxy: str
    quota_mb: int = 4000
    cache_base: str = "/var/lib/cvmfs"
    client_profile: str = ""
    repositories: tuple[str, ...] = ()  #: always mounted
    allowed: tuple[str, ...] = ("*",)  #: glob patterns of repositories a VO may ask for


@dataclass(frozen=True)
class SiteProfile:
    name: str
    cvmfs: CvmfsSite | None
    syslog: tuple[str, ...] = ()  #: remotes, "@@host:port" (TCP) or "@host:port" (UDP)
    admin_ssh_keys: tuple[str, ...] = ()
    ca_certificates: tuple[str, ...] = ()  #: PEM texts
    max_lifetime: int = 172800  #: seconds
    grace: int = 600  #: seconds between the shutdown notice and the power-off
    pilot_user: str = "pilot"
    packages: tuple[str, ...] = ()  #: allow-list for VO packages (globs)
    file_prefixes: tuple[str, ...] = ("/opt/", "/etc/vo/")  #: where VO files may go
    runcmd: bool = True  #: may the VO add commands (run as root, after site set-up)
    source: str = ""


@dataclass(frozen=True)
class Pilot:
    command: str = ""
    unit: str = ""  #: systemd unit file text, when the pilot is a service
    unit_name: str = "vo-pilot.service"
    config_path: str = ""
    config: str = ""
    credential_path: str = ""
    credential: str = field(default="", repr=False)  #: a secret: never logged
    environment: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class VoFile:
    path: str
    content: str = field(repr=False)
    permissions: str = "0644"


@dataclass(frozen=True)
class VoProfile:
    vo: str
    repositories: tuple[str, ...] = ()
    pilot: Pilot | None = None
    lifetime: int | None = None
    packages: tuple[str, ...] = ()
    files: tuple[VoFile, ...] = ()
    runcmd: tuple[str, ...] = ()
    source: str = ""


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        data = yamlsafe.load_file(path, source=f"{what} {path}")
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{what} {path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: must be a mapping of keys")
    return data


def _text(p: Problems, obj: dict, key: str, *, required: bool = False, default: str = "") -> str:
    value = obj.get(key)
    if value is None:
        if required:
            p.add(key, "missing")
        return default
    if not isinstance(value, str) or not value.strip():
        p.add(key, "must be a non-empty string")
        return default
    return value


def _texts(p: Problems, obj: dict, key: str, prefix: str = "") -> tuple[str, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        p.add(prefix + key, "must be a list of non-empty strings")
        return ()
    return tuple(value)


def _int(p: Problems, obj: dict, key: str, default: int, low: int = 0, prefix: str = "") -> int:
    value = obj.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        p.add(prefix + key, f"must be an integer of at least {low}")
        return default
    return value


def _unknown(p: Problems, obj: dict, known: set[str], prefix: str = "") -> None:
    for key in sorted(set(obj) - known, key=str):
        name = str(key) if str(key).isprintable() else repr(key)
        p.add(f"{prefix}{name}", "unknown key")


def load_site(path: Path) -> SiteProfile:
    data = read_yaml(path, "site profile")
    p = Problems(f"site profile {path}")
    _unknown(p, data, {"site", "cvmfs", "syslog", "admin_ssh_keys", "ca_certificates",
                       "lifetime", "pilot_user", "vo_may"})  # fmt: skip
    cvmfs = None
    raw = data.get("cvmfs")
    if raw is not None:
        if not isinstance(raw, dict):
            p.add("cvmfs", "must be a mapping")
        else:
            _unknown(p, raw, {"proxy", "quota_mb", "cache_base", "client_profile",
                              "repositories", "allowed_repositories"}, "cvmfs.")  # fmt: skip
            sub = Problems(f"site profile {path}")
            proxy = _text(sub, raw, "proxy", required=True)
            if proxy and proxy.strip() not in ("DIRECT", "auto") and not _proxy_ok(proxy):
                sub.add("proxy", "not a CVMFS proxy list (URLs joined by '|' and ';', "
                        "DIRECT, auto)")  # fmt: skip
            profile = _text(sub, raw, "client_profile")
            if profile and profile != "single":
                sub.add("client_profile", "only 'single' exists")
            repos = _texts(sub, raw, "repositories")
            for repo in repos:
                if not _REPO.match(repo):
                    sub.add("repositories", f"not a repository name: {repo!r}")
            cvmfs = CvmfsSite(
                proxy=proxy.strip(),
                quota_mb=_int(sub, raw, "quota_mb", 4000, 1000),
                cache_base=_text(sub, raw, "cache_base", default="/var/lib/cvmfs"),
                client_profile=profile,
                repositories=repos,
                allowed=_texts(sub, raw, "allowed_repositories") or ("*",),
            )
            p.items += [item.replace(": ", ": cvmfs.", 1) for item in sub.items]
    lifetime = data.get("lifetime", {}) or {}
    if not isinstance(lifetime, dict):
        p.add("lifetime", "must be a mapping with max_seconds and grace_seconds")
        lifetime = {}
    _unknown(p, lifetime, {"max_seconds", "grace_seconds"}, "lifetime.")
    vo_may = data.get("vo_may", {}) or {}
    if not isinstance(vo_may, dict):
        p.add("vo_may", "must be a mapping")
        vo_may = {}
    _unknown(p, vo_may, {"packages", "file_prefixes", "runcmd"}, "vo_may.")
    prefixes = _texts(p, vo_may, "file_prefixes", "vo_may.") if "file_prefixes" in vo_may else None
    for prefix in prefixes or ():
        if not prefix.startswith("/") or not prefix.endswith("/"):
            p.add("vo_may.file_prefixes", f"must be absolute directories ending in '/': {prefix}")
    runcmd = vo_may.get("runcmd", True)
    if not isinstance(runcmd, bool):
        p.add("vo_may.runcmd", "must be true or false")
    ca = _texts(p, data, "ca_certificates")
    for pem in ca:
        if "-----BEGIN CERTIFICATE-----" not in pem:
            p.add("ca_certificates", "each entry must be a PEM certificate")
    syslog = _texts(p, data, "syslog")
    for remote in syslog:
        if not re.fullmatch(r"@{1,2}[A-Za-z0-9.:\[\]-]+(:\d+)?", remote):
            p.add("syslog", f"not '@host:port' (UDP) or '@@host:port' (TCP): {remote!r}")
    site = SiteProfile(
        name=_text(p, data, "site", required=True),
        cvmfs=cvmfs,
        syslog=syslog,
        admin_ssh_keys=_texts(p, data, "admin_ssh_keys"),
        ca_certificates=ca,
        max_lifetime=_int(p, lifetime, "max_seconds", 172800, 60, "lifetime."),
        grace=_int(p, lifetime, "grace_seconds", 600, 0, "lifetime."),
        pilot_user=_text(p, data, "pilot_user", default="pilot"),
        packages=_texts(p, vo_may, "packages", "vo_may."),
        file_prefixes=prefixes if prefixes is not None else ("/opt/", "/etc/vo/"),
        runcmd=runcmd if isinstance(runcmd, bool) else False,
        source=str(path),
    )
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", site.pilot_user):
        p.add("pilot_user", "not a valid user name")
    p.raise_if_any()
    return site


def _proxy_ok(text: str) -> bool:
    for group in text.split(";"):
        for proxy in group.split("|"):
            proxy = proxy.strip()
            if proxy in ("DIRECT", "auto"):
                continue
            if not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+(:\d+)?/?", proxy):
                return False
    return True


def load_vo(path: Path, site: SiteProfile) -> VoProfile:
    """Read a VO profile and check it against ``site``: every refusal names the key."""
    data = read_yaml(path, "VO profile")
    p = Problems(f"VO profile {path}")
    for key in sorted(set(data) & set(SITE_ONLY)):
        p.add(key, f"not allowed by the site ({SITE_ONLY[key]})")
    known = {"vo", "cvmfs", "pilot", "lifetime", "packages", "write_files", "runcmd"}
    _unknown(p, {k: v for k, v in data.items() if k not in SITE_ONLY}, known)
    repos: tuple[str, ...] = ()
    cvmfs = data.get("cvmfs", {}) or {}
    if not isinstance(cvmfs, dict):
        p.add("cvmfs", "must be a mapping with repositories")
        cvmfs = {}
    for key in sorted(set(cvmfs) - {"repositories"}, key=str):
        why = "CVMFS proxies and cache are the site's" if key != "repositories" else ""
        p.add(f"cvmfs.{key}", f"not allowed by the site ({why})")
    repos = _texts(p, cvmfs, "repositories")
    for repo in repos:
        if not _REPO.match(repo):
            p.add("cvmfs.repositories", f"not a repository name: {repo!r}")
        elif site.cvmfs is None:
            p.add("cvmfs.repositories", "this site does not offer CVMFS")
        elif not any(fnmatch.fnmatchcase(repo, pat) for pat in site.cvmfs.allowed):
            p.add("cvmfs.repositories", f"{repo} is not among the repositories the site allows")
    packages = _texts(p, data, "packages")
    for name in packages:
        if not _PACKAGE.match(name):
            p.add("packages", f"not a package name: {name!r}")
        elif not any(fnmatch.fnmatchcase(name, pat) for pat in site.packages):
            p.add("packages", f"{name} is not on the site's package allow-list")
    lifetime = data.get("lifetime")
    if lifetime is not None and (
        not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime < 60
    ):
        p.add("lifetime", "must be a number of seconds, at least 60")
        lifetime = None
    elif lifetime is not None and lifetime > site.max_lifetime:
        p.add("lifetime", f"{lifetime} s is more than the site allows ({site.max_lifetime} s)")
    files = _files(p, data.get("write_files", []), site)
    runcmd = _texts(p, data, "runcmd")
    if runcmd and not site.runcmd:
        p.add("runcmd", "not allowed by the site")
    pilot = _pilot(p, data.get("pilot"), site)
    vo = _text(p, data, "vo", required=True)
    p.raise_if_any()
    return VoProfile(vo, repos, pilot, lifetime, packages, files, runcmd, str(path))


_SITE_PATHS = ("/etc/cvmfs/", "/etc/ssh/", "/root/", "/etc/rsyslog", "/etc/sudoers",
               "/etc/passwd", "/etc/shadow", "/etc/group", "/etc/pki/", "/etc/ssl/",
               "/etc/cloud/", "/etc/systemd/", "/var/lib/cloud/", "/etc/machinefeatures",
               "/etc/vmtrust/")  # fmt: skip


def _allowed_path(path: str, site: SiteProfile) -> str | None:
    """None if a VO may write ``path``, else why not."""
    if not path.isprintable():
        return "must be a path of printable characters"
    if not path.startswith("/") or "/../" in path + "/" or "//" in path:
        return "must be an absolute path without '..'"
    if any(path.startswith(s) or path + "/" == s for s in _SITE_PATHS):
        return "is a site-controlled location"
    if not any(path.startswith(prefix) for prefix in site.file_prefixes):
        return f"is outside the locations the site allows ({', '.join(site.file_prefixes)})"
    return None


def _files(p: Problems, value: Any, site: SiteProfile) -> tuple[VoFile, ...]:
    if not isinstance(value, list):
        p.add("write_files", "must be a list of {path, content, permissions}")
        return ()
    files = []
    for index, item in enumerate(value):
        where = f"write_files[{index}]"
        if not isinstance(item, dict):
            p.add(where, "must be a mapping")
            continue
        _unknown(p, item, {"path", "content", "permissions"}, f"{where}.")
        path, content = item.get("path"), item.get("content")
        perms = item.get("permissions", "0644")
        if not isinstance(path, str) or not isinstance(content, str):
            p.add(where, "needs a string path and a string content")
            continue
        why = _allowed_path(path, site)
        if why:
            p.add(f"{where}.path", f"{path if path.isprintable() else repr(path)} {why}")
        if not isinstance(perms, str) or not re.fullmatch(r"0?[0-7]{3,4}", perms):
            p.add(f"{where}.permissions", "must be an octal string such as '0644'")
            continue
        if int(perms, 8) & 0o6000:
            p.add(f"{where}.permissions", "setuid and setgid files are not allowed")
            continue
        files.append(VoFile(path, content, perms.rjust(4, "0")))
    return tuple(files)


def _pilot(p: Problems, value: Any, site: SiteProfile) -> Pilot | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        p.add("pilot", "must be a mapping")
        return None
    _unknown(p, value, {"command", "systemd_unit", "unit_name", "config", "credential",
                        "environment"}, "pilot.")  # fmt: skip
    command = _text(p, value, "command")
    unit = _text(p, value, "systemd_unit")
    if bool(command) == bool(unit):
        p.add("pilot", "give exactly one of command or systemd_unit")
    # '+' and '!' Exec prefixes and PermissionsStartOnly= run commands as root despite User=
    if unit and re.search(r"^\s*(Exec\w*\s*=\s*[-@:]*[+!]|PermissionsStartOnly\s*=)", unit, re.M):
        p.add("pilot.systemd_unit", "privileged Exec prefixes ('+', '!') are not allowed: "
              f"the pilot runs as {site.pilot_user}")  # fmt: skip
    unit_name = _text(p, value, "unit_name", default="vo-pilot.service")
    if not _UNIT.match(unit_name):
        p.add("pilot.unit_name", "must be a service name 'vo-….service' "
              "(a VO unit cannot replace a system service)")  # fmt: skip
    paths: dict[str, tuple[str, str]] = {}
    for key in ("config", "credential"):
        item = value.get(key)
        if item is None:
            paths[key] = ("", "")
            continue
        if not isinstance(item, dict) or set(item) - {"path", "content"}:
            p.add(f"pilot.{key}", "must be {path, content}")
            paths[key] = ("", "")
            continue
        path, content = item.get("path"), item.get("content")
        if not isinstance(path, str) or not isinstance(content, str) or not content:
            p.add(f"pilot.{key}", "needs a string path and a non-empty string content")
            paths[key] = ("", "")
            continue
        why = _allowed_path(path, site)
        if why:
            p.add(f"pilot.{key}.path", f"{path if path.isprintable() else repr(path)} {why}")
        paths[key] = (path, content)
    env = value.get("environment", {}) or {}
    pairs: list[tuple[str, str]] = []
    if not isinstance(env, dict):
        p.add("pilot.environment", "must be a mapping of names to strings")
    else:
        for name, text in env.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                p.add("pilot.environment", f"not a variable name: {name!r}")
            elif not isinstance(text, str | int) or isinstance(text, bool):
                p.add(f"pilot.environment.{name}", "must be a string")
            else:
                pairs.append((name, str(text)))
    return Pilot(
        command=command,
        unit=unit,
        unit_name=unit_name,
        config_path=paths["config"][0],
        config=paths["config"][1],
        credential_path=paths["credential"][0],
        credential=paths["credential"][1],
        environment=tuple(pairs),
    )
