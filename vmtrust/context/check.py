"""Explain what a user-data does, and whether a site's policy allows it.

For user-data that did not come from ``vmtrust context build`` (a pilot
factory's, a VO's template) a site wants to know, before letting it near a
worker node: which parts cloud-init will run and when, which files, accounts,
keys and commands it brings, and what in it reaches into the site's share.
"""

from __future__ import annotations

import fnmatch
import shlex
from typing import Any

import yaml

from vmtrust import yamlsafe
from vmtrust.context.compose import Part, dropin
from vmtrust.context.profiles import _UNIT, SITE_ONLY, SiteProfile, _allowed_path
from vmtrust.context.userdata import unpack

DEFAULT_LOCAL = "/etc/cvmfs/default.local"
_OWN_SLOTS = (DEFAULT_LOCAL, "/etc/vo/pilot.env")
_UNITS = "/etc/systemd/system/"
#: what vmtrust itself sets for the pilot user; sudo, groups, passwords… are the site's
_PILOT_USER_KEYS = {"name", "gecos", "shell", "lock_passwd", "no_user_group"}
_RISKY_TYPES = {
    "text/part-handler": "runs arbitrary Python inside cloud-init",
    "text/x-include-url": "fetches more user-data from the network at boot",
    "text/x-include-once-url": "fetches more user-data from the network at boot",
    "text/cloud-boothook": "runs on every boot, before site policy is applied",
    "text/jinja2": "is rendered from instance data at boot; its result cannot be checked here",
    "text/cloud-config-archive": "carries parts that cannot be checked here",
    "text/cloud-config-jsonp": "patches the configuration after it is checked",
}


