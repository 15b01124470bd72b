"""``vmtrust image …``: describe an image file for an endorser's list."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vmtrust import authoring, fileio

__all__ = ["cmd_describe", "register"]


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser(
        "image",
        help="describe image files for a list",
        description="Describe VM image files for an image list.",
    )
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = verbs.add_parser(
        "describe",
        help="make an hv:image entry (size and SHA-512 computed)",
        description="Read IMAGE_FILE once, streaming, to compute hv:size and "
        'sl:checksum:sha512, and print an {"hv:image": ...} entry for \'vmtrust list '
        "add-image'.",
    )
    p.add_argument("image_file", metavar="IMAGE_FILE")
    p.add_argument("--uri", required=True, help="URL the image will be downloaded from")
    p.add_argument("--title", required=True)
    p.add_argument("--description", default="")
    p.add_argument("--os", default="Linux", help="sl:os (default: Linux)")
    p.add_argument("--osname", help="sl:osname, the distribution (e.g. AlmaLinux)")
    p.add_argument("--osversion", required=True, help="sl:osversion (e.g. 9)")
    p.add_argument("--arch", default="x86_64", help="sl:arch (default: x86_64)")
    p.add_argument("--hypervisor", default="KVM", help="hv:hypervisor (default: KVM)")
    p.add_argument(
        "--format", dest="image_format", help="hv:format (QCOW2, RAW, OVA, VMDK, raw.gz …)"
    )
    p.add_argument("--image-version", default="1", help="hv:version of the image")
    p.add_argument("--comments", default="", help="sl:comments")
    p.add_argument(
        "--identifier",
        help="dc:identifier (default: a new UUID; keep the same "
        "identifier for new versions of the same image)",
    )
    p.add_argument(
        "--profile",
        choices=["hepix", "egi"],
        default="hepix",
        help="egi: the AppDB/EGI profile atrope and cloudkeeper need: --format (one of "
        "ova, qcow2, raw, vmdk, vdi, vhdx, written in lower case) and --osname required, "
        "ad:group set (default: hepix, the plain HEPiX fields; 'list add-image' into a "
        "list with ad:vo completes an image either way)",
    )
    p.add_argument("--group", help="ad:group, the image's group (egi default: General group)")
    p.add_argument(
        "--mpuri",
        help="ad:mpuri, the image version's marketplace URI (default, in a list with "
        "ad:vo: LIST_URI#IDENTIFIER:VERSION)",
    )
    p.add_argument("--core-minimum", type=int, help="hv:core_minimum")
    p.add_argument("--ram-minimum", type=int, help="hv:ram_minimum")
    p.add_argument("--out", metavar="FILE", help="write here (default: stdout)")
    p.set_defaults(handler=cmd_describe)


def cmd_describe(args: argparse.Namespace) -> int:
    extra = {}
    if args.core_minimum is not None:
        extra["hv:core_minimum"] = args.core_minimum
    if args.ram_minimum is not None:
        extra["hv:ram_minimum"] = args.ram_minimum
    entry = authoring.describe_image(
        Path(args.image_file),
        uri=args.uri,
        title=args.title,
        description=args.description,
        os=args.os,
        osversion=args.osversion,
        arch=args.arch,
        hypervisor=args.hypervisor,
        image_version=args.image_version,
        comments=args.comments,
        image_format=args.image_format,
        osname=args.osname,
        identifier=args.identifier,
        extra=extra,
        egi=args.profile == "egi",
        group=args.group,
        mpuri=args.mpuri,
    )
    fileio.write_output(args.out, (json.dumps(entry, indent=4) + "\n").encode())
    return 0
