"""``vmtrust audit``: worker servers running what is not a trusted image now.

Exit status for monitoring: 0 nothing found, 60 findings, 62 findings and an
action failed, 61 the audit could not complete (nothing was changed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from vmtrust import audit, clouds, record
from vmtrust.cli.render import table
from vmtrust.conf import make_conf
from vmtrust.errors import AUDIT_FINDINGS, AUDIT_FINDINGS_ACTION_FAILED, ConfigError

FINDINGS = AUDIT_FINDINGS
ACTION_FAILED = AUDIT_FINDINGS_ACTION_FAILED


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "audit",
        help="worker servers that do not run a trusted image now",
        description="List every server on a worker flavour (vmtrust:trusted_only) or on a host "
        "of a marked aggregate (vmtrust_trusted_only) whose image is not trusted now "
        "(retired, expired, seal invalid, deleted, not vmtrust's), that boots from a volume, "
        "or that is in rescue; optionally stop, shelve or lock them. Needs admin credentials "
        "(all projects). Exit 0 when nothing is found, 60 with findings, 62 with findings "
        "when an action failed, 61 when the audit could not complete.",
    )
    p.add_argument("--cloud", required=True, help="clouds.yaml cloud with admin credentials")
    p.add_argument("--clouds-file", help="clouds.yaml to read (default: openstacksdk's places)")
    p.add_argument(
        "--seal-key",
        action="append",
        metavar="PUB",
        help="the site's seal public key (repeatable; default: [trust] seal_key + .pub)",
    )
    p.add_argument(
        "--owner",
        action="append",
        metavar="PROJECT",
        help="project the sync writes to (repeatable; default: [store_glance] project_id)",
    )
    p.add_argument(
        "--action",
        choices=audit.ACTIONS,
        default="none",
        help="what to do with each server found (default none)",
    )
    p.add_argument("--dry-run", action="store_true", help="say what --action would do, do nothing")
    p.add_argument(
        "--page-size", type=int, default=1000, help="servers per nova list call (default 1000)"
    )
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(handler=cmd_audit)


def connect(cloud: str, clouds_file: str) -> Any:
    """An openstacksdk connection for a clouds.yaml entry (token renewal, endpoints, TLS)."""
    return clouds.connect_cloud(cloud, clouds_file, label="audit: cloud", app_name="vmtrust-audit")


def _keys_and_owners(args: argparse.Namespace) -> tuple[list, list[str]]:
    key_paths, owners = args.seal_key or [], args.owner or []
    if not key_paths or not owners:
        conf = make_conf(args.config_file)
        key_paths = key_paths or [conf.trust.seal_key + ".pub"]
        owners = owners or [p for p in [conf.store_glance.project_id] if p]
    if not owners:
        raise ConfigError(
            "audit: name the sync's project with --owner or [store_glance] project_id"
        )
    return [record.load_public_key(Path(path).expanduser()) for path in key_paths], owners


def cmd_audit(args: argparse.Namespace) -> int:
    if args.page_size < 1:
        raise ConfigError(f"audit: --page-size {args.page_size}: must be at least 1")
    keys, owners = _keys_and_owners(args)
    conn = connect(args.cloud, args.clouds_file or "")
    report = audit.audit(conn, keys, owners, page_size=args.page_size)
    acted = audit.act(conn, report.findings, args.action, dry_run=args.dry_run)
    if args.json:
        data = {
            "findings": [dataclasses.asdict(f) for f in report.findings],
            "servers": report.servers,
            "worker_servers": report.worker_servers,
            "images": report.images,
        }
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        _print_table(report, with_action=args.action != "none")
    if not report.findings:
        return 0
    return FINDINGS if acted else ACTION_FAILED


def _print_table(report: audit.Report, *, with_action: bool) -> None:
    counts = (
        f"{report.worker_servers} worker server(s) of {report.servers} checked, "
        f"{report.images} image(s) looked up"
    )
    if not report.findings:
        print(f"no findings: {counts}")
        return
    headers = ["SERVER", "PROJECT", "HOST", "IMAGE", "REASON", "SINCE"]
    headers += ["ACTION"] if with_action else []
    rows = []
    for f in report.findings:
        row = [f.server, f.project, f.host or "-", f.image or "-", f.reason, f.since or "-"]
        rows.append([*row, *([f.action] if with_action else []), f.detail])
    print(table([*headers, "DETAIL"], rows))
    servers = len({f.server for f in report.findings})
    print(f"\n{len(report.findings)} finding(s) on {servers} server(s): {counts}")
