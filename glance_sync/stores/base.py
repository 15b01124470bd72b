"""The one interface every image store implements.

The reconciler only ever talks to a store through these methods, so the
guarantees (new before old, nothing half-written, nothing unmanaged touched)
are proved once in the service and hold for every store that keeps this
contract:

* :meth:`Store.create` must make the image visible as trusted only after the
  ``finish`` callback returned its sealed record — an interrupted create
  leaves at most something :meth:`Store.cleanup` removes;
* :meth:`Store.held` reports only images the store manages (carrying a
  vmtrust record), never anything else;
* :meth:`Store.retire` and :meth:`Store.purge` act on one held image only.

Each store builds itself from vmtrust.conf (:meth:`Store.from_conf`); which
store ``[sync] store`` names is the registry's business
(:mod:`glance_sync.stores.registry`).

What a store reports of an image it holds is decided by the one rule
(:func:`vmtrust.trust.check_binding`); :func:`held_image` turns that verdict
into the planner's :class:`~glance_sync.plan.Held` the same way for every store.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from glance_sync.plan import Desired, Held
from glance_sync.transfer import DiskStream
from vmtrust.imagelist import parse_date
from vmtrust.record import TrustRecord
from vmtrust.trust import Verdict

if TYPE_CHECKING:
    from oslo_config import cfg

__all__ = ["Finish", "Store", "StoreContext", "held_image"]


@dataclass(frozen=True)
class StoreContext:
    """What a store needs besides its own section of vmtrust.conf."""

    seal_keys: list[Ed25519PublicKey]  #: the site's public keys, to check seals with
    state_dir: Path  #: the sync's state directory; ``work_folder`` of it for scratch files
    #: True for the sync; False for readers (``vmtrust images``, ``status``): a reader
    #: runs no site hook and leaves the operator's notes to the sync's log
    syncing: bool = True


class Finish(Protocol):
    """Called by a store once the bytes are written: (store_id, size, sha512) →
    (record, seal).  Raising aborts the create.  ``stored_format`` names the disk
    format of the stored bytes when the store itself changed it (EC2 stores raw)."""

    def __call__(
        self, store_id: str, size: int, sha512: str, *, stored_format: str | None = None
    ) -> tuple[TrustRecord, str]: ...


class Store(ABC):
    name = "store"

    @classmethod
    @abstractmethod
    def from_conf(cls, conf: cfg.ConfigOpts, context: StoreContext) -> Store:
        """The store as its section of vmtrust.conf describes it.

        Every option is checked here, before the sync touches anything, and a bad
        one is a one-line :class:`~vmtrust.errors.ConfigError` naming it; nothing is
        contacted yet (an unreachable cloud fails at first use, as one line too).
        """

    @abstractmethod
    def held(self) -> list[Held]:
        """Every image version this store manages, trusted or retired."""

    @abstractmethod
    def free_bytes(self) -> int | None:
        """Room left for new images, or None when the store cannot tell."""

    def disk_format(self, source_format: str) -> str:
        """The disk format the store wants for an image of ``source_format``."""
        return source_format

    @abstractmethod
    def create(self, want: Desired, stream: DiskStream, disk_format: str, finish: Finish) -> Held:
        """Write the image from ``stream`` and commit it with the record ``finish`` gives.

        ``want`` carries the list's metadata for stores that publish it (Glance
        properties, EC2 tags); the trust record itself comes only from ``finish``.
        """

    @abstractmethod
    def refresh(self, held: Held, want: Desired, record: TrustRecord, seal: str) -> Held:
        """Replace the record, seal and list metadata of an image whose bytes are unchanged."""

    @abstractmethod
    def retire(self, held: Held, mode: str, now: datetime) -> None:
        """Take an image out of the trusted set (deactivate, hide or delete mode)."""

    @abstractmethod
    def purge(self, held: Held) -> None:
        """Remove a retired image for good."""

    def notify(  # noqa: B027 (optional: most stores tell nobody)
        self, event: str, held: Held, want: Desired | None = None
    ) -> None:
        """After a create (``AvailablePostfix``, with what was wanted) or a retire
        (``ExpirePostfix``): a store that tells the site's own programs does it here
        (the local store runs its vmcatcher hook).  Never raises: what was done stands."""

    def converge(self, held: list[Held]) -> list[str]:
        """Bring per-image state that comes from configuration, not from the record
        (Glance sharing, say), in line for the trusted images held; return what changed.
        Runs after the plan is applied; a no-op run must stay cheap."""
        return []

    def lock(self, holder: str) -> contextlib.AbstractContextManager[None]:
        """Exclusive use of the store for one pass, ``holder`` naming the sync to a
        second one.  A store in a directory two syncs could share locks it; the
        default relies on the state directory's lock."""
        return contextlib.nullcontext()

    def cleanup(self) -> list[str]:
        """Remove leftovers of interrupted runs; return what was removed."""
        return []


def held_image(
    verdict: Verdict,
    store_id: str,
    *,
    retired: bool,
    retired_at: object,
    location: str,
    unusable: str | None = None,
) -> Held:
    """One held image as the rule found it.

    Its record counts only once the seal verified (``verdict.record``): an
    unverified record names nothing the sync acts on — no identifier for a
    hook, no list for rollback protection.  ``unusable`` is the store's own
    objection to a trusted image whose record is good (a Glance status, a
    missing file); a retired image is out of use anyway.  ``retired_at`` is
    the retirement time as the store keeps it (text), unreadable text read as
    unknown.
    """
    problem = None if verdict.trusted else verdict.reason
    if problem is None and not retired:
        problem = unusable
    when = None
    if retired and isinstance(retired_at, str):
        with contextlib.suppress(ValueError):
            when = parse_date(retired_at)
    return Held(store_id, verdict.record, problem is None, retired, when, location, problem)
