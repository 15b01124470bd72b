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
from vmtrust.cli.render import clean, table
from vmtrust.conf import make_conf
from vmtrust.errors import ConfigError
from vmtrust.imagelist import format_date
from vmtrust.safetext import redact


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
        help="per subscription: last success, error, version, failing images",
        description="Per subscription: last success, last error, the accepted list version "
        "and its expiry, and the images that failed in the last pass that reached them "
        "(with the reason). Reads the state database without changing it.",
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
        from glance_sync.convert import work_folder
        from glance_sync.stores.ec2_conf import from_conf as ec2_from_conf

        store = ec2_from_conf(conf, _public_keys(conf), work_folder(Path(conf.state_dir)))
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
                # the download the list endorsed; differs from sha512 when unpacked or converted
                "source_sha512": rec.source_sha512 if rec else None,
                "disk_format": rec.disk_format if rec else None,
                "location": held.location,
                "vo": rec.vo if rec else None,
                "expires": rec.expires if rec else None,
                "subscription": rec.subscription if rec else None,
                # what vouches for it: hepix (signed list), cosign, or registry (its word only)
                "basis": rec.basis if rec else None,
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
            ["IDENTIFIER", "VERSION", "STATE", "BASIS", "VO", "EXPIRES", "SHA512", "LOCATION"],
            [
                [
                    r["identifier"] or "?",
                    r["version"] or "?",
                    r["state"],
                    r["basis"] or "-",
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
    db = StateDB(Path(conf.state_dir).expanduser(), readonly=True)
    try:
        rows = []
        for sub in subscriptions:
            st = db.get(sub.name)
            rows.append(
                {
                    "name": sub.name,
                    # a registry-listed subscription (type: oci) has no list URL
                    "url": redact(sub.url or (sub.oci.registry if sub.oci else "")),
                    "list_identifier": st.list_identifier,
                    "list_version": st.list_version,
                    "expires": _date(st.list_expires),
                    "last_success": _date(st.last_success),
                    "last_attempt": _date(st.last_attempt),
                    "last_error": st.last_error,
                    "failing_images": [
                        {
                            "identifier": f.identifier,
                            "version": f.version,
                            "title": f.title,
                            "reason": f.reason,
                            "failed_at": _date(f.failed_at),
                        }
                        for f in db.failing_images(sub.name)
                    ],
                }
            )
    finally:
        db.close()
    waiting = _vo_acceptance(conf)
    for r in rows:
        r["vo_acceptance"] = [w for w in waiting if w["subscription"] == r["name"]]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    _print_vo_acceptance(waiting)
    print(
        table(
            ["SUBSCRIPTION", "VERSION", "EXPIRES", "LAST SUCCESS", "FAILING", "LAST ERROR"],
            [
                [
                    r["name"],
                    r["list_version"] or "-",
                    r["expires"] or "-",
                    r["last_success"] or "never",
                    str(len(r["failing_images"])) if r["failing_images"] else "-",
                    r["last_error"] or "-",
                ]
                for r in rows
            ],
        )
    )
    failing = [(r["name"], f) for r in rows for f in r["failing_images"]]
    if failing:
        print("\nImages that failed in the last pass:")
        for name, f in failing:
            image = f"{f['identifier']} {f['version']} ({f['title']})"
            print(clean(f"  {name}: {image}: {f['reason']}"))
    return 0


def _date(value) -> str | None:
    return format_date(value) if value else None


# --- VO projects that do not see their images yet (Glance store, issue 19) ---------------


def _vo_acceptance(conf) -> list[dict]:
    """Trusted images a VO project cannot see in its image list yet, with what to run.

    Asks Glance (one request per shared image) only with ``store = glance`` and
    ``vo_project`` set; an error is one line on stderr, the rest of status still shows.
    """
    section = conf.store_glance
    if conf.sync.store != "glance" or not section.vo_project or section.visibility != "shared":
        return []
    from glance_sync.stores.glance import from_conf
    from glance_sync.stores.glance_share import waiting_memberships
    from vmtrust.errors import VmtrustError

    try:
        store = from_conf(conf, _public_keys(conf), announce=False)
        return [w.as_dict() for w in waiting_memberships(store)]
    except VmtrustError as exc:
        print(f"vmtrust status: VO memberships not checked: {exc}", file=sys.stderr)
        return []


def _print_vo_acceptance(waiting: list[dict]) -> None:
    if not waiting:
        return
    print("Images VO projects do not see yet (Glance lists a shared image in a project only")
    print("once the project accepted it; cloud-info-provider publishes only those):")
    print(
        table(
            ["IMAGE", "GLANCE ID", "VO", "PROJECT", "MEMBERSHIP", "TO DO"],
            [
                [w["identifier"], w["image_id"], w["vo"], w["project"], w["membership"], w["fix"]]
                for w in waiting
            ],
        )
    )
    print()
