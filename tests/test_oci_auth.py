"""Registry authentication and TLS, against the real registry: Basic (htpasswd with
bcrypt), HTTPS with the test CA, and the bearer-token handshake with a token
service the test runs (the registry verifies the tokens it issues)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from oci_registry import LocalRegistry, Pusher
from oci_support import make_service, oci_subscription, qcow2_disk, require_registry, trusted
from test_sync_tls import server_context

REPO = "egi_vm_images/ubuntu"


@pytest.fixture
def service(tmp_path, ca_dir):
    service = make_service(tmp_path, ca_dir)
    yield service
    service.close()


def _push_plain(tmp_path, disk):
    """Push through an open registry, then stop it: its storage is what the others serve."""
    with LocalRegistry(tmp_path / "registry") as plain:
        return Pusher(plain).vm_image(REPO, "22.04", disk)


def test_basic_auth_over_tls_with_the_test_ca(tmp_path, pki, service, monkeypatch):
    require_registry()
    disk = qcow2_disk(tmp_path)
    digest = _push_plain(tmp_path, disk)
    _, ca_file = server_context(pki, tmp_path)
    (tmp_path / "password").write_text("s3cret\n")
    with LocalRegistry(
        tmp_path / "registry", user="sync", password="s3cret",
        tls=(tmp_path / "srv.pem", tmp_path / "srv.key"),
    ) as registry:  # fmt: skip
        assert registry.url.startswith("https://")
        good = oci_subscription(
            registry, trust="registry",
            extra=f"tls_ca: {ca_file}\n"
            f"credentials: {{username: sync, password_file: {tmp_path / 'password'}}}",
        )  # fmt: skip
        report = service.run((good,))
        assert report.exit_code == 0, report.failures
        assert trusted(service) == {f"{registry.host}/{REPO}:22.04": (digest, "registry")}
        # a wrong password is a failure of the subscription: nothing retired
        monkeypatch.setenv("WRONG", "guess")
        wrong = oci_subscription(
            registry, trust="registry",
            extra=f"tls_ca: {ca_file}\ncredentials: {{username: sync, password_env: WRONG}}",
        )  # fmt: skip
        report = service.run((wrong,))
        assert report.exit_code == 1
        assert (
            "HTTP 401" in report.failures[0]
            and "check the subscription's credentials" in (report.failures[0])
        )
        assert len(trusted(service)) == 1
        # without the CA the server is not trusted
        untrusted = oci_subscription(registry, trust="registry")
        report = service.run((untrusted,))
        assert report.exit_code == 1 and "TLS verification failed" in report.failures[0]
        assert len(trusted(service)) == 1


def test_basic_auth_without_credentials_says_what_is_missing(tmp_path, service):
    require_registry()
    disk = qcow2_disk(tmp_path)
    _push_plain(tmp_path, disk)
    with LocalRegistry(tmp_path / "registry", user="sync", password="pw") as registry:
        report = service.run((oci_subscription(registry, trust="registry"),))
    assert report.exit_code == 1
    assert "asks for credentials (give the subscription credentials:)" in report.failures[0]


# --- bearer tokens ---------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """A token service as registries use them: Basic credentials in, a signed JWT out.

    The registry is configured with its certificate (``rootcertbundle``) and
    verifies every token; the test sees which requests carried credentials.
    """

    def __init__(self, tmp_path, host: str = "127.0.0.1") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmtrust test token issuer")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.bundle = tmp_path / "token-root.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.seen: list[tuple[str | None, dict]] = []  #: (Authorization, query) per request
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                auth = self.headers.get("Authorization")
                service.seen.append((auth, query))
                wanted = "Basic " + base64.b64encode(b"sync:s3cret").decode()
                if auth != wanted:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"token": service.token(query.get("scope", ""))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://{host}:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, scope: str) -> str:
        access = []
        if scope.startswith("repository:"):
            _, name, actions = scope.split(":")
            access.append({"type": "repository", "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {
            "alg": "ES256",
            "typ": "JWT",
            "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        claims = {
            "iss": "vmtrust-test-issuer", "sub": "sync", "aud": "vmtrust-test-registry",
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
            "access": access,
        }  # fmt: skip
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        r, s = decode_dss_signature(
            self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _token_registry(tmp_path, tokens: TokenService) -> LocalRegistry:
    return LocalRegistry(
        tmp_path / "registry",
        token={
            "realm": tokens.realm,
            "service": "vmtrust-test-registry",
            "issuer": "vmtrust-test-issuer",
            "rootcertbundle": str(tokens.bundle),
        },
    )


def test_bearer_token_handshake_with_the_registry_s_token_service(tmp_path, service):
    require_registry()
    disk = qcow2_disk(tmp_path)
    digest = _push_plain(tmp_path, disk)
    tokens = TokenService(tmp_path)
    (tmp_path / "password").write_text("s3cret\n")
    try:
        with _token_registry(tmp_path, tokens) as registry:
            sub = oci_subscription(
                registry, trust="registry",
                extra=f"credentials: {{username: sync, password_file: {tmp_path / 'password'}}}",
            )  # fmt: skip
            report = service.run((sub,))
    finally:
        tokens.close()
    assert report.exit_code == 0, report.failures
    assert trusted(service) == {f"{registry.host}/{REPO}:22.04": (digest, "registry")}
    scopes = {query["scope"] for _, query in tokens.seen}
    assert scopes == {f"repository:{REPO}:pull"}  # one token per scope, reused for the blob
    assert all(query["service"] == "vmtrust-test-registry" for _, query in tokens.seen)


def test_credentials_go_only_to_a_token_service_on_the_registry_s_host(tmp_path, service):
    """A registry naming a token service elsewhere (here: 'localhost', another name) gets
    the site's password sent nowhere: the token request goes without it and fails."""
    require_registry()
    disk = qcow2_disk(tmp_path)
    _push_plain(tmp_path, disk)
    tokens = TokenService(tmp_path, host="localhost")
    (tmp_path / "password").write_text("s3cret\n")
    try:
        with _token_registry(tmp_path, tokens) as registry:
            sub = oci_subscription(
                registry, trust="registry",
                extra=f"credentials: {{username: sync, password_file: {tmp_path / 'password'}}}",
            )  # fmt: skip
            report = service.run((sub,))
    finally:
        tokens.close()
    assert report.exit_code == 1
    assert "credentials go only to a token service on the registry's host" in report.failures[0]
    assert tokens.seen and all(auth is None for auth, _ in tokens.seen)
