"""One sync pass: fetch → verify → approve → plan → transfer → store, safely.

The site's store must equal "every image the site approved, from lists that
verify, at their newest version".  This module drives the pure parts
(:mod:`vmtrust.verify`, :mod:`vmtrust.policy`, :mod:`glance_sync.plan`) and
the I/O edges (fetching, the transfer pipeline, a store), and keeps every
failure to itself: a list or image that fails is reported in one line and
the run goes on with everything else, then exits non-zero.

Every subscription and every image is a boundary no exception crosses: the
errors vmtrust knows are their own line; anything else (a library's exception
nobody foresaw) becomes one line naming the subscription or image and the
exception's type, with its traceback in the debug log.

The order of a pass:

1. what the store holds (after removing leftovers of killed runs), and
   quarantine of altered images;
2. every list fetched at once (``parallel_lists``), each verified as it
   arrives; the new images of a verified list start downloading at once
   (``parallel_downloads``), so a dead endorser delays nobody else;
3. once every list is in: the whole plan — conflicts between subscriptions,
   what failed subscriptions keep (:func:`~glance_sync.plan.last_accepted`),
   refreshes, retirements, purges — and the sharing the store converges;
4. the images that failed, per subscription, into the state (``vmtrust status``).

With several targets (``[sync] targets``, :mod:`glance_sync.targets`) each step
1, 3 and 4 is per target, step 2 once for all: each target is locked and
surveyed on its own (one that cannot be is reported and left out of this pass
alone), lists are fetched and verified once, each target gets its own plan
(its subscriptions, its retire mode), and an image version several targets
need is downloaded once and streamed to all of them
(:mod:`glance_sync.fanout_create`).  The steps themselves are
:mod:`glance_sync.steps`'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from glance_sync import lock
from glance_sync.fanout_create import FanoutStat
from glance_sync.httpclient import make_session
from glance_sync.lists import ListPhase, Verified, desired, state_failed
from glance_sync.oci.source import make_registry
from glance_sync.plan import (
    Create,
    Desired,
    Held,
    Plan,
    Purge,
    Refresh,
    Replace,
    Retire,
    make_plan,
)
from glance_sync.report import Event, Report, unexpected
from glance_sync.settings import SyncSettings
from glance_sync.state import StateDB
from glance_sync.steps import Part, TargetPass, TargetSteps
from glance_sync.stores.base import Store
from glance_sync.targets import DEFAULT, Target, route
from vmtrust.errors import LockError as LockError  # where callers found it before
from vmtrust.errors import StateError, VmtrustError
from vmtrust.policy import Subscription
from vmtrust.safetext import clean

if TYPE_CHECKING:
    from glance_sync.adopt import Adoption, Adoptions

__all__ = ["LockError", "Report", "SyncService", "exclusive_lock", "tty_progress"]

LOG = logging.getLogger("vmtrust.sync")


@contextlib.contextmanager
def exclusive_lock(state_dir: Path) -> Iterator[None]:
    """One sync at a time per state directory; the second one is told who holds it."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / "sync.lock"

    def busy(holder: str) -> str:
        return f"another vmtrust-sync is running ({holder}, lock {path}); not starting a second one"

    with lock.hold(path, lock.holder(state_dir), busy):
        yield


def _routed(routes: dict[str, frozenset[str]], target: str) -> frozenset[str]:
    """The subscriptions whose images go to ``target``."""
    return frozenset(sub for sub, names in routes.items() if target in names)


