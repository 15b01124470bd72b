"""The site commands ``vmtrust images`` and ``vmtrust status``: what the sync wrote.

They read the site's store (chosen by the store registry, as the sync chooses
it) and the state database, so they live with the sync service; the
``vmtrust`` command finds them through the ``vmtrust.commands`` entry points
(:mod:`vmtrust.cli.plugins`), which keeps the trust core free of this package.
The store modules, the configuration (oslo.config) and the seal keys
(cryptography) are imported when a command runs, not when ``vmtrust --help``
lists it (start-up, issue 17).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmtrust.cli.plugins import Command
from vmtrust.cli.render import clean, table
from vmtrust.errors import ConfigError
from vmtrust.imagelist import format_date
from vmtrust.safetext import redact

if TYPE_CHECKING:
    from oslo_config import cfg

__all__ = ["IMAGES", "STATUS", "cmd_images", "cmd_status"]


def _target_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--target",
        metavar="NAME",
        help=f"only this target's {what} ([sync] targets; default: every target)",
    )


def _images_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="JSON objects, one per image")
    _target_argument(parser, "images")


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")
    _target_argument(parser, "pass, subscriptions and failing images")
    probe = parser.add_argument_group(
        "monitoring probe",
        "--nagios prints one line with performance data and exits 0 OK, 1 WARNING, "
        "2 CRITICAL, 3 UNKNOWN (the Nagios/ARGO plugin convention). A critical level of 0 "
        "turns that check's CRITICAL off.",
    )
    probe.add_argument("--nagios", action="store_true", help="run as a Nagios/ARGO probe")
    for name, unit, default in (
        ("stale-warning", "HOURS since a subscription's last success", "6"),
        ("stale-critical", "HOURS since a subscription's last success", "24"),
        ("failing-warning", "failing IMAGES of a subscription", "1"),
        ("failing-critical", "failing IMAGES of a subscription", "0: off"),
        ("expiry-warning", "DAYS left before a list expires", "7"),
        ("expiry-critical", "DAYS left before a list expires", "2"),
        ("crl-warning", "HOURS left before a CRL's next update", "24"),
        ("crl-critical", "HOURS left before a CRL's next update", "6"),
    ):
        probe.add_argument(f"--{name}", metavar="N", help=f"{unit} (default {default})")


def _make_conf(config_files: list[str] | None) -> cfg.ConfigOpts:
    """:func:`vmtrust.conf.make_conf`, imported when a command runs."""
    from vmtrust.conf import make_conf as make

    return make(config_files)


def _public_keys(conf) -> list:
    from vmtrust import record

    private = Path(conf.trust.seal_key).expanduser()
    public = private.with_name(private.name + ".pub")
    if public.exists():
        return [record.load_public_key(public)]
    if private.exists():
        return [record.load_private_key(private).public_key()]
    raise ConfigError(f"[trust] seal_key {private}: neither it nor {public.name} exists")


def _context(conf):
    from glance_sync.stores.registry import StoreContext

    return StoreContext(
        seal_keys=_public_keys(conf), state_dir=Path(conf.state_dir).expanduser(), syncing=False
    )


def _store(conf):
    """The site's store as the sync configures it, for reading (no hook, no notes)."""
    from glance_sync.stores.registry import store_from_conf

    return store_from_conf(conf, _context(conf))


