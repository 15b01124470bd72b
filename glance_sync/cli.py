"""``vmtrust-sync``: mirror the approved images of verified lists into the site's store.

One pass by default (for cron or a systemd timer); ``--daemon`` repeats it
every ``--interval`` seconds; ``--dry-run`` prints the plan and changes
nothing; ``--check`` checks the configuration and what it names, and changes
nothing either (:mod:`glance_sync.preflight`).  Exit 0 when everything
succeeded, 1 when anything failed (each failure on one line of standard error,
after everything else was done), and the configuration's exit status when
nothing could start.

Each event of a pass is also a log line with fixed keys, as text or JSON lines
(:mod:`glance_sync.eventlog`); the metrics of each pass are served by the
daemon and written for node_exporter by any pass (:mod:`glance_sync.metrics`).

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
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from glance_sync import eventlog
from glance_sync import settings as settings_mod
from glance_sync.foreign import TOOLS
from glance_sync.report import Report, unexpected
from glance_sync.service import SyncService, tty_progress
from glance_sync.targets import route
from vmtrust import __version__, errors
from vmtrust.conf import make_conf
from vmtrust.errors import VmtrustError
from vmtrust.policy import load_subscriptions
from vmtrust.safetext import shown

if TYPE_CHECKING:
    from glance_sync.adopt import Adoption, Adoptions

__all__ = ["INTERNAL_ERROR", "Observer", "build_parser", "main"]

LOG = logging.getLogger("vmtrust.sync")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmtrust-sync",
        description="Mirror the approved images of verified image lists into the site's\n"
        "image store (one pass unless --daemon).",
        epilog="A pass exits 0 when all was done and 1 when anything failed; when\n"
        "nothing could start, the status says what stopped it.\n\n" + errors.help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "--check",
        action="store_true",
        help="check the configuration, CA directory, seal key, every subscription and the "
        "store, one line per problem; change nothing",
    )
    parser.add_argument(
        "--log-format",
        choices=eventlog.FORMATS,
        help="text lines or JSON lines on stderr (default: [sync] log_format)",
    )
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
        "--worker",
        action="store_true",
        help="one of several sync hosts: keep running, each round syncing the targets "
        "[coordination] gives this host, each under its lock (docs/federation.md)",
    )
    parser.add_argument(
        "--upgrade-state",
        action="store_true",
        help="upgrade the state database's schema to this version's and exit (a pass does it "
        "too when it starts; with several sync hosts, run it once before upgrading them)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)"
    )
    return parser


INTERNAL_ERROR = errors.INTERNAL_ERROR

#: Observes a finished pass: its report, the subscriptions' names, its duration in seconds.
Observer = Callable[[Report, list[str], float], int]


class _Output:
    """Where the command's own lines go: plain lines, or JSON records with ``--log-format json``."""

    json = False


def _say(line: str) -> None:
    if _Output.json:
        LOG.error("%s", line)
    else:
        print(f"vmtrust-sync: {shown(line)}", file=sys.stderr)


def _one_pass(
    service: SyncService,
    subscriptions_file,
    dry_run: bool,
    observe: Observer | None = None,
    adoption: Adoption | Adoptions | None = None,
) -> int:
    subscriptions = load_subscriptions(subscriptions_file)
    started = time.monotonic()
    report = service.run(
        subscriptions, dry_run=dry_run, out=lambda line: print(shown(line)), adoption=adoption
    )
    code = report.exit_code
    if observe is not None and not dry_run:
        code = max(
            code, observe(report, [s.name for s in subscriptions], time.monotonic() - started)
        )
    if not _Output.json:  # JSON lines: every failure was an event record already
        for line in report.failures:
            _say(line)
    if not report.failures and not dry_run:
        LOG.info("sync complete: %d change(s)", len(report.done))
    return code


def _guarded_pass(
    service: SyncService,
    subscriptions_file,
    dry_run: bool,
    observe: Observer | None = None,
    adoption: Adoption | Adoptions | None = None,
) -> int:
    """One pass whatever happens: a failure of the pass as a whole is one line too."""
    started = time.monotonic()
    try:
        return _one_pass(service, subscriptions_file, dry_run, observe, adoption)
    except VmtrustError as exc:
        line, code = str(exc), exc.exit_code
    except Exception as exc:
        line, code = unexpected("pass", exc), INTERNAL_ERROR
    _say(line)
    if observe is not None and not dry_run:
        failed = Report(failures=[line])
        observe(failed, [], time.monotonic() - started)
    return code


