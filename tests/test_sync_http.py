"""HTTP the sync can rely on (issue 10 §3): only http(s), checked redirects, total deadlines.

Real servers on loopback (``tests/httpserve.py``) drip bytes, hang, redirect
where they should not; each test performs one of these and measures what the
sync does about it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from conftest import list_document
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from httpserve import Behaviour, BlackHole, Server, Site
from test_sync_local import IMAGE_A, IMAGE_B, entry, publish, trusted

from glance_sync.fetch import fetch_list
from glance_sync.httpclient import Deadline, HttpSettings, get, make_session, short
from glance_sync.settings import from_conf
from vmtrust import imagelist, smime
from vmtrust.conf import make_conf
from vmtrust.errors import FetchError
from vmtrust.policy import Credentials
from vmtrust.record import generate_key_pair


def limits(sync, **values) -> None:
    sync.s.http = dataclasses.replace(sync.s.http, **values)


def timed(sync, subs) -> tuple:
    start = time.monotonic()
    report = sync.run(subs)
    return report, time.monotonic() - start


# --- total deadlines --------------------------------------------------------------------


@pytest.mark.parametrize("how", [Behaviour(drip=2.0), Behaviour(drip_headers=2.0)])
def test_a_list_server_that_drips_is_cut_at_the_list_deadline(sync, site, pki, how):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    site.behaviour["/site.list"] = how
    limits(sync, list_deadline=3.0)  # per-read timeout 5 s: a drip never trips it
    report, elapsed = timed(sync, sync.subs)
    (line,) = report.failures
    assert line.startswith("subscription example: ") and "deadline of 3 s" in line
    assert elapsed < 7
    assert trusted(sync) == {}


@pytest.fixture
def dripping_tls():
    """A port whose server starts a TLS handshake record and then sends a byte every 2 s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"\x16\x03\x03\x40\x00")  # a 16 KiB handshake record follows…
                while not stop.wait(2.0):
                    conn.sendall(b"\x00")  # …one byte at a time

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}/site.list"
    stop.set()
    listener.close()
    thread.join(timeout=5)


def test_a_tls_handshake_that_drips_is_cut_at_the_list_deadline(sync, dripping_tls):
    limits(sync, list_deadline=3.0)
    sub = dataclasses.replace(sync.subs[0], url=dripping_tls)
    report, elapsed = timed(sync, (sub,))
    (line,) = report.failures
    assert "deadline of 3 s" in line and elapsed < 7


