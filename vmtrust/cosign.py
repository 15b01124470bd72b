"""cosign signatures on OCI artefacts, verified offline with the site's public keys.

cosign (sigstore) stores a signature of manifest ``sha256:<hex>`` in the same
repository, under the tag ``sha256-<hex>.sig`` (or, on registries with OCI 1.1
referrers, as a manifest whose ``subject`` is the signed one): an OCI image
manifest whose layers each carry one signature.  A layer's blob is the
*simple-signing payload* (media type
``application/vnd.dev.cosign.simplesigning.v1+json``), a small JSON document::

    {"critical": {"identity": {"docker-reference": "registry.example.org/vms/ubuntu"},
                  "image": {"docker-manifest-digest": "sha256:…"},
                  "type": "cosign container image signature"},
     "optional": {…}}

and the layer's annotation ``dev.cosignproject.cosign/signature`` holds the
base64 signature over the payload bytes: ECDSA P-256 with SHA-256 (DER), or
Ed25519 — the two key types a site may configure here.

This module is the trust half, with no I/O but key files: is this payload,
with this signature, made by one of the site's keys, for *this* manifest digest
in *this* repository?  The registry half (finding the signature manifests and
payload blobs) is :mod:`glance_sync.oci.signatures`.  Verification uses
``cryptography`` alone — see docs/decisions/0005-oci-signatures.md.

Stricter than cosign where it matters to a site: cosign ignores the
``docker-reference``; vmtrust requires it to name the repository the image is
synced from (or the identity the site configured), so a signature made for a
test repository does not vouch for the same digest pushed to another one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vmtrust import fileio, jsonsafe
from vmtrust.errors import ConfigError, CosignError, ListFormatError

__all__ = [
    "MAX_PAYLOAD",
    "MAX_SIGNATURE_B64",
    "SIGNATURE_ANNOTATION",
    "SIGNATURE_TYPE",
    "SIMPLE_SIGNING",
    "Claim",
    "CosignKey",
    "key_id",
    "load_key",
    "verify",
]

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
#: A payload is a few hundred bytes; optional claims may add some.
MAX_PAYLOAD = 64 * 1024
#: An ECDSA P-256 DER signature is at most 72 bytes, Ed25519 64; base64 of anything much
#: longer is not a signature.
MAX_SIGNATURE_B64 = 1024


@dataclass(frozen=True)
class CosignKey:
    """A public key the site trusts to sign images: ECDSA P-256 or Ed25519."""

    key: ec.EllipticCurvePublicKey | Ed25519PublicKey
    key_id: str  #: first 16 hex digits of SHA-256 of the DER SubjectPublicKeyInfo
    path: str

    def verifies(self, signature: bytes, payload: bytes) -> bool:
        try:
            if isinstance(self.key, Ed25519PublicKey):
                self.key.verify(signature, payload)
            else:
                self.key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True


def key_id(key: ec.EllipticCurvePublicKey | Ed25519PublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def load_key(path: str | Path) -> CosignKey:
    """A cosign public key file (``cosign.pub``, PEM); ConfigError naming what is wrong."""
    path = Path(path).expanduser()
    try:
        data = fileio.read_bytes(path, what="cosign public key", limit=64 * 1024)
    except ListFormatError as exc:  # "too large" is about the key file
        raise ConfigError(str(exc)) from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"cosign public key {path}: not a PEM public key") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return CosignKey(key, key_id(key), str(path))
    if isinstance(key, Ed25519PublicKey):
        return CosignKey(key, key_id(key), str(path))
    raise ConfigError(
        f"cosign public key {path}: {type(key).__name__.removeprefix('_')}: only ECDSA P-256 "
        "and Ed25519 keys are accepted"
    )


def _verify_signature(payload: bytes, signature_b64: Any, keys: tuple[CosignKey, ...]) -> CosignKey:
    """The key of ``keys`` whose signature ``signature_b64`` is over ``payload``."""
    if not isinstance(signature_b64, str) or not signature_b64:
        raise CosignError(f"no {SIGNATURE_ANNOTATION} annotation")
    if len(signature_b64) > MAX_SIGNATURE_B64:
        raise CosignError(
            f"{SIGNATURE_ANNOTATION}: {len(signature_b64)} characters, not a signature"
        )
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise CosignError(f"{SIGNATURE_ANNOTATION}: not valid base64") from None
    for key in keys:
        if key.verifies(signature, payload):
            return key
    raise CosignError("signature made by none of the site's keys (or payload altered)")


def _member(obj: Any, name: str, where: str) -> Any:
    """``obj[name]``, matched as Go's JSON decoder that cosign uses matches it.

    Go matches keys without regard to case; an object with two keys that differ
    only in case would mean different things to different verifiers, so it is
    refused.
    """
    if not isinstance(obj, dict):
        raise CosignError(f"payload: {where} is not an object")
    found = [key for key in obj if key.lower() == name]
    if not found:
        raise CosignError(f"payload: {where}.{name} missing")
    if len(found) > 1:
        raise CosignError(f"payload: {where}: {name} appears as {', '.join(found)}")
    return obj[found[0]]


@dataclass(frozen=True)
class Claim:
    """What a simple-signing payload says."""

    reference: str  #: critical.identity.docker-reference
    digest: str  #: critical.image.docker-manifest-digest


def _read_payload(payload: bytes) -> Claim:
    """Parse a simple-signing payload (bounded, strict JSON); CosignError if malformed."""
    try:
        document = jsonsafe.loads(payload, what="cosign payload", max_bytes=MAX_PAYLOAD)
    except ListFormatError as exc:
        raise CosignError(str(exc)) from None
    critical = _member(document, "critical", "")
    kind = _member(critical, "type", "critical")
    if kind != SIGNATURE_TYPE:
        raise CosignError(f"payload: critical.type is {kind!r}, not {SIGNATURE_TYPE!r}")
    reference = _member(_member(critical, "identity", "critical"), "docker-reference", "identity")
    digest = _member(_member(critical, "image", "critical"), "docker-manifest-digest", "image")
    if not isinstance(reference, str) or not isinstance(digest, str):
        raise CosignError("payload: docker-reference and docker-manifest-digest must be strings")
    return Claim(reference, digest)


def verify(
    payload: bytes,
    signature_b64: Any,
    keys: tuple[CosignKey, ...],
    *,
    digest: str,
    identity: str,
) -> CosignKey:
    """The site key that signed ``payload`` for manifest ``digest`` of ``identity``.

    The signature must verify with one of ``keys`` first (nothing of an unsigned
    payload is believed), then the payload must name exactly ``digest`` and
    ``identity`` (``registry-host[:port]/repository``).
    """
    key = _verify_signature(payload, signature_b64, keys)
    claim = _read_payload(payload)
    if claim.digest != digest:
        raise CosignError(f"signed for manifest {claim.digest[:19]}…, not {digest[:19]}…")
    if claim.reference != identity:
        raise CosignError(f"signed for {claim.reference!r}, not {identity!r}")
    return key
