"""``vmtrust-sync``: mirror the approved images of verified lists into the site's store.

One pass by default (for cron or a systemd timer); ``--daemon`` repeats it
every ``--interval`` seconds; ``--dry-run`` prints the plan and changes
nothing.  Exit 0 when everything succeeded, 1 when anything failed (each
failure on one line of standard error, after everything else was done), and
the configuration's exit status when nothing could start.

``--adopt atrope`` (or ``cloudkeeper-os``) is one pass that first makes the
images that tool left in Glance vmtrust's (:mod:`glance_sync.adopt`,
docs/migration.md).

Nothing stops the daemon but a signal: a pass that fails as a whole (the
subscriptions file became invalid, the store cannot be read, a bug) is one
line, and the next pass runs at its time.  Everything printed or logged
quotes lists and servers, so it goes through :func:`vmtrust.safetext.shown`
(control characters and bidi overrides escaped, passwords of URLs removed).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from glance_sync import settings as settings_mod
from glance_sync.foreign import TOOLS
from glance_sync.report import unexpected
from glance_sync.service import SyncService, tty_progress
from vmtrust import __version__
from vmtrust.conf import make_conf
from vmtrust.errors import VmtrustError
from vmtrust.policy import load_subscriptions
from vmtrust.safetext import SafeFormatter, shown

if TYPE_CHECKING:
    from glance_sync.adopt import Adoption

LOG = logging.getLogger("vmtrust.sync")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmtrust-sync",
        description="Mirror the approved images of verified image lists into the site's "
        "image store (one pass unless --daemon).",
        epilog="Exit status: 0 all done, 1 something failed (one line each on stderr), "
        "4 configuration, 74 state database, 75 another sync is running, 70 internal error.",
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
        "--adopt",
        choices=TOOLS,
        metavar="TOOL",
        help="one pass that first adopts the Glance images another sync made (atrope or "
        "cloudkeeper-os), keeping their ids where the bytes are the list's "
        "(docs/migration.md); with --dry-run, print the plan",
    )
    parser.add_argument(
        "--adopt-tag",
        metavar="TAG",
        help="the tag atrope marks its images with (its [glance] tag; default: atrope)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)"
    )
    return parser


INTERNAL_ERROR = 70  # EX_SOFTWARE


def _say(line: str) -> None:
    print(f"vmtrust-sync: {shown(line)}", file=sys.stderr)


def _one_pass(
    service: SyncService, subscriptions_file, dry_run: bool, adoption: Adoption | None = None
) -> int:
    subscriptions = load_subscriptions(subscriptions_file)
    report = service.run(
        subscriptions, dry_run=dry_run, out=lambda line: print(shown(line)), adoption=adoption
    )
    for line in report.done:
        LOG.info("%s", line)
    for line in report.failures:
        _say(line)
    if not report.failures and not dry_run:
        LOG.info("sync complete: %d change(s)", len(report.done))
    return report.exit_code


def _guarded_pass(
    service: SyncService, subscriptions_file, dry_run: bool, adoption: Adoption | None = None
) -> int:
    """One pass whatever happens: a failure of the pass as a whole is one line too."""
    try:
        return _one_pass(service, subscriptions_file, dry_run, adoption)
    except VmtrustError as exc:
        _say(str(exc))
        return exc.exit_code
    except Exception as exc:
        _say(unexpected("pass", exc))
        return INTERNAL_ERROR


def _adoption(args: argparse.Namespace, store, settings) -> Adoption:
    from glance_sync.adopt import Adoption
    from glance_sync.foreign import make_tool

    tool = make_tool(args.adopt, args.adopt_tag)
    return Adoption(
        store, tool, settings.seal_key, settings.retire_mode, settings.parallel_downloads
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.adopt and args.daemon:
        parser.error("--adopt is one pass: run it without --daemon")
    if args.adopt_tag and args.adopt != "atrope":
        parser.error("--adopt-tag goes with --adopt atrope")
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    try:
        conf = make_conf(args.config_file)
        settings = settings_mod.from_conf(conf)
        load_subscriptions(settings.subscriptions_file)  # validate before touching anything
        store = settings_mod.make_store(settings)
        adoption = _adoption(args, store, settings) if args.adopt else None
        service = SyncService(settings, store, progress=tty_progress())
        interval = args.interval or conf.sync.interval
    except VmtrustError as exc:
        _say(str(exc))
        return exc.exit_code
    except Exception as exc:
        _say(unexpected("start", exc))
        return INTERNAL_ERROR
    try:
        if not args.daemon:
            return _guarded_pass(service, settings.subscriptions_file, args.dry_run, adoption)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        while not stop.is_set():
            _guarded_pass(service, settings.subscriptions_file, args.dry_run)
            stop.wait(interval)
        return 0
    except KeyboardInterrupt:
        print("vmtrust-sync: interrupted", file=sys.stderr)
        return 120
    finally:
        service.close()