def _observer(service: SyncService, metrics, textfile: str) -> Observer:
    """Metrics after each pass, and the node_exporter file when one is configured."""
    from glance_sync.metrics import write_textfile

    def observe(report: Report, names: list[str], duration: float) -> int:
        metrics.observe(
            report,
            duration=duration,
            ended=datetime.now(UTC),
            state=service.state,
            subscriptions=names,
            held=service.last_held if names else None,
            held_by_target=service.held_by_target,
            targets=[t.name for t in service.targets],
        )
        if not textfile:
            return 0
        try:
            write_textfile(metrics, Path(textfile))
        except VmtrustError as exc:
            _say(f"[sync] metrics_textfile: {exc}")
            return 1
        return 0

    return observe


def _adoption(args: argparse.Namespace, targets, settings) -> Adoption | Adoptions:
    """One store's adoption, or one per Glance target of ``[sync] targets``."""
    from glance_sync.adopt import Adoption, Adoptions
    from glance_sync.foreign import make_tool

    tool = make_tool(args.adopt, args.adopt_tag)
    if len(targets) == 1:
        return Adoption(
            targets[0].store, tool, settings.seal_key,
            targets[0].retire_mode or settings.retire_mode, settings.parallel_downloads,
        )  # fmt: skip
    return Adoptions(
        targets, tool, settings.seal_key, settings.retire_mode, settings.parallel_downloads
    )


def _upgrade_state(conf) -> int:
    """``--upgrade-state``: open the state database as a writer (which upgrades it), say so."""
    from glance_sync.state import StateDB
    from glance_sync.state_schema import head

    db = StateDB(Path(conf.state_dir).expanduser(), connection=conf.sync.state_connection)
    try:
        before = db.upgraded_from
        done = f"upgraded from {before} to {head()}" if before else f"at {head()} already"
        print(f"vmtrust-sync: state database {db.name}: schema revision {done}")
    finally:
        db.close()
    return 0


def _logging(args: argparse.Namespace, log_format: str) -> None:
    _Output.json = log_format == "json"
    eventlog.configure(args.verbose, log_format)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.adopt and args.daemon:
        parser.error("--adopt is one pass: run it without --daemon")
    if args.worker and (args.daemon or args.dry_run or args.adopt or args.check):
        parser.error("--worker keeps running on its own: not with --daemon, --dry-run, "
                     "--adopt or --check")  # fmt: skip
    if args.adopt_tag and args.adopt != "atrope":
        parser.error("--adopt-tag goes with --adopt atrope")
    _logging(args, args.log_format or "text")
    server = None
    try:
        conf = make_conf(args.config_file)
        if not args.log_format and conf.sync.log_format != "text":
            _logging(args, conf.sync.log_format)
        if args.check:
            from glance_sync import preflight

            return preflight.main(conf, _say)
        if args.upgrade_state:
            return _upgrade_state(conf)
        settings = settings_mod.from_conf(conf)
        subscriptions = load_subscriptions(settings.subscriptions_file)  # checked before anything
        targets = settings_mod.make_targets(conf, settings)
        route(subscriptions, targets)  # a subscription naming an unknown target: one line
        if args.worker:
            from glance_sync import worker

            interval = args.interval or conf.sync.interval
            registry = None
            if conf.sync.metrics_textfile or conf.sync.metrics_address:
                from glance_sync import metrics

                registry = metrics.for_targets(conf.sync.store, targets)
            return worker.serve(
                conf, settings, targets, interval=interval, say=_say, events=eventlog.log_event,
                metrics=registry,
            )  # fmt: skip
        adoption = _adoption(args, targets, settings) if args.adopt else None
        service = SyncService(
            settings, progress=tty_progress(), events=eventlog.log_event, targets=targets
        )
        interval = args.interval or conf.sync.interval
        observe = None
        if conf.sync.metrics_textfile or (args.daemon and conf.sync.metrics_address):
            from glance_sync import metrics

            registry = metrics.for_targets(conf.sync.store, targets)
            observe = _observer(service, registry, conf.sync.metrics_textfile)
            if args.daemon and conf.sync.metrics_address:
                server = metrics.serve(registry, conf.sync.metrics_address)
    except VmtrustError as exc:
        _say(str(exc))
        return exc.exit_code
    except Exception as exc:
        _say(unexpected("start", exc))
        return INTERNAL_ERROR
    try:
        if not args.daemon:
            return _guarded_pass(
                service, settings.subscriptions_file, args.dry_run, observe, adoption
            )
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        while not stop.is_set():
            _guarded_pass(service, settings.subscriptions_file, args.dry_run, observe)
            stop.wait(interval)
        return 0
    except KeyboardInterrupt:
        print("vmtrust-sync: interrupted", file=sys.stderr)
        return errors.INTERRUPTED
    finally:
        if server is not None:
            server.shutdown()
        service.close()
