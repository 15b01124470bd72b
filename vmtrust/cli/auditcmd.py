"""``vmtrust audit``: worker servers running what is not a trusted image now.

On OpenStack (the default) through nova and Glance (:mod:`vmtrust.audit`); with
``--cloud-type ec2`` every instance of the VO accounts (:mod:`vmtrust.audit_ec2`).
Exit status for monitoring: 0 nothing found, 60 findings, 62 findings and an
action failed, 61 the audit could not complete (nothing was changed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

from vmtrust import audit, clouds, record
from vmtrust.cli import ec2args
from vmtrust.cli.render import table
from vmtrust.conf import make_conf
from vmtrust.errors import AUDIT_FINDINGS, AUDIT_FINDINGS_ACTION_FAILED, ConfigError

__all__ = ["ACTION_FAILED", "FINDINGS", "OWN", "ROLE_NAME", "cmd_audit", "connect", "register"]

FINDINGS = AUDIT_FINDINGS
ACTION_FAILED = AUDIT_FINDINGS_ACTION_FAILED
#: Options only one cloud type has (dest → flag); the others are shared.
OWN = {
    "openstack": {"cloud": "--cloud", "clouds_file": "--clouds-file", "owner": "--owner"},
    "ec2": {
        "account": "--account",
        "role_name": "--role-name",
        "profile": "--profile",
        "region": "--region",
        "all_regions": "--all-regions",
        "endpoint_url": "--endpoint-url",
        "site_account": "--site-account",
        "record_bucket": "--record-bucket",
        "record_prefix": "--record-prefix",
    },
}
#: What an IAM role name may hold (its path is not part of it here).
ROLE_NAME = re.compile(r"[A-Za-z0-9+=,.@_-]{1,64}")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "audit",
        help="worker servers that do not run a trusted image now",
        description="List every server on a worker flavour (vmtrust:trusted_only) or on a host "
        "of a marked aggregate (vmtrust_trusted_only) whose image is not trusted now "
        "(retired, expired, seal invalid, deleted, not vmtrust's), that boots from a volume, "
        "or that is in rescue; optionally stop, shelve or lock them. Needs admin credentials "
        "(all projects). With --cloud-type ec2: every instance of the VO accounts whose AMI is "
        "not a trusted AMI of the site account now (retired, deprecated, disabled, "
        "deregistered, record or seal invalid, another owner's) or whose root volume is not "
        "the AMI's; optionally stop them. Exit 0 when nothing is found, 60 with findings, 62 "
        "with findings when an action failed, 61 when the audit could not complete.",
    )
    ec2args.add_cloud_type(p)
    p.add_argument("--cloud", help="clouds.yaml cloud with admin credentials (OpenStack: required)")
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
        help="what to do with each server found (default none; EC2: none or stop)",
    )
    p.add_argument("--dry-run", action="store_true", help="say what --action would do, do nothing")
    p.add_argument(
        "--page-size",
        type=int,
        default=1000,
        help="servers per nova list call, instances per EC2 DescribeInstances (5-1000) "
        "(default 1000)",
    )
    p.add_argument("--json", action="store_true", help="JSON output")
    ec2args.add_options(p, audit=True)
    ec2 = p.add_argument_group("EC2 accounts (--cloud-type ec2)")
    ec2.add_argument(
        "--account",
        action="append",
        metavar="ID",
        help="account to audit (repeatable; default: every account of [store_ec2] vo_account)",
    )
    ec2.add_argument(
        "--role-name",
        help="IAM role assumed in each account that is not the credentials' own (e.g. a "
        "read-only audit role made in every VO account; it needs ec2:StopInstances for "
        "--action stop)",
    )
    p.set_defaults(handler=cmd_audit, usage=p.error)


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
    ec2args.check_cloud_type(args, OWN)
    if args.cloud_type == "ec2":
        return _audit_ec2(args)
    if not args.cloud:
        args.usage("the following arguments are required: --cloud")
    if args.page_size < 1:
        raise ConfigError(f"audit: --page-size {args.page_size}: must be at least 1")
    keys, owners = _keys_and_owners(args)
    conn = connect(args.cloud, args.clouds_file or "")
    report = audit.audit(conn, keys, owners, page_size=args.page_size)
    acted = audit.act(conn, report.findings, args.action, dry_run=args.dry_run)
    return _output(args, report, acted)


def _audit_ec2(args: argparse.Namespace) -> int:
    """Every instance of the accounts and regions; what it found, stopped if asked."""
    from vmtrust import audit_ec2, ec2client

    if args.action not in audit_ec2.EC2_ACTIONS:
        args.usage(
            f"--action {args.action} has no EC2 meaning: EC2 instances can be stopped "
            "(--action stop)"
        )
    if not 5 <= args.page_size <= 1000:
        raise ConfigError(f"audit: --page-size {args.page_size}: EC2 takes 5 to 1000")
    target = ec2args.resolve(args, "audit", audit=True)
    accounts = args.account or _vo_accounts(args)
    for account in accounts:
        if not ec2args.ACCOUNT.fullmatch(account):
            raise ConfigError(f"audit: account {account!r}: expected 12 digits")
    if args.role_name is not None and not ROLE_NAME.fullmatch(args.role_name):
        raise ConfigError(f"audit: --role-name {args.role_name!r}: not an IAM role name")
    boto = ec2client.session(target.profile, target.region, what="audit:")
    reach = ec2client.Accounts(
        boto, role_name=args.role_name or "", endpoint_url=target.endpoint_url, what="audit"
    )
    site = audit_ec2.Site(
        target.site_account, target.record_bucket, target.record_prefix, tuple(target.keys)
    )
    # None: every region enabled (--all-regions); none named: the AWS configuration's
    regions = target.regions if target.regions != [] else [boto.region_name]
    places = audit_ec2.places(reach, accounts, regions, boto.region_name)
    report = audit_ec2.audit(reach, site, places, page_size=args.page_size)
    acted = audit_ec2.act(reach, report, args.action, dry_run=args.dry_run)
    return _output(args, report, acted)


def _vo_accounts(args: argparse.Namespace) -> list[str]:
    from vmtrust.ec2client import parse_vo_accounts

    conf = make_conf(args.config_file)
    found = parse_vo_accounts(conf.store_ec2.vo_account)
    accounts = sorted({account for ids in found.values() for account in ids})
    if not accounts:
        raise ConfigError("audit: name the accounts with --account or [store_ec2] vo_account")
    return accounts


def _output(args: argparse.Namespace, report: audit.Report, acted: bool) -> int:
    """The findings as a table or JSON; the exit status for monitoring."""
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
        _print_table(report, with_action=args.action != "none", ec2=args.cloud_type == "ec2")
    if not report.findings:
        return 0
    return FINDINGS if acted else ACTION_FAILED


def _print_table(report: audit.Report, *, with_action: bool, ec2: bool) -> None:
    if ec2:
        counts = (
            f"{report.worker_servers} instance(s) of {report.servers} checked, "
            f"{report.images} AMI(s) looked up"
        )
    else:
        counts = (
            f"{report.worker_servers} worker server(s) of {report.servers} checked, "
            f"{report.images} image(s) looked up"
        )
    if not report.findings:
        print(f"no findings: {counts}")
        return
    if ec2:
        headers = ["INSTANCE", "ACCOUNT", "ZONE", "AMI", "REASON", "SINCE"]
    else:
        headers = ["SERVER", "PROJECT", "HOST", "IMAGE", "REASON", "SINCE"]
    headers += ["ACTION"] if with_action else []
    rows = []
    for f in report.findings:
        row = [f.server, f.project, f.host or "-", f.image or "-", f.reason, f.since or "-"]
        rows.append([*row, *([f.action] if with_action else []), f.detail])
    print(table([*headers, "DETAIL"], rows))
    servers = len({f.server for f in report.findings})
    noun = "instance(s)" if ec2 else "server(s)"
    print(f"\n{len(report.findings)} finding(s) on {servers} {noun}: {counts}")
