"""``vmtrust launch``: boot worker nodes from the VO's current trusted image.

On OpenStack (the default) the image is found in Glance and servers are created
through nova; with ``--cloud-type ec2`` the AMI is found among the site
account's and instances are run in the VO's account (:mod:`vmtrust.launch_ec2`).
Both print the same lines or JSON and exit 0 when every server or instance
runs, 50 when one failed (or a cloud call did), 51 when no trusted image exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from vmtrust import clouds, context, fileio, launch
from vmtrust.cli import ec2args
from vmtrust.cli.contextcmd import _count, report_all
from vmtrust.cli.render import clean
from vmtrust.conf import make_conf
from vmtrust.errors import ConfigError, InvalidConfiguration
from vmtrust.record import load_public_key

__all__ = ["OWN", "cmd_launch", "register"]

#: Options only one cloud type has (dest → flag); the others are shared.
OWN = {
    "openstack": {
        "cloud": "--cloud",
        "clouds_file": "--clouds-file",
        "owner": "--owner",
        "flavor": "--flavor",
        "network": "--network",
    },
    "ec2": {
        "instance_type": "--instance-type",
        "subnet": "--subnet",
        "security_group": "--security-group",
        "profile": "--profile",
        "region": "--region",
        "endpoint_url": "--endpoint-url",
        "site_account": "--site-account",
        "record_bucket": "--record-bucket",
        "record_prefix": "--record-prefix",
    },
}


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "launch",
        help="boot worker nodes from the VO's current trusted image",
        description="Find the VO's newest trusted image — in Glance, or with --cloud-type ec2 "
        "among the AMIs of the site account, from their published records — its seal checked "
        "here with the site's public key; then create servers on a worker flavour (instances "
        "of an instance type) with the given user-data and wait until each is ACTIVE or "
        "reports its fault. Exit 0 when all are ACTIVE, 50 when one failed, 51 when no "
        "trusted image exists.",
    )
    ec2args.add_cloud_type(p)
    p.add_argument("--cloud", help="clouds.yaml cloud to use (OpenStack: required)")
    p.add_argument("--clouds-file", help="clouds.yaml to read (default: openstacksdk's places)")
    p.add_argument("--vo", required=True, help="the VO whose image to boot")
    p.add_argument("--image-identifier", help="a given image (dc:identifier), not any of the VO")
    p.add_argument("--flavor", help="worker flavour (name or id); not needed with --find-only")
    p.add_argument("--count", type=_count(1), default=1, help="servers to create (default 1)")
    p.add_argument("--name", default="vmtrust-wn", help="server name (default vmtrust-wn)")
    p.add_argument("--network", help="'auto' (the default), 'none' or a network id")
    p.add_argument("--key-name", help="key pair for the default user (nova's or EC2's)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--user-data", metavar="FILE", help="user-data to pass as it is")
    data.add_argument("--site", metavar="SITE.yaml", help="build user-data from this site ...")
    p.add_argument("--vo-profile", metavar="VO.yaml", help="... and this VO profile")
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
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")
    p.add_argument("--no-wait", action="store_true", help="return once the servers are created")
    p.add_argument("--find-only", action="store_true", help="print the image, launch nothing")
    p.add_argument("--json", action="store_true", help="JSON output")
    ec2args.add_options(p, audit=False)
    ec2 = p.add_argument_group("EC2 instances (--cloud-type ec2)")
    ec2.add_argument("--instance-type", help="e.g. m6i.large; not needed with --find-only")
    ec2.add_argument("--subnet", metavar="SUBNET_ID", help="subnet (default: the default VPC's)")
    ec2.add_argument(
        "--security-group",
        action="append",
        metavar="GROUP_ID",
        help="security group id (repeatable; default: the VPC's default group)",
    )
    p.set_defaults(handler=cmd_launch, usage=p.error)


def _keys_and_owners(args: argparse.Namespace) -> tuple[list, list[str]]:
    keys_paths, owners = args.seal_key or [], args.owner or []
    if not keys_paths or not owners:
        conf = make_conf(args.config_file)
        if not keys_paths:
            keys_paths = [conf.trust.seal_key + ".pub"]
        if not owners and conf.store_glance.project_id:
            owners = [conf.store_glance.project_id]
    if not owners:
        raise ConfigError(
            "launch: name the sync's project with --owner or [store_glance] project_id"
        )
    return [load_public_key(Path(path).expanduser()) for path in keys_paths], owners


def _profiles(args: argparse.Namespace) -> tuple[context.SiteProfile, context.VoProfile] | None:
    """The profiles to build user-data from (read before any cloud is contacted)."""
    if not args.site:
        return None
    if not args.vo_profile:
        raise ConfigError("launch: --site needs --vo-profile")
    site = context.load_site(args.site)
    return site, context.load_vo(args.vo_profile, site)


def cmd_launch(args: argparse.Namespace) -> int:
    ec2args.check_cloud_type(args, OWN)
    if args.cloud_type == "ec2":
        target = ec2args.resolve(args, "launch", audit=False)
        if not args.find_only and not args.instance_type:
            raise ConfigError("launch: --instance-type is required (or --find-only)")
    elif not args.cloud:
        args.usage("the following arguments are required: --cloud")
    else:
        keys, owners = _keys_and_owners(args)
    try:
        profiles = _profiles(args)
    except InvalidConfiguration as exc:
        return report_all(exc)
    user_data = b""
    if args.user_data:
        user_data = fileio.read_bytes(args.user_data, what="user-data", limit=1 << 20)
    if args.cloud_type == "ec2":
        image, servers = _launch_ec2(args, target, profiles, user_data)
    else:
        image, servers = _launch_openstack(args, keys, owners, profiles, user_data)
    return _report(args, image, servers)


def _launch_openstack(
    args: argparse.Namespace,
    keys: list,
    owners: list[str],
    profiles: tuple[context.SiteProfile, context.VoProfile] | None,
    user_data: bytes,
) -> tuple[launch.TrustedImage, list[launch.Server] | None]:
    conn = clouds.connect_cloud(
        args.cloud, args.clouds_file or "", label="launch: cloud", app_name="vmtrust-launch"
    )
    image = launch.find_trusted_image(conn, args.vo, keys, owners, identifier=args.image_identifier)
    if args.find_only:
        return image, None
    if not args.flavor:
        raise ConfigError("launch: --flavor is required")
    flavor_id, flavour = launch.find_flavour(conn, args.flavor)
    if profiles is not None:  # machine/job features from the flavour's sizes
        user_data = context.build(*profiles, cloud="openstack", flavour=flavour)
    network = args.network or "auto"
    networks = network if network in ("auto", "none") else [{"uuid": network}]
    servers = launch.launch(
        conn, image, flavor=flavor_id, user_data=user_data, count=args.count,
        name=args.name, networks=networks, key_name=args.key_name, wait=not args.no_wait,
        timeout=args.timeout,
    )  # fmt: skip
    return image, servers


def _launch_ec2(
    args: argparse.Namespace,
    target: ec2args.Target,
    profiles: tuple[context.SiteProfile, context.VoProfile] | None,
    user_data: bytes,
) -> tuple[launch.TrustedImage, list[launch.Server] | None]:
    """Find the AMI, run the instances; every EC2 failure is a LaunchError (exit 50)."""
    from vmtrust import ec2client, launch_ec2
    from vmtrust.errors import EC2Error

    if args.user_data:
        launch_ec2.pack_user_data(user_data)  # too large even gzipped: refused before any call
    boto = ec2client.session(target.profile, target.region, what="launch:")
    clients = ec2client.clients(boto, endpoint_url=target.endpoint_url)
    try:
        image = launch_ec2.find_trusted_image(
            clients, args.vo, target.keys, site_account=target.site_account,
            record_bucket=target.record_bucket, record_prefix=target.record_prefix,
            identifier=args.image_identifier,
        )  # fmt: skip
        if args.find_only:
            return image, None
        if profiles is not None:  # machine/job features from the instance type's sizes
            flavour = launch_ec2.instance_type(clients, args.instance_type)
            user_data = context.build(*profiles, cloud="ec2", flavour=flavour)
        servers = launch_ec2.launch(
            clients, image, instance_type=args.instance_type, user_data=user_data,
            count=args.count, name=args.name, subnet_id=args.subnet,
            security_group_ids=args.security_group, key_name=args.key_name,
            wait=not args.no_wait, timeout=args.timeout,
        )  # fmt: skip
    except EC2Error as exc:
        raise launch.LaunchError(str(exc)) from None
    return image, servers


def _report(
    args: argparse.Namespace, image: launch.TrustedImage, servers: list[launch.Server] | None
) -> int:
    """Print the image (``--find-only``) or the servers; a server not running fails (50)."""
    if servers is None:
        _print(
            args,
            {"image": dataclasses.asdict(image)},
            [
                f"{image.id} {image.name} "
                f"{image.identifier} {image.version} (VO {image.vo}, expires {image.expires})"
            ],
        )
        return 0
    _print(
        args,
        {"image": dataclasses.asdict(image), "servers": [dataclasses.asdict(s) for s in servers]},
        [f"{s.id} {s.status}{' ' + s.fault if s.fault else ''}" for s in servers],
    )
    failed = [s for s in servers if s.status not in ("ACTIVE", "BUILD")]
    if failed or (not args.no_wait and any(s.status != "ACTIVE" for s in servers)):
        bad = failed[0] if failed else next(s for s in servers if s.status != "ACTIVE")
        raise launch.LaunchError(
            f"server {bad.id} is {bad.status}: {bad.fault or 'no fault reported'}"
        )
    return 0


def _print(args: argparse.Namespace, data: dict, lines: list[str]) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        for line in lines:  # names and faults come from the cloud: one line each, no escapes
            print(clean(line))
