"""``vmtrust launch``: boot worker nodes from the VO's current trusted image."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from vmtrust import clouds, context, fileio, launch
from vmtrust.cli.contextcmd import report_all
from vmtrust.conf import make_conf
from vmtrust.errors import ConfigError, InvalidConfiguration
from vmtrust.record import load_public_key


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "launch",
        help="boot worker nodes from the VO's current trusted image",
        description="Find the VO's newest trusted image in Glance (its seal checked here with "
        "the site's public key), then create servers on a worker flavour with the given "
        "user-data and wait until each is ACTIVE or reports its fault. Exit 0 when all are "
        "ACTIVE, 50 when one failed, 51 when no trusted image exists.",
    )
    p.add_argument("--cloud", required=True, help="clouds.yaml cloud to use")
    p.add_argument("--clouds-file", help="clouds.yaml to read (default: openstacksdk's places)")
    p.add_argument("--vo", required=True, help="the VO whose image to boot")
    p.add_argument("--image-identifier", help="a given image (dc:identifier), not any of the VO")
    p.add_argument("--flavor", help="worker flavour (name or id); not needed with --find-only")
    p.add_argument("--count", type=int, default=1, help="servers to create (default 1)")
    p.add_argument("--name", default="vmtrust-wn", help="server name (default vmtrust-wn)")
    p.add_argument("--network", default="auto", help="'auto', 'none' or a network id")
    p.add_argument("--key-name", help="nova keypair for the default user")
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
    p.set_defaults(handler=cmd_launch)


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
    keys, owners = _keys_and_owners(args)
    try:
        profiles = _profiles(args)
    except InvalidConfiguration as exc:
        return report_all(exc)
    user_data = b""
    if args.user_data:
        user_data = fileio.read_bytes(args.user_data, what="user-data", limit=1 << 20)
    conn = clouds.connect_cloud(
        args.cloud, args.clouds_file or "", label="launch: cloud", app_name="vmtrust-launch"
    )
    image = launch.find_trusted_image(conn, args.vo, keys, owners, identifier=args.image_identifier)
    if args.find_only:
        _print(
            args,
            {"image": dataclasses.asdict(image)},
            [
                f"{image.id} {image.name} "
                f"{image.identifier} {image.version} (VO {image.vo}, expires {image.expires})"
            ],
        )
        return 0
    if not args.flavor:
        raise ConfigError("launch: --flavor is required")
    flavor_id, flavour = launch.find_flavour(conn, args.flavor)
    if profiles is not None:  # machine/job features from the flavour's sizes
        user_data = context.build(*profiles, cloud="openstack", flavour=flavour)
    networks = args.network if args.network in ("auto", "none") else [{"uuid": args.network}]
    servers = launch.launch(
        conn, image, flavor=flavor_id, user_data=user_data, count=args.count,
        name=args.name, networks=networks, key_name=args.key_name, wait=not args.no_wait,
        timeout=args.timeout,
    )  # fmt: skip
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
        for line in lines:
            print(line)
