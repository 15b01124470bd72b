"""Prometheus metrics of the sync, per subscription and per target store.

After every pass :meth:`SyncMetrics.observe` takes what the pass did (its
:class:`~glance_sync.report.Report`: events, bytes, failures), what the state
database remembers (last success and list expiry per subscription, the images
that failed) and what the store holds, and sets:

* ``vmtrust_sync_last_success_timestamp_seconds``: when the subscription's list
  was last verified and applied (from the state database: it survives restarts);
* ``vmtrust_sync_list_expiry_timestamp_seconds``: when the accepted list expires;
* ``vmtrust_sync_last_pass_duration_seconds``: seconds from the start of the last
  pass until the subscription's list and images were done;
* ``vmtrust_sync_images{state="trusted"|"retired"|"failing"}``: its images in the
  store; failing: those that failed in the last pass that reached them;
* ``vmtrust_sync_transferred_bytes_total``: bytes downloaded (a counter);
* ``vmtrust_sync_verification_failures_total{rule=…}``: lists and images refused,
  by the rule that refused them (a counter);
* ``vmtrust_sync_pass_duration_seconds``, ``vmtrust_sync_pass_end_timestamp_seconds``,
  ``vmtrust_sync_pass_failures``: the last pass as a whole.

Every metric has the labels ``subscription`` (except the per-pass ones) and
``store`` (the target: ``local``, ``glance``, ``ec2``).  The daemon serves the
registry over HTTP (:func:`serve`); a one-shot pass writes it for
node_exporter's textfile collector (:func:`write_textfile`) — there the
counters are those of that pass, a new process each time.

The registry is the sync's own, not the library's global one: nothing but
these metrics is exposed (no process or platform collectors).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import start_http_server

from glance_sync.plan import Held
from glance_sync.report import Report
from glance_sync.state import StateDB
from vmtrust.errors import ConfigError
from vmtrust.fileio import write_atomic

__all__ = ["PREFIX", "SyncMetrics", "parse_address", "serve", "write_textfile"]

LOG = logging.getLogger("vmtrust.sync")
PREFIX = "vmtrust_sync_"


def _ts(value: datetime | None) -> float:
    return value.timestamp() if value else 0.0


class SyncMetrics:
    """The sync's metrics in a registry of their own."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.registry = CollectorRegistry(auto_describe=True)
        sub = ["subscription", "store"]
        r = self.registry

        def gauge(name: str, text: str, labels: list[str]) -> Gauge:
            return Gauge(PREFIX + name, text, labels, registry=r)

        self.last_success = gauge(
            "last_success_timestamp_seconds",
            "When the subscription's list was last verified and applied (0: never).",
            sub,
        )
        self.list_expiry = gauge(
            "list_expiry_timestamp_seconds", "When the accepted list expires (0: none yet).", sub
        )
        self.duration = gauge(
            "last_pass_duration_seconds",
            "Seconds from the start of the last pass until the subscription's list and "
            "images were done.",
            sub,
        )
        self.images = gauge(
            "images",
            "Images of the subscription in the store, by state (failing: failed in the last "
            "pass that reached them).",
            [*sub, "state"],
        )
        self.transferred = Counter(
            PREFIX + "transferred_bytes",
            "Bytes of images downloaded, failed and resumed downloads included.",
            sub,
            registry=r,
        )
        self.refused = Counter(
            PREFIX + "verification_failures",
            "Lists and images refused, by the rule that refused them.",
            [*sub, "rule"],
            registry=r,
        )
        self.pass_duration = gauge(
            "pass_duration_seconds", "Seconds the last pass took.", ["store"]
        )
        self.pass_end = gauge("pass_end_timestamp_seconds", "When the last pass ended.", ["store"])
        self.pass_failures = gauge(
            "pass_failures", "Failures of the last pass (0: everything succeeded).", ["store"]
        )

    def observe(
        self,
        report: Report,
        *,
        duration: float,
        ended: datetime,
        state: StateDB,
        subscriptions: Iterable[str],
        held: list[Held] | None,
    ) -> None:
        """Set every metric from one pass.  A state database that cannot be read
        leaves those metrics as they were (the pass has reported it already)."""
        names = sorted(set(subscriptions))
        store = self.store
        for event in report.events:
            if event.kind in ("list-failed", "image-failed") and event.subscription:
                self.refused.labels(event.subscription, store, event.rule or "unknown").inc()
        for name, count in report.transferred.items():
            self.transferred.labels(name, store).inc(count)
        ends: dict[str, float] = {}
        for event in report.events:
            if event.subscription:
                ends[event.subscription] = max(ends.get(event.subscription, 0.0), event.at)
        counts = _held_counts(held) if held is not None else None
        for name in names:
            self._subscription(name, state, ends.get(name), counts)
        self.pass_duration.labels(store).set(duration)
        self.pass_end.labels(store).set(ended.timestamp())
        self.pass_failures.labels(store).set(len(report.failures))

    def _subscription(
        self, name: str, state: StateDB, end: float | None, counts: dict | None
    ) -> None:
        store = self.store
        self.transferred.labels(name, store)  # present (0) from the first pass on
        if end is not None:
            self.duration.labels(name, store).set(end)
        if counts is not None:
            for key in ("trusted", "retired"):
                self.images.labels(name, store, key).set(counts.get((name, key), 0))
        try:
            st = state.get(name)
            failing = len(state.failing_images(name))
        except Exception as exc:  # the pass already reported the database's problem
            LOG.debug("metrics of %s: state database not read (%s)", name, exc)
            return
        self.last_success.labels(name, store).set(_ts(st.last_success))
        self.list_expiry.labels(name, store).set(_ts(st.list_expires))
        self.images.labels(name, store, "failing").set(failing)

    def text(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


def _held_counts(held: list[Held]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for item in held:
        if item.record is None:
            continue
        key = (item.record.subscription, "retired" if item.retired else "trusted")
        if key[1] == "trusted" and not item.seal_ok:
            continue  # an altered image is not trusted; the next pass quarantines it
        counts[key] = counts.get(key, 0) + 1
    return counts


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` → (host, port); ConfigError naming the option."""
    what = f"[sync] metrics_address {value!r}"
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: expected HOST:PORT, e.g. 127.0.0.1:9731")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{what}: {host} is not an IPv6 address") from None
    elif ":" in host:
        raise ConfigError(f"{what}: write an IPv6 address in brackets, e.g. [::1]:9731")
    return host, int(port)


def serve(metrics: SyncMetrics, address: str) -> Any:
    """Serve the metrics on ``address`` (HOST:PORT) from a thread; return the server.

    A port that cannot be bound is a ConfigError: the daemon does not start with
    monitoring silently missing.
    """
    host, port = parse_address(address)
    try:
        server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(
            f"[sync] metrics_address {address}: cannot listen ({exc.strerror or exc})"
        ) from None
    return server


def write_textfile(metrics: SyncMetrics, path: Path) -> None:
    """Replace ``path`` with the metrics, atomically and readable by node_exporter (0644)."""
    write_atomic(path, metrics.text(), mode=0o644)
