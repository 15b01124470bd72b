"""One image version created in several targets from one download (``[sync] targets``).

:func:`create_many` opens the download once — through the same checks as a
single store's create: ``hv:size`` bound, decompression bound, OVA member,
inspection — and streams the disk bytes through a :class:`~glance_sync.fanout.Tee`
to each target's ``Store.create`` on a thread of its own.  Targets that want
another disk format share one conversion per format: its branch writes the
work file, and the converted output (inspected again) is streamed the same way
to those targets.

Every guarantee of the single-store path holds per target:

* a target's commit point (the ``finish`` callback) is reached only after the
  download matched the list's size and SHA-512 and the inspection passed — the
  branch's end of stream waits for that, and ``finish`` checks it again;
* nothing reaches ``qemu-img`` before that either (the conversion reads its
  branch to the verified end first);
* each target's record and seal are bound to that target's store id and the
  SHA-512 of the bytes it stored;
* a target that fails (an outage, a full disk, a 503) fails alone: its branch
  detaches and the others go on; its error is its leg's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, cast

from glance_sync.convert import Conversion, work_folder
from glance_sync.fanout import Branch, NoReaders, Tee
from glance_sync.inspection import InspectedStream, inspect_stream
from glance_sync.plan import Create, Desired, Held, Replace
from glance_sync.report import Report
from glance_sync.transfer import Tally, iter_chunks
from glance_sync.unpack import Bound, open_disk
from vmtrust.errors import ExpansionError, TransferError
from vmtrust.record import seal

if TYPE_CHECKING:
    from glance_sync.steps import TargetSteps as SyncService
    from glance_sync.targets import Target

__all__ = ["FanoutStat", "Leg", "create_many"]


@dataclass
class Leg:
    """One target's part of a create shared by several targets."""

    target: Target
    action: Create | Replace
    report: Report  #: the target's view of the pass's report
    free: int | None = None
    held: Held | None = None  #: what the target stored, once it did
    error: BaseException | None = None  #: why it did not
    done_at: float = 0.0  #: time.monotonic() when the target committed the image

    @property
    def open(self) -> bool:
        return self.held is None and self.error is None


@dataclass(frozen=True)
class FanoutStat:
    """One fan-out of a pass, for the benchmark and the tests (``SyncService.fanout_stats``)."""

    identifier: str
    readers: int  #: branches: targets, and one per conversion
    peak: int  #: most bytes held in memory at once
    spooled: int  #: bytes written to the spool for laggards
    ended_at: float  #: time.monotonic() when the download was verified (0: never)
    done: dict[str, float]  #: target → time.monotonic() when it committed (0: it did not)


def create_many(svc: SyncService, want: Desired, legs: list[Leg], report: Report) -> None:
    """Create ``want`` in every leg's target; each leg ends with ``held`` or ``error``."""
    image = want.image
    if image.size > svc.s.max_image_size:
        error = ExpansionError(
            f"image {image.identifier}: {image.size} bytes (hv:size), more than "
            f"[sync] max_image_size ({svc.s.max_image_size}); refused"
        )
        for leg in legs:
            leg.error = error
        return
    for leg in legs:
        try:
            leg.free = leg.target.store.free_bytes()
        except Exception as exc:
            leg.error = exc
            continue
        if leg.free is not None and leg.free < image.size:
            leg.error = TransferError(
                f"image {image.identifier}: store has {leg.free} bytes free, the "
                f"image needs {image.size} (hv:size)"
            )
    live = [leg for leg in legs if leg.open]
    if not live:
        return
    try:
        reader = svc._reader(want)
    except Exception as exc:
        _fail_open(live, exc)
        return
    try:
        # no room bound: each target's room is its own (a store that fills fails alone)
        bound = Bound.of(image.size, svc.s.max_image_size, svc.s.max_expansion_ratio, None)
        unpacked, disk_format = open_disk(reader, image.format, bound)
        stream = inspect_stream(unpacked, disk_format, image.identifier)

        def verify() -> str:
            reader.drain()  # size and SHA-512 of the download, before any end of stream
            if not stream.inspection.done:
                raise TransferError(f"image {image.identifier}: not read to its end; not stored")
            return reader.digest.hexdigest()

        _distribute(svc, want, stream, disk_format, live, verify, convert=True)
    except Exception as exc:
        _fail_open(live, exc)
    finally:
        report.count_bytes(want.subscription, reader.received)
        reader.close()


def _fail_open(legs: list[Leg], exc: BaseException) -> None:
    for leg in legs:
        if leg.open:
            leg.error = exc


