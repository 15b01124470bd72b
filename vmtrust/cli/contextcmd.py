"""``vmtrust context build|check``: worker-node user-data from a site and a VO profile."""

from __future__ import annotations

import argparse
import sys

from vmtrust import context, fileio
from vmtrust.cli.render import clean
from vmtrust.errors import PolicyError

#: user-data larger than this is not read (every cloud's limit is far below)
MAX_USER_DATA = 1 << 20


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser(
        "context",
        help="build or check cloud-init user-data for worker nodes",
        description="Contextualisation: cloud-init user-data that mounts CernVM-FS for the "
        "VO and starts its pilot, within what the site allows (see docs/context.md).",
    )
    sub = group.add_subparsers(dest="context_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "build",
        help="compose user-data from a site and a VO profile",
        description="Compose the user-data: the site's parts (CVMFS proxy, syslog, admin keys, "
        "CAs, lifetime) and the VO's requests the site allows. A VO request the site does not "
        "allow is refused with the key named. The result fits the cloud's limit (gzipped if "
        "needed) or the command fails naming the size.",
    )
    p.add_argument("--site", required=True, metavar="SITE.yaml", help="the site profile")
    p.add_argument("--vo", required=True, metavar="VO.yaml", help="the VO (or pilot) profile")
    p.add_argument(
        "--cloud",
        choices=sorted(context.LIMITS),
        default="openstack",
        help="size limit to respect: openstack (65535 base64 characters, the default) "
        "or ec2 (16384 bytes before base64)",
    )
    p.add_argument("--gzip", action="store_true", help="gzip even when it fits without")
    p.add_argument("--out", metavar="FILE", help="write here (mode 0600) instead of stdout")
    p.set_defaults(handler=cmd_build)
    p = sub.add_parser(
        "check",
        help="explain a user-data and check it against the site policy",
        description="Show the parts of a user-data (gzip and MIME are unpacked as cloud-init "
        "does), what each does, and — with --site — what the site policy refuses. Exit 0 "
        "when allowed, 20 when the policy refuses something.",
    )
    p.add_argument("user_data", metavar="USER_DATA", help="user-data file ('-' for stdin)")
    p.add_argument("--site", metavar="SITE.yaml", help="check against this site profile")
    p.set_defaults(handler=cmd_check)


def cmd_build(args: argparse.Namespace) -> int:
    site = context.load_site(args.site)
    vo = context.load_vo(args.vo, site)
    data = context.build(site, vo, cloud=args.cloud, compress=args.gzip)
    # user-data may carry the pilot's credential: never world-readable
    fileio.write_output(args.out, data, mode=0o600)
    if args.out:
        print(
            f"user-data for VO {vo.vo} written to {args.out} ({len(data)} bytes)", file=sys.stderr
        )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    data = fileio.read_bytes(args.user_data, what="user-data", limit=MAX_USER_DATA)
    site = context.load_site(args.site) if args.site else None
    lines, problems = context.explain(data, site)
    for line in lines:  # untrusted text (paths, names): one printable line each
        print(clean(line))
    if site is None:
        return 0
    for problem in problems:
        print(f"refused: {clean(problem)}")
    if problems:
        raise PolicyError(
            f"user-data {args.user_data}: {len(problems)} thing(s) the policy of site "
            f"{site.name} refuses (first: {problems[0]})"
        )
    print(f"allowed by the policy of site {site.name}")
    return 0
