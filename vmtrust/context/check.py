"""Explain what a user-data does, and whether a site's policy allows it.

For user-data that did not come straight from ``vmtrust context build`` (a
pilot factory's, a VO's template, a file someone edited) a site wants to know,
before letting it near a worker node: which parts cloud-init will run and
when, which files, accounts, keys and commands it brings, and whether it is
*exactly* what vmtrust generates for this site.

The policy is an allow-list by construction: the VO's request is read back
from the user-data (repositories, packages, files, the pilot's command,
arguments and environment, the lifetime, the flavour), judged by the same
rules as a VO profile (:func:`vmtrust.context.vo.vo_problems`: same words,
same exit status), then rebuilt with :func:`~vmtrust.context.compose.compose`
and compared part by part, key by key, file by file.  Anything vmtrust would
not have written for this site — an extra part, a key, a file, a changed
line of a script — is refused.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from vmtrust import yamlsafe
from vmtrust.context import scripts
from vmtrust.context.compose import Part, compose
from vmtrust.context.profiles import SITE_ONLY, SiteProfile
from vmtrust.context.readback import own_paths, request
from vmtrust.context.userdata import unpack
from vmtrust.context.vo import vo_problems
from vmtrust.errors import Problems

__all__ = ["CONFIG_PART", "explain"]

CONFIG_PART = "00-vmtrust.cfg"
_RISKY_TYPES = {
    "text/part-handler": "runs arbitrary Python inside cloud-init",
    "text/x-include-url": "fetches more user-data from the network at boot",
    "text/x-include-once-url": "fetches more user-data from the network at boot",
    "text/cloud-boothook": "runs on every boot, before site policy is applied",
    "text/jinja2": "is rendered from instance data at boot; its result cannot be checked here",
    "text/cloud-config-archive": "carries parts that cannot be checked here",
    "text/cloud-config-jsonp": "patches the configuration after it is checked",
}
#: why a cloud-config key vmtrust never writes is refused, beyond SITE_ONLY's reasons
_FOREIGN = {
    "merge_how": "changes how parts override the site's",
    "merge_type": "changes how parts override the site's",
    "runcmd": "cloud-init runs it after every user script, when the pilot has already run; "
    "vmtrust runs allowed VO commands in 25-vmtrust-vo.sh",
    "packages": "cloud-init installs them before vmtrust arms the machine's lifetime; "
    "vmtrust installs VO packages itself",
    "package_update": "runs the package manager as root before the lifetime is armed",
    "package_upgrade": "runs the package manager as root before the lifetime is armed",
}
#: scripts whose lines may be shown when they differ (no VO values in them)
_SITE_SCRIPTS = (scripts.MACHINE, scripts.SOFTWARE, scripts.PILOT)


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
            lines.append(f"  runs {len(value)} command(s) as root after every user script")
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
        elif key == "mounts" and isinstance(value, list):
            lines.append(f"  mounts {', '.join(str(m[1]) for m in value if len(m) > 1)}")
        else:
            lines.append(f"  sets {key}")
    return [f"{name}: cloud-config", *lines]


_SCRIPT_ROLES = {
    scripts.MACHINE: "arms the machine's lifetime, publishes machine/job features",
    scripts.SOFTWARE: "installs packages and CernVM-FS, probes the repositories",
    scripts.VO_COMMANDS: "runs the VO's commands as root",
    scripts.PILOT: "starts the pilot as the unprivileged user",
}


def explain(data: bytes, site: SiteProfile | None = None) -> tuple[list[str], list[str]]:
    """(what each part does, what the site policy refuses) for a user-data blob."""
    parts = unpack(data)
    lines: list[str] = [f"{len(parts)} part(s), {len(data)} bytes"]
    problems: list[str] = []
    configs: list[tuple[Part, dict]] = []
    for part in parts:
        if part.content_type == "text/cloud-config":
            try:
                config = yamlsafe.load(part.body, source=f"user-data part {part.filename}") or {}
            except yaml.YAMLError:
                problems.append(f"{part.filename}: cloud-config is not valid YAML")
                continue
            if not isinstance(config, dict):
                problems.append(f"{part.filename}: cloud-config is not a mapping")
                continue
            configs.append((part, config))
            try:
                lines += _describe_config(part.filename, config)
            except (AttributeError, TypeError, ValueError, IndexError):
                lines.append(f"{part.filename}: cloud-config with values of unexpected types")
        elif part.content_type == "text/x-shellscript":
            count = len(part.body.splitlines())
            role = _SCRIPT_ROLES.get(part.filename, "")
            lines.append(
                f"{part.filename}: shell script, {count} lines, run as root at the end of boot "
                f"(user scripts run in file-name order){': ' + role if role else ''}"
            )
        else:
            why = _RISKY_TYPES.get(part.content_type, "is not a type vmtrust composes")
            lines.append(f"{part.filename}: {part.content_type} — {why}")
            problems.append(f"{part.filename}: {part.content_type} not allowed: it {why}")
    if len(configs) > 1:
        lines.append("note: later cloud-config parts replace top-level keys of earlier ones")
        problems.append(
            f"{len(configs)} cloud-config parts: a later part can replace the site's keys "
            "(cloud-init merges by replacing top-level lists)"
        )
    if site is None:
        return lines, []
    try:
        problems += _judge(parts, configs[0][1] if configs else {}, site)
    except (AttributeError, TypeError, ValueError, IndexError):
        # cloud-init's schema would refuse it too; never pass what cannot be read
        problems.append("cloud-config has values of unexpected types")
    return lines, problems


# --- comparing with what vmtrust writes ----------------------------------------------------


def _first_difference(ours: str, theirs: str) -> str:
    """Where a site file or script first differs from ours, with that line of theirs."""
    mine, other = ours.splitlines(), theirs.splitlines()
    for number, (a, b) in enumerate(zip(mine, other, strict=False), 1):
        if a != b:
            return f"line {number}: {b[:100]}"
    if len(other) > len(mine):
        return f"line {len(mine) + 1}: {other[len(mine)][:100]}"
    return f"line {len(other) + 1}: missing"


def _same(theirs: Any, ours: Any) -> bool:
    """Equal values *and* types: Python's ``1.0 == True`` is not cloud-init's (it reads 1.0
    as false, so ``disable_ec2_metadata: 1.0`` would leave the metadata service open)."""

    def canonical(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=lambda o: f"{type(o).__name__}:{o!r}")

    try:
        return canonical(theirs) == canonical(ours)
    except (TypeError, ValueError):  # keys of mixed types, nesting too deep
        return False


def _compare_files(theirs: list, ours: list[dict], site: SiteProfile) -> list[str]:
    problems = []
    expected = {item["path"]: item for item in ours}
    seen: set[str] = set()
    for item in theirs:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            problems.append("write_files: an entry without a path")
            continue
        path = item["path"]
        shown = path if path.isprintable() else repr(path)
        if path in seen:
            problems.append(f"write_files: {shown}: written twice (a later entry or an append "
                            "changes the first)")  # fmt: skip
            continue
        seen.add(path)
        want = expected.get(path)
        if want is None:
            problems.append(f"write_files: {shown}: vmtrust does not write it for site {site.name}")
        elif not _same(item, want):
            fields = sorted(
                (k for k in set(item) | set(want) if not _same(item.get(k), want.get(k))), key=str
            )
            detail = ""
            if (
                fields == ["content"]
                and path in own_paths(site)
                and isinstance(item.get("content"), str)
            ):  # a site file: no VO value in it, its line may be shown
                detail = f" ({_first_difference(want['content'], item['content'])})"
            verb = "differs" if len(fields) == 1 else "differ"
            problems.append(f"write_files: {shown}: {', '.join(map(str, fields))} {verb} from "
                            f"what vmtrust writes for site {site.name}{detail}")  # fmt: skip
    for path in expected:
        if path not in seen:
            problems.append(f"write_files: {path}: missing (vmtrust writes it for site "
                            f"{site.name})")  # fmt: skip
    if not problems and [i.get("path") for i in theirs] != [i["path"] for i in ours]:
        problems.append("write_files: not in the order vmtrust writes them")
    return problems


def _compare_config(theirs: dict, ours: dict, site: SiteProfile) -> list[str]:
    problems = []
    where = CONFIG_PART
    for key in theirs:
        name = str(key) if str(key).isprintable() else repr(key)
        if key in ours:
            continue
        if key == "runcmd" and not site.runcmd:
            problems.append("the VO's request: runcmd: not allowed by the site")
            continue
        why = SITE_ONLY.get(key) or _FOREIGN.get(key) or "an unknown key hides a typo or a hole"
        problems.append(f"{where}: {name}: vmtrust does not write it for site {site.name} ({why})")
    for key, value in ours.items():
        if key not in theirs:
            problems.append(f"{where}: {key}: missing (vmtrust writes it for site {site.name})")
        elif key == "write_files":
            theirs_files = theirs[key] if isinstance(theirs[key], list) else []
            problems += [f"{where}: {p}" for p in _compare_files(theirs_files, value, site)]
        elif not _same(theirs[key], value):
            why = SITE_ONLY.get(key, "")
            problems.append(f"{where}: {key}: differs from what vmtrust writes for site "
                            f"{site.name}{f' ({why})' if why else ''}")  # fmt: skip
    return problems


def _judge(parts: list[Part], config: dict, site: SiteProfile) -> list[str]:
    bodies = {p.filename: p.body for p in parts if p.content_type == "text/x-shellscript"}
    vo, flavour = request(config, bodies, site)
    p = Problems("the VO's request")
    vo_problems(vo, site, p)
    for name, value in (("TOTAL_CPU", flavour.vcpus), ("MAX_RSS_BYTES", flavour.ram_mb)):
        if value is not None and value < 1:
            p.add(f"{scripts.MACHINE}: {name}", "must be a positive number")
    for name, value in (("MAX_SWAP_BYTES", flavour.swap_mb), ("SCRATCH_BYTES", flavour.scratch_gb)):
        if value is not None and value < 0:
            p.add(f"{scripts.MACHINE}: {name}", "must be a number of MiB or GiB")
    problems = list(p.items)
    ours, our_parts = compose(site, vo, flavour)
    problems += _compare_config(config, ours, site)
    expected = [(CONFIG_PART, "text/cloud-config")]
    expected += [(part.filename, part.content_type) for part in our_parts]
    mine = {part.filename: part.body for part in our_parts}
    written = {name for name, _ in expected}
    for part in parts:
        if part.filename not in written and part.content_type == "text/x-shellscript":
            problems.append(f"{part.filename}: a shell script vmtrust does not write for site "
                            f"{site.name} (it would run as root)")  # fmt: skip
        elif part.filename in mine and part.body != mine[part.filename]:
            detail = ""
            if part.filename in _SITE_SCRIPTS:
                detail = f" ({_first_difference(mine[part.filename], part.body)})"
            problems.append(f"{part.filename}: differs from what vmtrust writes for site "
                            f"{site.name}{detail}")  # fmt: skip
    theirs = [(part.filename, part.content_type) for part in parts]
    for name, _ in expected:
        if name not in {n for n, _ in theirs}:
            problems.append(f"{name}: missing (vmtrust writes it for site {site.name})")
    names = [name for name, _ in theirs]
    for name in sorted({name for name in names if names.count(name) > 1}):
        problems.append(f"{name}: {names.count(name)} parts of that name (one replaces the other)")
    if sorted(theirs) == sorted(expected) and theirs != expected:
        problems.append(f"the parts are not in the order vmtrust writes them: "
                        f"{', '.join(n for n, _ in theirs)}")  # fmt: skip
    return problems