def _describe_config(name: str, config: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in config.items():
        if key == "write_files" and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    lines.append(
                        f"  writes {item.get('path')} (mode {item.get('permissions', '0644')}, "
                        f"owner {item.get('owner', 'root:root')}"
                        f"{', after users exist' if item.get('defer') else ''})"
                    )
        elif key == "runcmd" and isinstance(value, list):
            lines.append(f"  runs {len(value)} command(s) as root in the config stage")
        elif key == "users" and isinstance(value, list):
            names = [u if isinstance(u, str) else u.get("name") for u in value]
            lines.append(f"  creates users: {', '.join(str(n) for n in names)}")
        elif key == "ssh_authorized_keys" and isinstance(value, list):
            lines.append(f"  authorises {len(value)} ssh key(s) for the default user")
        elif key == "packages" and isinstance(value, list):
            lines.append(f"  installs packages: {', '.join(str(p) for p in value)}")
        elif key == "ca_certs":
            lines.append("  adds trusted CA certificates")
        elif key == "rsyslog":
            remotes = (value or {}).get("remotes", {}) if isinstance(value, dict) else {}
            lines.append(f"  forwards syslog to {', '.join(map(str, remotes.values()))}")
        elif key == "disable_ec2_metadata":
            lines.append(f"  {'blocks' if value else 'keeps'} access to the metadata service")
        else:
            lines.append(f"  sets {key}")
    return [f"{name}: cloud-config", *lines]


def explain(data: bytes, site: SiteProfile | None = None) -> tuple[list[str], list[str]]:
    """(what each part does, what the site policy refuses) for a user-data blob."""
    parts = unpack(data)
    lines: list[str] = [f"{len(parts)} part(s), {len(data)} bytes"]
    problems: list[str] = []
    configs = 0
    default_local: str | None = None  #: as cloud-init leaves it after all write_files
    for part in parts:
        if part.content_type == "text/cloud-config":
            configs += 1
            try:
                config = yamlsafe.load(part.body, source=f"user-data part {part.filename}") or {}
            except yaml.YAMLError:
                problems.append(f"{part.filename}: cloud-config is not valid YAML")
                continue
            if not isinstance(config, dict):
                problems.append(f"{part.filename}: cloud-config is not a mapping")
                continue
            default_local = _written(config, DEFAULT_LOCAL, default_local)
            try:
                lines += _describe_config(part.filename, config)
                if site is not None:
                    problems += _policy(part, config, site)
            except (AttributeError, TypeError, ValueError):
                # cloud-init's schema would refuse it too; never pass what cannot be read
                problems.append(f"{part.filename}: cloud-config has values of unexpected types")
        elif part.content_type == "text/x-shellscript":
            count = len(part.body.splitlines())
            lines.append(
                f"{part.filename}: shell script, {count} lines, run as root at the end of boot "
                "(user scripts run in file-name order)"
            )
        else:
            why = _RISKY_TYPES.get(part.content_type, "is not a type vmtrust composes")
            lines.append(f"{part.filename}: {part.content_type} — {why}")
            if site is not None:
                problems.append(f"{part.filename}: {part.content_type} not allowed: it {why}")
    if configs == 0 and site is not None:
        # no cloud-config at all: the site's keys, syslog and CAs are missing too
        problems += _policy(Part("user-data", "text/cloud-config", ""), {}, site)
    if configs > 1:
        lines.append("note: later cloud-config parts replace top-level keys of earlier ones")
        if site is not None:
            problems.append(
                f"{configs} cloud-config parts: a later part can replace the site's keys "
                "(cloud-init merges by replacing top-level lists)"
            )
    if site is not None and site.cvmfs is not None:
        proxy = _shell_value(default_local or "", "CVMFS_HTTP_PROXY")
        if proxy is None:
            problems.append("the site's CVMFS proxy is not configured")
        elif proxy != site.cvmfs.proxy:
            problems.append(
                f"the site's CVMFS proxy is not configured: {DEFAULT_LOCAL} sets "
                f"CVMFS_HTTP_PROXY to {proxy!r}"
            )
    return lines, problems


def _written(config: dict[str, Any], path: str, before: str | None) -> str | None:
    """The content of ``path`` after this config's write_files (later entries replace)."""
    items = config.get("write_files", [])
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("path") == path:
            content = item.get("content", "")
            content = content if isinstance(content, str) and not item.get("encoding") else ""
            before = (before or "") + content if item.get("append") else content
    return before


def _shell_value(text: str, name: str) -> str | None:
    """The last value ``text`` (a KEY=value file sourced by /bin/sh) gives ``name``."""
    value = None
    for line in text.splitlines():
        if line.lstrip().startswith(f"{name}=") or line.lstrip().startswith(f"export {name}="):
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                return ""
            word = words[-1] if words else ""
            value = word.split("=", 1)[1] if "=" in word and len(words) <= 2 else ""
    return value


def _service_problem(path: str, files: list, site: SiteProfile) -> str | None:
    """None if ``path`` is a VO unit or vmtrust's drop-in for it, as vmtrust writes them."""
    contents = {i.get("path"): i.get("content") for i in files if isinstance(i, dict)}
    name = path.removeprefix(_UNITS)
    if _UNIT.match(name):
        if contents.get(f"{path}.d/50-vmtrust.conf") == dropin(site.pilot_user):
            return None
        return f"is a service that does not run as {site.pilot_user} (no vmtrust drop-in)"
    unit, _, rest = name.partition(".d/")
    if (
        _UNIT.match(unit)
        and rest == "50-vmtrust.conf"
        and contents.get(path) == dropin(site.pilot_user)
    ):
        return None
    return "is a site-controlled location"


def _policy(part: Part, config: dict[str, Any], site: SiteProfile) -> list[str]:
    problems = []
    where = part.filename
    if "merge_how" in config or "merge_type" in config:
        problems.append(f"{where}: merge_how changes how parts override the site's")
    users = config.get("users", [])
    allowed_users = {"default", site.pilot_user}
    for user in users if isinstance(users, list) else []:
        name = user if isinstance(user, str) else (user or {}).get("name")
        if name not in allowed_users:
            problems.append(f"{where}: users: {name} ({SITE_ONLY['users']})")
        elif isinstance(user, dict) and set(user) - _PILOT_USER_KEYS:
            extra = ", ".join(sorted(map(str, set(user) - _PILOT_USER_KEYS)))
            problems.append(f"{where}: users: {name}: {extra} ({SITE_ONLY['users']})")
    if "groups" in config:
        problems.append(f"{where}: groups: {SITE_ONLY['groups']}")
    keys = config.get("ssh_authorized_keys", [])
    for key in keys if isinstance(keys, list) else []:
        if key not in site.admin_ssh_keys:
            problems.append(f"{where}: ssh_authorized_keys: a key that is not the site's")
    for key in ("bootcmd", "ssh_keys", "mounts", "power_state"):
        if key in config:
            problems.append(f"{where}: {key}: {SITE_ONLY[key]}")
    if config.get("disable_root") is False:
        problems.append(f"{where}: disable_root: {SITE_ONLY['disable_root']}")
    if site.syslog:
        remotes = (config.get("rsyslog") or {}).get("remotes", {})
        if not isinstance(remotes, dict) or set(remotes.values()) != set(site.syslog):
            problems.append(f"{where}: rsyslog: not forwarding to the site's syslog")
    if site.ca_certificates:
        trusted = (config.get("ca_certs") or {}).get("trusted", [])
        if not set(site.ca_certificates) <= set(trusted or []):
            problems.append(f"{where}: ca_certs: the site's CA certificates are missing")
    files = config.get("write_files", []) or []
    for item in files if isinstance(files, list) else []:
        path = str(item.get("path", "")) if isinstance(item, dict) else ""
        if path in _OWN_SLOTS:
            continue  # vmtrust's own slots; the proxy check covers default.local
        if path.startswith(_UNITS):
            why = _service_problem(path, files, site)
        else:
            why = _allowed_path(str(path), site)
        if why:
            problems.append(f"{where}: write_files: {path} {why}")
        mode = str(item.get("permissions", "")) if isinstance(item, dict) else ""
        if mode.isdigit() and set(mode) <= set("01234567") and int(mode, 8) & 0o6000:
            problems.append(f"{where}: write_files: {path} is setuid or setgid ({mode})")
    secrets = [
        item for item in files if isinstance(item, dict) and str(item.get("permissions")) in
        ("0600", "600", "0400", "400")
    ]  # fmt: skip
    if secrets and config.get("disable_ec2_metadata") is not True:
        problems.append(
            f"{where}: disable_ec2_metadata: files with secrets (mode 0600) while any process "
            "can read the user-data back from the metadata service"
        )
    packages = config.get("packages", []) or []
    for name in packages if isinstance(packages, list) else []:
        if not any(fnmatch.fnmatchcase(str(name), pat) for pat in site.packages):
            problems.append(f"{where}: packages: {name} is not on the site's allow-list")
    return problems
