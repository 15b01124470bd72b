"""Is this Glance image trusted?  One look-up, one verdict, a short thread-safe cache.

Nothing here imports nova: the decision is the same whether the scheduler or
a test asks, and :func:`vmtrust.glanceprops.judge` makes it by the one rule of
:mod:`vmtrust.trust` (owner, status, state, seal bound to image id and Glance's
hash, expiry), as the :class:`~vmtrust.trust.Verdict` every reader gives.
What this module adds is the scheduler's side of it:

* the image is fetched from Glance by id with the filter's own credentials,
  because nova drops every custom property from the request spec;
* the fetch has a total deadline: a Glance that accepts the connection and
  never answers (or answers a byte at a time, which no socket timeout
  catches) costs the request a refusal after ``deadline`` seconds, never the
  scheduler a thread: the fetch runs on a small bounded pool, and a request
  that cannot get a worker in time is refused the same way;
* any failure to get an answer — Glance down, 5xx, a timeout, a bad reply, an
  unexpected exception — is a refusal ("fail closed");
* what is cached, for ``cache_ttl`` seconds: trusted decisions (never past
  the record's own expiry) and refusals that come from a record whose seal
  verified (a copy bound to another image, other bytes, an expired record).
  Never cached: failures, a 404, an image without a record or with a bad
  seal, a status or state that may still change (an image being uploaded) —
  the next request asks Glance again.  Caching a refusal only ever delays a
  boot; caching a failure would turn one slow answer into a minute of them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vmtrust import glanceprops
from vmtrust.imagelist import parse_date
from vmtrust.trust import Code, Verdict, refuse

__all__ = ["FETCH_WORKERS", "REGISTRY_ONLY", "Fetch", "ImageTrust", "LookupFailed", "glance_fetch"]


class LookupFailed(Exception):
    """Glance could not answer; the message says why, on one line."""


#: image id → image JSON (properties at the top level), None if Glance has no such image
Fetch = Callable[[str], dict[str, Any] | None]

#: Why an image synced on the registry's word alone does not run as a worker node.
REGISTRY_ONLY = (
    "trusted on the registry's word only (basis registry, no signature); "
    "[vmtrust] accept_registry_trust is false"
)

#: Glance look-ups that may be under way at once per scheduler process; a request
#: that finds them all busy (a Glance hanging on every one) waits at most its deadline.
FETCH_WORKERS = 8


class ImageTrust:
    def __init__(
        self,
        fetch: Fetch,
        keys: Iterable[Ed25519PublicKey],
        owners: Iterable[str],
        *,
        ttl: float = 60.0,
        size: int = 1024,
        deadline: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        accept_registry: bool = False,
    ) -> None:
        self.fetch = fetch
        #: trust images whose record's basis is "registry" ([vmtrust] accept_registry_trust)
        self.accept_registry = accept_registry
        self.keys = list(keys)
        self.owners = frozenset(owners)
        self.ttl = ttl
        self.size = size
        self.deadline = deadline
        self.clock = clock
        self.wall = wall
        self._cache: OrderedDict[str, tuple[float, Verdict]] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.lookups = 0  #: Glance look-ups made (tests and the benchmark read it)

    def decide(self, image_id: str) -> Verdict:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(image_id)
            if hit is not None and hit[0] > now:
                self._cache.move_to_end(image_id)
                return hit[1]
        decision, keep_for = self._look_up(image_id)
        if keep_for > 0:
            with self._lock:
                self._cache[image_id] = (self.clock() + keep_for, decision)
                self._cache.move_to_end(image_id)
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        return decision

    def _look_up(self, image_id: str) -> tuple[Verdict, float]:
        """The decision, and how many seconds it may be reused (0: not at all)."""
        self.lookups += 1
        try:
            image = self._fetch_in_time(image_id)
        except LookupFailed as exc:
            return refuse(Code.UNKNOWN, f"Glance look-up failed: {exc}"), 0.0
        except Exception as exc:  # fail closed on anything: a bug must not let an image in
            return refuse(Code.UNKNOWN, f"Glance look-up failed: {_one_line(exc)}"), 0.0
        if image is None:
            return refuse(Code.UNKNOWN, "not in Glance"), 0.0
        if not self.keys or not self.owners:
            return refuse(Code.UNKNOWN, "no seal keys or trusted owners configured"), 0.0
        wall = self.wall()
        try:
            verdict = glanceprops.judge(image, self.keys, wall, owners=self.owners)
        except Exception as exc:  # a reply judge() cannot read: refuse, ask again next time
            return refuse(Code.UNKNOWN, f"unreadable image record: {_one_line(exc)}"), 0.0
        if verdict.record is None:  # refused before the seal verified: may change, ask again
            return verdict, 0.0
        keep_for = self.ttl
        if verdict.trusted and verdict.record.basis == "registry" and not self.accept_registry:
            return refuse(Code.POLICY, REGISTRY_ONLY, verdict.record), keep_for
        if verdict.trusted:
            expires = parse_date(verdict.record.expires)  # judge() has parsed it already
            keep_for = min(keep_for, (expires - wall).total_seconds())
        return verdict, keep_for

    def _fetch_in_time(self, image_id: str) -> dict[str, Any] | None:
        """``fetch(image_id)``, or :class:`LookupFailed` once ``deadline`` seconds passed."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(FETCH_WORKERS, thread_name_prefix="vmtrust-glance")
            future = self._pool.submit(self.fetch, image_id)
        try:
            return future.result(timeout=self.deadline)
        except FutureTimeout:
            future.cancel()  # if it never started, it never will; else it ends on its own
            raise LookupFailed(f"no answer within {self.deadline:g} s") from None


def glance_fetch(adapter: Any) -> Fetch:
    """A :data:`Fetch` over a keystoneauth Adapter for the image service."""

    def fetch(image_id: str) -> dict[str, Any] | None:
        from keystoneauth1 import exceptions as ks_exc

        try:
            reply = adapter.get(f"/v2/images/{image_id}", raise_exc=False)
        except ks_exc.ClientException as exc:  # connect failures, timeouts, auth, catalogue
            raise LookupFailed(" ".join(str(exc).split())[:200]) from None
        if reply.status_code == 404:
            return None
        if reply.status_code != 200:
            raise LookupFailed(f"HTTP {reply.status_code} for image {image_id}")
        try:
            body = reply.json()
        except ValueError:
            raise LookupFailed(f"image {image_id}: reply is not JSON") from None
        if not isinstance(body, dict) or body.get("id") != image_id:
            raise LookupFailed(f"image {image_id}: reply is not that image")
        return body

    return fetch


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]
