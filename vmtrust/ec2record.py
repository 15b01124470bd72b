"""The trust record on EC2: as tags of the AMI, and as the document VO accounts read.

The EC2 store writes, ``vmtrust images`` and ``vmtrust launch`` on EC2 read,
so the encoding lives here in the trust core once (as :mod:`vmtrust.glanceprops`
does for Glance).

**Tags.**  Each record field ``f`` becomes the tag ``vmtrust:f``, the seal
``vmtrust:seal``, and ``vmtrust:managed = true`` marks every AMI and snapshot
the sync created.  EC2 limits a resource to 50 tags, keys to 127 and values
to 256 characters, reserves the ``aws:`` prefix, and other AWS services only
accept letters, digits, spaces and ``_.:/=+-@`` in tags.  So a value outside
that set (or starting with ``aws:`` or ``b64:``) is stored as ``b64:`` and the
base64 of its UTF-8, and a value longer than 256 characters continues in
``vmtrust:f.1``, ``vmtrust:f.2`` …  The seal is over the decoded record, so
the encoding gives nothing to an attacker: any change breaks the seal.

**The published record.**  Tags of an AMI are not visible to the accounts it
is shared with.  The record and seal are therefore also published as a small
JSON document (an S3 object, see docs/decisions/0003-ec2-ingest.md) that the
VO accounts can read; the launch side checks the seal and the binding to the
AMI and snapshot it sees by the one rule, :func:`vmtrust.trust.judge`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields
from typing import Any

from vmtrust import jsonsafe
from vmtrust.errors import EC2Error, SealError, VmtrustError
from vmtrust.record import TrustRecord

__all__ = [
    "BOOKKEEPING",
    "DOCUMENT_VERSION",
    "MANAGED",
    "MAX_DOCUMENT",
    "MAX_KEY",
    "MAX_TAGS",
    "MAX_VALUE",
    "PREFIX",
    "PUBLISHED",
    "RECORD_FIELDS",
    "RETIRED_AT",
    "RETIRE_MODE",
    "SEAL",
    "SHARED_WITH",
    "STATE",
    "UPLOADING",
    "check_limits",
    "continuation_keys",
    "digest",
    "document",
    "join",
    "read_document",
    "read_record",
    "record_tags",
    "root_snapshot",
    "split",
    "store_id",
    "tag_dict",
    "tag_list",
]

PREFIX = "vmtrust:"
MANAGED = "vmtrust:managed"
SEAL = "vmtrust:seal"
STATE = "vmtrust:state"
RETIRED_AT = "vmtrust:retired_at"
RETIRE_MODE = "vmtrust:retire_mode"
#: Digest of the VO accounts the AMI is shared with (bookkeeping, compared each pass).
SHARED_WITH = "vmtrust:shared_with"
#: Digest of the published record document (bookkeeping, compared each pass).
PUBLISHED = "vmtrust:published"
UPLOADING = "uploading"
RECORD_FIELDS = tuple(f.name for f in fields(TrustRecord))
#: Tags the store may add after the record: the four above and ``Name``.
BOOKKEEPING = (RETIRED_AT, RETIRE_MODE, SHARED_WITH, PUBLISHED, "Name")

MAX_TAGS = 50
MAX_KEY = 127
MAX_VALUE = 256
#: What every AWS service accepts in a tag value (EC2 itself is more lenient).
_SAFE = re.compile(r"[\w .:/=+\-@]*", re.UNICODE)
_ENCODED = "b64:"
#: Largest published record document read (a record is about 2 KB).
MAX_DOCUMENT = 64 * 1024
DOCUMENT_VERSION = 1


def _encode(value: str) -> str:
    lowered = value.lower()
    if _SAFE.fullmatch(value) and not lowered.startswith(("aws:", _ENCODED)):
        return value
    return _ENCODED + base64.b64encode(value.encode("utf-8")).decode("ascii")


def _decode(value: str) -> str:
    if not value.startswith(_ENCODED):
        return value
    try:
        return base64.b64decode(value[len(_ENCODED) :], validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise SealError(f"trust record: tag value {value[:40]!r} is not valid base64") from None


def split(key: str, value: str) -> dict[str, str]:
    """``key`` → encoded ``value`` in pieces of at most 256 characters (``key``, ``key.1``, …)."""
    stored = _encode(value)
    pieces = [stored[i : i + MAX_VALUE] for i in range(0, len(stored), MAX_VALUE)] or [""]
    return {key if n == 0 else f"{key}.{n}": piece for n, piece in enumerate(pieces)}


def join(tags: Mapping[str, str], key: str) -> str | None:
    """The value ``split`` stored under ``key`` and its continuations; None when absent."""
    if key not in tags:
        return None
    parts = [tags[key]]
    n = 1
    while f"{key}.{n}" in tags:
        parts.append(tags[f"{key}.{n}"])
        n += 1
    return _decode("".join(parts))


def continuation_keys(tags: Iterable[str], key: str) -> list[str]:
    """Every ``key.N`` among ``tags`` (what a shorter value must clear)."""
    pattern = re.compile(re.escape(key) + r"\.[0-9]+")
    return [t for t in tags if pattern.fullmatch(t)]


def record_tags(record: TrustRecord, seal: str) -> dict[str, str]:
    """The tags that carry ``record`` and ``seal`` (and mark the AMI managed)."""
    tags: dict[str, str] = {MANAGED: "true"}
    for name in RECORD_FIELDS:
        tags.update(split(PREFIX + name, str(getattr(record, name))))
    tags.update(split(SEAL, seal))
    return tags


def check_limits(tags: Mapping[str, str], *, reserve: int = 0, what: str = "image") -> None:
    """Refuse tags EC2 would refuse: more than 50 (minus ``reserve``), long keys or values."""
    for key, value in tags.items():
        if len(key) > MAX_KEY or key.lower().startswith("aws:"):
            raise EC2Error(f"{what}: tag key {key[:40]!r} is not allowed by EC2")
        if len(value) > MAX_VALUE:
            raise EC2Error(f"{what}: tag {key} is {len(value)} characters (EC2 allows 256)")
    if len(tags) + reserve > MAX_TAGS:
        raise EC2Error(
            f"{what}: the trust record needs {len(tags) + reserve} tags, EC2 allows {MAX_TAGS} "
            "per resource (a title or DN is too long)"
        )


def tag_dict(items: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    """EC2's ``[{"Key": k, "Value": v}]`` as a dict."""
    return {item["Key"]: item.get("Value", "") for item in items or ()}


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def read_record(tags: Mapping[str, str]) -> tuple[TrustRecord, str]:
    """The record and seal from an AMI's tags; SealError when missing or malformed."""
    data = {}
    for name in RECORD_FIELDS:
        value = join(tags, PREFIX + name)
        if value is not None:
            data[name] = value
    record = TrustRecord.from_dict(data)
    seal = join(tags, SEAL)
    if not seal:
        raise SealError("trust record: no seal")
    return record, seal


