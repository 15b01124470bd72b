"""Lists and images over HTTPS: the server is verified against the subscription's CA."""

from __future__ import annotations

import dataclasses
import ipaddress
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from httpserve import Server, Site
from test_sync_local import IMAGE_A, entry, publish, trusted

from vmtrust import devpki


def server_context(pki, tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A TLS server certificate for 127.0.0.1 issued by the test CA; the CA as a PEM file."""
    key = devpki.new_key()
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(devpki.name("/DC=org/DC=example/CN=127.0.0.1"))
        .issuer_name(pki.ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(pki.ca.key, hashes.SHA256())
    )
    cert_file, key_file, ca_file = (tmp_path / n for n in ("srv.pem", "srv.key", "ca.pem"))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ca_file.write_bytes(pki.ca.cert.public_bytes(serialization.Encoding.PEM))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, ca_file


def test_https_list_and_image_verified_with_tls_ca(sync, pki, tmp_path):
    context, ca_file = server_context(pki, tmp_path)
    with Server(Site(), tls=context) as tls_site:
        publish(tls_site, pki, [entry("a", IMAGE_A, tls_site)], "1")
        sub = dataclasses.replace(sync.subs[0], url=tls_site.url("/site.list"), tls_ca=str(ca_file))
        report = sync.run((sub,))
        assert report.exit_code == 0, report.failures
        assert trusted(sync) == {"a": "1"}


def test_https_server_not_trusted_is_refused(sync, pki, tmp_path):
    context, _ = server_context(pki, tmp_path)
    with Server(Site(), tls=context) as tls_site:
        publish(tls_site, pki, [entry("a", IMAGE_A, tls_site)], "1")
        sub = dataclasses.replace(sync.subs[0], url=tls_site.url("/site.list"))
        report = sync.run((sub,))
        assert report.exit_code == 1
        assert "TLS verification failed" in report.failures[0]
        assert "\n" not in report.failures[0]
        assert trusted(sync) == {}
