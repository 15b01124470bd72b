"""The reconciler's pure half: desired set vs what the store holds → a plan.

No I/O here.  The sync service computes the *desired* set from lists that
verified and the site's approval, asks the store what it *holds*, and this
module decides what to do, following the rules that make a sync safe:

* an image whose subscription failed this run (list unreachable, bad
  signature, rollback…) is left exactly as it is until that list's own
  ``dc:date:expires`` — never retired because of an upstream failure;
* a new version is created first; the versions it replaces are retired only
  after it is in place (:class:`Replace` carries both) — unless an old version
  has already expired, which is retired at once;
* an image leaves the trusted set when its list expires, when a newer list
  no longer has it (HEPiX revocation), when its own expiry passes (by the
  rule every reader applies, :func:`vmtrust.trust.expiry`), or when the site
  withdraws approval;
* a held image whose record or seal does not verify is retired (quarantined);
* retired images are purged after the grace period when the retire mode is
  ``delete``.

How long a failed subscription's images stay comes from :func:`last_accepted`:
the newest list the state database *or* the sealed records know of, so an
empty or old state directory never retires anything early.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from vmtrust import version
from vmtrust.imagelist import Endorser, Image, ImageList, format_date, parse_date
from vmtrust.record import TrustRecord, entry_digest
from vmtrust.trust import expiry

__all__ = [
    "Action",
    "Create",
    "Desired",
    "Held",
    "KnownList",
    "Plan",
    "Purge",
    "Refresh",
    "Replace",
    "Retire",
    "last_accepted",
    "make_plan",
]


@dataclass(frozen=True)
class Desired:
    """One approved image version from a verified list."""

    subscription: str
    approval: str
    image: Image
    imagelist: ImageList
    endorser: Endorser
    vo: str
    basis: str = "hepix"  #: what vouches for the image (:data:`vmtrust.record.BASES`)
    #: The content digest the source pins (an OCI layer's ``sha256:…``); Glance's
    #: ``image_hash`` shows it when the source gives no SHA-512 to check.
    digest: str = ""

    @property
    def identifier(self) -> str:
        return self.image.identifier

    @property
    def expires(self) -> datetime:
        if self.image.expires is not None:
            return min(self.image.expires, self.imagelist.expires)
        return self.imagelist.expires

    def record(
        self,
        *,
        store_id: str,
        sha512: str,
        size: int,
        disk_format: str,
        source_sha512: str = "",
    ) -> TrustRecord:
        """The record of this version stored as ``store_id``.

        ``source_sha512`` is the SHA-512 of the download as computed; it counts only
        when the source gives none to check (an OCI image pinned by digest): a list's
        ``sl:checksum:sha512`` is what the download was checked against.
        """
        return TrustRecord(
            image_identifier=self.image.identifier,
            title=self.image.title,
            image_version=self.image.version,
            list_identifier=self.imagelist.identifier,
            list_version=self.imagelist.version,
            endorser_dn=self.endorser.dn,
            endorser_ca=self.endorser.ca,
            vo=self.vo,
            subscription=self.subscription,
            approval=self.approval,
            expires=format_date(self.expires),
            source_sha512=self.image.sha512 or source_sha512,
            sha512=sha512,
            size=size,
            store_id=store_id,
            disk_format=disk_format,
            entry_digest=entry_digest(self.image.raw),
            basis=self.basis,
        )


@dataclass(frozen=True)
class Held:
    """One image version the store holds, as the store reports it."""

    store_id: str
    record: TrustRecord | None  #: None when missing or unreadable
    seal_ok: bool
    retired: bool = False
    retired_at: datetime | None = None
    location: str = ""
    problem: str | None = None  #: why the record or seal is not good

    @property
    def identifier(self) -> str | None:
        return self.record.image_identifier if self.record else None


@dataclass(frozen=True)
class Create:
    desired: Desired


@dataclass(frozen=True)
class Replace:
    """Create ``desired``; only once it is in place, retire ``old``."""

    desired: Desired
    old: tuple[Held, ...]


@dataclass(frozen=True)
class Refresh:
    """Same bytes, new metadata (a new list version, another approval): re-seal."""

    held: Held
    desired: Desired


@dataclass(frozen=True)
class Retire:
    held: Held
    reason: str


@dataclass(frozen=True)
class Purge:
    held: Held


Action = Create | Replace | Refresh | Retire | Purge


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    kept: list[Held] = field(default_factory=list)  #: frozen by a failed subscription
    held: list[Held] = field(default_factory=list)  #: their new version was refused (``hold``)

    def describe(self) -> list[str]:
        lines = []
        for action in self.actions:
            if isinstance(action, Create):
                d = action.desired
                lines.append(
                    f"create  {d.identifier} {d.image.version} ({d.image.title}) "
                    f"from {d.subscription}"
                )
            elif isinstance(action, Replace):
                d = action.desired
                old = ", ".join(h.record.image_version for h in action.old if h.record)
                lines.append(
                    f"replace {d.identifier} {old} -> {d.image.version} "
                    f"({d.image.title}) from {d.subscription}"
                )
            elif isinstance(action, Refresh):
                lines.append(
                    f"refresh {action.desired.identifier} metadata "
                    f"(list {action.desired.imagelist.version})"
                )
            elif isinstance(action, Retire):
                lines.append(
                    f"retire  {action.held.identifier or action.held.store_id}: {action.reason}"
                )
            elif isinstance(action, Purge):
                lines.append(
                    f"purge   {action.held.store_id} (retired "
                    f"{action.held.retired_at and format_date(action.held.retired_at)})"
                )
        for held in self.kept:
            lines.append(
                f"keep    {held.identifier} (its list failed this run; kept until the list expires)"
            )
        for held in self.held:
            lines.append(f"keep    {held.identifier} (its new version was refused; kept as it is)")
        return lines


_METADATA_IGNORED = {"store_id", "sha512", "size", "state", "disk_format"}


def _same_metadata(held: TrustRecord, wanted: TrustRecord) -> bool:
    a, b = held.__dict__, wanted.__dict__
    return all(a[k] == b[k] for k in a if k not in _METADATA_IGNORED)


def _sealed(item: Held) -> TrustRecord:
    """The record of a held image the planner kept: one with a record whose seal verified."""
    if item.record is None:  # make_plan retires these before it compares anything
        raise ValueError(f"held image {item.store_id} has no trust record")
    return item.record


def _same_bytes(record: TrustRecord, desired: Desired) -> bool:
    """The held version is the one wanted: same version and, where the source gives
    one, the same SHA-512 (an OCI image's version is its manifest digest, which pins
    the bytes by itself)."""
    same_hash = not desired.image.sha512 or record.source_sha512 == desired.image.sha512
    return same_hash and record.image_version == desired.image.version


def make_plan(
    desired: dict[str, Desired],
    held: list[Held],
    *,
    frozen: dict[str, datetime],
    now: datetime,
    retire_mode: str = "deactivate",
    grace: timedelta = timedelta(days=7),
    hold: frozenset[str] = frozenset(),
) -> Plan:
    """Decide what to do; ``frozen`` maps failed subscriptions to their last list's expiry.

    ``hold`` are identifiers whose source answered but whose current version could not
    be trusted this pass (an OCI tag moved to an unsigned manifest): what the store
    holds for them stays as it is, like a failed subscription's images, until it expires.
    """
    plan = Plan()
    by_identifier: dict[str, list[Held]] = {}
    for item in held:
        if item.retired:
            if retire_mode == "delete" and item.retired_at and item.retired_at + grace <= now:
                plan.actions.append(Purge(item))
            continue
        if item.record is None or not item.seal_ok:
            plan.actions.append(Retire(item, item.problem or "trust record or seal invalid"))
            continue
        by_identifier.setdefault(item.record.image_identifier, []).append(item)

    for identifier, want in sorted(desired.items()):
        holding = by_identifier.pop(identifier, [])
        current = [h for h in holding if _same_bytes(_sealed(h), want)]
        others = tuple(h for h in holding if h not in current)
        # An old version past its own expiry leaves now: carrying it in a Replace
        # would keep it trusted for as long as the new version fails to arrive.
        for item in others:
            if (gone := expiry(_sealed(item), now)) is not None:
                plan.actions.append(Retire(item, gone.reason))
        others = tuple(h for h in others if expiry(_sealed(h), now) is None)
        if current:
            keep, *duplicates = current
            kept = _sealed(keep)
            probe = want.record(
                store_id=keep.store_id,
                sha512=kept.sha512,
                size=kept.size,
                disk_format=kept.disk_format,
                source_sha512=kept.source_sha512,
            )
            if not _same_metadata(kept, probe):
                plan.actions.append(Refresh(keep, want))
            for extra in (*duplicates, *others):
                plan.actions.append(Retire(extra, f"superseded by version {want.image.version}"))
        elif others:
            plan.actions.append(Replace(want, others))
        else:
            plan.actions.append(Create(want))

    for identifier, holding in sorted(by_identifier.items()):
        for item in holding:
            record = item.record
            assert record is not None
            if (gone := expiry(record, now)) is not None:
                plan.actions.append(Retire(item, gone.reason))
            elif frozen.get(record.subscription, now) > now:
                plan.kept.append(item)
            elif identifier in hold:
                plan.held.append(item)
            elif record.subscription in frozen:
                plan.actions.append(Retire(item, "its list could not be refreshed and has expired"))
            else:
                plan.actions.append(
                    Retire(item, f"no longer in an approved, valid list (image {identifier})")
                )
    return plan


@dataclass(frozen=True)
class KnownList:
    """The newest list the site accepted for a subscription, as far as it can tell."""

    identifier: str | None = None
    version: str | None = None
    expires: datetime | None = None


def last_accepted(subscription: str, state: KnownList, held: list[Held]) -> KnownList:
    """The newest of the list the state database remembers and those the records name.

    A new or reinstalled sync host has an empty state directory, a restored
    backup an old one; the store still holds a record per image, sealed by the
    site's key, naming the list it was stored or last refreshed from and an
    expiry no later than that list's.  So rollback protection, identifier
    pinning and the time a failed list's images stay all use the newest list
    either source knows.  Only records whose seal verifies count: a forged
    record never extends anything.  Records of another list identifier than the
    one the state has pinned are ignored.
    """
    best = state
    for item in held:
        record = item.record
        if record is None or not item.seal_ok or record.subscription != subscription:
            continue
        if best.identifier is not None and record.list_identifier != best.identifier:
            continue
        expires = _parse(record.expires)
        if expires is None:
            continue
        order = 1 if best.version is None else version.compare(record.list_version, best.version)
        if order > 0:
            best = KnownList(record.list_identifier, record.list_version, expires)
        elif order == 0 and (best.expires is None or expires > best.expires):
            best = KnownList(best.identifier, best.version, expires)
    return best


def _parse(text: str) -> datetime | None:
    try:
        return parse_date(text)
    except ValueError:
        return None
