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

import itertools
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
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

# OpenSSL X509_V_ERR_* codes that mean "outside the validity period".
_VALIDITY_ERRORS = {9, 10}
# ... and "no trusted CA for this certificate".
_UNKNOWN_ISSUER = {2, 18, 19, 20, 21}


def subject_hash(cert: x509.Certificate) -> str:
    """OpenSSL's subject-name hash, as used for the file names in the directory."""
    return f"{crypto.X509.from_cryptography(cert).subject_name_hash():08x}"


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

    def _cached(self, path: Path, loader) -> object:
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
        return entry.value

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
        self, leaf: x509.Certificate, untrusted: list[x509.Certificate], at: datetime
    ) -> tuple[x509.Certificate, ...]:
        """Return the verified chain, leaf first, or raise an UntrustedSigner subclass."""
        chain = self._openssl_chain(leaf, untrusted, at)
        self._check_revocation(chain, at)
        self._check_namespaces(chain)
        return chain

    def _openssl_chain(
        self, leaf: x509.Certificate, untrusted: list[x509.Certificate], at: datetime
    ) -> tuple[x509.Certificate, ...]:
        store = crypto.X509Store()
        store.load_locations(None, str(self.directory))
        store.set_time(at)
        others = [crypto.X509.from_cryptography(c) for c in untrusted if c != leaf]
        context = crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf), others)
        subject = dn.slash(leaf.subject)
        try:
            verified = context.get_verified_chain()
        except crypto.X509StoreContextError as exc:
            code, depth, message = ([*exc.errors, 0, 0, str(exc)])[:3]
            about = (
                f"certificate {dn.slash(exc.certificate.to_cryptography().subject)}"
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
        return tuple(c.to_cryptography() for c in verified)

    def _crl_for(self, ca: x509.Certificate, at: datetime) -> x509.CertificateRevocationList | None:
        base = subject_hash(ca)
        stale = None
        for index in range(10):
            crl = self._cached(self.directory / f"{base}.r{index}", self._load_crl)
            if crl is None:
                if not (self.directory / f"{base}.r{index}").exists():
                    break
                continue
            try:
                if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):
                    continue
            except (ValueError, TypeError, UnsupportedAlgorithm):
                continue  # a CRL that cannot be checked is not a valid CRL
            if crl.last_update_utc > at:
                stale = f"CRL of {dn.slash(ca.subject)} is not yet valid"
                continue
            if crl.next_update_utc is not None and crl.next_update_utc < at:
                stale = (
                    f"CRL of {dn.slash(ca.subject)} expired on "
                    f"{crl.next_update_utc:%Y-%m-%d %H:%M:%SZ} (is fetch-crl running?)"
                )
                continue
            return crl
        if stale:
            raise CrlError(stale)
        return None

    def crl_of(self, ca: x509.Certificate, at: datetime) -> x509.CertificateRevocationList | None:
        """The CA's valid CRL at ``at``: None when it has none, CrlError when only stale
        ones (the check the pre-flight and the probe make without verifying a list)."""
        return self._crl_for(ca, at)

    def _check_revocation(self, chain: tuple[x509.Certificate, ...], at: datetime) -> None:
        for index, cert in enumerate(chain):
            issuer = chain[index + 1] if index + 1 < len(chain) else cert
            crl = self._crl_for(issuer, at)
            if crl is None:
                if self.require_crls:
                    raise CrlError(
                        f"no valid CRL for CA {dn.slash(issuer.subject)} in {self.directory} "
                        f"(expected {subject_hash(issuer)}.r0; CRLs are required)"
                    )
                continue
            revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if revoked is not None:
                raise CertificateRevoked(
                    f"certificate {dn.slash(cert.subject)} (serial {cert.serial_number:#x}) was "
                    f"revoked by {dn.slash(issuer.subject)} on "
                    f"{revoked.revocation_date_utc:%Y-%m-%d %H:%M:%SZ}"
                )

    def _namespace_policy(self, ca: x509.Certificate) -> NamespacePolicy | None:
        base = subject_hash(ca)
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
                policy = load_for_ca(self.directory, base, dn.components(ca.subject))
            except ValueError as exc:
                raise NamespaceViolation(f"namespace policy: {exc}") from None
            entry = _Cached(stamp, policy)  # type: ignore[arg-type]
            self._cache[key] = entry
        return entry.value  # type: ignore[return-value]

    def _check_namespaces(self, chain: tuple[x509.Certificate, ...]) -> None:
        for cert, issuer in itertools.pairwise(chain):
            policy = self._namespace_policy(issuer)
            issuer_key = dn.components(issuer.subject)
            subject = dn.slash(cert.subject)
            if policy is None or not policy.knows(issuer_key):
                if self.require_namespaces:
                    raise NamespaceViolation(
                        f"no namespace policy for CA {dn.slash(issuer.subject)} "
                        f"(expected {subject_hash(issuer)}.namespaces or .signing_policy)"
                    )
                continue
            if not policy.allows(issuer_key, subject):
                raise NamespaceViolation(
                    f"certificate {subject} is outside the namespace of CA "
                    f"{dn.slash(issuer.subject)}"
                )
