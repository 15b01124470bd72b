"""A CA certificate with serial number 0, as some grid CAs have (issue 13 item 5).

RFC 5280 wants positive serial numbers; cryptography warns when it parses such a
certificate ("Loading this certificate will cause an exception in a future release")
and will refuse it.  OpenSSL accepts it, and so must a site's verification: without a
warning on the admin's terminal, and still when the warning is an error (``-W error``
stands in for the cryptography release that refuses the certificate).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from asn1crypto import pem
from asn1crypto import x509 as asn1_x509
from conftest import list_document
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from vmtrust import devpki, imagelist, smime
from vmtrust.devpki import Credential
from vmtrust.errors import CertificateRevoked, SmimeFormatError
from vmtrust.truststore import TrustStore
from vmtrust.verify import Policy, verify_signed_list

ZERO_CA = "/DC=org/DC=zero/CN=Zero Serial CA"
ZERO_ENDORSER = "/DC=org/DC=zero/CN=Zero Endorser"
requires_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not on PATH")


def with_serial_zero(cert: Credential, signer: Credential) -> bytes:
    """``cert``'s certificate with serial number 0, signed again by ``signer`` (DER)."""
    parsed = asn1_x509.Certificate.load(cert.cert.public_bytes(serialization.Encoding.DER))
    parsed["tbs_certificate"]["serial_number"] = 0
    tbs = parsed["tbs_certificate"].dump(force=True)
    parsed["signature_value"] = signer.key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    return parsed.dump(force=True)


@pytest.fixture(scope="module")
def zero() -> tuple[Credential, Credential, bytes]:
    """A CA whose certificate has serial number 0 (DER), and an endorser it issued."""
    ca = devpki.make_ca(ZERO_CA)
    return ca, devpki.make_endorser(ca, ZERO_ENDORSER), with_serial_zero(ca, ca)


@pytest.fixture
def zero_dir(tmp_path, zero) -> Path:
    """A trust directory with the serial-0 CA installed (its CRL and namespace too)."""
    ca, _, der = zero
    directory = tmp_path / "certificates"
    base = devpki.write_ca(directory, ca, crl=devpki.make_crl(ca), namespace="/DC=org/DC=zero/*")
    (directory / f"{base}.0").write_bytes(pem.armor("CERTIFICATE", der))
    return directory


def signed_by(endorser: Credential) -> bytes:
    document = imagelist.dumps(list_document(endorser))
    return smime.sign(document, endorser.cert, endorser.key)


@requires_openssl
@pytest.mark.openssl
def test_the_installed_ca_really_has_serial_zero(zero_dir, zero):
    result = subprocess.run(
        ["openssl", "x509", "-noout", "-serial", "-in", next(zero_dir.glob("*.0"))],
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "serial=00"
    try:  # what cryptography says of it: a warning, or (a later release) a refusal
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            x509.load_der_x509_certificate(zero[2])
        assert [w for w in said if "serial number" in str(w.message)]
    except ValueError:
        pass


def test_a_serial_zero_ca_verifies_with_warnings_as_errors(zero_dir, zero):
    _, endorser, der = zero
    data = signed_by(endorser)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verified = verify_signed_list(data, Policy(trust=TrustStore(zero_dir)))
    assert verified.endorser.dn == ZERO_ENDORSER
    root = verified.chain[-1]
    assert (root.serial_number, root.subject, root.der) == (0, ZERO_CA, der)


def test_a_revoked_endorser_of_a_serial_zero_ca_is_refused(zero_dir, zero):
    """The CRL check reads the CA's name and key without cryptography's parser too."""
    ca, endorser, _ = zero
    crl = devpki.make_crl(ca, [endorser.cert]).public_bytes(serialization.Encoding.PEM)
    next(zero_dir.glob("*.r0")).write_bytes(crl)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CertificateRevoked, match=f"revoked by {ZERO_CA}"):
            verify_signed_list(signed_by(endorser), Policy(trust=TrustStore(zero_dir)))


def _vmtrust(*argv: object, warnings_as_errors: bool) -> subprocess.CompletedProcess[str]:
    flags = ["-W", "error"] if warnings_as_errors else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "vmtrust", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": ""},
    )


@requires_openssl
@pytest.mark.openssl
@pytest.mark.parametrize("embedded", [False, True], ids=["ca-from-directory", "ca-in-message"])
@pytest.mark.parametrize("strict", [False, True], ids=["default", "warnings-as-errors"])
def test_list_verify_with_a_serial_zero_ca_is_quiet(tmp_path, zero_dir, zero, embedded, strict):
    """As a site runs it: no warning on stderr, and the same with -W error.  The CA may
    also travel in the message (openssl smime -sign -certfile), where vmtrust reads it."""
    _, endorser, der = zero
    cert, key = endorser.write(tmp_path, "endorser")
    (tmp_path / "ca0.pem").write_bytes(pem.armor("CERTIFICATE", der))
    (tmp_path / "list.json").write_bytes(imagelist.dumps(list_document(endorser)))
    command = ["openssl", "smime", "-sign", "-in", "list.json", "-out", "list.smime"]
    command += ["-signer", str(cert), "-inkey", str(key)]
    command += ["-certfile", "ca0.pem"] if embedded else []
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    result = _vmtrust(
        "list", "verify", tmp_path / "list.smime", "--ca-dir", zero_dir, warnings_as_errors=strict
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("OK: ") and f"issued by {ZERO_CA}" in result.stdout


@requires_openssl
@pytest.mark.openssl
def test_a_signer_with_serial_zero_is_refused_in_one_line(tmp_path, zero_dir, zero):
    """vmtrust reads a signer certificate with cryptography, which is to refuse serial 0:
    refused now, with the reason, rather than working until cryptography is upgraded."""
    ca, endorser, _ = zero
    cert = tmp_path / "zero-signer.pem"
    cert.write_bytes(pem.armor("CERTIFICATE", with_serial_zero(endorser, ca)))
    _, key = endorser.write(tmp_path, "endorser")
    (tmp_path / "list.json").write_bytes(imagelist.dumps(list_document(endorser)))
    subprocess.run(
        ["openssl", "smime", "-sign", "-in", "list.json", "-out", "list.smime",
         "-signer", cert, "-inkey", key],
        cwd=tmp_path, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    result = _vmtrust(
        "list", "verify", tmp_path / "list.smime", "--ca-dir", zero_dir, warnings_as_errors=True
    )
    assert result.returncode == SmimeFormatError.exit_code
    assert result.stderr.count("\n") == 1
    assert "the signer certificate has serial number 0, which RFC 5280 forbids" in result.stderr
