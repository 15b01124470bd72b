"""One test per verification rule: the exception class and what its message names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conftest import list_document
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from verify_support import refused, verify

from vmtrust import devpki, imagelist, smime
from vmtrust.errors import (
    BadSignature,
    CertificateExpired,
    CertificateRevoked,
    CrlError,
    EndorserMismatch,
    EndorserNotAllowed,
    IdentifierMismatch,
    InvalidJSON,
    InvalidListStructure,
    KeyUsageError,
    ListExpired,
    ListFromFuture,
    ListTooLarge,
    NamespaceViolation,
    RollbackError,
    SignerCountError,
    UntrustedSigner,
)
from vmtrust.imagelist import Endorser
from vmtrust.truststore import TrustStore, subject_hash


def der(credential) -> bytes:
    return credential.cert.public_bytes(serialization.Encoding.DER)


def write_crl(ca_dir, ca, **kwargs):
    crl = devpki.make_crl(ca, **kwargs)
    path = ca_dir / f"{subject_hash(ca.cert)}.r0"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))


# --- the signature and the list inside it (envelope: test_verify_smime.py) -----------


def test_good_list_verifies(sign, trust, pki):
    assert verify(sign(), trust).endorser.dn == pki.endorser.dn


def test_tampered_content(sign, trust):
    data = sign().replace(b"Example site images", b"Evil site images!!!")
    refused(BadSignature, "does not match the list content", data, trust)


def test_two_signers(pki, trust):
    content = imagelist.dumps(list_document(pki.endorser))
    data = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(pki.endorser.cert, pki.endorser.key, hashes.SHA256())
        .add_signer(pki.sub_endorser.cert, pki.sub_endorser.key, hashes.SHA256())
        .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    )
    refused(SignerCountError, "2 signers, exactly one", data, trust)


def test_oversized_input(sign, trust):
    refused(ListTooLarge, "larger than the limit of 2000 bytes", sign(), trust, max_bytes=2000)


def test_invalid_json_inside_valid_signature(pki, trust):
    data = smime.sign(b'{"hv:imagelist": {"dc:title": \n', pki.endorser.cert, pki.endorser.key)
    refused(InvalidJSON, "not valid JSON", data, trust)


def test_invalid_structure_inside_valid_signature(sign, trust, pki):
    document = list_document(pki.endorser)
    del document["hv:imagelist"]["dc:title"]
    refused(InvalidListStructure, "dc:title", sign(document), trust)


# --- the signer and its chain ----------------------------------------------------


def test_unknown_ca_with_same_dn(sign, trust, pki):
    error = refused(UntrustedSigner, "not issued by a CA in", sign(signer=pki.rogue), trust)
    assert type(error) is UntrustedSigner


def test_expired_signer(sign, trust, pki):
    refused(CertificateExpired, "certificate has expired", sign(signer=pki.expired), trust)


def test_revoked_signer(sign, trust, pki):
    refused(
        CertificateRevoked,
        "was revoked by /DC=org/DC=example/CN=Example Test CA",
        sign(signer=pki.revoked),
        trust,
    )


def test_missing_crl_refused_unless_relaxed(sign, ca_dir, pki):
    (ca_dir / f"{subject_hash(pki.ca.cert)}.r0").unlink()
    refused(
        CrlError,
        "no valid CRL for CA /DC=org/DC=example/CN=Example Test CA",
        sign(),
        TrustStore(ca_dir),
    )
    assert verify(sign(), TrustStore(ca_dir, require_crls=False))


def test_stale_crl(sign, ca_dir, pki):
    now = datetime.now(UTC)
    write_crl(
        ca_dir, pki.ca, last_update=now - timedelta(days=40), next_update=now - timedelta(days=1)
    )
    refused(CrlError, "is fetch-crl running?", sign(), TrustStore(ca_dir))


def test_crl_signed_by_wrong_key_is_ignored(sign, ca_dir, pki):
    write_crl(ca_dir, pki.rogue_ca)  # same issuer DN, wrong key
    refused(CrlError, "no valid CRL for CA", sign(), TrustStore(ca_dir))


def test_namespace_violation(sign, trust, pki):
    refused(NamespaceViolation, "is outside the namespace of CA", sign(signer=pki.outside), trust)


def test_missing_namespace_file_refused_unless_relaxed(sign, ca_dir, pki):
    (ca_dir / f"{subject_hash(pki.ca.cert)}.namespaces").unlink()
    refused(NamespaceViolation, "no namespace policy for CA", sign(), TrustStore(ca_dir))
    assert verify(sign(), TrustStore(ca_dir, require_namespaces=False))


def test_signing_policy_style(sign, ca_dir, pki):
    base = subject_hash(pki.other_ca.cert)
    assert (ca_dir / f"{base}.signing_policy").exists()
    assert not (ca_dir / f"{base}.namespaces").exists()
    verified = verify(sign(signer=pki.other_endorser), TrustStore(ca_dir))
    assert verified.chain[-1].der == der(pki.other_ca)


def test_intermediate_from_message_and_missing_intermediate(sign, ca_dir, pki):
    (ca_dir / f"{subject_hash(pki.sub_ca.cert)}.0").unlink()
    trust = TrustStore(ca_dir)
    verified = verify(sign(signer=pki.sub_endorser, extra=[pki.sub_ca.cert]), trust)
    assert verified.chain[1].der == der(pki.sub_ca)
    refused(UntrustedSigner, "not issued by a CA in", sign(signer=pki.sub_endorser), trust)


def test_no_digital_signature_key_usage(sign, trust, pki):
    refused(KeyUsageError, "allows neither digitalSignature", sign(signer=pki.no_sign), trust)


# --- what the list says about its endorser -----------------------------------------


def test_hv_dn_mismatch(sign, trust, pki):
    document = list_document(pki.endorser, dn="/DC=org/DC=example/O=People/CN=Somebody Else")
    refused(
        EndorserMismatch,
        "but hv:endorser names /DC=org/DC=example/O=People/CN=Somebody",
        sign(document),
        trust,
    )


def test_hv_ca_mismatch(sign, trust, pki):
    document = list_document(pki.endorser, ca=pki.other_ca.dn)
    refused(EndorserMismatch, "issued by /DC=org/DC=other/CN=Other CA", sign(document), trust)


def test_endorser_pinning(sign, trust, pki):
    other = Endorser(dn=pki.other_endorser.dn, ca=pki.other_ca.dn)
    refused(
        EndorserNotAllowed, "is not among the allowed endorsers", sign(), trust, endorsers=(other,)
    )
    mine = Endorser(dn=pki.endorser.dn, ca=pki.ca.dn)
    assert verify(sign(), trust, endorsers=(other, mine))


def test_endorser_pinning_with_compat_escaping(monkeypatch, pki, trust, sign):
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org"),
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example"),
            x509.NameAttribute(NameOID.COMMON_NAME, "robot/images.example.org"),
        ]
    )
    monkeypatch.setattr(devpki, "name", lambda _text: subject)
    robot = devpki.make_endorser(pki.ca, "(patched)")
    assert robot.dn == "/DC=org/DC=example/CN=robot/images.example.org"
    escaped = Endorser(dn=r"/DC=org/DC=example/CN=robot\/images.example.org", ca=pki.ca.dn)
    assert verify(sign(signer=robot), trust, endorsers=(escaped,)).endorser.dn == robot.dn
    wrong = Endorser(dn=r"/DC=org/DC=example/CN=robot\/other.example.org", ca=pki.ca.dn)
    refused(EndorserNotAllowed, "allowed endorsers", sign(signer=robot), trust, endorsers=(wrong,))


def test_identifier_pinning(sign, trust):
    refused(
        IdentifierMismatch,
        "expected identifier 11111111-",
        sign(),
        trust,
        identifier="11111111-2222-3333-4444-555555555555",
    )
    assert verify(sign(), trust, identifier="65ef8feb-86d4-42ea-9960-f79bcc5a11b4")


# --- dates and versions --------------------------------------------------------------


def test_created_in_future(sign, trust, pki):
    now = datetime.now(UTC)
    future = list_document(pki.endorser, created=now + timedelta(minutes=30))
    refused(ListFromFuture, "is in the future", sign(future), trust)
    near = list_document(pki.endorser, created=now + timedelta(minutes=2))
    assert verify(sign(near), trust, clock_skew=timedelta(minutes=5))
    refused(ListFromFuture, "is in the future", sign(near), trust, clock_skew=timedelta(0))


def test_expired_list(sign, trust, pki):
    now = datetime.now(UTC)
    document = list_document(
        pki.endorser, created=now - timedelta(days=30), expires=now - timedelta(seconds=5)
    )
    refused(ListExpired, "expired at", sign(document), trust)


def test_rollback_by_version(sign, trust):
    refused(
        RollbackError,
        "version 3 is older than the accepted version 10",
        sign(),
        trust,
        min_version="10",
    )
    assert verify(sign(), trust, min_version="3")
    assert verify(sign(), trust, min_version="2.9")


def test_rollback_by_created_date(sign, trust, pki):
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    data = sign(list_document(pki.endorser, created=created))
    refused(
        RollbackError,
        "before the accepted list",
        data,
        trust,
        min_created=created + timedelta(seconds=1),
    )
    assert verify(data, trust, min_created=created)
