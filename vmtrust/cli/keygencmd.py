"""``vmtrust keygen``: the site's Ed25519 seal key pair (the sync seals, the filter checks)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vmtrust import record

__all__ = ["cmd_keygen", "register"]


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "keygen",
        help="make the site's Ed25519 seal key pair",
        description="Make the site's sync key: PATH (private, mode 0600) and PATH.pub "
        "(public; give it to the nova filter). Refuses to overwrite an existing key.",
    )
    p.add_argument("--out", required=True, metavar="PATH", help="private key file to create")
    p.set_defaults(handler=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    public = record.generate_key_pair(Path(args.out))
    print(f"seal key written to {args.out} (keep it private); public key {public}")
    return 0
