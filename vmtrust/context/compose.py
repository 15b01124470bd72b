"""Compose the cloud-init user-data of a worker node from a site and a VO profile.

Site parts win by construction: vmtrust writes *one* cloud-config document
itself, placing the VO's requests into the slots the site profile allows, so
no VO part is ever merged by cloud-init (whose default merge replaces
top-level lists whole, and whose ``merge_how`` a VO part could set).  The
scripts that must run in order are separate ``text/x-shellscript`` parts with
names that sort in that order (cloud-init runs user scripts in lexical
filename order, not MIME order):

1. ``10-vmtrust-cvmfs.sh`` — the CernVM-FS package repository for the EL or
   Debian family, the client, ``default.local`` (written by ``write_files``;
   cloud-init's ``mounts:`` cannot mount CVMFS), ``cvmfs_config setup``, and a
   probe of each repository; a failed probe is reported to the console and
   syslog and in ``/run/vmtrust/cvmfs.failed``, and the pilot does not start;
2. ``30-vmtrust-pilot.sh`` — the VO's commands, then the pilot as the site's
   unprivileged user (a command, or the VO's systemd unit); when the pilot
   exits the machine powers off.

The machine's lifetime is set earlier, by the cloud-config's ``runcmd``: its
shutdown time is published machine/job-features style
(``/etc/machinefeatures/shutdowntime``, ``grace_secs``) and a power-off timer
is armed for it.  Without CVMFS and a pilot, the single cloud-config suffices.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from vmtrust.context.profiles import SiteProfile, VoProfile

STATE = "/run/vmtrust"


@dataclass(frozen=True)
class Part:
    filename: str
    content_type: str  #: text/cloud-config or text/x-shellscript
    body: str


def _default_local(site: SiteProfile, repos: list[str]) -> str:
    cvmfs = site.cvmfs
    assert cvmfs is not None
    lines = [
        "# Written by vmtrust from the site profile; see cvmfs documentation.",
        f"CVMFS_REPOSITORIES={shlex.quote(','.join(repos))}",
        f"CVMFS_HTTP_PROXY={shlex.quote(cvmfs.proxy)}",
        f"CVMFS_QUOTA_LIMIT={cvmfs.quota_mb}",
        f"CVMFS_CACHE_BASE={shlex.quote(cvmfs.cache_base)}",
    ]
    if cvmfs.client_profile:
        lines.append(f"CVMFS_CLIENT_PROFILE={cvmfs.client_profile}")
    return "\n".join(lines) + "\n"


_CVMFS_SCRIPT = """#!/bin/sh
# vmtrust: CernVM-FS client, configured by the site, probed before the pilot starts.
mkdir -p {state}
fail() {{
  echo "vmtrust: CVMFS: $*" | tee -a {state}/cvmfs.failed >&2
  logger -t vmtrust "CVMFS: $*"
}}
if ! command -v cvmfs_config >/dev/null 2>&1; then
  if command -v dnf >/dev/null 2>&1 || command -v yum >/dev/null 2>&1; then
    PM=$(command -v dnf || command -v yum)
    $PM install -y https://cvmrepo.s3.cern.ch/cvmrepo/yum/cvmfs-release-latest.noarch.rpm \\
      && $PM install -y cvmfs || fail "cannot install the cvmfs package (EL)"
  elif command -v apt-get >/dev/null 2>&1; then
    curl -fsSLo /run/cvmfs-release.deb \\
      https://cvmrepo.s3.cern.ch/cvmrepo/apt/cvmfs-release-latest_all.deb \\
      && dpkg -i /run/cvmfs-release.deb && apt-get update -q \\
      && apt-get install -y cvmfs || fail "cannot install the cvmfs package (Debian)"
  else
    fail "no dnf, yum or apt-get: cannot install cvmfs"
  fi
fi
cvmfs_config setup || fail "cvmfs_config setup failed"
for repo in {repos}; do
  cvmfs_config probe "$repo" || fail "probe of $repo failed"
done
[ -e {state}/cvmfs.failed ] && exit 1
touch {state}/cvmfs.ready
"""

_LIFETIME = (
    "mkdir -p /etc/machinefeatures",
    "echo $(( $(date +%s) + {lifetime} )) > /etc/machinefeatures/shutdowntime",
    "echo {grace} > /etc/machinefeatures/grace_secs",
    "systemd-run --unit=vmtrust-lifetime --on-active={lifetime} /bin/systemctl poweroff"
    " || shutdown -h +{minutes}",
)

_PILOT_SCRIPT = """#!/bin/sh
# vmtrust: the VO's pilot, after CVMFS is ready; the machine powers off when it exits.
mkdir -p {state} /etc/joboutputs
if [ -e {state}/cvmfs.failed ]; then
  echo "500 CVMFS not available: $(head -1 {state}/cvmfs.failed)" > /etc/joboutputs/shutdown_message
  systemctl poweroff
  exit 1
