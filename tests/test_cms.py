"""The CMS SignedData check on its own: structure, algorithms, hostile DER."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from asn1crypto import cms as asn1_cms
from conftest import list_document
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import pkcs7

from vmtrust import cms, imagelist, smime
from vmtrust.errors import (
    BadSignature,
    SignerCountError,
    SmimeFormatError,
    VmtrustError,
    WeakAlgorithm,
)


@pytest.fixture
def content(pki) -> bytes:
    return smime.canonical(imagelist.dumps(list_document(pki.endorser)))


def detached(pki, content, *signers, **options) -> bytes:
    builder = pkcs7.PKCS7SignatureBuilder().set_data(content)
    for signer in signers or (pki.endorser,):
        builder = builder.add_signer(signer.cert, signer.key, hashes.SHA256(), **options)
    opts = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    return builder.sign(serialization.Encoding.DER, opts)


def edited(der: bytes, edit) -> bytes:
    info = asn1_cms.ContentInfo.load(der)
    edit(info["content"])
    return info.dump(force=True)


def test_good_signature(pki, content):
    info = cms.verify_detached(detached(pki, content), content)
    assert info.signer == pki.endorser.cert
    assert info.digest_algorithm == "sha256"


def test_content_must_match(pki, content):
    with pytest.raises(BadSignature, match="does not match the list content"):
        cms.verify_detached(detached(pki, content), content + b" ")


def test_two_signers(pki, content):
    der = detached(pki, content, pki.endorser, pki.other_endorser)
    with pytest.raises(SignerCountError, match="2 signers"):
        cms.verify_detached(der, content)


def test_signature_not_detached(pki, content):
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(pki.endorser.cert, pki.endorser.key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    with pytest.raises(SmimeFormatError, match="not detached"):
        cms.verify_detached(der, content)


def test_rsa_pss(pki, content):
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    der = detached(pki, content, rsa_padding=pss)
    assert cms.verify_detached(der, content).signer == pki.endorser.cert

    def sha1_in_pss(signed):
        params = signed["signer_infos"][0]["signature_algorithm"]["parameters"]
        params["hash_algorithm"] = {"algorithm": "sha1"}

    # the PSS hash is a digest too: the SHA-1 policy must not be bypassed through it
    with pytest.raises(WeakAlgorithm, match="SHA-1 digest refused"):
        cms.verify_detached(edited(der, sha1_in_pss), content)


def test_unknown_signature_algorithm(pki, content):
    def edit(signed):
        signed["signer_infos"][0]["signature_algorithm"] = {"algorithm": "1.2.3.4"}

    with pytest.raises(BadSignature, match=r"unsupported signature algorithm 1\.2\.3\.4"):
        cms.verify_detached(edited(detached(pki, content), edit), content)


def test_unknown_digest_algorithm(pki, content):
    def edit(signed):
        signed["signer_infos"][0]["digest_algorithm"] = {"algorithm": "1.2.3.4.5"}

    with pytest.raises(WeakAlgorithm, match="unsupported digest algorithm"):
        cms.verify_detached(edited(detached(pki, content), edit), content)


def test_signer_digest_must_be_announced(pki, content):
    """OpenSSL refuses a signer whose digest SignedData.digestAlgorithms omits."""

    def edit(signed):
        signed["digest_algorithms"] = [{"algorithm": "sha512"}]

    with pytest.raises(BadSignature, match="not listed in digestAlgorithms"):
        cms.verify_detached(edited(detached(pki, content), edit), content)


def test_message_digest_attribute_has_one_value(pki, content):
    def edit(signed):
        for attr in signed["signer_infos"][0]["signed_attrs"]:
            if attr["type"].native == "message_digest":
                attr["values"] = [attr["values"][0].native, b"\0" * 32]

    with pytest.raises(BadSignature, match="message_digest must have one value"):
        cms.verify_detached(edited(detached(pki, content), edit), content)


def test_signer_certificate_missing(pki, content):
    other = asn1_cms.CertificateChoices.load(
        pki.other_endorser.cert.public_bytes(serialization.Encoding.DER)
    )

    def edit(signed):
        signed["certificates"] = [other]

    with pytest.raises(BadSignature, match="signer certificate is not included"):
        cms.verify_detached(edited(detached(pki, content), edit), content)


@pytest.mark.parametrize("der", [b"", b"\x30\x00", b"\x30\x80", b"garbage", b"\x30" * 1000])
def test_not_a_signed_data(der, content):
    with pytest.raises(SmimeFormatError, match="signature:"):
        cms.verify_detached(der, content)


def test_random_der_corruption_raises_only_vmtrust_errors(pki, trust, content):
    """Seeded fuzzing of the DER, where asn1crypto and cryptography parse hostile
    bytes: this found ValueError, IndexError and AttributeError escaping."""
    good = detached(pki, content)
    rng = random.Random(20240501)
    now = datetime.now(UTC)
    outcomes = set()
    for _ in range(400):
        der = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            der[rng.randrange(len(der))] = rng.randrange(256)
        try:
            info = cms.verify_detached(bytes(der), content)
            trust.validate(info.signer, list(info.certificates), now)
            outcomes.add("accepted")
        except VmtrustError as exc:
            outcomes.add(type(exc).__name__)
    assert {"SmimeFormatError", "BadSignature"} <= outcomes
