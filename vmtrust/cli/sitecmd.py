"""Site commands: ``vmtrust keygen``, ``vmtrust images``, ``vmtrust status``.

``images`` and ``status`` read what the sync service wrote (the store and the
state database); they import the sync package only when run, so the trust
core stays free of it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vmtrust import record
from vmtrust.cli.render import table
from vmtrust.conf import make_conf
from vmtrust.errors import ConfigError
from vmtrust.imagelist import format_date


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "keygen",
        help="make the site's Ed25519 seal key pair",
        description="Make the site's sync key: PATH (private, mode 0600) and PATH.pub "
        "(public; give it to the nova filter). Refuses to overwrite an existing key.",
    )
    p.add_argument("--out", required=True, metavar="PATH", help="private key file to create")
    p.set_defaults(handler=cmd_keygen)

    p = commands.add_parser(
        "images",
        help="what the site's store holds",
        description="One row per image version in the store, with its "
        "trust state (the seal is checked).",
    )
    p.add_argument("--json", action="store_true", help="JSON objects, one per image")
    p.set_defaults(handler=cmd_images)

    p = commands.add_parser(
        "status",
        help="per subscription: last success, error, version",
        description="Per subscription: last success, last error, the "
        "accepted list version and its expiry.",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)


def cmd_keygen(args: argparse.Namespace) -> int:
    public = record.generate_key_pair(Path(args.out))
    print(f"seal key written to {args.out} (keep it private); public key {public}")
    return 0


def _public_keys(conf) -> list:
    private = Path(conf.trust.seal_key).expanduser()
    public = private.with_name(private.name + ".pub")
    if public.exists():
        return [record.load_public_key(public)]
    if private.exists():
        return [record.load_private_key(private).public_key()]
    raise ConfigError(f"[trust] seal_key {private}: neither it nor {public.name} exists")


def cmd_images(args: argparse.Namespace) -> int:
    conf = make_conf(args.config_file)
    if conf.sync.store == "local":
        from glance_sync.stores.local import LocalStore

        store = LocalStore(Path(conf.store_local.path), _public_keys(conf))
    elif conf.sync.store == "glance":
        from glance_sync.stores.glance import from_conf

        store = from_conf(conf, _public_keys(conf))
    elif conf.sync.store == "ec2":
        from glance_sync.stores.ec2_conf import from_conf as ec2_from_conf

        store = ec2_from_conf(conf, _public_keys(conf), Path(conf.state_dir) / "convert")
    else:
        raise ConfigError(f"[sync] store = {conf.sync.store}: 'vmtrust images' cannot read it")
    rows = []
    for held in store.held():
        rec = held.record
        state = "retired" if held.retired else ("trusted" if held.seal_ok else "invalid")
        rows.append(
            {
                "identifier": rec.image_identifier if rec else None,
                "title": rec.title if rec else None,
                "version": rec.image_version if rec else None,
                "state": state,
                "sha512": rec.sha512 if rec else None,
                "size": rec.size if rec else None,
                "location": held.location,
                "vo": rec.vo if rec else None,
                "expires": rec.expires if rec else None,
                "subscription": rec.subscription if rec else None,
                "store_id": held.store_id,
                "problem": held.problem,
                "retired_at": format_date(held.retired_at) if held.retired_at else None,
            }
        )
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    if not rows:
        print("The store holds no images.")
        return 0
    print(
        table(
            ["IDENTIFIER", "VERSION", "STATE", "VO", "EXPIRES", "SHA512", "LOCATION"],
            [
                [
                    r["identifier"] or "?",
                    r["version"] or "?",
                    r["state"],
                    r["vo"] or "-",
                    r["expires"] or "-",
                    (r["sha512"] or "?")[:16],
                    r["location"],
                ]
                for r in rows
            ],
        )
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    conf = make_conf(args.config_file)
    from glance_sync.state import StateDB
    from vmtrust.policy import load_subscriptions

    subscriptions = load_subscriptions(conf.sync.subscriptions_file)
    db = StateDB(Path(conf.state_dir).expanduser())
    try:
        rows = []
        for sub in subscriptions:
            st = db.get(sub.name)
            rows.append(
                {
                    "name": sub.name,
                    "url": sub.url,
                    "list_identifier": st.list_identifier,
                    "list_version": st.list_version,
                    "expires": format_date(st.list_expires) if st.list_expires else None,
                    "last_success": format_date(st.last_success) if st.last_success else None,
                    "last_attempt": format_date(st.last_attempt) if st.last_attempt else None,
                    "last_error": st.last_error,
                }
            )
    finally:
        db.close()
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(
        table(
            ["SUBSCRIPTION", "VERSION", "EXPIRES", "LAST SUCCESS", "LAST ERROR"],
            [
                [
                    r["name"],
                    r["list_version"] or "-",
                    r["expires"] or "-",
                    r["last_success"] or "never",
                    r["last_error"] or "-",
                ]
                for r in rows
            ],
        )
    )
    return 0
