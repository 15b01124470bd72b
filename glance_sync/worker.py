"""``vmtrust-sync --worker``: one of several sync hosts, passes over its share of the targets.

Each round asks the coordination (:mod:`glance_sync.coordination`) which
targets are this worker's now, and syncs each of them under its lock; a
target whose lock another worker holds (it is finishing a pass the ring has
just moved here) waits for the next round.  Then the worker sleeps
``interval`` seconds, or less when the membership changed and a target may
have become its own (a worker that died: its targets are taken over within
one lease and one round).

Nothing but a signal stops the loop: a round the coordination service cannot
answer is one line, and the next round tries again (the locks this worker
held lapse with their leases meanwhile, so no target is written by two hosts).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from glance_sync.coordination import Coordination
from vmtrust.errors import VmtrustError

LOG = logging.getLogger("vmtrust.sync")

#: syncs one target, returns the pass's exit status (it reports its own failures)
SyncTarget = Callable[[str], int]


def one_round(
    coordination: Coordination, targets: Sequence[str], sync: SyncTarget, stop: threading.Event
) -> tuple[list[str], int]:
    """Sync every target that is this worker's and free; the targets synced and the worst status."""
    synced: list[str] = []
    worst = 0
    for target in coordination.owned(targets):
        if stop.is_set():
            break
        with coordination.locked(target) as mine:
            if not mine:
                continue
            LOG.info("target %s: pass starts on %s", target, coordination.member_id)
            worst = max(worst, sync(target))
            synced.append(target)
    return synced, worst


def run(
    coordination: Coordination,
    targets: Sequence[str],
    sync: SyncTarget,
    *,
    interval: float,
    stop: threading.Event,
    say: Callable[[str], None],
    poll: float = 1.0,
) -> int:
    """Join, then round after round until ``stop``; leave.  The start's failure is its status.

    Between rounds the worker wakes every ``poll`` seconds to see whether its
    share grew (a member left) and then starts the next round at once.
    """
    coordination.start()
    try:
        while not stop.is_set():
            try:
                synced, _ = one_round(coordination, targets, sync, stop)
                LOG.info("round done: %s", ", ".join(synced) or "no target of this worker")
            except VmtrustError as exc:
                say(str(exc))
            _wait(coordination, targets, interval, poll, stop)
        return 0
    finally:
        coordination.stop()


def _wait(
    coordination: Coordination,
    targets: Sequence[str],
    interval: float,
    poll: float,
    stop: threading.Event,
) -> None:
    """Sleep ``interval`` seconds, less if this worker's share of the targets grows."""
    try:
        before = set(coordination.owned(targets))
    except VmtrustError:
        before = set()
    remaining = interval
    while remaining > 0 and not stop.wait(min(poll, remaining)):
        remaining -= poll
        try:
            if set(coordination.owned(targets)) - before:
                LOG.info("more targets are this worker's now: next round starts")
                return
        except VmtrustError:
            continue
