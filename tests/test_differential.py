"""Differential test: vmtrust against ``openssl smime -verify`` on an OpenSSL-made corpus.

Every list in the corpus is signed with the ``openssl smime -sign`` command line,
then verified by both ``openssl smime -verify -CApath DIR -crl_check_all`` and
:func:`vmtrust.verify.verify_signed_list`.  Each case states what each side must
say, and its ``kind``:

* ``both`` — OpenSSL's rules apply: both accept, or both refuse;
* ``vmtrust-only`` — a rule only vmtrust checks (HEPiX list rules, grid namespaces,
  the SHA-1/MD5 policy, opaque signing): OpenSSL accepts, vmtrust refuses with the
  specific exception;
* ``divergent`` — a deliberate, documented difference in the other direction.

Facts this rests on (observed with OpenSSL 3.0): ``-crl_check_all`` finds the
IGTF ``<hash>.r0`` CRLs in ``-CApath`` (no ``-CRLfile`` needed; the ``revoked``
case proves it); ``smime -verify`` applies the ``smimesign`` purpose (keyUsage
digitalSignature/nonRepudiation, extendedKeyUsage emailProtection when present);
and it accepts SHA-1 and MD5 signatures and opaque (``-nodetach``) messages.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import list_document
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from vmtrust import devpki, imagelist, smime
from vmtrust.devpki import Credential
from vmtrust.errors import (
    BadSignature,
    CertificateExpired,
    CertificateRevoked,
    CrlError,
    EndorserMismatch,
    EndorserNotAllowed,
    IdentifierMismatch,
    KeyUsageError,
    ListExpired,
    ListFromFuture,
    NamespaceViolation,
    RollbackError,
    SmimeFormatError,
    UntrustedSigner,
    VmtrustError,
    WeakAlgorithm,
)
from vmtrust.imagelist import Endorser
from vmtrust.truststore import TrustStore, subject_hash
from vmtrust.verify import Policy, verify_signed_list

if TYPE_CHECKING:
    from conftest import TestPKI

OPENSSL = shutil.which("openssl")
pytestmark = [
    pytest.mark.openssl,
    pytest.mark.skipif(OPENSSL is None, reason="openssl not on PATH"),
]

Doc = Callable[[Credential, datetime], dict[str, Any]]
Mutation = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  #: "both", "vmtrust-only" or "divergent"
    openssl: bool  #: openssl smime -verify accepts
    vmtrust: type[VmtrustError] | None  #: the exception vmtrust raises, None = accepts
    signer: str = "endorser"  #: a TestPKI attribute, or "host"
    sign_args: tuple[str, ...] = ()  #: extra `openssl smime -sign` args; {name} = cert file
    verify_args: tuple[str, ...] = ("-crl_check_all",)
    doc: Doc | None = None  #: the list to sign; default names the signer
    crlf: bool = False  #: write the list file with CRLF line ends before signing
    mutate: Mutation | None = None  #: applied to the signed message
    trust: str = "standard"  #: trust directory variant
    store: dict[str, Any] = field(default_factory=dict)  #: TrustStore options
    policy: dict[str, Any] = field(default_factory=dict)  #: Policy options
    says: str = ""  #: part of OpenSSL's error when it refuses
    why: str = ""


def _replace(old: bytes, new: bytes) -> Mutation:
    def mutate(data: bytes) -> bytes:
        assert old in data
        return data.replace(old, new, 1)

    return mutate


def _boundary(data: bytes) -> bytes:
    return b"--" + data.split(b'boundary="', 1)[1].split(b'"', 1)[0]


def _three_parts(data: bytes) -> bytes:
    delimiter = _boundary(data)
    first = data.index(delimiter)
    second = data.index(delimiter, first + 1)
    return data[:second] + data[first:second] + data[second:]


def _unclosed(data: bytes) -> bytes:
    return data.replace(_boundary(data) + b"--", _boundary(data))


def _corrupt_signature_value(data: bytes) -> bytes:
    """Flip a bit in the last byte of the DER: the RSA signature value."""
    start = data.index(b"\n\n", data.index(b"smime.p7s")) + 2
    end = data.index(b"\n\n", start)
    der = bytearray(base64.b64decode(b"".join(data[start:end].split())))
    der[-1] ^= 1
    return data[:start] + base64.encodebytes(bytes(der)) + data[end + 1 :]


def _dated(created: timedelta, expires: timedelta) -> Doc:
    return lambda s, now: list_document(s, created=now + created, expires=now + expires)


# fmt: off
CASES = [
    # --- OpenSSL's rules apply: both must agree -------------------------------------
    Case("sha256", "both", True, None),
    Case("sha512", "both", True, None, sign_args=("-md", "sha512")),
    Case("sha1-allowed", "both", True, None, sign_args=("-md", "sha1"),
         policy={"allow_sha1": True}, why="aligned with Policy(allow_sha1=True)"),
    Case("text-mode", "both", True, None, sign_args=("-text",)),
    Case("binary-crlf-content", "both", True, None, sign_args=("-binary",), crlf=True),
    Case("binary-lf-content", "both", False, BadSignature, sign_args=("-binary",),
         says="signature failure", why="LF bytes signed, CRLF bytes hashed by both"),
    Case("message-crlf-to-lf", "both", True, None, mutate=lambda d: d.replace(b"\r\n", b"\n")),
    Case("message-lf-to-crlf", "both", True, None,
         mutate=lambda d: d.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")),
    Case("cr-before-line-end", "both", True, None,
         mutate=_replace(b'images",\r\n', b'images",\r\r\n')),
    Case("protocol-without-x", "both", True, None,
         mutate=lambda d: d.replace(b"application/x-pkcs7-signature",
                                    b"application/pkcs7-signature")),
    Case("micalg-removed", "both", True, None, mutate=_replace(b' micalg="sha-256";', b"")),
    Case("content-edited", "both", False, BadSignature, says="signature failure",
         mutate=_replace(b"Example site images", b"Evil site images!!!")),
    Case("signature-corrupted", "both", False, BadSignature, mutate=_corrupt_signature_value,
         says="signature failure"),
    Case("three-parts", "both", False, SmimeFormatError, mutate=_three_parts,
         says="no multipart body failure"),
    Case("closing-boundary-missing", "both", False, SmimeFormatError, mutate=_unclosed,
         says="no multipart body failure"),
    Case("nocerts", "both", False, BadSignature, sign_args=("-nocerts",),
         says="signer certificate not found"),
    Case("intermediate-certfile", "both", True, None, signer="sub_endorser",
         sign_args=("-certfile", "{sub_ca}"), trust="no_sub_ca"),
    Case("intermediate-missing", "both", False, UntrustedSigner, signer="sub_endorser",
         trust="no_sub_ca", says="unable to get local issuer certificate"),
    Case("intermediate-in-capath", "both", True, None, signer="sub_endorser"),
    Case("signing-policy-ca", "both", True, None, signer="other_endorser"),
    Case("revoked", "both", False, CertificateRevoked, signer="revoked",
         says="certificate revoked", why="proves OpenSSL reads <hash>.r0 from -CApath"),
    Case("expired-certificate", "both", False, CertificateExpired, signer="expired",
         says="certificate has expired"),
    Case("rogue-same-dn", "both", False, UntrustedSigner, signer="rogue",
         says="unable to get local issuer certificate"),
    Case("rogue-ca-in-message", "both", False, UntrustedSigner, signer="rogue",
         sign_args=("-certfile", "{rogue_ca}"), says="in certificate chain"),
    Case("no-digital-signature", "both", False, KeyUsageError, signer="no_sign",
         says="unsuitable certificate purpose"),
    Case("non-repudiation-only", "both", True, None, signer="non_repudiation"),
    Case("no-key-usage-extension", "both", True, None, signer="no_key_usage"),
    Case("crl-missing", "both", False, CrlError, trust="no_crl",
         says="unable to get certificate CRL"),
    Case("crl-missing-relaxed", "both", True, None, trust="no_crl", verify_args=(),
         store={"require_crls": False}, why="no -crl_check_all vs require_crls=False"),
    Case("crl-stale", "both", False, CrlError, trust="stale_crl", says="CRL has expired"),
    Case("crl-wrong-key", "both", False, CrlError, trust="rogue_crl",
         says="CRL signature failure"),
    Case("host-certificate-purpose-any", "both", True, None, signer="host",
         verify_args=("-crl_check_all", "-purpose", "any"),
         why="with the S/MIME purpose check off, OpenSSL agrees (see the divergent case)"),
    Case("version-equal", "both", True, None, policy={"min_version": "3"}),
    # --- rules only vmtrust checks: OpenSSL accepts ----------------------------------
    Case("sha1-default", "vmtrust-only", True, WeakAlgorithm, sign_args=("-md", "sha1"),
         why="SHA-1 refused unless Policy(allow_sha1=True)"),
    Case("md5", "vmtrust-only", True, WeakAlgorithm, sign_args=("-md", "md5"),
         policy={"allow_sha1": True}, why="MD5 is never acceptable"),
    Case("opaque-nodetach", "vmtrust-only", True, SmimeFormatError, sign_args=("-nodetach",),
         why="no publisher signs opaque; only multipart/signed is accepted"),
    Case("outside-namespace", "vmtrust-only", True, NamespaceViolation, signer="outside",
         why="IGTF namespaces are a grid rule"),
    Case("hv-dn-mismatch", "vmtrust-only", True, EndorserMismatch,
         doc=lambda s, now: list_document(s, dn="/DC=org/DC=example/O=People/CN=Other")),
    Case("hv-ca-mismatch", "vmtrust-only", True, EndorserMismatch,
         doc=lambda s, now: list_document(s, ca="/DC=org/DC=other/CN=Other CA")),
    Case("list-expired", "vmtrust-only", True, ListExpired,
         doc=_dated(timedelta(days=-30), timedelta(minutes=-1))),
    Case("list-from-future", "vmtrust-only", True, ListFromFuture,
         doc=_dated(timedelta(hours=1), timedelta(days=28))),
    Case("rollback-version", "vmtrust-only", True, RollbackError, policy={"min_version": "4"}),
    Case("rollback-created", "vmtrust-only", True, RollbackError,
         policy={"min_created": datetime.now(UTC)}),
    Case("identifier-pinned", "vmtrust-only", True, IdentifierMismatch,
         policy={"identifier": "00000000-0000-0000-0000-000000000000"}),
    Case("endorser-pinned", "vmtrust-only", True, EndorserNotAllowed,
         policy={"endorsers": (Endorser(devpki.ENDORSER_DN, "/DC=org/DC=other/CN=Other CA"),)}),
    # --- deliberate differences ------------------------------------------------------
    Case("host-certificate", "divergent", False, None, signer="host",
         says="unsuitable certificate purpose",
         why="vmtrust does not apply the S/MIME extendedKeyUsage purpose: endorsers such as "
             "AppDB sign with host certificates (serverAuth/clientAuth only)"),
]
# fmt: on


def _host_credential(ca: Credential) -> Credential:
    """A grid host certificate: digitalSignature, but no emailProtection EKU."""
    key, start = devpki.new_key(), datetime.now(UTC) - timedelta(days=1)
    usage = dict.fromkeys(
        (
            "content_commitment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(devpki.name("/DC=org/DC=example/OU=Hosts/CN=lists.example.org"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=30))
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=True, **usage), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Credential(cert, key)


def _trust_dirs(pki: TestPKI, root: Path) -> dict[str, Path]:
    dirs = {
        name: pki.write_trust_dir(root / name)
        for name in ("standard", "no_crl", "stale_crl", "rogue_crl", "no_sub_ca")
    }
    ca_crl = f"{subject_hash(pki.ca.cert)}.r0"
    (dirs["no_crl"] / ca_crl).unlink()
    now = datetime.now(UTC)
    stale = devpki.make_crl(
        pki.ca,
        [pki.revoked.cert],
        last_update=now - timedelta(days=40),
        next_update=now - timedelta(days=1),
    )
    rogue = devpki.make_crl(pki.rogue_ca)
    for name, crl in (("stale_crl", stale), ("rogue_crl", rogue)):
        (dirs[name] / ca_crl).write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    (dirs["no_sub_ca"] / f"{subject_hash(pki.sub_ca.cert)}.0").unlink()
    return dirs


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, *args], capture_output=True, text=True, errors="replace", timeout=60
    )


def _openssl_verify(path: Path, ca_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run("smime", "-verify", "-in", str(path), "-CApath", str(ca_dir), *args,
                "-out", "/dev/null")  # fmt: skip


@dataclass
class Corpus:
    files: dict[str, Path]
    trust: dict[str, Path]


@pytest.fixture(scope="module")
def corpus(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("differential")
    creds = {"host": _host_credential(pki.ca)}
    paths = {}
    names = "endorser revoked expired outside no_sign rogue rogue_ca sub_ca sub_endorser"
    for name in [*names.split(), "other_endorser", "non_repudiation", "no_key_usage", "host"]:
        credential = creds.get(name) or getattr(pki, name)
        creds[name] = credential
        paths[name] = credential.write(root / "creds", name)
    now = datetime.now(UTC)
    files = {}
    for case in CASES:
        signer = creds[case.signer]
        document = case.doc(signer, now) if case.doc else list_document(signer)
        text = imagelist.dumps(document)
        source = root / f"{case.name}.json"
        source.write_bytes(text.replace(b"\n", b"\r\n") if case.crlf else text)
        out = root / f"{case.name}.smime"
        cert, key = paths[case.signer]
        extra = [a.format(**{n: str(p[0]) for n, p in paths.items()}) for a in case.sign_args]
        command = ["smime", "-sign", "-signer", str(cert), "-inkey", str(key), "-in", str(source)]
        signed = _run(*command, "-out", str(out), *extra)
        assert signed.returncode == 0, f"{case.name}: openssl smime -sign: {signed.stderr}"
        if case.mutate:
            out.write_bytes(case.mutate(out.read_bytes()))
        files[case.name] = out
    return Corpus(files=files, trust=_trust_dirs(pki, root / "trust"))


def test_corpus_table_is_consistent():
    assert len({case.name for case in CASES}) == len(CASES)
    for case in CASES:
        if case.kind == "both":
            assert case.openssl == (case.vmtrust is None), case.name
        elif case.kind == "vmtrust-only":
            assert case.openssl and case.vmtrust is not None, case.name
        else:
            assert case.kind == "divergent" and case.why, case.name
        assert case.openssl or case.says, f"{case.name}: say what OpenSSL refuses"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_vmtrust_and_openssl(corpus: Corpus, case: Case):
    path, ca_dir = corpus.files[case.name], corpus.trust[case.trust]
    result = _openssl_verify(path, ca_dir, *case.verify_args)
    assert (result.returncode == 0) == case.openssl, f"openssl: {result.stderr}"
    if not case.openssl:
        assert case.says in result.stderr

    policy = Policy(trust=TrustStore(ca_dir, **case.store), **case.policy)
    data = path.read_bytes()
    if case.vmtrust is None:
        verified = verify_signed_list(data, policy)
        assert verified.imagelist.identifier == "65ef8feb-86d4-42ea-9960-f79bcc5a11b4"
    else:
        with pytest.raises(VmtrustError) as info:
            verify_signed_list(data, policy)
        assert type(info.value) is case.vmtrust, f"{type(info.value).__name__}: {info.value}"


def test_vmtrust_signature_verifies_with_openssl(corpus: Corpus, pki: TestPKI, tmp_path: Path):
    """The other direction: what vmtrust signs, ``openssl smime -verify`` accepts."""
    for digest in ("sha256", "sha512"):
        data = smime.sign(
            imagelist.dumps(list_document(pki.endorser)),
            pki.endorser.cert,
            pki.endorser.key,
            digest=digest,
        )
        path = tmp_path / f"vmtrust-{digest}.smime"
        path.write_bytes(data)
        result = _openssl_verify(path, corpus.trust["standard"], "-crl_check_all")
        assert result.returncode == 0, result.stderr
        assert verify_signed_list(data, Policy(trust=TrustStore(corpus.trust["standard"])))
