"""Compose the cloud-init user-data of a worker node from a site and a VO profile.

Site parts win by construction: vmtrust writes *one* cloud-config document
itself, placing the VO's requests into the slots the site profile allows, so
no VO part is ever merged by cloud-init (whose default merge replaces
top-level lists whole, and whose ``merge_how`` a VO part could set).  The
work is done by script parts that cloud-init runs in file-name order
(:mod:`vmtrust.context.scripts`): the machine's lifetime and features first,
then software, then the VO's commands where allowed, then the pilot — which
runs from a systemd unit vmtrust writes (the VO supplies no unit text).

The output depends only on the site profile, the VO profile and the flavour:
``context check`` rebuilds it from what it reads back and compares.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from vmtrust.context import scripts
from vmtrust.context.profiles import Flavour, SiteProfile, VoProfile

__all__ = [
    "DEBIAN_MIRROR",
    "DEBIAN_MIRROR_KEY",
    "DEFAULT_LOCAL",
    "EL_MIRROR",
    "EL_MIRROR_KEY",
    "GIB",
    "MEASURED",
    "MIB",
    "Part",
    "compose",
    "site_files",
]

#: what the machine script measures at boot when the flavour does not say
MEASURED = {
    "TOTAL_CPU": "$(nproc)",
    "MAX_RSS_BYTES": "$(awk '/^MemTotal:/ { printf \"%.0f\", $2 * 1024 }' /proc/meminfo)",
    "MAX_SWAP_BYTES": "$(awk '/^SwapTotal:/ { printf \"%.0f\", $2 * 1024 }' /proc/meminfo)",
    "SCRATCH_BYTES": "",
}
MIB, GIB = 1 << 20, 1 << 30
DEFAULT_LOCAL = "/etc/cvmfs/default.local"
EL_MIRROR = "/etc/yum.repos.d/vmtrust-cvmfs.repo"
EL_MIRROR_KEY = "/etc/pki/rpm-gpg/RPM-GPG-KEY-vmtrust-cvmfs"
DEBIAN_MIRROR = "/etc/apt/sources.list.d/vmtrust-cvmfs.list"
DEBIAN_MIRROR_KEY = "/etc/apt/keyrings/vmtrust-cvmfs.asc"


@dataclass(frozen=True)
class Part:
    filename: str
    content_type: str  #: text/cloud-config or text/x-shellscript
    body: str


def _default_local(site: SiteProfile, repos: list[str]) -> str:
    cvmfs = site.cvmfs
    assert cvmfs is not None
    lines = [
        "# Written by vmtrust from the site profile (CernVM-FS client configuration).",
        f"CVMFS_REPOSITORIES={shlex.quote(','.join(repos))}",
        f"CVMFS_HTTP_PROXY={shlex.quote(cvmfs.proxy)}",
    ]
    if cvmfs.pac_urls:
        lines.append(f"CVMFS_PAC_URLS={shlex.quote(';'.join(cvmfs.pac_urls))}")
    if cvmfs.fallback_proxy:
        lines.append(f"CVMFS_FALLBACK_PROXY={shlex.quote(cvmfs.fallback_proxy)}")
    lines += [
        f"CVMFS_QUOTA_LIMIT={cvmfs.quota_mb}",
        f"CVMFS_CACHE_BASE={shlex.quote(cvmfs.cache_base)}",
    ]
    if cvmfs.client_profile:
        lines.append(f"CVMFS_CLIENT_PROFILE={cvmfs.client_profile}")
    return "\n".join(lines) + "\n"


def _site_file(path: str, content: str, permissions: str = "0644") -> dict:
    return {"path": path, "content": content, "owner": "root:root", "permissions": permissions}


def site_files(site: SiteProfile, repos: list[str]) -> list[dict]:
    """The files vmtrust writes for the site, whatever the VO asks."""
    files = []
    if site.cvmfs is not None:  # the site's proxy, even when nothing is mounted at boot
        files.append(_site_file(DEFAULT_LOCAL, _default_local(site, repos)))
        for domain in site.cvmfs.domains:
            keys = f"/etc/cvmfs/keys/{domain.domain}"
            files.append(_site_file(
                f"/etc/cvmfs/domain.d/{domain.domain}.local",
                "# Written by vmtrust from the site profile: a domain outside the default "
                "configuration.\n"
                f"CVMFS_SERVER_URL={shlex.quote(';'.join(domain.server_urls))}\n"
                f"CVMFS_KEYS_DIR={keys}\n",
            ))  # fmt: skip
            for number, key in enumerate(domain.keys, 1):
                files.append(_site_file(f"{keys}/{domain.domain}-{number}.pub", key))
    sources = site.sources
    if sources.cvmfs_mirror_el:
        files.append(_site_file(EL_MIRROR_KEY, sources.cvmfs_mirror_key))
        files.append(_site_file(EL_MIRROR, (
            "[vmtrust-cvmfs]\nname=CernVM-FS packages (site mirror, written by vmtrust)\n"
            f"baseurl={sources.cvmfs_mirror_el}\nenabled=1\ngpgcheck=1\n"
            f"gpgkey=file://{EL_MIRROR_KEY}\n"
        )))  # fmt: skip
    if sources.cvmfs_mirror_debian:
        files.append(_site_file(DEBIAN_MIRROR_KEY, sources.cvmfs_mirror_key))
        files.append(_site_file(
            DEBIAN_MIRROR, f"deb [signed-by={DEBIAN_MIRROR_KEY}] {sources.cvmfs_mirror_debian}\n"
        ))  # fmt: skip
    node = scripts.assign("PILOT", site.pilot_user) + scripts.assign("GRACE", site.grace)
    node += scripts.assign("HEARTBEAT", site.joboutputs.heartbeat_seconds)
    node += scripts.assign("UPLOAD_URL", site.joboutputs.upload_url)
    files.append(_site_file(scripts.NODE, scripts.node(node), "0755"))
    files.append(_site_file(f"{scripts.UNITS}/{scripts.WATCHDOG_UNIT}", scripts.WATCHDOG_UNIT_TEXT))
    return files


def _home(site: SiteProfile) -> str:
    return f"/home/{site.pilot_user}"


def _workdir(site: SiteProfile) -> str:
    return f"{site.scratch.mount}/{site.pilot_user}" if site.scratch else _home(site)


def _measure(name: str, value: int | None, unit: int = 1) -> str:
    return f"{name}={MEASURED[name]}\n" if value is None else scripts.assign(name, value * unit)


def _machine(site: SiteProfile, vo: VoProfile, flavour: Flavour) -> str:
    features = site.features
    parameters = (
        scripts.assign("LIFETIME", vo.lifetime or site.max_lifetime)
        + scripts.assign("GRACE", site.grace)
        + _measure("TOTAL_CPU", flavour.vcpus)
        + _measure("MAX_RSS_BYTES", flavour.ram_mb, MIB)
        + _measure("MAX_SWAP_BYTES", flavour.swap_mb, MIB)
        + _measure("SCRATCH_BYTES", flavour.scratch_gb, GIB)
        + scripts.assign("HS06_PER_CPU", features.hs06_per_cpu)
        + scripts.assign("JOBSLOTS", features.jobslots)
        + scripts.assign("PILOT", site.pilot_user)
        + scripts.assign("SCRATCH_DIR", _workdir(site) if site.scratch else "")
    )
    return scripts.machine(parameters, features.extra)


def _software(site: SiteProfile, vo: VoProfile, repos: list[str]) -> str | None:
    cvmfs = site.cvmfs
    if not vo.packages and (cvmfs is None or not repos):
        return None
    sources = site.sources
    parameters = (
        scripts.assign("PROXY", sources.proxy)
        + scripts.assign("EPEL", "yes" if sources.epel else "no")
        + scripts.assign("VO_PACKAGES", " ".join(vo.packages))
        + scripts.assign("CVMFS", cvmfs.install if cvmfs is not None and repos else "none")
        + scripts.assign("MIRROR_EL", "yes" if sources.cvmfs_mirror_el else "no")
        + scripts.assign("MIRROR_DEBIAN", "yes" if sources.cvmfs_mirror_debian else "no")
        + scripts.assign("CACHE_BASE", cvmfs.cache_base if cvmfs else "/var/lib/cvmfs")
        + scripts.assign("RELEASE", scripts.CVMFS_RELEASE)
    )
    return scripts.software(parameters)


def compose(
    site: SiteProfile, vo: VoProfile, flavour: Flavour | None = None
) -> tuple[dict, list[Part]]:
    """The cloud-config document and the ordered script parts."""
    flavour = flavour or Flavour()
    config: dict = {}
    # --- the site's parts -----------------------------------------------------------
    if site.admin_ssh_keys:
        config["ssh_authorized_keys"] = list(site.admin_ssh_keys)
    config["disable_root"] = True
    config["ssh_pwauth"] = False
    if site.ca_certificates:
        config["ca_certs"] = {"trusted": list(site.ca_certificates)}
    if site.syslog:
        config["rsyslog"] = {
            "remotes": {f"site{n}": remote for n, remote in enumerate(site.syslog)}
        }
    pilot = vo.pilot
    # Credentials in user-data are readable from the metadata service by any process;
    # every file written 0600 for the pilot may hold a secret, and so may its environment.
    config["disable_ec2_metadata"] = pilot is not None and bool(pilot.files or pilot.environment)
    config["users"] = [
        "default",
        {"name": site.pilot_user, "gecos": "VO pilot (vmtrust)", "homedir": _home(site),
         "shell": "/bin/bash", "lock_passwd": True, "no_user_group": False},
    ]  # fmt: skip
    if site.scratch is not None:
        scratch = site.scratch
        config["fs_setup"] = [{"label": "scratch", "filesystem": scratch.filesystem,
                               "device": scratch.device, "partition": "auto",
                               "overwrite": True}]  # fmt: skip
        config["mounts"] = [[scratch.device, scratch.mount, scratch.filesystem,
                             "defaults,nofail,x-systemd.requires=cloud-init.service", "0",
                             "2"]]  # fmt: skip
    repos = list(
        dict.fromkeys([*(site.cvmfs.repositories if site.cvmfs else ()), *vo.repositories])
    )
    files = site_files(site, repos)
    if pilot is not None:
        writable = [f"-{_home(site)}", scripts.JOBOUTPUTS]
        if site.scratch:
            writable.append(f"-{site.scratch.mount}")
        unit = scripts.pilot_unit(site.pilot_user, site.grace, writable)
        files.append(_site_file(f"{scripts.UNITS}/{scripts.PILOT_UNIT}", unit))
    # --- the VO's parts, in the slots the site allows ----------------------------------
    for item in vo.files:
        files.append({"path": item.path, "content": item.content, "owner": "root:root",
                      "permissions": item.permissions})  # fmt: skip
    if pilot is not None:
        owner = f"{site.pilot_user}:{site.pilot_user}"
        # deferred: the pilot user exists only after users_groups has run
        for private in pilot.files:
            files.append({"path": private.path, "content": private.content, "owner": owner,
                          "permissions": "0600", "defer": True})  # fmt: skip
        start = scripts.launcher(
            _workdir(site), pilot.environment, [pilot.command, *pilot.arguments]
        )
        files.append({"path": scripts.LAUNCHER, "content": start, "owner": owner,
                      "permissions": "0500", "defer": True})  # fmt: skip
    config["write_files"] = files
    parts = [Part(scripts.MACHINE, "text/x-shellscript", _machine(site, vo, flavour))]
    software = _software(site, vo, repos)
    if software is not None:
        parts.append(Part(scripts.SOFTWARE, "text/x-shellscript", software))
    if vo.runcmd:
        parts.append(Part(scripts.VO_COMMANDS, "text/x-shellscript",
                          scripts.vo_commands(vo.runcmd)))  # fmt: skip
    if pilot is not None:
        parts.append(Part(scripts.PILOT, "text/x-shellscript", scripts.pilot(site.pilot_user)))
    return config, parts
