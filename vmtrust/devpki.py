"""A small grid-style PKI for demos, tests and benchmarks — never for production.

It makes what a site's ``/etc/grid-security/certificates`` and an endorser's
``~/.globus`` would hold: a CA with its CRL and namespace files, an endorser
certificate fit for signing lists, and the bad actors tests need (a revoked
endorser, an expired one, one outside the CA's namespace, one without the
digitalSignature key usage, a rogue CA that copies the real CA's name).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmtrust import dn
from vmtrust.truststore import subject_hash

__all__ = [
    "CA_DN",
    "ENDORSER_DN",
    "NAMESPACE",
    "Credential",
    "DevPKI",
    "make_ca",
    "make_crl",
    "make_endorser",
    "name",
    "new_key",
    "write_ca",
]

CA_DN = "/DC=org/DC=example/CN=Example Test CA"
ENDORSER_DN = "/DC=org/DC=example/O=People/CN=Jane Endorser"
NAMESPACE = "/DC=org/DC=example/*"

_OIDS = {
    "DC": NameOID.DOMAIN_COMPONENT,
    "C": NameOID.COUNTRY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
}


def name(slash: str) -> x509.Name:
    """An x509.Name from a slash-form DN using the common attribute types."""
    attrs = []
    for segment in slash.strip("/").split("/"):
        kind, _, value = segment.partition("=")
        attrs.append(x509.NameAttribute(_OIDS[kind], value))
    return x509.Name(attrs)


def new_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@dataclass
class Credential:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def dn(self) -> str:
        return dn.slash(self.cert.subject)

    @property
    def ca_dn(self) -> str:
        return dn.slash(self.cert.issuer)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``stem.cert.pem`` and ``stem.key.pem`` (mode 0600); return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{stem}.cert.pem"
        key_path = directory / f"{stem}.key.pem"
        cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key_path.touch(mode=0o600)
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


def make_ca(
    subject: str = CA_DN,
    *,
    issuer: Credential | None = None,
    not_before: datetime | None = None,
    days: int = 3650,
) -> Credential:
    """A CA certificate: self-signed unless ``issuer`` is given (then an intermediate)."""
    now = not_before or datetime.now(UTC) - timedelta(days=1)
    key = new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(issuer.cert.subject if issuer else name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    signer = issuer.key if issuer else key
    return Credential(builder.sign(signer, hashes.SHA256()), key)


def make_endorser(
    ca: Credential,
    subject: str = ENDORSER_DN,
    *,
    not_before: datetime | None = None,
    days: int = 395,
    digital_signature: bool = True,
    non_repudiation: bool = False,
    key_usage: bool = True,
) -> Credential:
    """An end-entity certificate like an IGTF user certificate.

    ``non_repudiation`` adds that key usage bit; ``key_usage=False`` leaves the
    extension out altogether (older certificates, which allow any use).
    """
    start = not_before or datetime.now(UTC) - timedelta(days=1)
    key = new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if key_usage:
        usage = x509.KeyUsage(
            digital_signature=digital_signature,
            content_commitment=non_repudiation,
            key_encipherment=True,
            data_encipherment=not digital_signature,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        builder = builder.add_extension(usage, critical=True)
    cert = (
        builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Credential(cert, key)


def make_crl(
    ca: Credential,
    revoked: Iterable[x509.Certificate] = (),
    *,
    last_update: datetime | None = None,
    next_update: datetime | None = None,
) -> x509.CertificateRevocationList:
    now = datetime.now(UTC)
    last = last_update or now - timedelta(hours=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(last)
        .next_update(next_update or now + timedelta(days=30))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(last)
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def write_ca(
    directory: Path,
    ca: Credential,
    *,
    crl: x509.CertificateRevocationList | None,
    namespace: str | None = NAMESPACE,
    style: str = "namespaces",
) -> str:
    """Install ``ca`` in an IGTF-style directory; return its hash."""
    directory.mkdir(parents=True, exist_ok=True)
    base = subject_hash(ca.cert)
    (directory / f"{base}.0").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    if crl is not None:
        (directory / f"{base}.r0").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    ca_dn = dn.slash(ca.cert.subject)
    if namespace and style == "namespaces":
        regex = namespace.replace(".", r"\.").replace("*", ".*")
        (directory / f"{base}.namespaces").write_text(
            f'#NAMESPACES-VERSION: 1.0\nTO Issuer "{ca_dn}" \\\n  PERMIT Subject "{regex}"\n'
        )
    elif namespace and style == "signing_policy":
        (directory / f"{base}.signing_policy").write_text(
            f"access_id_CA   X509   '{ca_dn}'\npos_rights     globus CA:sign\n"
            f"cond_subjects  globus '\"{namespace}\"'\n"
        )
    return base


@dataclass
class DevPKI:
    """The standard cast: a trusted CA, a good endorser and the bad actors."""

    root: Path
    ca: Credential = field(init=False)
    endorser: Credential = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.ca = make_ca()
        self.endorser = make_endorser(self.ca)

    @property
    def ca_dir(self) -> Path:
        return self.root / "certificates"

    def install(self, *, revoked: Iterable[x509.Certificate] = ()) -> Path:
        """Write the trust directory with the CA, its CRL and namespaces; return it."""
        write_ca(self.ca_dir, self.ca, crl=make_crl(self.ca, revoked))
        return self.ca_dir
