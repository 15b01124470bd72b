"""``vmtrust ec2 policy``: the documents that keep untrusted images off an EC2 site.

Prints the Allowed AMIs settings, the service-control policies for the VO
accounts and the site account, the sync role's IAM policy and the record
bucket's policy (:mod:`vmtrust.ec2policy`) from ``[store_ec2]``; with
``--apply``, sets what the account of the credentials given can set itself:
Allowed AMIs (run with a VO account's credentials, per region), the sync
role's inline policy and the record bucket's policy.  Service-control policies
are attached in AWS Organizations by its management account: printed only.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vmtrust import ec2policy
from vmtrust.conf import make_conf
from vmtrust.errors import ConfigError, EC2Error

__all__ = ["APPLIES", "cmd_policy", "register"]

APPLIES = ("allowed-amis", "sync-role", "record-bucket")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "ec2",
        help="EC2 site tools: the enforcement documents",
        description="Tools for a site whose images are in EC2 ([sync] store = ec2).",
    )
    sub = p.add_subparsers(dest="ec2_command", metavar="COMMAND", required=True)
    q = sub.add_parser(
        "policy",
        help="print (and apply) the documents that let only trusted images run",
        description="Print the enforcement documents for an EC2 site from [store_ec2]: "
        f"{', '.join(ec2policy.DOCUMENTS)} (all by default). With --apply, set one of "
        f"{', '.join(APPLIES)} in the account of the credentials (--profile, --region); "
        "service-control policies are attached in AWS Organizations, not by vmtrust.",
    )
    q.add_argument("document", nargs="?", choices=ec2policy.DOCUMENTS, help="one document")
    q.add_argument("--json", action="store_true", help="one JSON object: name → document")
    q.add_argument("--apply", action="store_true", help="set the document in the account")
    q.add_argument(
        "--state",
        choices=("enabled", "audit-mode"),
        default="enabled",
        help="Allowed AMIs: enforce (default) or only report what would be refused",
    )
    q.add_argument("--profile", help="AWS profile for --apply (default: [store_ec2] profile)")
    q.add_argument("--region", help="AWS region (default: [store_ec2] region)")
    q.set_defaults(handler=cmd_policy)


def _site(conf: Any, region: str) -> ec2policy.Site:
    from vmtrust.ec2client import parse_vo_accounts

    section = conf.store_ec2
    accounts = [a for ids in parse_vo_accounts(section.vo_account).values() for a in ids]
    return ec2policy.Site(
        account=section.account_id,
        region=region or "*",
        sync_role_arn=section.sync_role_arn,
        record_bucket=section.record_bucket,
        record_prefix=section.record_prefix,
        vo_accounts=accounts,
    )


def cmd_policy(args: argparse.Namespace) -> int:
    conf = make_conf(args.config_file)
    region = args.region or conf.store_ec2.region
    site = _site(conf, region)
    names = [args.document] if args.document else list(ec2policy.DOCUMENTS)
    if args.apply:
        if args.document not in APPLIES:
            raise ConfigError(
                f"ec2 policy --apply: name one of {', '.join(APPLIES)} (service-control "
                "policies are attached in AWS Organizations by its management account)"
            )
        print(_apply(args.document, site, conf, args))
        return 0
    documents = {
        name: ec2policy.allowed_amis(site, args.state)
        if name == "allowed-amis"
        else ec2policy.document(name, site)
        for name in names
    }
    if args.json:
        json.dump(documents, sys.stdout, indent=2, sort_keys=False)
        print()
        return 0
    for name, body in documents.items():
        print(f"# {name}: {ec2policy.WHERE[name]}")
        print(json.dumps(body, indent=2))
    return 0


def _apply(name: str, site: ec2policy.Site, conf: Any, args: argparse.Namespace) -> str:
    from vmtrust import ec2client

    section = conf.store_ec2
    boto = ec2client.session(args.profile or section.profile, args.region or section.region)
    kw = {"endpoint_url": section.endpoint_url} if section.endpoint_url else {}
    if name == "allowed-amis":
        ec2 = boto.client("ec2", **kw)
        wanted = ec2policy.allowed_amis(site, args.state)
        what = "ec2 policy allowed-amis"
        ec2client.call(
            ec2,
            "ReplaceImageCriteriaInAllowedImagesSettings",
            what=what,
            ImageCriteria=wanted["ImageCriteria"],
        )
        ec2client.call(
            ec2, "EnableAllowedImagesSettings", what=what, AllowedImagesSettingsState=args.state
        )
        got = ec2client.call(ec2, "GetAllowedImagesSettings", what=what) or {}
        if got.get("State") != args.state or got.get("ImageCriteria") != wanted["ImageCriteria"]:
            raise EC2Error(
                f"{what}: the account reports state {got.get('State')} and criteria "
                f"{json.dumps(got.get('ImageCriteria'))}, not what was set"
            )
        return f"Allowed AMIs {args.state} in {boto.region_name}: images of {site.account}"
    if name == "sync-role":
        role = site.role().rsplit("/", 1)[1]
        ec2client.call(
            boto.client("iam", **kw),
            "PutRolePolicy",
            what="ec2 policy sync-role",
            RoleName=role,
            PolicyName="vmtrust-sync",
            PolicyDocument=json.dumps(ec2policy.sync_role(site)),
        )
        return f"policy vmtrust-sync put on role {role}"
    ec2client.call(
        boto.client("s3", **kw),
        "PutBucketPolicy",
        what="ec2 policy record-bucket",
        Bucket=site.bucket(),
        Policy=json.dumps(ec2policy.record_bucket(site)),
    )
    return f"policy set on bucket {site.bucket()}"
