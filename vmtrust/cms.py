"""Check a detached CMS (PKCS#7) SignedData over the list content.

``cryptography`` signs PKCS#7 but (as of 50.0) cannot verify it, and no
maintained Python library exposes OpenSSL's ``PKCS7_verify``; see
docs/decisions/0001-signature-verification.md for what was compared.  So the
ASN.1 is decoded by ``asn1crypto`` and every cryptographic operation is done
by ``cryptography``; what remains here is the short, well-specified RFC 5652
§5.4 rule: the content digest must equal the ``messageDigest`` attribute and
the signature must verify over the DER SET of the signed attributes.

Only the signature is checked here.  Whether the signer is *trusted* is the
trust store's business (:mod:`vmtrust.truststore`).
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from vmtrust.errors import BadSignature, SignerCountError, SmimeFormatError, WeakAlgorithm

__all__ = ["SignatureInfo", "verify_detached"]

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_NEVER = frozenset({"md2", "md4", "md5"})
#: asn1crypto is not hardened against hostile DER: besides ValueError it lets
#: IndexError, AttributeError … escape from malformed input (found by fuzzing).
_ASN1_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
)


@dataclass(frozen=True)
class SignatureInfo:
    """What a valid signature tells: who signed, with what, and the certificates sent along."""

    signer: x509.Certificate
    certificates: tuple[bytes, ...]  #: DER, the signer's among them
    digest_algorithm: str


def _load(der: bytes) -> cms.SignedData:
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise SmimeFormatError(
                f"signature: PKCS#7 content type is {info['content_type'].native}, not signed data"
            )
        signed = info["content"]
        signed.native  # force a full parse so malformed DER fails here, not later  # noqa: B018
        return signed
    except SmimeFormatError:
        raise
    except _ASN1_ERRORS as exc:
        raise SmimeFormatError(f"signature: not a valid PKCS#7 structure ({exc})") from None


@dataclass(frozen=True)
class _Embedded:
    """A certificate the signature carries: its DER, and cryptography's reading of it.

    ``cert`` is None for a serial number that is not positive: some grid CAs have
    serial 0, which RFC 5280 forbids; cryptography warns when it parses one and is
    to refuse it, so such a certificate is only passed on (as DER) for OpenSSL to
    build the chain with.
    """

    der: bytes
    parsed: asn1_x509.Certificate
    cert: x509.Certificate | None


def _certificates(signed: cms.SignedData) -> list[_Embedded]:
    certs = []
    for choice in signed["certificates"] or []:
        if choice.name != "certificate":
            continue
        parsed = choice.chosen
        if parsed.serial_number <= 0:
            certs.append(_Embedded(parsed.dump(), parsed, None))
            continue
        try:
            cert = x509.load_der_x509_certificate(parsed.dump())
            # cryptography parses names and extensions lazily: force it now so a
            # malformed certificate fails here as a SmimeFormatError, not later
            # as a ValueError from whoever touches the field first.
            cert.subject.rdns  # noqa: B018
            cert.issuer.rdns  # noqa: B018
            len(cert.extensions)
        except (ValueError, x509.InvalidVersion) as exc:
            raise SmimeFormatError(
                f"signature: embedded certificate is malformed ({exc})"
            ) from None
        certs.append(_Embedded(parsed.dump(), parsed, cert))
    return certs


def _find_signer(signer_info: cms.SignerInfo, certs: list[_Embedded]) -> x509.Certificate:
    sid = signer_info["sid"]
    for embedded in certs:
        parsed = embedded.parsed
        if sid.name == "issuer_and_serial_number":
            wanted = sid.chosen
            found = (
                parsed.serial_number == wanted["serial_number"].native
                and parsed.issuer.dump() == wanted["issuer"].dump()
            )
        else:
            found = parsed.key_identifier is not None and parsed.key_identifier == sid.chosen.native
        if not found:
            continue
        if embedded.cert is None:
            raise SmimeFormatError(
                f"signature: the signer certificate has serial number {parsed.serial_number}, "
                "which RFC 5280 forbids (its CA must issue positive serial numbers)"
            )
        return embedded.cert
    raise BadSignature("signature: the signer certificate is not included in the message")


def _hash_name(algorithm: str, allow_sha1: bool) -> type[hashes.HashAlgorithm]:
    if algorithm in _NEVER:
        raise WeakAlgorithm(f"signature: digest {algorithm} is not acceptable")
    if algorithm == "sha1" and not allow_sha1:
        raise WeakAlgorithm(
            "signature: SHA-1 digest refused (old AppDB lists: [trust] allow_sha1 = true, "
            "or 'vmtrust list verify --allow-sha1')"
        )
    if algorithm not in _HASHES:
        raise WeakAlgorithm(f"signature: unsupported digest algorithm {algorithm}")
    return _HASHES[algorithm]


def _verify_raw(
    cert: x509.Certificate,
    signer_info: cms.SignerInfo,
    data: bytes,
    digest: type[hashes.HashAlgorithm],
    allow_sha1: bool,
) -> None:
    signature = signer_info["signature"].native
    algorithm = signer_info["signature_algorithm"]
    try:
        name = algorithm.signature_algo
    except ValueError:
        raise BadSignature(
            f"signature: unsupported signature algorithm {algorithm['algorithm'].dotted}"
        ) from None
    try:
        key = cert.public_key()
        if isinstance(key, rsa.RSAPublicKey) and name == "rsassa_pss":
            params = algorithm["parameters"]
            # The PSS hashes are digests too: the SHA-1/MD5 policy applies to them.
            pss_hash = _hash_name(params["hash_algorithm"]["algorithm"].native, allow_sha1)()
            mgf_hash = _hash_name(
                params["mask_gen_algorithm"]["parameters"]["algorithm"].native, allow_sha1
            )()
            key.verify(
                signature,
                data,
                padding.PSS(padding.MGF1(mgf_hash), params["salt_length"].native),
                pss_hash,
            )
        elif isinstance(key, rsa.RSAPublicKey) and name == "rsassa_pkcs1v15":
            key.verify(signature, data, padding.PKCS1v15(), digest())
        elif isinstance(key, ec.EllipticCurvePublicKey) and name == "ecdsa":
            key.verify(signature, data, ec.ECDSA(digest()))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            raise BadSignature(
                f"signature: algorithm {name} does not fit the signer's {type(key).__name__}"
            )
    except InvalidSignature:
        raise BadSignature(
            "signature: does not match the list content (tampered or corrupt)"
        ) from None
    except (UnsupportedAlgorithm, KeyError, ValueError) as exc:
        raise BadSignature(f"signature: cannot be checked ({exc})") from None


def verify_detached(der: bytes, content: bytes, *, allow_sha1: bool = False) -> SignatureInfo:
    """Verify that ``der`` is a valid signature by exactly one signer over ``content``.

    Raises a :class:`~vmtrust.errors.SignatureError` subclass otherwise.
    """
    signed = _load(der)
    if signed["encap_content_info"]["content"].native is not None:
        raise SmimeFormatError("signature: not detached (the list is inside the signature)")
    infos = signed["signer_infos"]
    if len(infos) != 1:
        raise SignerCountError(f"signature: {len(infos)} signers, exactly one is required")
    signer_info = infos[0]
    certs = _certificates(signed)
    signer = _find_signer(signer_info, certs)

    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    digest = _hash_name(digest_name, allow_sha1)
    # OpenSSL hashes the content with the digests SignedData.digestAlgorithms
    # announces and fails when the signer's is not among them; refuse the same.
    announced = {alg["algorithm"].native for alg in signed["digest_algorithms"]}
    if digest_name not in announced:
        raise BadSignature(
            f"signature: signer digest {digest_name} is not listed in digestAlgorithms"
        )
    hasher = hashes.Hash(digest())
    hasher.update(content)
    content_digest = hasher.finalize()

    attrs = signer_info["signed_attrs"]
    if attrs.native is None or len(attrs) == 0:
        _verify_raw(signer, signer_info, content, digest, allow_sha1)
    else:
        values = {}
        for attr in attrs:
            kind = attr["type"].native
            if kind in values:
                raise BadSignature(f"signature: signed attribute {kind} appears twice")
            values[kind] = attr["values"]
            if kind in ("content_type", "message_digest") and len(attr["values"]) != 1:
                raise BadSignature(f"signature: signed attribute {kind} must have one value")
        if "content_type" not in values or "message_digest" not in values:
            raise BadSignature("signature: contentType or messageDigest attribute missing")
        if values["content_type"][0].native != "data":
            raise BadSignature("signature: signed content type is not data")
        if values["message_digest"][0].native != content_digest:
            raise BadSignature("signature: does not match the list content (tampered or corrupt)")
        # RFC 5652 §5.4: the signature covers the DER SET OF, not the [0] IMPLICIT tag.
        original = attrs.dump()
        _verify_raw(signer, signer_info, b"\x31" + original[1:], digest, allow_sha1)
    return SignatureInfo(
        signer=signer, certificates=tuple(c.der for c in certs), digest_algorithm=digest_name
    )