def _distribute(
    svc: SyncService,
    want: Desired,
    stream: InspectedStream,
    disk_format: str,
    legs: list[Leg],
    verify: Callable[[], str],
    *,
    convert: bool,
) -> None:
    """Stream ``stream`` to every leg (converting for those that want another format).

    ``verify`` runs after the last byte was read and returns the SHA-512 of the
    download (the record's ``source_sha512``); only then do the branches end.
    """
    identifier = want.identifier
    tee = Tee(work_folder(svc.s.state_dir), identifier, svc.s.fanout_buffer)
    direct: list[Leg] = []
    groups: dict[str, list[Leg]] = {}
    for leg in legs:
        wanted = leg.target.store.disk_format(disk_format) if convert else disk_format
        if wanted == disk_format:
            direct.append(leg)
        else:
            groups.setdefault(wanted, []).append(leg)
    jobs: list[tuple[Callable[..., None], tuple[object, ...]]] = []
    for leg in direct:
        branch = tee.branch(leg.target.name)
        branch.inspection = stream.inspection  # type: ignore[attr-defined]
        size = getattr(stream, "expected_size", None)
        if size is not None:  # the download as it is: its upload announces its length
            branch.expected_size = size  # type: ignore[attr-defined]
        jobs.append((_store, (svc, want, leg, branch, disk_format, tee)))
    for fmt, members in groups.items():
        branch = tee.branch(f"conversion to {fmt}")
        jobs.append((_convert, (svc, want, fmt, members, branch, stream, disk_format, tee)))
    try:
        with ThreadPoolExecutor(len(jobs), thread_name_prefix="vmtrust-target") as pool:
            for job, args in jobs:
                pool.submit(job, *args)
            try:
                tally = Tally()
                for chunk in iter_chunks(cast(IO[bytes], stream), identifier, tally):
                    tee.feed(chunk)
                tee.source_sha512 = verify()
                tee.end(tally.sha512)
            except NoReaders:
                pass  # every target failed on its own; each leg holds its error
            except BaseException as exc:
                tee.fail(exc)  # every branch raises it: every store aborts
                if not isinstance(exc, Exception):
                    raise  # an interrupt stops the pass, once the stores cleaned up
    finally:
        tee.close()
        done = {leg.target.name: leg.done_at for leg in legs}
        stat = FanoutStat(identifier, len(jobs), tee.peak_ring, tee.spooled, tee.ended_at, done)
        svc.fanout_stats.append(stat)


def _store(
    svc: SyncService, want: Desired, leg: Leg, branch: Branch, disk_format: str, tee: Tee
) -> None:
    """One target's create from its branch; its commit waits for the verified end."""

    def finish(store_id: str, size: int, sha512: str, *, stored_format: str | None = None) -> tuple:
        tee.wait()  # the download and the inspection verified (or their error raised)
        if branch.offset != tee.written:
            raise TransferError(f"image {want.identifier}: not read to its end; not stored")
        record = want.record(
            store_id=store_id, sha512=sha512, size=size,
            disk_format=stored_format or disk_format, source_sha512=tee.source_sha512,
        )  # fmt: skip
        svc._fenced(leg.target.name, f"image {want.identifier}")
        return record, seal(record, svc.s.seal_key)

    try:
        leg.held = leg.target.store.create(want, branch, disk_format, finish)
        leg.done_at = time.monotonic()
    except BaseException as exc:
        leg.error = exc
    finally:
        branch.detach()


def _convert(
    svc: SyncService,
    want: Desired,
    fmt: str,
    legs: list[Leg],
    branch: Branch,
    stream: InspectedStream,
    disk_format: str,
    tee: Tee,
) -> None:
    """One conversion for every target that wants ``fmt``, then their creates from it."""
    identifier = want.identifier
    try:
        with Conversion(
            work_folder(svc.s.state_dir), identifier, disk_format, fmt, svc.s.max_image_size
        ) as conversion:
            conversion.write(cast(IO[bytes], branch))  # to its end, which comes once verified
            branch.detach()
            tee.wait()
            source_sha512 = tee.source_sha512
            size = stream.inspection.virtual_size
            if fmt == "raw":
                svc._check_converted_size(identifier, size, None)
                for leg in legs:
                    if leg.free is not None and size > leg.free:
                        leg.error = TransferError(
                            f"image {identifier}: converted to raw it needs {size} bytes, "
                            f"the store has {leg.free} free"
                        )
            conversion.run(size)
            with conversion.open_output() as output:
                converted = inspect_stream(output, fmt, identifier, converted=True)

                def verify() -> str:
                    if not converted.inspection.done:
                        raise TransferError(f"image {identifier}: not read to its end; not stored")
                    return source_sha512

                live = [leg for leg in legs if leg.open]
                if live:
                    _distribute(svc, want, converted, fmt, live, verify, convert=False)
    except BaseException as exc:
        _fail_open(legs, exc)
    finally:
        branch.detach()
