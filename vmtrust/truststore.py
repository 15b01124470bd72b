"""The site's trust anchors: an IGTF-style CA directory.

Layout (``/etc/grid-security/certificates``, kept current by the IGTF
packages and fetch-crl):

* ``<hash>.0`` — CA certificates named by OpenSSL subject hash;
* ``<hash>.r0`` — the CA's CRL;
* ``<hash>.namespaces`` / ``<hash>.signing_policy`` — subjects the CA may certify.

Path building and validation are OpenSSL's own (``X509_verify_cert`` through
pyOpenSSL's ``X509Store``, with the directory as ``CApath``), so a chain is
accepted exactly when ``openssl verify -CApath`` would accept it.  On top of
that, this module applies the two grid rules OpenSSL does not know:

* revocation for *every* CA in the chain, with CRLs required unless the site
  relaxes it (checked with ``cryptography``'s CRL API so a missing CRL can be
  tolerated per CA when relaxed);
* namespace constraints per issuing CA.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar, cast

from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from OpenSSL import crypto

from vmtrust import dn
from vmtrust.errors import (
    CertificateExpired,
    CertificateRevoked,
    ConfigError,
    CrlError,
    NamespaceViolation,
    UntrustedSigner,
)
from vmtrust.namespaces import NamespacePolicy, load_for_ca

__all__ = ["ChainCertificate", "TrustStore", "subject_hash"]

# OpenSSL X509_V_ERR_* codes that mean "outside the validity period".
_VALIDITY_ERRORS = {9, 10}
# ... and "no trusted CA for this certificate".
_UNKNOWN_ISSUER = {2, 18, 19, 20, 21}


def subject_hash(cert: x509.Certificate) -> str:
    """OpenSSL's subject-name hash, as used for the file names in the directory."""
    return f"{crypto.X509.from_cryptography(cert).subject_name_hash():08x}"


#: How the values of ASN.1 string types (by tag) are text, as cryptography reads them:
#: UTF8String, BMPString, UniversalString, and Numeric … General (bytes as they are).
#: A value of another type is shown in hex.
_STRING_CODECS = {
    12: "utf-8",
    30: "utf-16-be",
    28: "utf-32-be",
    **dict.fromkeys((18, 19, 20, 21, 22, 25, 26, 27), "latin-1"),
}
_STRING_TYPES = {30: "BMPString", 28: "UniversalString", 12: "UTF8String"}


def _name(name: asn1_x509.Name) -> list[dn.Attribute]:
    """The attributes of a name as :func:`vmtrust.dn.attributes` has them from cryptography."""
    result = []
    for rdn in name.chosen:
        for pair in rdn:
            value = pair["value"]
            value = value.chosen if isinstance(value, asn1_core.Choice) else value
            if isinstance(value, asn1_core.Any):
                value = value.parse()
            raw = value.contents or b""
            try:
                text = raw.decode(_STRING_CODECS[value.tag], "surrogatepass")
            except (KeyError, UnicodeDecodeError):
                text = raw.hex()
            result.append((pair["type"].dotted, text, _STRING_TYPES.get(value.tag, "")))
    return result


@dataclass(frozen=True)
class ChainCertificate:
    """A certificate of a verified chain, with what the grid rules read of it.

    Read with asn1crypto from the bytes OpenSSL verified, not with
    cryptography's x509 parser: some IGTF CAs have serial number 0, which RFC
    5280 forbids; cryptography warns when it parses one (on the site admin's
    terminal) and is to refuse it, while OpenSSL accepts it.
    """

    der: bytes
    subject: str  #: slash form
    subject_key: dn.Components  #: the subject, comparable
    issuer_key: dn.Components  #: the issuer, comparable
    serial_number: int
    subject_hash: str  #: of the OpenSSL file names, ``<hash>.0``, ``<hash>.r0``
    public_key_der: bytes = field(repr=False)

    @classmethod
    def from_openssl(cls, cert: crypto.X509) -> ChainCertificate:
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
        parsed = asn1_x509.Certificate.load(der)
        subject = _name(parsed.subject)
        return cls(
            der=der,
            subject=dn.slash(subject),
            subject_key=dn.components(subject),
            issuer_key=dn.components(_name(parsed.issuer)),
            serial_number=parsed.serial_number,
            subject_hash=f"{cert.subject_name_hash():08x}",
            public_key_der=parsed.public_key.dump(),
        )

    @classmethod
    def from_pem(cls, data: bytes) -> ChainCertificate:
        """A CA file of the directory, read as OpenSSL reads it (ValueError if it is none)."""
        try:
            return cls.from_openssl(crypto.load_certificate(crypto.FILETYPE_PEM, data))
        except crypto.Error as exc:
            raise ValueError(f"not a PEM certificate ({exc})") from None

    def public_key(self) -> CertificateIssuerPublicKeyTypes:
        key = serialization.load_der_public_key(self.public_key_der)
        return cast(CertificateIssuerPublicKeyTypes, key)  # a certificate's, so an issuer type


