"""``vmtrust context build|check``: worker-node user-data from a site and a VO profile."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vmtrust import context, fileio
from vmtrust.cli.render import clean
from vmtrust.errors import InvalidConfiguration

__all__ = ["MAX_USER_DATA", "cmd_build", "cmd_check", "register", "report_all"]

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
        "CAs, lifetime, machine/job features) and the VO's requests the site allows; the pilot "
        "runs from a unit vmtrust writes, as the site's unprivileged user. Every VO request the "
        "site does not allow is printed with its key (exit 20, as 'context check' for the same "
        "request). The result fits the cloud's limit (gzipped if needed) or the command fails "
        "naming the size.",
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
    size = p.add_argument_group(
        "flavour",
        "the machine's size for its machine/job features (vmtrust launch takes them from the "
        "cloud's flavour); what is not given is measured on the machine at boot",
    )
    size.add_argument("--vcpus", type=_count(1), metavar="N", help="CPUs (total_cpu)")
    size.add_argument("--ram-mb", type=_count(1), metavar="MB", help="memory (max_rss_bytes)")
    size.add_argument("--swap-mb", type=_count(0), metavar="MB", help="swap (max_swap_bytes)")
    size.add_argument(
        "--scratch-gb", type=_count(0), metavar="GB", help="scratch disk (scratch_limit_bytes)"
    )
    p.set_defaults(handler=cmd_build)
    p = sub.add_parser(
        "check",
        help="explain a user-data and check it against the site policy",
        description="Show the parts of a user-data (gzip and MIME are unpacked as cloud-init "
        "does), what each does, and — with --site — whether it is exactly what vmtrust "
        "generates for that site: the VO's request is read back, judged as 'context build' "
        "judges a VO profile, rebuilt and compared. Exit 0 when allowed, 20 when the policy "
        "refuses something (as 'context build' does for the same request).",
    )
    p.add_argument("user_data", metavar="USER_DATA", help="user-data file ('-' for stdin)")
    p.add_argument("--site", metavar="SITE.yaml", help="check against this site profile")
    p.set_defaults(handler=cmd_check)


def _count(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``low``."""

    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < low:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least {low}")
        return int(text)

    return parse


def report_all(exc: InvalidConfiguration) -> int:
    """Every problem on its own line (a summary hides all but the first); the exit status."""
    for problem in exc.problems:
        print(f"vmtrust: {clean(problem)}", file=sys.stderr)
    return exc.exit_code


def cmd_build(args: argparse.Namespace) -> int:
    try:
        site = context.load_site(args.site)
        vo = context.load_vo(args.vo, site)
    except InvalidConfiguration as exc:
        return report_all(exc)
    flavour = context.Flavour(args.vcpus, args.ram_mb, args.swap_mb, args.scratch_gb)
    data = context.build(site, vo, cloud=args.cloud, compress=args.gzip, flavour=flavour)
    # user-data may carry the pilot's credential: never world-readable
    fileio.write_output(args.out, data, mode=0o600)
    if args.out:
        print(
            f"user-data for VO {vo.vo} written to {args.out} ({len(data)} bytes)", file=sys.stderr
        )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    data = fileio.read_bytes(args.user_data, what="user-data", limit=MAX_USER_DATA)
    site = None
    if args.site:
        try:
            site = context.load_site(args.site)
        except InvalidConfiguration as exc:
            return report_all(exc)
    lines, problems = context.explain(data, site)
    for line in lines:  # untrusted text (paths, names): one printable line each
        print(clean(line))
    if site is None:
        return 0
    for problem in problems:
        print(f"refused: {clean(problem)}")
    if problems:
        raise context.ContextRefused(
            [f"user-data {args.user_data}: {len(problems)} thing(s) the policy of site "
             f"{site.name} refuses (each printed above)"]
        )  # fmt: skip
    print(f"allowed by the policy of site {site.name}")
    return 0
