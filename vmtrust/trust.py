"""Is this stored image trusted?  The one rule, for every store and every reader.

The sync's stores (local directory, Glance, EC2), the nova filter, both
launches and the audit each know how to read a trust record and its seal from
where their store keeps them (a JSON file, Glance properties, AMI tags, a
published document: a :data:`Read`) and what the store itself says about the
image (its id for it, the SHA-512 and size it computed: :class:`Stored`).
What they then decide is decided here, once, in this order:

0. the record can be read (else it is refused like a bad seal);
1. the record's trust state is ``trusted`` (the store marks an image
   ``retired`` or ``uploading`` without a new seal, so this comes first:
   refusing needs no proof);
2. the seal verifies with one of the site's keys over exactly this record;
3. the record is bound to this image: the store's id for it, and the SHA-512
   and size the store computed, where it computes them (EC2 computes no hash
   of a snapshot: there the immutable snapshot id in the store id binds the
   bytes);
4. it has not expired.

The sync, looking after what it holds, asks 2 and 3 of every image, retired
ones too (:func:`check_binding`: retiring changes only the state, the seal is
over the record as committed, in state trusted), and leaves expiry to its
planner.  Whoever lets an image run asks all four (:func:`judge`), after the
checks only its store can make (a record present at all, the owner, the
store's own status), which refuse with the codes below.

Copied records, records of another image and swapped bytes each fail one
check; every refusal names it (:class:`Verdict`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vmtrust.errors import SealError
from vmtrust.imagelist import parse_date
from vmtrust.record import TrustRecord, check_seal

__all__ = [
    "RETIRED",
    "TRUSTED",
    "Code",
    "Read",
    "Stored",
    "Verdict",
    "check_binding",
    "expiry",
    "judge",
    "refuse",
]

#: Trust states a store writes into a record; only the first was ever sealed.
TRUSTED = "trusted"
RETIRED = "retired"


class Code(StrEnum):
    """Which check decided: what callers that sort refusals (the audit) go by."""

    TRUSTED = "trusted"
    NO_RECORD = "no-record"  #: the image carries no vmtrust record (a user's image)
    OWNER = "owner"  #: owned by a project or account the site does not trust
    STATUS = "status"  #: the store's own status keeps it from use (Glance, EC2)
    STATE = "state"  #: the record's trust state is not trusted (retired, uploading)
    SEAL = "seal"  #: record unreadable, seal invalid, or bound to another id, hash or size
    EXPIRED = "expired"
    UNKNOWN = "unknown"  #: nothing to judge: no answer from the store, no image, no keys
    POLICY = "policy"  #: trusted, but not for this request (the filter's VO match)


@dataclass(frozen=True)
class Verdict:
    """Whether an image may be trusted, and exactly why not."""

    trusted: bool
    reason: str  #: "trusted", or why not, on one line
    record: TrustRecord | None = None  #: set once the seal verified, never before
    code: Code = Code.TRUSTED

    def __post_init__(self) -> None:
        if self.trusted != (self.code == Code.TRUSTED):
            raise ValueError(f"verdict {self.reason!r}: trusted={self.trusted}, code {self.code}")

    @property
    def vo(self) -> str:
        """The VO the verified record names ("" without one)."""
        return self.record.vo if self.record else ""


def refuse(code: Code, reason: str, record: TrustRecord | None = None) -> Verdict:
    """A refusal by the check ``code``; ``record`` only when its seal verified."""
    return Verdict(False, reason, record, code)


#: A store's reader of one image's record and seal: :class:`SealError` when there is
#: none to read (missing, malformed, not a record document).
Read = Callable[[], tuple[TrustRecord, str]]


@dataclass(frozen=True)
class Stored:
    """What a store itself reports about one image: what its record must be bound to.

    Never taken from the record.  ``sha512`` and ``size`` are ``None`` where a
    store does not compute them at all; a store that does passes whatever it
    has, so that a missing value fails the comparison rather than skipping it
    (:func:`vmtrust.glanceprops.stored`).
    """

    store_id: str
    sha512: str | None = None
    size: int | None = None


def check_binding(read: Read, stored: Stored, *, keys: Iterable[Ed25519PublicKey]) -> Verdict:
    """Is the record ``read`` gives the site's intact statement about *this* image (0, 2, 3)?

    A record in state retired is checked as it was sealed, in state trusted: a
    trusted verdict here says the record is genuine and bound, not that the
    image may run — that is :func:`judge`.
    """
    try:
        record, sealed = read()
    except SealError as exc:
        return _unsealed(exc)
    return _bound(record, sealed, stored, keys)


def judge(
    read: Read, stored: Stored, *, keys: Iterable[Ed25519PublicKey], now: datetime
) -> Verdict:
    """May the image ``stored`` describes be used at ``now``, by the record ``read`` gives?"""
    try:
        record, sealed = read()
    except SealError as exc:
        return _unsealed(exc)
    if record.state != TRUSTED:
        return refuse(Code.STATE, f"trust state is {record.state}")
    verdict = _bound(record, sealed, stored, keys)
    if not verdict.trusted:
        return verdict
    return expiry(record, now) or verdict


def expiry(record: TrustRecord, now: datetime) -> Verdict | None:
    """The refusal of a record past its expiry at ``now`` (rule 4), or None while it holds.

    An expiry that cannot be read fails closed.  The sync's planner retires by
    this too, so an image leaves the store when every reader stops trusting it.
    """
    try:
        expires = parse_date(record.expires)
    except ValueError:
        return refuse(Code.SEAL, f"unreadable expiry {record.expires!r}", record)
    if expires <= now:
        return refuse(Code.EXPIRED, f"expired at {record.expires}", record)
    return None


def _unsealed(exc: SealError) -> Verdict:
    """A record that cannot be read, or whose seal does not verify: nothing it says counts."""
    return refuse(Code.SEAL, f"seal invalid: {exc}")


def _bound(
    record: TrustRecord, sealed: str, stored: Stored, keys: Iterable[Ed25519PublicKey]
) -> Verdict:
    """Rules 2 and 3: the seal over the record as committed, and its binding to ``stored``."""
    as_sealed = dataclasses.replace(record, state=TRUSTED) if record.state == RETIRED else record
    try:
        check_seal(as_sealed, sealed, keys)
    except SealError as exc:
        return _unsealed(exc)
    if record.store_id != stored.store_id:
        return refuse(Code.SEAL, f"seal is bound to image {record.store_id}, not this one", record)
    if stored.sha512 is not None and stored.sha512 != record.sha512:
        return refuse(Code.SEAL, "content hash differs from the sealed SHA-512", record)
    if stored.size is not None and stored.size != record.size:
        return refuse(
            Code.SEAL, f"size {stored.size} differs from the sealed {record.size}", record
        )
    return Verdict(True, "trusted", record)
