"""The trust record as Glance image properties, and what Glance adds to the one rule.

The Glance store writes, the nova filter, ``vmtrust launch`` and the audit
read, so the mapping lives here, in the trust core, once.  Each record field
``f`` becomes the property ``vmtrust_f`` (Glance properties are strings; the
size is written in decimal), the seal goes to ``vmtrust_seal``, and
``vmtrust_managed = true`` marks every image the sync created — the marker is
what the sync lists by, and what keeps it away from images it does not manage.
Property protections (``etc/glance/property-protections-vmtrust.conf``) keep
everyone but the sync's role from writing any of them.

:func:`judge` is "may this Glance image be used": it carries a record, is
owned by a trusted project and active, and then the one rule of
:mod:`vmtrust.trust` — state trusted, the seal valid for one of the site's
keys, the record bound to this image id and to the SHA-512 (``os_hash_algo``
and ``os_hash_value``) and size Glance itself computed (:func:`stored`), not
expired.  The Glance store asks the same of what it holds.  A copy of the
properties onto another image, a snapshot inheriting them, or bytes swapped
behind the record each break one of these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vmtrust import trust
from vmtrust.errors import SealError
from vmtrust.record import TrustRecord
from vmtrust.trust import Code, Stored, Verdict, refuse

__all__ = [
    "ALL_PROPERTIES",
    "MANAGED",
    "PREFIX",
    "RECORD_FIELDS",
    "RETIRED_AT",
    "RETIRE_MODE",
    "SEAL",
    "SHARED_WITH",
    "STATE",
    "UPLOADING",
    "judge",
    "read_record",
    "record_properties",
    "stored",
    "usable",
]

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


def stored(image: Mapping[str, Any]) -> Stored:
    """What Glance itself computed of an image: the id, SHA-512 and size its record is bound to.

    Glance hashes what it stores with its ``hashing_algorithm`` (sha512 at a
    vmtrust site, docs/glance.md).  A hash by any other algorithm, or none at
    all (an image given a location rather than bytes), is no SHA-512 of these
    bytes: it is read as the empty one, which no record's SHA-512 equals.
    """
    value = image.get("os_hash_value")
    sha512 = value if image.get("os_hash_algo") == "sha512" and isinstance(value, str) else ""
    return Stored(str(image.get("id", "")), sha512, image.get("size"))


def usable(image: Mapping[str, Any]) -> str | None:
    """Why Glance's own status keeps the image from use, or None when it is active."""
    status = image.get("status")
    return None if status == "active" else f"status is {status}"


def judge(
    image: Mapping[str, Any],
    keys: Iterable[Ed25519PublicKey],
    now: datetime,
    *,
    owners: Iterable[str] | None = None,
) -> Verdict:
    """May this Glance image be used now?  Fail closed, with the exact reason.

    What only Glance can tell comes first (a record at all, the owner, the
    status), then the one rule (:func:`vmtrust.trust.judge`) on the record.
    """
    if image.get(MANAGED) != "true" or SEAL not in image:
        return refuse(Code.NO_RECORD, "no vmtrust trust record")
    if owners is not None and image.get("owner") not in set(owners):
        return refuse(Code.OWNER, f"owner {image.get('owner')} is not a trusted project")
    problem = usable(image)
    if problem is not None:
        return refuse(Code.STATUS, problem)
    return trust.judge(lambda: read_record(image), stored(image), keys=keys, now=now)
