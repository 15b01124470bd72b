"""``vmtrust-sync``: mirror the approved images of verified lists into the site's store.

One pass by default (for cron or a systemd timer); ``--daemon`` repeats it
every ``--interval`` seconds; ``--dry-run`` prints the plan and changes
nothing.  Exit 0 when everything succeeded, 1 when anything failed (each
failure on one line of standard error, after everything else was done), and
the configuration's exit status when nothing could start.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from glance_sync import settings as settings_mod
from glance_sync.service import SyncService, tty_progress
from vmtrust import __version__
from vmtrust.conf import make_conf
from vmtrust.errors import VmtrustError
from vmtrust.policy import load_subscriptions

LOG = logging.getLogger("vmtrust.sync")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmtrust-sync",
        description="Mirror the approved images of verified image lists into the site's "
        "image store (one pass unless --daemon).",
        epilog="Exit status: 0 all done, 1 something failed (one line each on stderr), "
        "4 configuration, 75 another sync is running.",
    )
    parser.add_argument("--version", action="version", version=f"vmtrust {__version__}")
    parser.add_argument(
        "--config-file",
        action="append",
        metavar="FILE",
        help="vmtrust.conf (repeatable; default: /etc/vmtrust/vmtrust.conf)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="verify lists and print the plan; change nothing"
    )
    parser.add_argument("--daemon", action="store_true", help="keep running, one pass per interval")
    parser.add_argument(
        "--interval",
        type=int,
        metavar="SECONDS",
        help="seconds between passes with --daemon (default: [sync] interval)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)"
    )
    return parser


def _one_pass(service: SyncService, subscriptions_file, dry_run: bool) -> int:
    subscriptions = load_subscriptions(subscriptions_file)
    report = service.run(subscriptions, dry_run=dry_run)
    for line in report.done:
        LOG.info("%s", line)
    for line in report.failures:
        print(f"vmtrust-sync: {line}", file=sys.stderr)
    if not report.failures and not dry_run:
        LOG.info("sync complete: %d change(s)", len(report.done))
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    try:
        conf = make_conf(args.config_file)
        settings = settings_mod.from_conf(conf)
        load_subscriptions(settings.subscriptions_file)  # validate before touching anything
        store = settings_mod.make_store(settings)
        service = SyncService(settings, store, progress=tty_progress())
        interval = args.interval or conf.sync.interval
    except VmtrustError as exc:
        print(f"vmtrust-sync: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        if not args.daemon:
            return _one_pass(service, settings.subscriptions_file, args.dry_run)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        while not stop.is_set():
            try:
                _one_pass(service, settings.subscriptions_file, args.dry_run)
            except VmtrustError as exc:
                print(f"vmtrust-sync: {exc}", file=sys.stderr)
            stop.wait(interval)
        return 0
    except VmtrustError as exc:
        print(f"vmtrust-sync: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vmtrust-sync: interrupted", file=sys.stderr)
        return 120
    finally:
        service.close()