def cmd_images(args: argparse.Namespace) -> int:
    from glance_sync.targets import named, store_of

    conf = _make_conf(args.config_file)
    specs = named(conf, args.target)
    several = bool(conf.sync.targets)  # rows name their target once there are targets
    rows = []
    for spec in specs:
        store = store_of(conf, spec, _context(conf))
        rows += _image_rows(store, spec.name if several else None)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    if not rows:
        print("The store holds no images." if not several else "The targets hold no images.")
        return 0
    columns = ["IDENTIFIER", "VERSION", "STATE", "BASIS", "VO", "EXPIRES", "SHA512", "LOCATION"]
    lead = ["TARGET"] if several else []
    print(
        table(
            lead + columns,
            [
                ([r["target"]] if several else [])
                + [
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


def _image_rows(store, target: str | None) -> list[dict]:
    """One row per image version ``store`` holds; ``target`` names its target, if any."""
    rows = []
    for held in store.held():
        rec = held.record
        state = "retired" if held.retired else ("trusted" if held.seal_ok else "invalid")
        rows.append(
            {
                **({"target": target} if target is not None else {}),
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
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    if args.nagios:
        from glance_sync.status_probe import status_nagios

        return status_nagios(args)
    conf = _make_conf(args.config_file)
    from glance_sync.state import StateDB
    from glance_sync.targets import DEFAULT, named, route
    from vmtrust.policy import load_subscriptions

    subscriptions = load_subscriptions(conf.sync.subscriptions_file)
    chosen = [spec.name for spec in named(conf, args.target)]
    routes = route(subscriptions, named(conf))  # a subscription naming no target: one line
    several = bool(conf.sync.targets)
    db = StateDB(
        Path(conf.state_dir).expanduser(), readonly=True, connection=conf.sync.state_connection
    )
    try:
        passes = [db.target_outcome(name) for name in chosen]
        rows: list[dict[str, Any]] = []  # one JSON object per subscription
        for sub in subscriptions:
            mine = [name for name in chosen if name in routes[sub.name]]
            if args.target and not mine:
                continue  # its images do not go to this target
            st = db.get(sub.name, target=args.target or DEFAULT)
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
                        {**({"target": name} if several else {}), **_failure(f)}
                        for name in mine
                        for f in db.failing_images(sub.name, target=name)
                    ],
                }
            )
            if several and not args.target:  # each target's own outcome, not the list's
                rows[-1]["targets"] = [_target_row(db, sub.name, name) for name in mine]
    finally:
        db.close()
    waiting = _vo_acceptance(conf)
    for r in rows:
        r["vo_acceptance"] = [w for w in waiting if w["subscription"] == r["name"]]
    if args.json:
        if args.target:  # one target: how its pass ended, then its subscriptions
            json.dump({**_pass_row(passes[0]), "subscriptions": rows}, sys.stdout, indent=2)
        else:
            json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    if several or args.target:
        _print_passes(passes)
    _print_vo_acceptance(waiting)
    if several and not args.target:
        _print_per_target(rows)
    else:
        _print_subscriptions(rows)
    failing = [(r["name"], f) for r in rows for f in r["failing_images"]]
    if failing:
        print("\nImages that failed in the last pass:")
        for name, f in failing:
            image = f"{f['identifier']} {f['version']} ({f['title']})"
            where = f"target {f['target']}: " if "target" in f else ""
            print(clean(f"  {where}{name}: {image}: {f['reason']}"))
    return 0


def _failure(f) -> dict:
    return {
        "identifier": f.identifier,
        "version": f.version,
        "title": f.title,
        "reason": f.reason,
        "failed_at": _date(f.failed_at),
    }


def _target_row(db, subscription: str, target: str) -> dict:
    """One subscription in one target: its last attempt there and its failing images."""
    outcome = db.outcome(subscription, target=target)
    return {
        "target": target,
        "last_success": _date(outcome.last_success),
        "last_attempt": _date(outcome.last_attempt),
        "last_error": outcome.last_error,
        "failing_images": [_failure(f) for f in db.failing_images(subscription, target=target)],
    }


def _print_per_target(rows: list[dict]) -> None:
    """Several targets: one row per (subscription, target), each with its own outcome."""
    print(
        table(
            ["SUBSCRIPTION", "TARGET", "VERSION", "EXPIRES", "LAST SUCCESS", "FAILING",
             "LAST ERROR"],
            [
                [
                    r["name"], t["target"], r["list_version"] or "-", r["expires"] or "-",
                    t["last_success"] or "never",
                    str(len(t["failing_images"])) if t["failing_images"] else "-",
                    t["last_error"] or "-",
                ]
                for r in rows
                for t in r["targets"]
            ],
        )
    )  # fmt: skip


def _print_subscriptions(rows: list[dict]) -> None:
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


def _date(value) -> str | None:
    return format_date(value) if value else None


def _pass_row(outcome) -> dict:
    return {
        "target": outcome.name,
        "last_success": _date(outcome.last_success),
        "last_attempt": _date(outcome.last_attempt),
        "last_error": outcome.last_error,
    }


def _print_passes(passes: list) -> None:
    """How each target's last pass ended (``[sync] targets``)."""
    rows = [_pass_row(outcome) for outcome in passes]
    print(
        table(
            ["TARGET", "LAST SUCCESS", "LAST ATTEMPT", "LAST ERROR"],
            [
                [r["target"], r["last_success"] or "never", r["last_attempt"] or "never", err]
                for r in rows
                for err in [r["last_error"] or "-"]
            ],
        )
    )
    print()


# --- VO projects that do not see their images yet (Glance store, issue 19) ---------------


def _vo_acceptance(conf) -> list[dict]:
    """Trusted images a VO project cannot see in its image list yet, with what to run.

    Asks Glance (one request per shared image) only with ``store = glance`` and
    ``vo_project`` set; an error is one line on stderr, the rest of status still shows.
    """
    section = conf.store_glance
    if conf.sync.store != "glance" or not section.vo_project or section.visibility != "shared":
        return []
    from glance_sync.stores.glance_share import waiting_memberships
    from vmtrust.errors import VmtrustError

    try:
        store = _store(conf)
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


IMAGES = Command(
    help="what the site's store holds",
    description="One row per image version in the store, with its "
    "trust state (the seal is checked).",
    arguments=_images_arguments,
    run=cmd_images,
)
STATUS = Command(
    help="per subscription: last success, error, version, failing images",
    description="Per subscription: last success, last error, the accepted list version "
    "and its expiry, and the images that failed in the last pass that reached them "
    "(with the reason). Reads the state database without changing it.",
    arguments=_status_arguments,
    run=cmd_status,
)
