"""The trust record of a stored image, and its seal.

Every image the sync writes into a store carries a *trust record* — which
endorser vouched for it in which list, which site approval let it in, until
when, and the hash and store id of the bytes actually stored — and a *seal*:
an Ed25519 signature by the site's sync key over a canonical encoding of the
record.  Because the record includes the store's own image id and the content
hash the store computed, copying the properties onto another image, a
snapshot inheriting them, or a swapped payload all break the seal.  The nova
filter and ``vmtrust images`` check seals with the public key only, by the
rule in :mod:`vmtrust.trust`.

Canonical encoding: a domain-separation prefix, then JSON with sorted keys,
no whitespace and ASCII escapes (all values are strings or integers, so this
is unambiguous — the same subset of RFC 8785 that TUF's canonical JSON uses).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vmtrust import fileio
from vmtrust.errors import ConfigError, FileTooLarge, SealError

__all__ = [
    "BASES",
    "SEAL_CONTEXT",
    "TrustRecord",
    "check_seal",
    "entry_digest",
    "generate_key_pair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "seal",
]

SEAL_CONTEXT = b"vmtrust-trust-record-v1\n"


_OPTIONAL = ("state", "disk_format", "entry_digest", "basis")
#: What vouches for a stored image: a HEPiX list signed by an endorser (every record made
#: before OCI sources existed), cosign signatures with site-configured keys, or only the
#: registry's word (``trust: registry``, which the nova filter refuses unless told otherwise).
BASES = ("hepix", "cosign", "registry")


def entry_digest(entry: dict[str, Any]) -> str:
    """SHA-256 of an hv:image entry in canonical JSON (sorted keys, no whitespace)."""
    body = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(body.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class TrustRecord:
    """What the site asserts about one stored image version."""

    image_identifier: str
    title: str
    image_version: str
    list_identifier: str
    list_version: str
    endorser_dn: str
    endorser_ca: str
    vo: str
    subscription: str
    approval: str  #: the rule that approved it: "all", "identifier", "rule:<n>", "site"
    expires: str  #: HEPiX date form; the earliest of list and image expiry
    source_sha512: str  #: sl:checksum:sha512 of the image as the list gives it
    sha512: str  #: of the bytes stored (after any unpacking or conversion)
    size: int  #: of the bytes stored
    store_id: str  #: the store's own id (file name, Glance image id, AMI id)
    state: str = "trusted"
    disk_format: str = "raw"
    #: SHA-256 of the list's hv:image entry (canonical JSON): a change to any of the
    #: entry's metadata without new bytes makes the sync refresh the store's metadata.
    entry_digest: str = ""
    #: One of :data:`BASES`.  "hepix" is left out of the sealed bytes, so records sealed
    #: before the field existed still verify and a record without it means "hepix".
    basis: str = "hepix"

    def canonical(self) -> bytes:
        """The exact bytes the seal signs."""
        # Every field is a str or an int: a flat copy is what asdict's deep copy gives,
        # at a fifth of its cost (a no-op pass checks one seal per image it holds).
        data = {name: getattr(self, name) for name in _FIELD_NAMES}
        if data["basis"] == "hepix":
            del data["basis"]
        body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return SEAL_CONTEXT + body.encode("ascii")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrustRecord:
        """Build from stored metadata; raise SealError if fields are missing or mistyped."""
        names = {f.name: f.type for f in fields(cls)}
        missing = [n for n in names if n not in data and n not in _OPTIONAL]
        if missing:
            raise SealError(f"trust record: missing {', '.join(sorted(missing))}")
        values = {}
        for name in names:
            if name not in data:
                continue
            value = data[name]
            if name == "size":
                # ASCII digits only: str.isdigit() also accepts "²" (int() fails) and
                # other scripts' digits, which no store writes.
                if isinstance(value, str) and value.isascii() and value.isdigit():
                    value = int(value)
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise SealError(f"trust record: size is not an integer: {value!r}")
            elif not isinstance(value, str):
                raise SealError(f"trust record: {name} is not a string: {value!r}")
            elif name == "basis" and value not in BASES:
                raise SealError(f"trust record: unknown basis {value!r}")
            values[name] = value
        return cls(**values)


#: The record's fields, in declaration order (canonical() sorts them anyway).
_FIELD_NAMES = tuple(f.name for f in fields(TrustRecord))


def key_id(public: Ed25519PublicKey) -> str:
    """Short stable id of a seal key: the first 16 hex digits of SHA-256 of the raw key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def seal(record: TrustRecord, key: Ed25519PrivateKey) -> str:
    """``<key id>:<base64 signature>`` over the canonical record."""
    signature = key.sign(record.canonical())
    return f"{key_id(key.public_key())}:{base64.b64encode(signature).decode('ascii')}"


def check_seal(record: TrustRecord, sealed: str, keys: Iterable[Ed25519PublicKey]) -> str:
    """Verify ``sealed`` over ``record`` with one of ``keys``; return the key id used."""
    if not isinstance(sealed, str) or ":" not in sealed:
        raise SealError(f"image {record.image_identifier}: seal missing or malformed")
    wanted, _, encoded = sealed.partition(":")
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SealError(f"image {record.image_identifier}: seal is not valid base64") from None
    for public in keys:
        if key_id(public) != wanted:
            continue
        try:
            public.verify(signature, record.canonical())
        except InvalidSignature:
            raise SealError(
                f"image {record.image_identifier}: seal does not match the trust record "
                f"(record or image altered, or copied from another image)"
            ) from None
        return wanted
    raise SealError(f"image {record.image_identifier}: sealed by unknown key {wanted}")


# --- key files ---------------------------------------------------------------------


def generate_key_pair(path: Path, *, overwrite: bool = False) -> Path:
    """Write a new Ed25519 key: ``path`` (PKCS#8 PEM, 0600) and ``path.pub``; return the latter."""
    path = Path(path).expanduser()
    public_path = path.with_name(path.name + ".pub")
    if not overwrite and (path.exists() or public_path.exists()):
        raise ConfigError(f"seal key {path}: already exists (refusing to overwrite a site key)")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if str(path.parent):
        os.makedirs(path.parent, exist_ok=True)
    fileio.write_atomic(path, private, mode=0o600)
    fileio.write_atomic(public_path, public, mode=0o644)
    return public_path


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return fileio.read_bytes(path, what=what, limit=64 * 1024)
    except FileTooLarge as exc:  # a seal key file that is no key, as every other such file
        raise ConfigError(str(exc)) from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = _read_key_file(path, "seal key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"seal key {path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"seal key {path}: not an Ed25519 key (make one with vmtrust keygen)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = _read_key_file(path, "seal public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(f"seal public key {path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"seal public key {path}: not an Ed25519 key")
    return key
