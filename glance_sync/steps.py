"""The steps a pass takes in one target: create (alone or fanned out), retire, refresh, purge.

:class:`TargetSteps` is the half of :class:`~glance_sync.service.SyncService`
that acts on images; the service decides the order (list phase, plans, the
creates of several targets grouped by image version).  Every step keeps its
failure to itself: the errors vmtrust knows are their own line, anything else
one line naming the image and the exception's type.

A create for one target streams its download straight into the store, as it
always did; a create several targets need is one download fanned out to them
(:mod:`glance_sync.fanout_create`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from glance_sync.convert import Conversion, clear_work_folder, work_folder
from glance_sync.download import Source, SourceReader, check_uri
from glance_sync.fanout_create import FanoutStat, Leg, create_many
from glance_sync.inspection import InspectedStream, inspect_stream
from glance_sync.lists import ListPhase, image_failure
from glance_sync.oci.pull import open_layer
from glance_sync.plan import Create, Desired, Held, Plan, Refresh, Replace
from glance_sync.report import ImageFailure, Report, rule_of, unexpected
from glance_sync.settings import SyncSettings
from glance_sync.stores.base import Store
from glance_sync.targets import DEFAULT, Target
from glance_sync.unpack import Bound, open_disk
from vmtrust.errors import ExpansionError, TransferError, VmtrustError
from vmtrust.record import seal

if TYPE_CHECKING:
    import requests

__all__ = ["Part", "TargetPass", "TargetSteps"]

LOG = logging.getLogger("vmtrust.sync")


def _keys(held: Held) -> dict[str, str]:
    """The event fields of a held image: what its record names (nothing without one)."""
    record = held.record
    if record is None:
        return {"image": held.store_id}
    return {
        "subscription": record.subscription,
        "image": record.image_identifier,
        "version": record.image_version,
    }


def _held_failure(held: Held) -> tuple[ImageFailure, ...]:
    """The failure record of a held image, if its record names one."""
    record = held.record
    if record is None:
        return ()
    return (
        ImageFailure(
            record.subscription, record.image_identifier, record.image_version, record.title, ""
        ),
    )


@dataclasses.dataclass
class TargetPass:
    """One target's part of a pass: its view of the report and what its store holds."""

    target: Target
    report: Report
    held: list[Held]
    quarantined: set[str] = dataclasses.field(default_factory=set)
    started: set[str] = dataclasses.field(default_factory=set)  #: identifiers created early
    plan: Plan | None = None


Part = tuple[TargetPass, Create | Replace]


