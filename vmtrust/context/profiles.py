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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vmtrust import yamlsafe
from vmtrust.errors import ConfigError, Problems

__all__ = [
    "SITE_ONLY",
    "URL",
    "CvmfsDomain",
    "CvmfsSite",
    "Features",
    "Fields",
    "Flavour",
    "JobOutputs",
    "PackageSources",
    "Pilot",
    "PilotFile",
    "Scratch",
    "SiteProfile",
    "VoFile",
    "VoProfile",
    "read_yaml",
]

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
    "user": "the legacy 'user' key makes an account with sudo and the VO's key",
    "system_info": "the default user and the distribution's settings are the site's",
    "password": "passwords are the site's",
    "chpasswd": "passwords are the site's",
    "ssh_pwauth": "ssh password login is the site's decision",
    "yum_repos": "package sources are the site's (its package proxy or mirror)",
    "apt": "package sources are the site's (its package proxy or mirror)",
    "snap": "snap commands run as root",
    "fs_setup": "disks are the site's (its scratch slot)",
    "disk_setup": "disks are the site's (its scratch slot)",
}
_REPO = re.compile(r"[a-z0-9][a-z0-9.-]*\.[a-z]{2,}\Z")
_PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]*\Z")
#: http(s) URL without quotes, spaces or shell characters: safe in KEY=value files and scripts
URL = re.compile(r"https?://[A-Za-z0-9.\[\]:-]+(:\d+)?(/[A-Za-z0-9._~%/@$+=,-]*)?\Z")


# --- the site profile ---------------------------------------------------------------------


@dataclass(frozen=True)
class CvmfsDomain:
    """Repositories outside the default configuration: their Stratum 1s and keys."""

    domain: str
    server_urls: tuple[str, ...]
    keys: tuple[str, ...]  #: PEM public keys


@dataclass(frozen=True)
class CvmfsSite:
    proxy: str
    install: str = "repository"  #: or "preinstalled": the image ships the client
    pac_urls: tuple[str, ...] = ()
    fallback_proxy: str = ""
    quota_mb: int = 4000
    cache_base: str = "/var/lib/cvmfs"
    client_profile: str = ""
    repositories: tuple[str, ...] = ()  #: always mounted
    allowed: tuple[str, ...] = ("*",)  #: glob patterns of repositories a VO may ask for
    domains: tuple[CvmfsDomain, ...] = ()


@dataclass(frozen=True)
class PackageSources:
    """How a machine installs packages at boot when it reaches the world only via proxies."""

    proxy: str = ""  #: for dnf, yum, apt-get and curl at boot
    cvmfs_mirror_el: str = ""  #: baseurl of a site repository serving the cvmfs packages
    cvmfs_mirror_debian: str = ""  #: "URL SUITE COMPONENT..." of the same for apt
    cvmfs_mirror_key: str = field(default="", repr=False)  #: its armored GPG key
    epel: bool = False  #: EPEL for VO packages on EL (apptainer on EL9)


@dataclass(frozen=True)
class Scratch:
    device: str  #: a block device or a cloud-init alias such as ephemeral0
    mount: str
    filesystem: str = "ext4"


@dataclass(frozen=True)
class Features:
    """Machine features the site states (the rest is measured or from the flavour)."""

    hs06_per_cpu: str = ""  #: HEPSPEC06 of one CPU, as the site benchmarked it
    jobslots: int = 1
    extra: tuple[tuple[str, str], ...] = ()  #: more machine features, name → value


@dataclass(frozen=True)
class JobOutputs:
    upload_url: str = ""  #: PUT <url>/<instance id>.tar.gz before power-off, when set
    heartbeat_seconds: int = 300  #: $JOBOUTPUTS/vm-heartbeat refreshed this often (0: never)


@dataclass(frozen=True)
class SiteProfile:
    name: str
    cvmfs: CvmfsSite | None
    syslog: tuple[str, ...] = ()  #: remotes, "@@host:port" (TCP) or "@host:port" (UDP)
    admin_ssh_keys: tuple[str, ...] = ()
    ca_certificates: tuple[str, ...] = ()  #: PEM texts
    max_lifetime: int = 172800  #: seconds
    grace: int = 600  #: seconds the pilot gets between the shutdown time and the power-off
    pilot_user: str = "pilot"
    packages: tuple[str, ...] = ()  #: allow-list for VO packages (globs)
    file_prefixes: tuple[str, ...] = ("/opt/", "/etc/vo/")  #: where VO files may go
    runcmd: bool = False  #: may the VO add commands (run as root, before the pilot)
    sources: PackageSources = PackageSources()
    scratch: Scratch | None = None
    features: Features = Features()
    joboutputs: JobOutputs = JobOutputs()
    source: str = ""


# --- the VO profile -----------------------------------------------------------------------


@dataclass(frozen=True)
class PilotFile:
    """A file only the pilot user reads (its configuration, its credential): mode 0600."""

    path: str
    content: str = field(repr=False)  #: may be a secret: never logged
    key: str = "config"  #: which key of the VO profile: config or credential


@dataclass(frozen=True)
class Pilot:
    command: str  #: absolute path of the program
    arguments: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    files: tuple[PilotFile, ...] = ()  #: configuration, then credential


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


@dataclass(frozen=True)
class Flavour:
    """The machine's size, when known before boot (at launch, from the cloud's flavour).

    Unknown values are measured on the machine at boot instead.
    """

    vcpus: int | None = None
    ram_mb: int | None = None
    swap_mb: int | None = None
    scratch_gb: int | None = None  #: the ephemeral disk, or the root disk without one


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


class Fields:
    """Typed reading of one mapping of a profile; every problem is named by its key path."""

    def __init__(self, p: Problems, data: Any, prefix: str = "") -> None:
        self.p = p
        self.prefix = prefix
        self.data: dict = data if isinstance(data, dict) else {}

    def add(self, key: str, message: str) -> None:
        self.p.add(self.prefix + key, message)

    def known(self, *keys: str) -> None:
        for key in sorted(set(self.data) - set(keys), key=str):
            name = str(key) if str(key).isprintable() else repr(key)
            self.add(name, "unknown key")

    def text(self, key: str, default: str = "", *, required: bool = False) -> str:
        value = self.data.get(key)
        if value is None:
            if required:
                self.add(key, "missing")
            return default
        if not isinstance(value, str) or not value.strip():
            self.add(key, "must be a non-empty string")
            return default
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.add(key, "must be a list of non-empty strings")
            return ()
        return tuple(value)

    def integer(self, key: str, default: int, low: int = 0) -> int:
        value = self.data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            self.add(key, f"must be an integer of at least {low}")
            return default
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.add(key, "must be true or false")
            return default
        return value

    def section(self, key: str, *known: str) -> Fields:
        """The nested mapping ``key`` (empty when absent), its unknown keys refused."""
        value = self.data.get(key)
        if value is not None and not isinstance(value, dict):
            self.add(key, "must be a mapping")
        inner = Fields(self.p, value or {}, f"{self.prefix}{key}.")
        inner.known(*known)
        return inner
