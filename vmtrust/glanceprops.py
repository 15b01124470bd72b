"""The trust record as Glance image properties, and the one check every reader makes.

The Glance store writes, the nova filter and ``vmtrust launch`` read, so the
mapping and the decision live here, in the trust core, once.  Each record field
``f`` becomes the property ``vmtrust_f`` (Glance properties are strings; the
size is written in decimal), the seal goes to ``vmtrust_seal``, and
``vmtrust_managed = true`` marks every image the sync created — the marker is
what the sync lists by, and what keeps it away from images it does not manage.
Property protections (``etc/glance/property-protections-vmtrust.conf``) keep
everyone but the sync's role from writing any of them.

:func:`judge` is the whole rule for "may this Glance image be trusted": owned
by a trusted project, active, state trusted, the seal valid for one of the
site's keys, the record bound to this image id and to the ``os_hash_value``
Glance itself computed, the size equal, not expired.  A copy of the
properties onto another image, a snapshot inheriting them, or bytes swapped
behind the record each break one of these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vmtrust.errors import SealError
from vmtrust.imagelist import parse_date
from vmtrust.record import TrustRecord, check_seal

PREFIX = "vmtrust_"
MANAGED = "vmtrust_managed"
SEAL = "vmtrust_seal"
STATE = "vmtrust_state"
RETIRED_AT = "vmtrust_retired_at"
RETIRE_MODE = "vmtrust_retire_mode"
SHARED_WITH = "vmtrust_shared_with"
#: The state of an image whose bytes are still arriving; never trusted, removed by cleanup.
UPLOADING = "uploading"
RECORD_FIELDS = tuple(f.name for f in fields(TrustRecord))
#: Every property vmtrust may write: for nova's non_inheritable_image_properties and the
#: metadefs namespace.
ALL_PROPERTIES = (
    MANAGED,
    SEAL,
    *(PREFIX + name for name in RECORD_FIELDS if PREFIX + name != STATE),
    STATE,
    RETIRED_AT,
    RETIRE_MODE,
    SHARED_WITH,
)


def record_properties(record: TrustRecord, seal: str) -> dict[str, str]:
    """The properties that carry ``record`` and its ``seal``."""
    props = {PREFIX + name: str(getattr(record, name)) for name in RECORD_FIELDS}
    props[SEAL] = seal
    props[MANAGED] = "true"
    return props


def read_record(image: Mapping[str, Any]) -> tuple[TrustRecord, str]:
    """The record and seal from a Glance image (v2 JSON, properties at the top level)."""
    data = {name: image[PREFIX + name] for name in RECORD_FIELDS if PREFIX + name in image}
    record = TrustRecord.from_dict(data)
    seal = image.get(SEAL)
    if not isinstance(seal, str) or not seal:
        raise SealError("trust record: no seal")
    return record, seal


#: :attr:`Verdict.code` values: which check refused the image.
CODE_NO_RECORD = "no-record"
CODE_OWNER = "owner"
CODE_STATUS = "status"
CODE_STATE = "state"
CODE_SEAL = "seal"
CODE_EXPIRED = "expired"


@dataclass(frozen=True)
class Verdict:
    trusted: bool
    reason: str  #: why not; "trusted" when it is
    record: TrustRecord | None = None  #: set once the seal verified
    #: "trusted", or the check that refused (``CODE_*``; ``CODE_SEAL`` covers the seal and
    #: its binding to id, hash and size) — for callers that sort refusals, like the audit
    code: str = "trusted"


def _refuse(code: str, reason: str, record: TrustRecord | None = None) -> Verdict:
    return Verdict(False, reason, record, code)


def judge(
    image: Mapping[str, Any],
    keys: Iterable[Ed25519PublicKey],
    now: datetime,
    *,
    owners: Iterable[str] | None = None,
    statuses: tuple[str, ...] = ("active",),
) -> Verdict:
    """Decide whether a Glance image is trusted; fail closed with the exact reason."""
    image_id = image.get("id", "?")
    if image.get(MANAGED) != "true" or SEAL not in image:
        return _refuse(CODE_NO_RECORD, "no vmtrust trust record")
    if owners is not None and image.get("owner") not in set(owners):
        return _refuse(CODE_OWNER, f"owner {image.get('owner')} is not a trusted project")
    if image.get("status") not in statuses:
        return _refuse(CODE_STATUS, f"status is {image.get('status')}")
    state = image.get(STATE)
    if state != "trusted":
        return _refuse(CODE_STATE, f"trust state is {state}")
    try:
        record, seal = read_record(image)
        check_seal(record, seal, keys)
    except SealError as exc:
        return _refuse(CODE_SEAL, f"seal invalid: {exc}")
    if record.store_id != image_id:
        return _refuse(CODE_SEAL, f"seal is bound to image {record.store_id}, not this one", record)
    if image.get("os_hash_algo") != "sha512" or image.get("os_hash_value") != record.sha512:
        return _refuse(CODE_SEAL, "content hash differs from the sealed one", record)
    if image.get("size") is not None and image.get("size") != record.size:
        return _refuse(
            CODE_SEAL, f"size {image.get('size')} differs from the sealed {record.size}", record
        )
    try:
        expires = parse_date(record.expires)
    except ValueError:
        return _refuse(CODE_SEAL, f"unreadable expiry {record.expires!r}", record)
    if expires <= now:
        return _refuse(CODE_EXPIRED, f"expired at {record.expires}", record)
    return Verdict(True, "trusted", record)