def store_id(image_id: str, snapshot_id: str) -> str:
    """The id a record is bound to: the AMI and its (immutable) root snapshot."""
    return f"{image_id}/{snapshot_id}"


def root_snapshot(image: Mapping[str, Any]) -> str:
    """The snapshot of the root device of a DescribeImages entry ("" when it has none)."""
    root = image.get("RootDeviceName")
    for mapping in image.get("BlockDeviceMappings") or ():
        if mapping.get("DeviceName") == root and "Ebs" in mapping:
            return str(mapping["Ebs"].get("SnapshotId", ""))
    return ""


def document(record: TrustRecord, seal: str) -> bytes:
    """The published record: canonical JSON (sorted keys), so its digest is stable."""
    body = {"vmtrust_record": DOCUMENT_VERSION, "record": asdict(record), "seal": seal}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def digest(data: bytes) -> str:
    """A short digest for bookkeeping tags (not a security boundary: the seal is)."""
    return hashlib.sha256(data).hexdigest()[:32]


def read_document(data: bytes, where: str) -> tuple[TrustRecord, str]:
    """Parse a published record; SealError naming ``where`` when it is not one."""
    try:
        body = jsonsafe.loads(data, what=f"published record {where}", max_bytes=MAX_DOCUMENT)
    except VmtrustError as exc:
        raise SealError(str(exc)) from None
    if not isinstance(body, dict) or body.get("vmtrust_record") != DOCUMENT_VERSION:
        raise SealError(f"published record {where}: not a vmtrust record document")
    if not isinstance(body.get("record"), dict) or not isinstance(body.get("seal"), str):
        raise SealError(f"published record {where}: record or seal missing")
    return TrustRecord.from_dict(body["record"]), body["seal"]
