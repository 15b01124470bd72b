"""Is this Glance image trusted?  One look-up, one verdict, a short thread-safe cache.

Nothing here imports nova: the decision is the same whether the scheduler or
a test asks, and :mod:`vmtrust.glanceprops` holds the rule itself (owner,
status, state, seal bound to image id and Glance's hash, expiry).  What this
module adds is the scheduler's side of it:

* the image is fetched from Glance by id with the filter's own credentials,
  because nova drops every custom property from the request spec;
* any failure to get an answer — Glance down, 5xx, a timeout, a bad reply —
  is a refusal ("fail closed"), and is not cached, so the next request asks again;
* verified decisions are cached per image id for ``cache_ttl`` seconds, never
  past the record's own expiry, in a bounded LRU guarded by a lock (nova 34's
  scheduler runs filters on native threads).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vmtrust import glanceprops
from vmtrust.imagelist import parse_date


class LookupFailed(Exception):
    """Glance could not answer; the message says why, on one line."""


@dataclass(frozen=True)
class Decision:
    trusted: bool
    reason: str  #: "trusted", or exactly why not
    vo: str = ""


#: image id → image JSON (properties at the top level), None if Glance has no such image
Fetch = Callable[[str], dict[str, Any] | None]


class ImageTrust:
    def __init__(
        self,
        fetch: Fetch,
        keys: Iterable[Ed25519PublicKey],
        owners: Iterable[str],
        *,
        ttl: float = 60.0,
        size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.fetch = fetch
        self.keys = list(keys)
        self.owners = frozenset(owners)
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self.wall = wall
        self._cache: OrderedDict[str, tuple[float, Decision]] = OrderedDict()
        self._lock = threading.Lock()
        self.lookups = 0  #: Glance look-ups made (tests and the benchmark read it)

    def decide(self, image_id: str) -> Decision:
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

    def _look_up(self, image_id: str) -> tuple[Decision, float]:
        """The decision, and how many seconds it may be reused (0: not at all)."""
        self.lookups += 1
        try:
            image = self.fetch(image_id)
        except LookupFailed as exc:
            return Decision(False, f"Glance look-up failed: {exc}"), 0.0
        if image is None:
            return Decision(False, "not in Glance"), self.ttl
        if not self.keys or not self.owners:
            return Decision(False, "no seal keys or trusted owners configured"), 0.0
        wall = self.wall()
        verdict = glanceprops.judge(image, self.keys, wall, owners=self.owners)
        keep_for = self.ttl
        if verdict.trusted and verdict.record is not None:
            expires = parse_date(verdict.record.expires)  # judge() has parsed it already
            keep_for = min(keep_for, (expires - wall).total_seconds())
        vo = verdict.record.vo if verdict.record else ""
        return Decision(verdict.trusted, verdict.reason, vo), keep_for

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()


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
