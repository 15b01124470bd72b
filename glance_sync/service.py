"""One sync pass: fetch → verify → approve → plan → transfer → store, safely.

The site's store must equal "every image the site approved, from lists that
verify, at their newest version".  This module drives the pure parts
(:mod:`vmtrust.verify`, :mod:`vmtrust.policy`, :mod:`glance_sync.plan`) and
the I/O edges (fetching, the transfer pipeline, a store), and keeps every
failure to itself: a list or image that fails is reported in one line and
the run goes on with everything else, then exits non-zero.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import requests

from glance_sync import hooks
from glance_sync.convert import convert
from glance_sync.download import Source, SourceReader
from glance_sync.fetch import USER_AGENT, fetch_list
from glance_sync.plan import Create, Desired, Held, Purge, Refresh, Replace, Retire, make_plan
from glance_sync.settings import SyncSettings
from glance_sync.state import StateDB
from glance_sync.stores.base import Store
from glance_sync.transfer import TransferError
from glance_sync.unpack import open_disk
from vmtrust.errors import ConfigError, VmtrustError
from vmtrust.policy import Subscription
from vmtrust.record import seal
from vmtrust.verify import Policy, VerifiedList, verify_signed_list

LOG = logging.getLogger("vmtrust.sync")


class LockError(ConfigError):
    exit_code = 75  # EX_TEMPFAIL
    rule = "lock"


@contextlib.contextmanager
def exclusive_lock(state_dir: Path) -> Iterator[None]:
    """One sync at a time per state directory; the second one is told who holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "sync.lock"
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise LockError(
                f"another vmtrust-sync is running (pid {holder}, lock {path}); "
                "not starting a second one"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


@dataclass
class Report:
    """What a pass did and what failed: one line each."""

    done: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def fail(self, line: str) -> None:
        LOG.debug("failure: %s", line)  # printed once, by the command, after the run
        self.failures.append(line)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


@dataclass
class _Verified:
    subscription: Subscription
    verified: VerifiedList
    known: frozenset[str]


class SyncService:
    def __init__(
        self,
        settings: SyncSettings,
        store: Store,
        progress: Callable[[str, int], Callable[[int], None]] | None = None,
    ) -> None:
        self.s = settings
        self.store = store
        self.state = StateDB(settings.state_dir)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.progress = progress
        self._tls: dict[str, bool | str] = {}  #: subscription → TLS verification for images

    # --- lists ------------------------------------------------------------------

    def _verify(self, sub: Subscription, report: Report, now: datetime) -> _Verified | None:
        state = self.state.get(sub.name)
        try:
            data = fetch_list(sub, self.session, self.s.http, self.s.max_list_bytes)
            policy = Policy(
                trust=self.s.trust,
                endorsers=sub.endorsers,
                identifier=sub.identifier or state.list_identifier,
                min_version=state.list_version,
                min_created=state.list_created,
                allow_sha1=self.s.allow_sha1,
                clock_skew=self.s.clock_skew,
                max_bytes=self.s.max_list_bytes,
            )
            verified = verify_signed_list(data, policy, now)
        except VmtrustError as exc:
            self.state.record_failure(sub.name, str(exc), now)
            report.fail(f"subscription {sub.name}: {exc}")
            return None
        lst = verified.imagelist
        if (
            state.list_version == lst.version
            and state.list_sha512
            and state.list_sha512 != verified.sha512
        ):
            LOG.warning(
                "subscription %s: list version %s changed content without a new version",
                sub.name,
                lst.version,
            )
        known = state.known_images
        if known is None:
            known = frozenset(img.identifier for img in lst.images)
        self.state.record_success(
            sub.name,
            identifier=lst.identifier,
            version=lst.version,
            created=lst.created,
            expires=lst.expires,
            sha512=verified.sha512,
            known_images=known,
            now=now,
        )
        return _Verified(sub, verified, known)

    def _desired(self, lists: list[_Verified], report: Report, now: datetime) -> dict[str, Desired]:
        desired: dict[str, Desired] = {}
        owners: dict[str, list[str]] = {}
        for item in lists:
            lst = item.verified.imagelist
            for image in lst.images:
                owners.setdefault(image.identifier, []).append(item.subscription.name)
                approval = item.subscription.approval(image, lst, item.known)
                if approval is None:
                    LOG.info(
                        "subscription %s: image %s (%s) is not approved",
                        item.subscription.name,
                        image.identifier,
                        image.title,
                    )
                    continue
                if image.expires is not None and image.expires <= now:
                    LOG.info("image %s expired at %s", image.identifier, image.expires)
                    continue
                desired[image.identifier] = Desired(
                    subscription=item.subscription.name,
                    approval=approval,
                    image=image,
                    imagelist=lst,
                    endorser=item.verified.endorser,
                    vo=item.subscription.vo or lst.vo or "",
                )
        for identifier, subs in owners.items():
            if len(subs) > 1:
                desired.pop(identifier, None)
                report.fail(
                    f"image {identifier}: listed by several subscriptions "
                    f"({', '.join(subs)}); not trusted until the site resolves it"
                )
        return desired

    # --- images -------------------------------------------------------------------

    def _create(self, want: Desired) -> Held:
        image = want.image
        free = self.store.free_bytes()
        if free is not None and free < image.size:
            raise TransferError(
                f"image {image.identifier}: store has {free} bytes free, the "
                f"image needs {image.size} (hv:size)"
            )
        source = Source(image.identifier, image.uri, image.size, image.sha512, image.format)
        tick = self.progress(image.title, image.size) if self.progress else None
        # Images come from the same endorser infrastructure as the list: same TLS anchors.
        http = dataclasses.replace(self.s.http, verify=self._tls.get(want.subscription, True))
        reader = SourceReader(source, self.session, http, tick)
        converted = None
        try:
            stream, disk_format = open_disk(reader, image.format)
            wanted = self.store.disk_format(disk_format)
            if wanted != disk_format:
                workdir = self.s.state_dir / "convert"
                workdir.mkdir(exist_ok=True)
                converted = convert(stream, disk_format, wanted, workdir, image.identifier)
                reader.drain()  # the download is checked before the converted file is used
                stream, disk_format = open(converted, "rb"), wanted  # noqa: SIM115

            def finish(
                store_id: str, size: int, sha512: str, *, stored_format: str | None = None
            ) -> tuple:
                reader.drain()  # size and SHA-512 of the download, before committing
                record = want.record(
                    store_id=store_id, sha512=sha512, size=size,
                    disk_format=stored_format or disk_format,
                )  # fmt: skip
                return record, seal(record, self.s.seal_key)

            return self.store.create(want, stream, disk_format, finish)
        finally:
            reader.close()
            if converted is not None:
                stream.close()
                converted.unlink(missing_ok=True)

    def _apply_create(self, action: Create | Replace, report: Report, now: datetime) -> None:
        want = action.desired
        try:
            held = self._create(want)
        except VmtrustError as exc:
            report.fail(str(exc))
            return
        except OSError as exc:
            report.fail(f"image {want.identifier}: {exc}")
            return
        report.done.append(f"stored {want.identifier} {want.image.version} ({want.image.title})")
        hooks.run(self.s.hook, "AvailablePostfix", want.image, want.imagelist, held)
        if isinstance(action, Replace):
            for old in action.old:
                self._retire(old, f"replaced by version {want.image.version}", report, now)

    def _retire(self, held: Held, reason: str, report: Report, now: datetime) -> None:
        try:
            self.store.retire(held, self.s.retire_mode, now)
        except (VmtrustError, OSError) as exc:
            report.fail(f"retire {held.identifier or held.store_id}: {exc}")
            return
        report.done.append(f"retired {held.identifier or held.store_id}: {reason}")
        hooks.run(self.s.hook, "ExpirePostfix", None, None, held)

    # --- the pass -----------------------------------------------------------------------

    def run(
        self,
        subscriptions: tuple[Subscription, ...],
        *,
        dry_run: bool = False,
        now: datetime | None = None,
        out: Callable[[str], None] = print,
    ) -> Report:
        now = now or datetime.now(UTC)
        report = Report()
        self._tls = {sub.name: sub.tls_ca or self.s.http.verify for sub in subscriptions}
        with exclusive_lock(self.s.state_dir):
            try:
                if not dry_run:
                    for line in self.store.cleanup():
                        LOG.warning("removed %s", line)
                held = self.store.held()
            except (VmtrustError, OSError) as exc:
                # Without knowing what the store holds nothing can be planned safely.
                report.fail(str(exc))  # store errors name the store themselves
                return report
            lists = [v for sub in subscriptions if (v := self._verify(sub, report, now))]
            ok = {v.subscription.name for v in lists}
            frozen = {}
            for sub in subscriptions:
                if sub.name not in ok:
                    expiry = self.state.get(sub.name).list_expires
                    frozen[sub.name] = expiry or now
            # Images of subscriptions no longer configured are not approved any more.
            desired = self._desired(lists, report, now)
            plan = make_plan(
                desired,
                held,
                frozen=frozen,
                now=now,
                retire_mode=self.s.retire_mode,
                grace=self.s.retire_grace,
            )
            if dry_run:
                for line in plan.describe() or ["nothing to do"]:
                    out(line)
                return report
            # Quarantine altered images first: a re-created copy may reuse their store id.
            quarantine = [a for a in plan.actions if isinstance(a, Retire) and not a.held.seal_ok]
            for action in quarantine:
                self._retire(action.held, action.reason, report, now)
            creates = [a for a in plan.actions if isinstance(a, Create | Replace)]
            with ThreadPoolExecutor(max_workers=self.s.parallel_downloads) as pool:
                list(pool.map(lambda a: self._apply_create(a, report, now), creates))
            for action in plan.actions:
                if isinstance(action, Refresh):
                    record = action.desired.record(
                        store_id=action.held.store_id,
                        sha512=action.held.record.sha512,
                        size=action.held.record.size,
                        disk_format=action.held.record.disk_format,
                    )
                    try:
                        self.store.refresh(
                            action.held, action.desired, record, seal(record, self.s.seal_key)
                        )
                        report.done.append(f"refreshed {record.image_identifier} metadata")
                    except (VmtrustError, OSError) as exc:
                        report.fail(f"refresh {record.image_identifier}: {exc}")
                elif isinstance(action, Retire) and action not in quarantine:
                    self._retire(action.held, action.reason, report, now)
                elif isinstance(action, Purge):
                    try:
                        self.store.purge(action.held)
                        report.done.append(f"purged {action.held.store_id}")
                    except (VmtrustError, OSError) as exc:
                        report.fail(f"purge {action.held.store_id}: {exc}")
            gone = {a.held.store_id for a in plan.actions if isinstance(a, Retire | Purge)}
            try:
                for line in self.store.converge([h for h in held if h.store_id not in gone]):
                    report.done.append(line)
            except (VmtrustError, OSError) as exc:
                report.fail(f"store {self.store.name}: {exc}")
        return report

    def close(self) -> None:
        self.session.close()
        self.state.close()


def tty_progress() -> Callable[[str, int], Callable[[int], None]] | None:
    """A tqdm progress bar per image on a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm  # only needed on a TTY

    def make(title: str, total: int) -> Callable[[int], None]:
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=title[:30], leave=True)
        return bar.update

    return make