fi
{vo_commands}{start}
"""


def dropin(user: str) -> str:
    """The drop-in that makes a VO's systemd unit run as the site's pilot user."""
    return (
        f"# Written by vmtrust: the VO's service runs as the site's pilot user.\n"
        f"[Service]\nUser={user}\nGroup={user}\nSupplementaryGroups=\nAmbientCapabilities=\n"
        "Environment=MACHINEFEATURES=/etc/machinefeatures JOBOUTPUTS=/etc/joboutputs\n"
        "EnvironmentFile=-/etc/vo/pilot.env\n"
    )


def _pilot_start(site: SiteProfile, vo: VoProfile) -> str:
    pilot = vo.pilot
    assert pilot is not None
    if pilot.unit:
        unit = pilot.unit_name
        return (
            f"systemctl daemon-reload\n"
            f"systemctl start --wait {unit}\n"
            f'echo "200 pilot service finished" > /etc/joboutputs/shutdown_message\n'
            f"systemctl poweroff"
        )
    # machine/job features for the pilot, then the VO's variables
    setup = "export MACHINEFEATURES=/etc/machinefeatures JOBOUTPUTS=/etc/joboutputs; "
    if pilot.environment:
        setup += "set -a; . /etc/vo/pilot.env; set +a; "
    return (
        f"runuser -u {site.pilot_user} -- /bin/sh -c {shlex.quote(setup + pilot.command)}\n"
        f'echo "200 pilot exited with $?" > /etc/joboutputs/shutdown_message\n'
        f"systemctl poweroff"
    )


def compose(site: SiteProfile, vo: VoProfile) -> tuple[dict, list[Part]]:
    """The cloud-config document and the ordered script parts."""
    config: dict = {}
    files: list[dict] = []
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
    # Credentials in user-data are readable from the metadata service by any process.
    pilot = vo.pilot
    config["disable_ec2_metadata"] = pilot is not None and bool(
        pilot.credential or pilot.config or pilot.environment
    )  # every file written 0600 for the pilot may hold a secret
    config["users"] = [
        "default",
        {"name": site.pilot_user, "gecos": "VO pilot (vmtrust)", "shell": "/bin/bash",
         "lock_passwd": True, "no_user_group": False},
    ]  # fmt: skip
    repos = list(
        dict.fromkeys([*(site.cvmfs.repositories if site.cvmfs else ()), *vo.repositories])
    )
    if site.cvmfs is not None:  # the site's proxy, even when nothing is mounted at boot
        files.append({"path": "/etc/cvmfs/default.local", "owner": "root:root",
                      "permissions": "0644", "content": _default_local(site, repos)})  # fmt: skip
    # --- the VO's parts, in the slots the site allows ----------------------------------
    for item in vo.files:
        files.append(
            {"path": item.path, "content": item.content, "permissions": item.permissions,
             "owner": "root:root"}
        )  # fmt: skip
    pilot = vo.pilot
    if pilot is not None:
        owner = f"{site.pilot_user}:{site.pilot_user}"
        for path, content in ((pilot.config_path, pilot.config),
                              (pilot.credential_path, pilot.credential)):  # fmt: skip
            if path:
                # deferred: the pilot user exists only after users_groups has run
                files.append({"path": path, "content": content, "permissions": "0600",
                              "owner": owner, "defer": True})  # fmt: skip
        if pilot.environment:
            env = "".join(f"{k}={shlex.quote(v)}\n" for k, v in pilot.environment)
            files.append({"path": "/etc/vo/pilot.env", "content": env, "permissions": "0600",
                          "owner": owner, "defer": True})  # fmt: skip
        if pilot.unit:
            files.append({"path": f"/etc/systemd/system/{pilot.unit_name}",
                          "content": pilot.unit, "permissions": "0644"})  # fmt: skip
            # the VO's unit runs as the site's pilot user, whatever User= it says
            files.append({"path": f"/etc/systemd/system/{pilot.unit_name}.d/50-vmtrust.conf",
                          "content": dropin(site.pilot_user),
                          "permissions": "0644"})  # fmt: skip
    if vo.packages:
        config["packages"] = list(vo.packages)
    if files:
        config["write_files"] = files
    lifetime = min(vo.lifetime or site.max_lifetime, site.max_lifetime)
    config["runcmd"] = [
        line.format(lifetime=lifetime, grace=site.grace, minutes=(lifetime + 59) // 60)
        for line in _LIFETIME
    ]
    parts = []
    if site.cvmfs is not None and repos:
        parts.append(
            Part("10-vmtrust-cvmfs.sh", "text/x-shellscript",
                 _CVMFS_SCRIPT.format(state=STATE, repos=" ".join(shlex.quote(r) for r in repos)))
        )  # fmt: skip
    if pilot is not None or vo.runcmd:
        vo_commands = "".join(f"{command}\n" for command in vo.runcmd)
        start = _pilot_start(site, vo) if pilot is not None else ""
        parts.append(
            Part("30-vmtrust-pilot.sh", "text/x-shellscript",
                 _PILOT_SCRIPT.format(state=STATE, vo_commands=vo_commands, start=start))
        )  # fmt: skip
    return config, parts
