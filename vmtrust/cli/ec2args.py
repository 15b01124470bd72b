"""Options of ``vmtrust launch`` and ``vmtrust audit`` for ``--cloud-type ec2``.

What a command line does not give comes from ``[store_ec2]`` of vmtrust.conf
where the site's value is the right one — its region, endpoint, account and
record bucket, not the sync's profile: a VO launching and a site auditing use
credentials of their own — and vmtrust.conf is read only when something is
missing.
Everything is checked before AWS is contacted.  Options of the other cloud type
are a usage error (exit 2), not silently ignored.
"""

from __future__ import annotations

import argparse
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vmtrust.conf import make_conf
from vmtrust.errors import ConfigError
from vmtrust.record import load_public_key

__all__ = [
    "ACCOUNT",
    "CLOUD_TYPES",
    "REGION",
    "Target",
    "add_cloud_type",
    "add_options",
    "check_cloud_type",
    "resolve",
]

CLOUD_TYPES = ("openstack", "ec2")
ACCOUNT = re.compile(r"[0-9]{12}")
#: What botocore accepts as a region name (checked here, before any client is made).
REGION = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


def add_cloud_type(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cloud-type",
        choices=CLOUD_TYPES,
        default="openstack",
        help="OpenStack (Glance and nova, the default) or EC2 (AMIs of the site account)",
    )


def add_options(parser: argparse.ArgumentParser, *, audit: bool) -> None:
    """The EC2 options; ``audit``: several regions."""
    group = parser.add_argument_group("EC2 (--cloud-type ec2)")
    group.add_argument(
        "--profile",
        help="AWS profile of the credentials (default: boto3's chain: environment, default "
        "profile, instance role; not the sync's, which needs other rights)",
    )
    if audit:
        group.add_argument(
            "--region",
            action="append",
            help="region to audit (repeatable; default [store_ec2] region)",
        )
        group.add_argument(
            "--all-regions",
            action="store_true",
            help="every region enabled in each account (EC2 DescribeRegions)",
        )
    else:
        group.add_argument("--region", help="AWS region (default: [store_ec2] region)")
    group.add_argument(
        "--endpoint-url", help="one endpoint for EC2, S3 and STS (default: [store_ec2])"
    )
    group.add_argument(
        "--site-account",
        metavar="ID",
        help="the site account whose AMIs are trusted (default: [store_ec2] account_id)",
    )
    group.add_argument(
        "--record-bucket",
        help="S3 bucket of the published records (default: [store_ec2] record_bucket)",
    )
    group.add_argument(
        "--record-prefix", help="key prefix of the records (default: [store_ec2] record_prefix)"
    )


def check_cloud_type(args: argparse.Namespace, own: dict[str, dict[str, str]]) -> None:
    """Options given for the other cloud type are a usage error (exit 2, one line).

    ``own``: cloud type → {dest: flag} of the options only that type has.
    """
    for cloud_type, options in own.items():
        if cloud_type == args.cloud_type:
            continue
        for dest, flag in options.items():
            if getattr(args, dest, None) not in (None, False):
                args.usage(f"{flag} is for --cloud-type {cloud_type}")


@dataclass(frozen=True)
class Target:
    """Where the site's AMIs and records are, and whose credentials to use."""

    profile: str
    region: str  #: where the session starts; empty: the region of the AWS configuration
    regions: list[str] | None  #: (audit) the regions to look at; None: every enabled one
    endpoint_url: str
    site_account: str
    record_bucket: str
    record_prefix: str
    keys: list[Ed25519PublicKey]


def resolve(args: argparse.Namespace, command: str, *, audit: bool) -> Target:
    """The command line completed from vmtrust.conf, every value checked."""
    conf = functools.cache(lambda: make_conf(args.config_file))

    def pick(given: Any, option: str) -> Any:
        return given if given is not None else getattr(conf().store_ec2, option)

    given = (args.region or []) if audit else [args.region] if args.region else []
    if getattr(args, "all_regions", False) and given:
        args.usage("--all-regions and --region exclude each other")
    home = given[0] if given else conf().store_ec2.region
    for region in [*given, home]:
        if region and not REGION.fullmatch(region):
            raise ConfigError(f"{command}: region {region!r}: not an AWS region name")
    regions = None if getattr(args, "all_regions", False) else given or [r for r in [home] if r]
    site_account = pick(args.site_account, "account_id")
    if not site_account:
        raise ConfigError(
            f"{command}: name the site account with --site-account or [store_ec2] account_id"
        )
    if not ACCOUNT.fullmatch(site_account):
        raise ConfigError(f"{command}: site account {site_account!r}: expected 12 digits")
    bucket = pick(args.record_bucket, "record_bucket")
    if not bucket:
        raise ConfigError(
            f"{command}: name the record bucket with --record-bucket or [store_ec2] record_bucket"
        )
    key_paths = args.seal_key or [conf().trust.seal_key + ".pub"]
    return Target(
        profile=args.profile or "",
        region=home,
        regions=regions,
        endpoint_url=pick(args.endpoint_url, "endpoint_url") or "",
        site_account=site_account,
        record_bucket=bucket,
        record_prefix=pick(args.record_prefix, "record_prefix"),
        keys=[load_public_key(Path(path).expanduser()) for path in key_paths],
    )
