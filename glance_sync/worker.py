"""``vmtrust-sync --worker``: one of several sync hosts, passes over its share of the targets.

Each round asks the coordination (:mod:`glance_sync.coordination`) which
targets are this worker's now, takes the lock of each, and syncs the targets
it holds in one pass (one download per image version for all of them, as a
single host does); a target whose lock another worker holds (it is finishing
a pass the ring has just moved here) waits for the next round.  Then the worker sleeps
``interval`` seconds, or less when the membership changed and a target may
have become its own (a worker that died: its targets are taken over within
one lease and one round).

Nothing but a signal stops the loop: a round the coordination service cannot
answer is one line, and the next round tries again (the locks this worker
held lapse with their leases meanwhile, so no target is written by two hosts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from glance_sync.coordination import Coordination
from vmtrust.errors import INTERNAL_ERROR, VmtrustError

__all__ = ["one_round", "run", "serve", "subscriptions_for"]

LOG = logging.getLogger("vmtrust.sync")

#: syncs these targets in one pass, returns its exit status (it reports its own failures)
SyncTargets = Callable[[list[str]], int]


def one_round(
    coordination: Coordination, targets: Sequence[str], sync: SyncTargets, stop: threading.Event
) -> tuple[list[str], int]:
    """Sync the targets that are this worker's and free, under their locks, in one pass.

    Returns the targets synced and the pass's status (0 when there were none).
    """
    with contextlib.ExitStack() as held:
        mine = [
            t for t in coordination.owned(targets) if held.enter_context(coordination.locked(t))
        ]
        if not mine or stop.is_set():
            return [], 0
        LOG.info("pass starts on %s: %s", coordination.member_id, ", ".join(mine))
        return mine, sync(mine)


def subscriptions_for(
    subscriptions: Sequence[Any], routes: dict[str, frozenset[str]], names: Sequence[str]
) -> tuple[Any, ...]:
    """The subscriptions whose images go to any of ``names``, each sent to those only.

    ``routes`` is the route over every configured target; a subscription for
    other workers' targets only is left out (this worker fetches its list never).
    """
    chosen = []
    for sub in subscriptions:
        here = sorted(routes[sub.name] & set(names))
        if here:
            chosen.append(dataclasses.replace(sub, targets=tuple(here)))
    return tuple(chosen)


def run(
    coordination: Coordination,
    targets: Sequence[str],
    sync: SyncTargets,
    *,
    interval: float,
    stop: threading.Event,
    say: Callable[[str], None],
    poll: float = 1.0,
) -> int:
    """Join, then round after round until ``stop``; leave.  The start's failure is its status.

    Between rounds the worker wakes every ``poll`` seconds to see whether it
    owns a target the last round did not sync (a member left, or a target's
    lock was busy) and then starts the next round at once.
    """
    coordination.start()
    try:
        stop.wait(coordination.settle)
        while not stop.is_set():
            synced: list[str] = []
            try:
                synced, _ = one_round(coordination, targets, sync, stop)
                LOG.info("round done: %s", ", ".join(synced) or "no target of this worker")
            except VmtrustError as exc:
                say(str(exc))
            _wait(coordination, targets, set(synced), interval, poll, stop)
        return 0
    finally:
        coordination.stop()


def _wait(
    coordination: Coordination,
    targets: Sequence[str],
    synced: set[str],
    interval: float,
    poll: float,
    stop: threading.Event,
) -> None:
    """Sleep ``interval`` seconds, less once this worker owns a target not in ``synced``.

    Compared with what the round synced, not with what was owned when it ended: a
    member that left during the round (its targets are this worker's by the end)
    starts the next round too.
    """
    remaining = interval
    while remaining > 0 and not stop.wait(min(poll, remaining)):
        remaining -= poll
        try:
            waiting = set(coordination.owned(targets)) - synced
        except VmtrustError:
            continue
        if waiting:
            LOG.info("targets of this worker not synced yet: %s", ", ".join(sorted(waiting)))
            return


def serve(
    conf: Any,
    settings: Any,
    targets: Sequence[Any],
    *,
    interval: float,
    say: Callable[[str], None],
    events: Callable[[Any], None] | None = None,
    metrics: Any = None,
) -> int:
    """``vmtrust-sync --worker``: the loop, until SIGTERM or SIGINT, over ``targets``.

    The :class:`~glance_sync.service.SyncService` of the set of targets the last
    round held is kept for the next (the set is usually the same round after
    round); another set closes it (its database connections, its HTTP session).

    ``metrics`` (:class:`~glance_sync.metrics.SyncMetrics`) are those of the
    targets each round held, served on ``[sync] metrics_address`` (bound before
    the worker joins: a port in use is a ConfigError, no worker without its
    monitoring) and written to ``[sync] metrics_textfile`` after each round.
    """
    import signal
    import time

    from glance_sync import coordination as coordination_mod
    from glance_sync.cli import _observer
    from glance_sync.metrics import serve as serve_metrics
    from glance_sync.report import Report, unexpected
    from glance_sync.service import SyncService
    from glance_sync.state import StateDB
    from glance_sync.targets import route
    from vmtrust.policy import load_subscriptions
    from vmtrust.safetext import shown

    by_name = {t.name: t for t in targets}
    services: dict[tuple[str, ...], SyncService] = {}

    def sync(names: list[str]) -> int:
        started = time.monotonic()
        status, report, chosen = _pass(names)
        if metrics is not None and names:
            service = services.get(tuple(sorted(names)))
            if service is not None:
                observe = _observer(service, metrics, conf.sync.metrics_textfile)
                observe(report, chosen, time.monotonic() - started)
        return status

    def _pass(names: list[str]) -> tuple[int, Report, list[str]]:
        """The pass over ``names``: its status, its report and the subscriptions it had
        (none when it failed as a whole: then its report is that one line)."""
        try:
            subscriptions = load_subscriptions(settings.subscriptions_file)
            routes = route(subscriptions, list(targets))
            key = tuple(sorted(names))
            if key not in services:
                for old in services.values():
                    old.close()
                services.clear()
                held = [by_name[n] for n in key]
                services[key] = SyncService(settings, targets=held, events=events)
                # no seal is committed once a target's lock lapsed (decision 0011)
                services[key].fence = coordination.fence
            chosen = subscriptions_for(subscriptions, routes, key)
            report = services[key].run(chosen, out=lambda line: print(shown(line)))
        except VmtrustError as exc:
            say(str(exc))
            return exc.exit_code, Report(failures=[str(exc)]), []
        except Exception as exc:
            line = unexpected("pass", exc)
            say(line)
            return INTERNAL_ERROR, Report(failures=[line]), []
        for line in report.failures:
            say(line)
        return report.exit_code, report, [sub.name for sub in chosen]

    coordination = coordination_mod.from_conf(conf, settings.state_dir)
    # the state database is opened (and upgraded) before joining: a worker that could
    # not use it would take its share of the targets by the ring and sync none of them
    StateDB(settings.state_dir, connection=settings.state_connection).close()
    server = None
    if metrics is not None and conf.sync.metrics_address:
        server = serve_metrics(metrics, conf.sync.metrics_address)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        return run(
            coordination, [t.name for t in targets], sync, interval=interval, stop=stop, say=say
        )
    finally:
        if server is not None:
            server.shutdown()
        for service in services.values():
            service.close()