class SyncService(TargetSteps):
    """The pass over every target: one list phase, one download per image version.

    ``store`` alone is the one target ``default`` (as without ``[sync] targets``);
    ``targets`` names several (:mod:`glance_sync.targets`), and :attr:`store` is
    then the first one's.
    """

    def __init__(
        self,
        settings: SyncSettings,
        store: Store | None = None,
        progress: Callable[[str, int], Callable[[int], None]] | None = None,
        events: Callable[[Event], None] | None = None,
        *,
        targets: list[Target] | None = None,
    ) -> None:
        self.s = settings
        self.events = events  #: told of each event of a pass as it happens (the event log)
        #: what the stores held when the last pass ended (its metrics); None: unknown
        self.last_held: list[Held] | None = None
        #: the same, target by target (per-target metrics)
        self.held_by_target: dict[str, list[Held] | None] = {}
        if targets is None:
            if store is None:
                raise TypeError("SyncService needs a store or targets")
            targets = [Target(DEFAULT, store, "")]  # "": [sync] retire, as the settings say
        self.targets = targets
        self.state = StateDB(settings.state_dir, connection=settings.state_connection)
        self.session = make_session()
        self.progress = progress
        self._tls: dict[str, bool | str] = {}  #: subscription → TLS verification for images
        self.lists = ListPhase(settings, self.state, self.session)
        #: each fan-out of the last pass (glance_sync.fanout_create.FanoutStat)
        self.fanout_stats: list[FanoutStat] = []

    @property
    def store(self) -> Store:
        """The first target's store (the one store without ``[sync] targets``)."""
        return self.targets[0].store

    @store.setter
    def store(self, store: Store) -> None:
        self.targets[0] = dataclasses.replace(self.targets[0], store=store)

    @property
    def _named(self) -> bool:
        """Targets of ``[sync] targets`` (not the one ``default``): lines name their target,
        and each has per-subscription outcomes of its own."""
        return len(self.targets) > 1 or self.targets[0].name != DEFAULT

    # --- the pass -----------------------------------------------------------------------

    def _early(
        self,
        item: Verified,
        lists: list[Verified],
        tp: TargetPass,
        now: datetime,
    ) -> list[Create | Replace]:
        """The downloads a just-verified list needs that no other list can change.

        An identifier another list also has, or that the store holds for another
        subscription, waits for the whole plan (a conflict, a move).  One that
        a list not yet fetched turns out to share is retired by the plan.  If
        this goes wrong, everything waits for the whole plan.
        """
        try:
            return self._early_actions(item, lists, tp.held, self._mode(tp.target), now)
        except Exception as exc:
            tp.report.fail(
                unexpected(f"subscription {item.subscription.name}: early downloads", exc)
            )
            return []

    @staticmethod
    def _early_actions(
        item: Verified, lists: list[Verified], held: list[Held], retire_mode: str, now: datetime
    ) -> list[Create | Replace]:
        name = item.subscription.name
        claimed = {i for other in lists if other is not item for i in other.listed}
        claimed |= {
            h.record.image_identifier
            for h in held
            if h.record and not h.retired and h.record.subscription != name
        }
        mine = {i: d for i, d in item.wanted.items() if i not in claimed}
        relevant = [h for h in held if h.identifier in mine]
        plan = make_plan(mine, relevant, frozen={}, now=now, retire_mode=retire_mode)
        return [a for a in plan.actions if isinstance(a, Create | Replace)]

    def _open_targets(
        self, stack: contextlib.ExitStack, report: Report, *, dry_run: bool, now: datetime
    ) -> list[TargetPass]:
        """Each target locked and surveyed, altered images quarantined; a target that
        cannot be locked or read is reported and left out of this pass alone."""
        several = self._named
        live = []
        for target in self.targets:
            view = report.scoped(target.name, f"target {target.name}: " if several else "")
            try:
                stack.enter_context(target.store.lock(lock.holder(self.s.state_dir)))
            except VmtrustError as exc:
                if not several:
                    raise
                view.fail(str(exc), rule=exc.rule)
                continue
            held = self._survey(target.store, view, cleanup=not dry_run)
            if held is None:
                continue
            tp = TargetPass(target, view, held)
            # Quarantine altered images first: a re-created copy may reuse their store id.
            if not dry_run:
                for item in held:
                    if not item.retired and (item.record is None or not item.seal_ok):
                        reason = item.problem or "trust record or seal invalid"
                        self._retire(target, item, reason, view, now)
                        tp.quarantined.add(item.store_id)
            live.append(tp)
        return live

    def run(
        self,
        subscriptions: tuple[Subscription, ...],
        *,
        dry_run: bool = False,
        now: datetime | None = None,
        out: Callable[[str], None] = print,
        adoption: Adoption | Adoptions | None = None,
    ) -> Report:
        """One pass; with ``adoption`` (``--adopt``), another tool's images are adopted
        before the plan is made (:mod:`glance_sync.adopt`)."""
        now = now or datetime.now(UTC)
        report = Report(listener=self.events)
        self.last_held = None
        self.held_by_target = {}
        self.fanout_stats = []
        routes = route(subscriptions, self.targets)  # an unknown target: ConfigError, first
        self._tls = {sub.name: sub.tls_ca or self.s.http.verify for sub in subscriptions}
        self.lists.registries = {
            sub.name: make_registry(sub, self.session, self.s.http, self.s.max_list_bytes)
            for sub in subscriptions
            if sub.oci is not None
        }
        local = {sub.name: sub.url.startswith("file:") for sub in subscriptions}
        with exclusive_lock(self.s.state_dir), contextlib.ExitStack() as stack:
            if not dry_run:
                self._clear_work(report)
            live = self._open_targets(stack, report, dry_run=dry_run, now=now)
            reached = {tp.target.name for tp in live}
            if not dry_run:  # a target that cannot be read: its outcome, now and for good
                for target in self.targets:
                    if target.name not in reached and self._named:
                        mine = _routed(routes, target.name)
                        self._remember(target, mine, set(), report, now, down=True)
            if not live:
                return report
            everything = [h for tp in live for h in tp.held]  # rollback protection: any target's
            lists: list[Verified] = []
            workers = self.s.parallel_downloads
            with ThreadPoolExecutor(workers, thread_name_prefix="vmtrust-image") as images:
                for verified in self.lists.verified(subscriptions, everything, report, now):
                    lists.append(verified)
                    if dry_run or adoption is not None:  # adoption decides before any upload
                        continue
                    name = verified.subscription.name
                    jobs: dict[str, list[Part]] = {}
                    for tp in live:
                        if tp.target.name not in routes[name]:
                            continue
                        for action in self._early(verified, lists, tp, now):
                            tp.started.add(action.desired.identifier)
                            jobs.setdefault(action.desired.identifier, []).append((tp, action))
                    for parts in jobs.values():
                        images.submit(self._image_job, parts, local[name], now)
            ok = {item.subscription.name for item in lists}
            wanted = desired(lists, report)
            late: dict[str, list[Part]] = {}
            for tp in list(live):
                plan = self._plan(tp, subscriptions, routes, lists, ok, wanted, adoption,
                                  dry_run=dry_run, out=out, now=now)  # fmt: skip
                if plan is None:
                    live.remove(tp)
                    continue
                tp.plan = plan
                for step in plan.actions:
                    if isinstance(step, Create | Replace):
                        key = step.desired.identifier
                        if key not in tp.started:
                            late.setdefault(key, []).append((tp, step))
            if dry_run or (adoption is not None and not live):
                return report
            with ThreadPoolExecutor(workers, thread_name_prefix="vmtrust-image") as images:
                for parts in late.values():
                    sub = parts[0][1].desired.subscription
                    images.submit(self._image_job, parts, local.get(sub, False), now)
            if adoption is not None:  # the other tool's copies go once vmtrust's are active
                for tp in live:
                    adopter = adoption.of(tp.target)
                    if adopter is not None:
                        adopter.after_create(tp.report, now)
            held_now: list[Held] | None = []
            for tp in live:
                self._finish_target(tp, now)
                self._remember(tp.target, _routed(routes, tp.target.name), ok, report, now)
                final = self.held_by_target[tp.target.name] = self._final(tp)
                held_now = None if final is None or held_now is None else held_now + final
            self.last_held = held_now
        return report

    def _plan(
        self,
        tp: TargetPass,
        subscriptions: tuple[Subscription, ...],
        routes: dict[str, frozenset[str]],
        lists: list[Verified],
        ok: set[str],
        wanted: dict[str, Desired],
        adoption: Adoption | Adoptions | None,
        *,
        dry_run: bool,
        out: Callable[[str], None],
        now: datetime,
    ) -> Plan | None:
        """One target's whole plan (None: not planned, the reason reported; the dry run
        prints it and returns None)."""
        name = tp.target.name
        report = tp.report
        mine = _routed(routes, name)
        if tp.started:  # the creates changed the store: plan from what it holds now
            held = self._survey(tp.target.store, report, cleanup=False)
            if held is None:
                self._remember(tp.target, mine, ok, report, now)
                return None
            tp.held = held
        frozen = {
            sub.name: self.lists.known(sub, tp.held, report).expires or now
            for sub in subscriptions
            if sub.name not in ok and sub.name in mine
        }
        # Images of subscriptions no longer configured (or routed here) are not approved.
        want = {i: d for i, d in wanted.items() if d.subscription in mine}
        lead = f"target {name}: " if self._named else ""
        adopter = adoption.of(tp.target) if adoption is not None else None
        if adopter is not None:
            adopted = adopter.before_plan(
                want, tp.held, report, dry_run=dry_run, out=lambda line: out(lead + line)
            )
            if adopted is None:  # the other tool's images unknown: nothing is planned
                if not dry_run:
                    self._remember(tp.target, mine, ok, report, now)
                return None
            tp.held = adopted
        plan = make_plan(
            want,
            tp.held,
            frozen=frozen,
            now=now,
            retire_mode=self._mode(tp.target),
            grace=self.s.retire_grace,
            hold=frozenset().union(
                *(item.keep for item in lists if item.subscription.name in mine)
            ),
        )
        if dry_run:
            for line in plan.describe() or ["nothing to do"]:
                out(lead + line)
            return None
        return plan

    def _finish_target(self, tp: TargetPass, now: datetime) -> None:
        """A target's refreshes, retirements, purges and convergence, after its creates."""
        assert tp.plan is not None
        store, report = tp.target.store, tp.report
        for action in tp.plan.actions:
            if isinstance(action, Refresh):
                self._refresh(store, action, report, tp.target.name)
            elif isinstance(action, Retire) and action.held.store_id not in tp.quarantined:
                self._retire(tp.target, action.held, action.reason, report, now)
            elif isinstance(action, Purge):
                self._purge(store, action.held, report, tp.target.name)
        gone = {a.held.store_id for a in tp.plan.actions if isinstance(a, Retire | Purge)}
        try:
            for line in store.converge([h for h in tp.held if h.store_id not in gone]):
                report.add(line)
        except VmtrustError as exc:
            report.fail(f"store {store.name}: {exc}")
        except Exception as exc:
            report.fail(unexpected(f"store {store.name}", exc))

    def _final(self, tp: TargetPass) -> list[Held] | None:
        """What the store holds now, for the metrics: the plan's survey when the pass
        changed nothing (a no-op pass asks the store nothing more), else a new one."""
        if not tp.report.done:
            return tp.held
        try:
            return tp.target.store.held()
        except Exception as exc:  # the pass is done; only its image counts are missing
            LOG.warning("store %s: not listed after the pass (%s)", tp.target.store.name, exc)
            return None

    def _remember(
        self,
        target: Target,
        mine: frozenset[str],
        verified: set[str],
        report: Report,
        now: datetime,
        *,
        down: bool = False,
    ) -> None:
        """Each subscription's failing images of this pass in ``target``, for ``vmtrust
        status``, how the target's pass ended (its last failure line, if any) and, with
        several targets, each routed subscription's outcome there.

        A subscription whose list failed keeps those of the last pass that reached
        its images, unless an image of it failed in this one.  A target that could
        not be read (``down``) keeps its failing images; its outcome is its error.
        A worker whose lock of the target lapsed (frozen past its lease: another
        worker holds the target now) records nothing: the outcome is the new owner's.
        """
        name = target.name
        try:
            self._fenced(name, f"outcome of target {name}")
        except VmtrustError as exc:
            LOG.error("%s", exc)
            return
        names = (verified & mine) | {
            f.subscription
            for f in report.images
            if f.target == name or (f.target == "" and f.subscription in mine)
        }
        list_errors = {
            e.subscription: e.line.removeprefix(f"subscription {e.subscription}: ")
            for e in report.events
            if e.kind == "list-failed"
        }
        try:
            if not down:
                for sub in sorted(names):
                    self.state.record_images(sub, report.failing(sub, name), now, target=name)
            if self._named:  # the list phase records the default target's outcome
                for sub in sorted(mine):
                    error = report.target_errors.get(name) if down else list_errors.get(sub)
                    self.state.record_outcome(sub, target=name, error=error, now=now)
            self.state.record_target(name, report.target_errors.get(name), now)
        except StateError as exc:
            state_failed(exc, report)

    def close(self) -> None:
        self.session.close()
        self.state.close()


def tty_progress() -> Callable[[str, int], Callable[[int], None]] | None:
    """A tqdm progress bar per image on a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm  # only needed on a TTY

    def make(title: str, total: int) -> Callable[[int], None]:
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=clean(title)[:30], leave=True)

        def advance(done: int) -> None:
            bar.update(done)

        return advance

    return make