def test_an_image_server_that_drips_is_cut_at_the_image_deadline(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    site.behaviour["/img/b-1.img"] = Behaviour(drip=2.0)
    limits(sync, image_deadline=2.0, min_rate=1 << 30)
    report, elapsed = timed(sync, sync.subs)
    (line,) = report.failures
    assert line.startswith("image b: ") and "not complete within its deadline of 2 s" in line
    assert trusted(sync) == {"a": "1"}
    assert elapsed < 8


def test_the_image_deadline_grows_with_the_size_at_the_minimum_rate():
    settings = HttpSettings(image_deadline=300.0, min_rate=512 * 1024)
    assert settings.image_deadline_for(0) == 300.0
    assert settings.image_deadline_for(1 << 30) == 300.0 + 2048.0  # 1 GiB at 512 KiB/s


def test_a_dead_endorser_delays_no_other_list(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    limits(sync, list_deadline=6.0, timeout=30.0)
    with BlackHole() as hole:
        dead = dataclasses.replace(sync.subs[0], name="dead", url=hole.url("/dead.list"))
        start = time.time()
        report = sync.run((dead, *sync.subs))
        elapsed = time.time() - start
    (line,) = report.failures
    assert line.startswith("subscription dead: ") and "deadline of 6 s" in line
    (record,) = sync.store.root.glob("images/a/*.json")
    assert record.stat().st_mtime - start < 2.5  # stored long before the dead list gave up
    assert trusted(sync) == {"a": "1"}
    assert 5.5 < elapsed < 15


def test_the_default_retry_budget_for_an_unreachable_list_is_seconds(tmp_path, ca_dir, sync):
    generate_key_pair(tmp_path / "key")
    (tmp_path / "vmtrust.conf").write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
        f"[trust]\nca_dir = {ca_dir}\nseal_key = {tmp_path}/key\n"
    )
    settings = from_conf(make_conf([str(tmp_path / "vmtrust.conf")]))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nobody listens there: connection refused at once
    sub = dataclasses.replace(sync.subs[0], url=f"http://127.0.0.1:{port}/x.list")
    start = time.monotonic()
    with pytest.raises(FetchError, match="unreachable after 3 attempts"):
        fetch_list(sub, make_session(), settings.http, 1 << 20)
    assert time.monotonic() - start < 6  # back-off 1 + 2 s, not half a minute
    assert settings.http.list_deadline == 60 and settings.http.min_rate == 512 * 1024


# --- redirects and schemes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory / "cert.pem", directory / "key.pem"


@pytest.fixture
def tls_site(tls_files):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    with Server(Site(), tls=context) as running:
        yield running


def test_a_redirect_from_https_to_http_is_refused(sync, site, pki, tls_site, tls_files):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    tls_site.behaviour["/site.list"] = Behaviour(status=301, location=site.url("/site.list"))
    sub = dataclasses.replace(
        sync.subs[0], url=tls_site.url("/site.list"), tls_ca=str(tls_files[0])
    )
    report = sync.run((sub,))
    (line,) = report.failures
    assert "redirect from https to http" in line and "refused" in line
    assert site.requests == []  # the http server was never asked
    # https to https is followed
    tls_site.files["/site.list"] = site.files["/site.list"]
    del tls_site.behaviour["/site.list"]
    tls_site.behaviour["/old.list"] = Behaviour(status=308, location="/site.list")
    moved = dataclasses.replace(sub, url=tls_site.url("/old.list"))
    assert sync.run((moved,)).failures == []
    assert trusted(sync) == {"a": "1"}


def test_credentials_go_only_to_the_origin_they_were_configured_for(sync, site, pki, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with Server(Site()) as other:
        publish(other, pki, [entry("a", IMAGE_A, other)], "1")
        site.behaviour["/site.list"] = Behaviour(status=302, location=other.url("/site.list"))
        sub = dataclasses.replace(sync.subs[0], credentials=Credentials(token_file=str(token)))
        assert sync.run((sub,)).failures == []
        assert site.authorization[0] is not None
        assert set(other.authorization) == {None}
    assert trusted(sync) == {"a": "1"}


def test_an_image_redirected_to_a_local_file_fails_that_image_only(sync, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    site.behaviour["/img/b-1.img"] = Behaviour(status=302, location="file:///etc/passwd")
    report = sync.run(sync.subs)
    (line,) = report.failures
    assert line.startswith("image b: ") and "redirect refused: file:///etc/passwd" in line
    assert trusted(sync) == {"a": "1"}


def test_a_file_uri_in_a_list_served_over_http_is_refused(sync, site, pki, tmp_path):
    secret = tmp_path / "secret.img"  # the right bytes and hash: the scheme alone is refused
    secret.write_bytes(IMAGE_B)
    leak = entry("leak", IMAGE_B, site)
    leak["hv:image"]["hv:uri"] = secret.as_uri()
    publish(site, pki, [entry("a", IMAGE_A, site), leak], "1")
    report = sync.run(sync.subs)
    (line,) = report.failures
    assert line.startswith("image leak: ")
    assert "a file: URI in a list fetched over http(s) is refused" in line
    assert trusted(sync) == {"a": "1"}


def test_a_list_the_site_reads_from_its_own_disk_may_name_image_files(sync, site, pki, tmp_path):
    own = entry("own", IMAGE_B, site)
    (tmp_path / "own.img").write_bytes(IMAGE_B)
    own["hv:image"]["hv:uri"] = (tmp_path / "own.img").as_uri()
    signed = smime.sign(
        imagelist.dumps(list_document(pki.endorser, images=[own])),
        pki.endorser.cert,
        pki.endorser.key,
    )
    (tmp_path / "own.list").write_bytes(signed)
    sub = dataclasses.replace(sync.subs[0], url=(tmp_path / "own.list").as_uri())
    assert sync.run((sub,)).failures == []
    assert trusted(sync) == {"own": "1"}


def test_a_pooled_connection_obeys_the_deadline_of_the_fetch_using_it(site):
    site.files["/first"] = b"x" * 10
    site.files["/second"] = b"y" * 300_000
    site.behaviour["/second"] = Behaviour(stall=0.3)  # five 64 KiB pieces: 1.5 s
    session = make_session()
    first = Deadline(0.5)  # still open, as if its fetch went on elsewhere
    second = Deadline(30)
    try:
        with get(session, site.url("/first"), **_plain(first)) as response:
            assert response.content == b"x" * 10  # the connection goes back to the pool
        with get(session, site.url("/second"), **_plain(second)) as response:
            assert len(response.content) == 300_000  # not cut when the first one's time is up
        assert first.expired
    finally:
        first.close()
        second.close()
        session.close()


def _plain(deadline: Deadline) -> dict:
    return {"settings": HttpSettings(), "deadline": deadline, "verify": True}


def test_a_deadline_longer_than_any_timer_still_works():
    deadline = Deadline(HttpSettings().image_deadline_for(10**19))  # hv:size allows 20 digits
    try:
        time.sleep(0.2)
        assert deadline._timer.is_alive()  # its watchdog waits (it used to die of OverflowError)
        assert not deadline.expired and deadline.remaining() > 1e9
    finally:
        deadline.close()


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        (
            "_Pool(host='h', port=1): Read timed out. (read timeout=5)",
            "Read timed out. (read timeout=5)",
        ),
        (
            "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: /x (Caused by "
            "NewConnectionError('<HTTPConnection object>: Failed to establish a new connection: "
            "[Errno 111] Connection refused'))",
            "Connection refused",
        ),
        (
            "('Connection broken: IncompleteRead(3 bytes read, 5 more expected)', "
            "IncompleteRead(3 bytes read, 5 more expected))",
            "Connection broken: IncompleteRead(3 bytes read, 5 more expected)",
        ),
        ("https://jane:pw@h/x: 403", "https://***@h/x: 403"),
    ],
)
def test_library_messages_are_shortened_to_their_cause(message, shown):
    assert short(Exception(message)) == shown
