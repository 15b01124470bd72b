"""The filter's decision cache: what is cached, and a Glance that never answers.

:class:`nova_filter.decision.ImageTrust` imports nothing of nova, so these run
in the main environment.  The Glance side is either the stub at ``fetch``
(:mod:`sealed_images`) or, for the deadline, real keystoneauth talking to
listeners on loopback that accept a connection and then never answer, or
answer one byte at a time (which no per-request socket timeout catches).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from oslo_config import cfg
from sealed_images import OTHER, OWNER, Clock, Glance, trusted_image, user_image_dict

from nova_filter import conf as vmtrust_conf
from nova_filter.decision import FETCH_WORKERS, ImageTrust, glance_fetch
from vmtrust.imagelist import format_date
from vmtrust.record import generate_key_pair, load_private_key


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("seal") / "seal.key"
    generate_key_pair(path)
    return load_private_key(path)


def trust_for(fetch, key, **kw) -> ImageTrust:
    kw.setdefault("clock", Clock())
    return ImageTrust(fetch, [key.public_key()], [OWNER], ttl=60, **kw)


def decided_twice(trust: ImageTrust, image_id: str) -> tuple[str, int]:
    """Decide twice; the reason and how many Glance look-ups it took."""
    before = trust.lookups
    first = trust.decide(image_id)
    second = trust.decide(image_id)
    assert first == second
    return first.reason, trust.lookups - before


# --- what is cached ----------------------------------------------------------------------


def test_failures_are_never_cached(key):
    glance = Glance()
    image_id = glance.add(trusted_image(key))
    trust = trust_for(glance, key)
    glance.fail = "HTTP 503 for image x"
    assert decided_twice(trust, image_id) == ("Glance look-up failed: HTTP 503 for image x", 2)
    glance.fail = None
    assert trust.decide(image_id).trusted  # the first answer after the outage counts


def test_an_unexpected_exception_in_the_fetch_refuses_and_is_not_cached(key):
    calls = []

    def broken(image_id: str):
        calls.append(image_id)
        raise RuntimeError("boom\nsecond line")

    trust = trust_for(broken, key)
    reason, lookups = decided_twice(trust, "some-id")
    assert reason == "Glance look-up failed: RuntimeError: boom second line"
    assert lookups == 2


def test_a_reply_judge_cannot_read_refuses_and_is_not_cached(key):
    glance = Glance()
    image_id = glance.add({**trusted_image(key), "owner": ["not", "a", "string"]})
    reason, lookups = decided_twice(trust_for(glance, key), image_id)
    assert reason.startswith("unreadable image record: TypeError") and lookups == 2


def test_not_in_glance_is_not_cached(key):
    # a 404 may be a replica behind, or an image the sync is creating right now
    assert decided_twice(trust_for(Glance(), key), str(uuid.uuid4())) == ("not in Glance", 2)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"status": "queued"}, "status is queued"),
        ({"status": "saving"}, "status is saving"),
        ({"vmtrust_state": "uploading"}, "trust state is uploading"),
        ({"vmtrust_state": "retired"}, "trust state is retired"),
        ({"vmtrust_vo": "vo.evil.org"}, "seal invalid"),
        ({"owner": OTHER}, f"owner {OTHER} is not a trusted project"),
    ],
)
def test_refusals_before_a_verified_record_are_not_cached(key, change, reason):
    glance = Glance()
    image_id = glance.add({**trusted_image(key), **change})
    got, lookups = decided_twice(trust_for(glance, key), image_id)
    assert got.startswith(reason) and lookups == 2


def test_a_plain_user_image_is_not_cached(key):
    glance = Glance()
    image_id = glance.add(user_image_dict())
    assert decided_twice(trust_for(glance, key), image_id) == ("no vmtrust trust record", 2)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": "copy"}, "seal is bound to image"),
        ({"os_hash_value": "0" * 128}, "content hash differs"),
        ({"size": 1}, "size 1 differs"),
    ],
)
def test_refusals_from_a_verified_record_are_cached(key, change, reason):
    glance = Glance()
    image = {**trusted_image(key), **change}
    glance.images[image["id"]] = image
    clock = Clock()
    trust = trust_for(glance, key, clock=clock)
    got, lookups = decided_twice(trust, image["id"])
    assert got.startswith(reason) and lookups == 1
    clock.now += 61  # until the TTL passes
    trust.decide(image["id"])
    assert trust.lookups == 2


def test_an_expired_record_is_cached_as_a_refusal(key):
    glance = Glance()
    past = format_date(datetime.now(UTC) - timedelta(minutes=1))
    image_id = glance.add(trusted_image(key, expires=past))
    assert decided_twice(trust_for(glance, key), image_id) == (f"expired at {past}", 1)


# --- a Glance that does not answer -------------------------------------------------------


def test_a_fetch_that_never_returns_is_refused_at_the_deadline(key):
    release = threading.Event()

    def hang(image_id: str):
        release.wait(30)
        return None

    trust = trust_for(hang, key, deadline=0.5)
    try:
        start = time.monotonic()
        decision = trust.decide("some-id")
        took = time.monotonic() - start
        assert not decision.trusted and decision.reason == (
            "Glance look-up failed: no answer within 0.5 s"
        )
        assert 0.5 <= took < 2.0
        trust.decide("some-id")
        assert trust.lookups == 2  # not cached
    finally:
        release.set()


def test_every_worker_hanging_still_refuses_within_the_deadline(key):
    """More requests than fetch workers, all against a hanging Glance: each ends in time."""
    release = threading.Event()

    def hang(image_id: str):
        release.wait(30)
        return None

    trust = trust_for(hang, key, deadline=0.5)
    took: list[float] = []

    def one() -> None:
        start = time.monotonic()
        assert not trust.decide(str(uuid.uuid4())).trusted
        took.append(time.monotonic() - start)

    threads = [threading.Thread(target=one) for _ in range(FETCH_WORKERS * 2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(took) == FETCH_WORKERS * 2 and max(took) < 2.0, took
    finally:
        release.set()


class Listener:
    """A loopback TCP listener that accepts and then never answers, or trickles bytes."""

    def __init__(self, trickle: bytes = b"", every: float = 0.2) -> None:
        self.trickle, self.every = trickle, every
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.clients: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            for byte in self.trickle:
                if self.stop.wait(self.every):
                    return
                client.sendall(bytes([byte]))
            self.stop.wait(60)

    def close(self) -> None:
        self.stop.set()
        for sock in [self.sock, *self.clients]:
            with contextlib.suppress(OSError):
                sock.close()


def real_fetch(url: str, timeout: float | None):
    from keystoneauth1 import adapter, session

    return glance_fetch(adapter.Adapter(session.Session(timeout=timeout), endpoint_override=url))


@pytest.mark.parametrize(
    ("trickle", "socket_timeout"),
    [
        (b"", None),  # accepts, never answers, and the session has no timeout at all
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 20, 1.0),  # a byte in 0.2 s
    ],
    ids=["black-hole", "trickle"],
)
def test_real_client_against_a_glance_that_does_not_answer(key, trickle, socket_timeout):
    listener = Listener(trickle)
    try:
        trust = trust_for(real_fetch(listener.url, socket_timeout), key, deadline=1.5)
        start = time.monotonic()
        decision = trust.decide(str(uuid.uuid4()))
        took = time.monotonic() - start
        assert decision.reason == "Glance look-up failed: no answer within 1.5 s"
        assert took < 3.0 and listener.clients  # it did connect; the answer never came
        assert trust._cache == {}
    finally:
        listener.close()


def test_the_default_and_the_shipped_snippet_bound_the_wait_for_glance():
    default = cfg.ConfigOpts()
    vmtrust_conf.register(default)
    default(args=[], default_config_files=[])
    assert 1 <= default.vmtrust.timeout <= 10  # keystoneauth's own default is None: for ever
    shipped = cfg.ConfigOpts()
    vmtrust_conf.register(shipped)
    snippet = Path(__file__).resolve().parent.parent / "etc/nova/nova-vmtrust.conf"
    shipped(args=[], default_config_files=[str(snippet)])
    assert shipped.vmtrust.timeout == 5