class TargetSteps:
    """The image steps of a pass, for :class:`~glance_sync.service.SyncService`."""

    s: SyncSettings
    progress: Callable[[str, int], Callable[[int], None]] | None
    session: requests.Session
    lists: ListPhase
    _tls: dict[str, bool | str]
    fanout_stats: list[FanoutStat]
    #: (target, image identifier) → raises when the target is no longer this worker's
    fence: Callable[[str, str], None] | None = None

    def _mode(self, target: Target) -> str:
        """The target's retire mode; its own, or ``[sync] retire``."""
        return target.retire_mode or self.s.retire_mode

    # --- images -------------------------------------------------------------------

    def _fenced(self, target: str, what: str) -> None:
        """Just before a change is committed: is ``target`` still this worker's?

        ``fence`` (set by ``vmtrust-sync --worker``) raises LockError when the
        target's lock lapsed meanwhile (a worker frozen past its lease: another
        may have taken the target).  Every seal (a create's, a refresh's) and
        every retirement and purge asks it: a resumed worker must not re-seal
        what the new owner retired, nor retire or delete what it stored.  A
        create's store then removes the upload.
        """
        if self.fence is not None:
            self.fence(target, what)

    def _create(self, store: Store, want: Desired, report: Report, target: str = DEFAULT) -> Held:
        """Download, unpack, inspect (and convert) one image, and store it sealed.

        Nothing reaches the store's commit point, and nothing reaches ``qemu-img``,
        before the download matched the list and the disk passed inspection.
        """
        image = want.image
        if image.size > self.s.max_image_size:
            raise ExpansionError(
                f"image {image.identifier}: {image.size} bytes (hv:size), more than "
                f"[sync] max_image_size ({self.s.max_image_size}); refused"
            )
        free = store.free_bytes()
        if free is not None and free < image.size:
            raise TransferError(
                f"image {image.identifier}: store has {free} bytes free, the "
                f"image needs {image.size} (hv:size)"
            )
        reader = self._reader(want)
        try:
            bound = Bound.of(image.size, self.s.max_image_size, self.s.max_expansion_ratio, free)
            unpacked, disk_format = open_disk(reader, image.format, bound)
            stream = inspect_stream(unpacked, disk_format, image.identifier)
            wanted = store.disk_format(disk_format)
            if wanted == disk_format:
                return self._store(store, want, reader, stream, disk_format, target)
            work = work_folder(self.s.state_dir)
            with Conversion(
                work, image.identifier, disk_format, wanted, self.s.max_image_size
            ) as conversion:
                conversion.write(stream)  # inspected on the way; the verdict comes at its end
                reader.drain()  # and the download is checked before qemu-img sees a byte
                size = stream.inspection.virtual_size
                if wanted == "raw":
                    self._check_converted_size(image.identifier, size, free)
                conversion.run(size)
                with conversion.open_output() as output:
                    converted = inspect_stream(output, wanted, image.identifier, converted=True)
                    return self._store(store, want, reader, converted, wanted, target)
        finally:
            report.count_bytes(want.subscription, reader.received)
            reader.close()

    def _reader(self, want: Desired) -> SourceReader:
        """The download of ``want``'s bytes: its URI, or its OCI layer through its registry."""
        image = want.image
        tick = self.progress(image.title, image.size) if self.progress else None
        # Images come from the same endorser infrastructure as the list: same TLS anchors.
        http = dataclasses.replace(self.s.http, verify=self._tls.get(want.subscription, True))
        if image.uri.startswith("oci://"):
            registry = self.lists.registries.get(want.subscription)
            return open_layer(want, registry, self.session, http, tick)
        source = Source(image.identifier, image.uri, image.size, image.sha512, image.format)
        return SourceReader(source, self.session, http, tick)

    def _check_converted_size(self, identifier: str, size: int, free: int | None) -> None:
        if size > self.s.max_image_size:
            raise ExpansionError(
                f"image {identifier}: converted to raw it would be {size} bytes, more than "
                f"[sync] max_image_size ({self.s.max_image_size}); refused"
            )
        if free is not None and size > free:
            raise TransferError(
                f"image {identifier}: converted to raw it needs {size} bytes, the store "
                f"has {free} free"
            )

    def _store(
        self,
        store: Store,
        want: Desired,
        reader: SourceReader,
        stream: InspectedStream,
        disk_format: str,
        target: str = DEFAULT,
    ) -> Held:
        def finish(
            store_id: str, size: int, sha512: str, *, stored_format: str | None = None
        ) -> tuple:
            reader.drain()  # size and SHA-512 of the download, before committing
            if not stream.inspection.done:  # the store stopped before the end of the disk
                raise TransferError(f"image {want.identifier}: not read to its end; not stored")
            # a store that converts on the way (EC2: qcow2 → raw blocks) says what it stored
            record = want.record(
                store_id=store_id, sha512=sha512, size=size,
                disk_format=stored_format or disk_format,
                source_sha512=reader.digest.hexdigest(),
            )  # fmt: skip
            self._fenced(target, f"image {want.identifier}")
            return record, seal(record, self.s.seal_key)

        return store.create(want, stream, disk_format, finish)

    def _clear_work(self, report: Report) -> None:
        """Leftovers of an interrupted pass go; a folder that resists is one line, not a stop."""
        folder = work_folder(self.s.state_dir)
        try:
            for line in clear_work_folder(folder):
                LOG.warning("removed %s", line)
        except OSError as exc:
            report.fail(f"work folder {folder}: {exc.strerror or exc}")

    @staticmethod
    def _create_failed(want: Desired, exc: BaseException, report: Report) -> None:
        """A create's error as its one line."""
        if isinstance(exc, VmtrustError):
            report.fail(str(exc), rule=exc.rule)
        elif isinstance(exc, OSError):
            report.fail(f"image {want.identifier}: {exc}", rule=rule_of(exc))
        elif isinstance(exc, Exception):
            report.fail(unexpected(f"image {want.identifier}", exc), rule=rule_of(exc))
        else:
            raise exc

    def _created(
        self, target: Target, action: Create | Replace, held: Held, report: Report, now: datetime
    ) -> None:
        want = action.desired
        report.add(
            f"stored {want.identifier} {want.image.version} ({want.image.title})",
            "stored",
            subscription=want.subscription,
            image=want.identifier,
            version=want.image.version,
        )
        target.store.notify("AvailablePostfix", held, want)
        if isinstance(action, Replace):
            for old in action.old:
                self._retire(target, old, f"replaced by version {want.image.version}", report, now)

    def _image_task(
        self, target: Target, action: Create | Replace, local_list: bool, report: Report,
        now: datetime,
    ) -> None:  # fmt: skip
        """Create (or replace) one image in one target; whatever happens is lines of the report."""
        want = action.desired
        own = Report()
        try:
            check_uri(want.identifier, want.image.uri, local_list=local_list)
            try:
                held = self._create(target.store, want, own, target.name)
            except (VmtrustError, OSError) as exc:
                self._create_failed(want, exc, own)
            else:
                self._created(target, action, held, own, now)
        except VmtrustError as exc:
            own.fail(str(exc), rule=exc.rule)
        except Exception as exc:
            own.fail(unexpected(f"image {want.identifier}", exc), rule=rule_of(exc))
        report.merge(own, image_failure(want))

    def _image_job(self, parts: list[Part], local_list: bool, now: datetime) -> None:
        """One image version for one or more targets: one download, every target fed.

        One target: the single-store path.  Several: :func:`~glance_sync.fanout_create.
        create_many`, then each target's outcome is its own lines.
        """
        if len(parts) == 1:
            tp, action = parts[0]
            self._image_task(tp.target, action, local_list, tp.report, now)
            return
        want = parts[0][1].desired
        legs = [Leg(tp.target, action, tp.report) for tp, action in parts]
        try:
            check_uri(want.identifier, want.image.uri, local_list=local_list)
            create_many(self, want, legs, parts[0][0].report)
        except Exception as exc:  # a refused URI, or a bug: every target reports it
            for leg in legs:
                leg.error = leg.error or exc
        for leg in legs:
            own = Report()
            try:
                if leg.held is not None:
                    self._created(leg.target, leg.action, leg.held, own, now)
                else:
                    self._create_failed(want, leg.error or RuntimeError("not created"), own)
            except Exception as exc:
                own.fail(unexpected(f"image {want.identifier}", exc), rule=rule_of(exc))
            leg.report.merge(own, image_failure(want))

    def _retire(
        self, target: Target, held: Held, reason: str, report: Report, now: datetime
    ) -> None:
        what = f"retire {held.identifier or held.store_id}"
        try:
            self._fenced(target.name, what)
            target.store.retire(held, self._mode(target), now)
        except (VmtrustError, OSError) as exc:
            report.fail(f"{what}: {exc}", *_held_failure(held), rule=rule_of(exc))
            return
        except Exception as exc:
            report.fail(unexpected(what, exc), *_held_failure(held), rule=rule_of(exc))
            return
        report.add(
            f"retired {held.identifier or held.store_id}: {reason}", "retired", **_keys(held)
        )
        target.store.notify("ExpirePostfix", held)

    def _refresh(
        self, store: Store, action: Refresh, report: Report, target: str = DEFAULT
    ) -> None:
        held = action.held
        assert held.record is not None
        record = action.desired.record(
            store_id=held.store_id,
            sha512=held.record.sha512,
            size=held.record.size,
            disk_format=held.record.disk_format,
            source_sha512=held.record.source_sha512,
        )
        what = f"refresh {record.image_identifier}"
        try:
            self._fenced(target, what)
            store.refresh(held, action.desired, record, seal(record, self.s.seal_key))
        except (VmtrustError, OSError) as exc:
            report.fail(f"{what}: {exc}", image_failure(action.desired), rule=rule_of(exc))
            return
        except Exception as exc:
            report.fail(unexpected(what, exc), image_failure(action.desired), rule=rule_of(exc))
            return
        report.add(
            f"refreshed {record.image_identifier} metadata",
            "refreshed",
            subscription=record.subscription,
            image=record.image_identifier,
            version=record.image_version,
        )

    def _purge(self, store: Store, held: Held, report: Report, target: str = DEFAULT) -> None:
        what = f"purge {held.store_id}"
        try:
            self._fenced(target, what)
            store.purge(held)
        except (VmtrustError, OSError) as exc:
            report.fail(f"{what}: {exc}")
            return
        except Exception as exc:
            report.fail(unexpected(what, exc))
            return
        report.add(f"purged {held.store_id}", "purged", **_keys(held))

    # --- reading a store ------------------------------------------------------------------

    def _survey(self, store: Store, report: Report, *, cleanup: bool) -> list[Held] | None:
        """What the store holds (None, reported, when it cannot tell).

        A failed cleanup does not stop the pass; when the listing fails too, its
        line says why (it is usually the same cause) and the pass stops.
        """
        cleanup_failed = None
        if cleanup:
            try:
                for line in store.cleanup():
                    LOG.warning("removed %s", line)
            except VmtrustError as exc:
                cleanup_failed = f"store {store.name}: cleanup: {exc}"
            except Exception as exc:
                cleanup_failed = unexpected(f"store {store.name}: cleanup", exc)
        try:
            held = store.held()
        except VmtrustError as exc:
            report.fail(str(exc))  # store errors name the store themselves
        except Exception as exc:
            report.fail(unexpected(f"store {store.name}", exc))
        else:
            if cleanup_failed:
                report.fail(cleanup_failed)
            return held
        # Without knowing what the store holds nothing can be planned safely.
        return None