_T = TypeVar("_T")


@dataclass
class _Cached:
    stamp: tuple[int, ...]
    value: object


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    """What identifies one version of a file: fetch-crl renames a new file into
    place (new inode); an in-place rewrite changes the mtime (ns) or size."""
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass
class TrustStore:
    """Validates signer certificates against a CA directory under grid rules."""

    directory: Path
    require_crls: bool = True
    require_namespaces: bool = True
    _cache: dict[Path, _Cached] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if not self.directory.is_dir():
            raise ConfigError(f"CA directory {self.directory}: not a directory")
        if not os.access(self.directory, os.R_OK | os.X_OK):
            raise ConfigError(f"CA directory {self.directory}: not readable")

    # --- cached file loading ------------------------------------------------------

    def _cached(self, path: Path, loader: Callable[[Path], _T]) -> _T | None:
        """``loader(path)``, again only when the file changed (see :func:`_stamp`)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            self._cache.pop(path, None)
            return None
        stamp = _stamp(st)
        entry = self._cache.get(path)
        if entry is None or entry.stamp != stamp:
            entry = _Cached(stamp, loader(path))
            self._cache[path] = entry
        return cast(_T, entry.value)  # one path, one loader: the type it stored

    @staticmethod
    def _load_crl(path: Path) -> x509.CertificateRevocationList | None:
        try:
            data = path.read_bytes()
        except OSError:
            return None  # unreadable: treated like an unparsable CRL (not a valid one)
        try:
            if b"-----BEGIN" in data:
                return x509.load_pem_x509_crl(data)
            return x509.load_der_x509_crl(data)
        except ValueError:
            return None

    # --- validation ---------------------------------------------------------------

    def validate(
        self, leaf: x509.Certificate, untrusted: Iterable[bytes], at: datetime
    ) -> tuple[ChainCertificate, ...]:
        """Return the verified chain, leaf first, or raise an UntrustedSigner subclass.

        ``untrusted`` are the DER certificates the signature brought along, which
        OpenSSL may use to build the chain; one it cannot read is left out.
        """
        chain = self._openssl_chain(leaf, untrusted, at)
        self._check_revocation(chain, at)
        self._check_namespaces(chain)
        return chain

    def _openssl_chain(
        self, leaf: x509.Certificate, untrusted: Iterable[bytes], at: datetime
    ) -> tuple[ChainCertificate, ...]:
        store = crypto.X509Store()
        store.load_locations(None, str(self.directory))
        store.set_time(at)
        signer = crypto.X509.from_cryptography(leaf)
        others = []
        for der in untrusted:
            with contextlib.suppress(crypto.Error):  # unreadable: no help in building a path
                others.append(crypto.load_certificate(crypto.FILETYPE_ASN1, der))
        context = crypto.X509StoreContext(store, signer, others)
        subject = dn.slash(leaf.subject)
        try:
            verified = context.get_verified_chain()
        except crypto.X509StoreContextError as exc:
            code, depth, message = ([*exc.errors, 0, 0, str(exc)])[:3]
            about = (
                f"certificate {ChainCertificate.from_openssl(exc.certificate).subject}"
                if (exc.certificate is not None and depth)
                else f"signer certificate {subject}"
            )
            if code in _VALIDITY_ERRORS:
                raise CertificateExpired(f"{about}: {message}") from None
            if code in _UNKNOWN_ISSUER:
                raise UntrustedSigner(
                    f"{about}: not issued by a CA in {self.directory} ({message})"
                ) from None
            raise UntrustedSigner(f"{about}: {message}") from None
        return tuple(ChainCertificate.from_openssl(c) for c in verified)

    def _crl_for(self, ca: ChainCertificate, at: datetime) -> x509.CertificateRevocationList | None:
        base = ca.subject_hash
        stale = None
        for index in range(10):
            crl = self._cached(self.directory / f"{base}.r{index}", self._load_crl)
            if crl is None:
                if not (self.directory / f"{base}.r{index}").exists():
                    break
                continue
            try:
                if dn.components(crl.issuer) != ca.subject_key or not crl.is_signature_valid(
                    ca.public_key()
                ):
                    continue
            except (ValueError, TypeError, UnsupportedAlgorithm):
                continue  # a CRL that cannot be checked is not a valid CRL
            if crl.last_update_utc > at:
                stale = f"CRL of {ca.subject} is not yet valid"
                continue
            if crl.next_update_utc is not None and crl.next_update_utc < at:
                stale = (
                    f"CRL of {ca.subject} expired on "
                    f"{crl.next_update_utc:%Y-%m-%d %H:%M:%SZ} (is fetch-crl running?)"
                )
                continue
            return crl
        if stale:
            raise CrlError(stale)
        return None

    def crl_of(self, ca: ChainCertificate, at: datetime) -> x509.CertificateRevocationList | None:
        """The CA's valid CRL at ``at``: None when it has none, CrlError when only stale
        ones (the check the pre-flight and the probe make without verifying a list)."""
        return self._crl_for(ca, at)

    def _check_revocation(self, chain: tuple[ChainCertificate, ...], at: datetime) -> None:
        for index, cert in enumerate(chain):
            issuer = chain[index + 1] if index + 1 < len(chain) else cert
            crl = self._crl_for(issuer, at)
            if crl is None:
                if self.require_crls:
                    raise CrlError(
                        f"no valid CRL for CA {issuer.subject} in {self.directory} "
                        f"(expected {issuer.subject_hash}.r0; CRLs are required: is fetch-crl "
                        "running? [trust] require_crls = false, or 'vmtrust list verify "
                        "--no-require-crls', accepts a CA without one)"
                    )
                continue
            revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if revoked is not None:
                raise CertificateRevoked(
                    f"certificate {cert.subject} (serial {cert.serial_number:#x}) was "
                    f"revoked by {issuer.subject} on "
                    f"{revoked.revocation_date_utc:%Y-%m-%d %H:%M:%SZ}"
                )

    def _namespace_policy(self, ca: ChainCertificate) -> NamespacePolicy | None:
        base = ca.subject_hash
        key = self.directory / f"{base}.namespaces"
        stamp: tuple[int, ...] = ()
        for path in (key, self.directory / f"{base}.signing_policy"):
            try:
                stamp += _stamp(path.stat())
            except FileNotFoundError:
                stamp += (-1, -1, -1)
        entry = self._cache.get(key)
        if entry is None or entry.stamp != stamp:
            try:
                policy = load_for_ca(self.directory, base, ca.subject_key)
            except ValueError as exc:
                raise NamespaceViolation(f"namespace policy: {exc}") from None
            entry = _Cached(stamp, policy)
            self._cache[key] = entry
        return cast(NamespacePolicy | None, entry.value)  # stored by this method only

    def _check_namespaces(self, chain: tuple[ChainCertificate, ...]) -> None:
        for cert, issuer in itertools.pairwise(chain):
            policy = self._namespace_policy(issuer)
            if policy is None or not policy.knows(issuer.subject_key):
                if self.require_namespaces:
                    raise NamespaceViolation(
                        f"no namespace policy for CA {issuer.subject} "
                        f"(expected {issuer.subject_hash}.namespaces or .signing_policy)"
                    )
                continue
            if not policy.allows(issuer.subject_key, cert.subject):
                raise NamespaceViolation(
                    f"certificate {cert.subject} is outside the namespace of CA {issuer.subject}"
                )
