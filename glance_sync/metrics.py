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
``store`` (the store: ``local``, ``glance``, ``ec2``).  With several targets
(``[sync] targets``) the metrics of what a target holds and remembers — last
success, list expiry, last pass duration and images, per subscription — have a
``target`` label too (the label sets of a single target stay as they were, so
alerts written for them keep working), and three more say how each target's
own last pass went:

* ``vmtrust_sync_target_last_pass_timestamp_seconds{target}``: when it ended;
* ``vmtrust_sync_target_last_success_timestamp_seconds{target}``: when one last
  ended without a failure in that target;
* ``vmtrust_sync_target_pass_failed{target}``: 1 when its last pass failed.

Downloads and refusals happen once for every target: their counters have no
``target`` label.  A worker (``--worker``) shows the targets it held in its last
round only: another worker shows the others.  The daemon serves the
registry over HTTP (:func:`serve`); a one-shot pass writes it for
node_exporter's textfile collector (:func:`write_textfile`) — there the
counters are those of that pass, a new process each time.

The registry is the sync's own, not the library's global one: nothing but
these metrics is exposed (no process or platform collectors).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import start_http_server

from glance_sync.plan import Held
from glance_sync.report import Report
from glance_sync.state import StateDB
from glance_sync.targets import DEFAULT
from vmtrust.errors import ConfigError
from vmtrust.fileio import write_atomic

__all__ = ["PREFIX", "SyncMetrics", "for_targets", "parse_address", "serve", "write_textfile"]

LOG = logging.getLogger("vmtrust.sync")
PREFIX = "vmtrust_sync_"


def _ts(value: datetime | None) -> float:
    return value.timestamp() if value else 0.0


class SyncMetrics:
    """The sync's metrics in a registry of their own."""

    def __init__(self, store: str, targets: Sequence[tuple[str, str]] = ()) -> None:
        """``targets``: (name, store) of every target when there are several; none: the
        one target of a configuration without ``[sync] targets`` (no ``target`` label)."""
        self.store = store
        self.targets = dict(targets)
        self.registry = CollectorRegistry(auto_describe=True)
        sub = ["subscription", "store", *(["target"] if self.targets else [])]
        r = self.registry
        #: gauge → the label values it was set for (per-target series a worker may drop)
        self._set: dict[Gauge, set[tuple[str, ...]]] = {}

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
            ["subscription", "store"],
            registry=r,
        )
        self.refused = Counter(
            PREFIX + "verification_failures",
            "Lists and images refused, by the rule that refused them.",
            ["subscription", "store", "rule"],
            registry=r,
        )
        self.pass_duration = gauge(
            "pass_duration_seconds", "Seconds the last pass took.", ["store"]
        )
        self.pass_end = gauge("pass_end_timestamp_seconds", "When the last pass ended.", ["store"])
        self.pass_failures = gauge(
            "pass_failures", "Failures of the last pass (0: everything succeeded).", ["store"]
        )
        if self.targets:
            per = ["target", "store"]
            self.target_end = gauge(
                "target_last_pass_timestamp_seconds",
                "When the target's last pass ended (0: never).",
                per,
            )
            self.target_success = gauge(
                "target_last_success_timestamp_seconds",
                "When a pass last ended without a failure in the target (0: never).",
                per,
            )
            self.target_failed = gauge(
                "target_pass_failed", "1 when the target's last pass failed, else 0.", per
            )

    def _labels(self, gauge: Gauge, *values: str) -> Any:
        """``gauge``'s child for ``values``, remembered (see :meth:`_forget`)."""
        self._set.setdefault(gauge, set()).add(values)
        return gauge.labels(*values)

    def _forget(self, keep: set[str]) -> None:
        """Drop the per-target series of targets not in ``keep`` (a worker's last round)."""
        per_target = (self.target_end, self.target_success, self.target_failed)
        for gauge, seen in self._set.items():
            at = (
                0 if gauge in per_target else 2
            )  # (target, store) or (subscription, store, target…)
            for values in [v for v in seen if v[at] not in keep]:
                gauge.remove(*values)
                seen.discard(values)

    def observe(
        self,
        report: Report,
        *,
        duration: float,
        ended: datetime,
        state: StateDB,
        subscriptions: Iterable[str],
        held: list[Held] | None,
        held_by_target: dict[str, list[Held] | None] | None = None,
        targets: Iterable[str] | None = None,
    ) -> None:
        """Set every metric from one pass.  A state database that cannot be read
        leaves those metrics as they were (the pass has reported it already).

        With several targets, ``held_by_target`` is what each target holds and
        ``targets`` the targets of this pass (every one; a worker's: those it held):
        the series of other targets are dropped.
        """
        names = sorted(set(subscriptions))
        store = self.store
        for event in report.events:
            if event.kind in ("list-failed", "image-failed") and event.subscription:
                self.refused.labels(event.subscription, store, event.rule or "unknown").inc()
        for name, count in report.transferred.items():
            self.transferred.labels(name, store).inc(count)
        for name in names:
            self.transferred.labels(name, store)  # present (0) from the first pass on
        ends: dict[tuple[str, str], float] = {}
        for event in report.events:
            if event.subscription:
                key = (event.subscription, event.target if self.targets else "")
                ends[key] = max(ends.get(key, 0.0), event.at)
        if not self.targets:
            counts = _held_counts(held) if held is not None else None
            for name in names:
                self._subscription(name, None, state, ends.get((name, "")), counts)
        else:
            chosen = sorted(set(targets if targets is not None else self.targets))
            self._forget(set(chosen))
            by_target = held_by_target or {}
            for target in chosen:
                mine = by_target.get(target)
                counts = _held_counts(mine) if mine is not None and names else None
                for name in names:
                    self._subscription(name, target, state, ends.get((name, target)), counts)
                self._target(target, state)
        self.pass_duration.labels(store).set(duration)
        self.pass_end.labels(store).set(ended.timestamp())
        self.pass_failures.labels(store).set(len(report.failures))

    def _target(self, target: str, state: StateDB) -> None:
        labels = (target, self.targets.get(target, self.store))
        try:
            last = state.target_outcome(target)
        except Exception as exc:  # the pass already reported the database's problem
            LOG.debug("metrics of target %s: state database not read (%s)", target, exc)
            return
        self._labels(self.target_end, *labels).set(_ts(last.last_attempt))
        self._labels(self.target_success, *labels).set(_ts(last.last_success))
        failed = last.last_attempt is not None and last.last_error is not None
        self._labels(self.target_failed, *labels).set(1 if failed else 0)

    def _subscription(
        self, name: str, target: str | None, state: StateDB, end: float | None, counts: dict | None
    ) -> None:
        if target is None:
            labels: tuple[str, ...] = (name, self.store)
            where = DEFAULT
        else:
            labels, where = (name, self.targets.get(target, self.store), target), target
        if end is not None:
            self._labels(self.duration, *labels).set(end)
        if counts is not None:
            for key in ("trusted", "retired"):
                self._labels(self.images, *labels, key).set(counts.get((name, key), 0))
        try:
            st = state.get(name, target=where)
            failing = len(state.failing_images(name, target=where))
        except Exception as exc:  # the pass already reported the database's problem
            LOG.debug("metrics of %s: state database not read (%s)", name, exc)
            return
        self._labels(self.last_success, *labels).set(_ts(st.last_success))
        self._labels(self.list_expiry, *labels).set(_ts(st.list_expires))
        self._labels(self.images, *labels, "failing").set(failing)

    def text(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


def for_targets(store: str, targets: Sequence[Any]) -> SyncMetrics:
    """The metrics of a sync over ``targets`` (:class:`~glance_sync.targets.Target`):
    ``target`` labels when there are several."""
    if len(targets) == 1 and targets[0].name == DEFAULT:
        return SyncMetrics(store)
    return SyncMetrics(store, [(t.name, t.store.name) for t in targets])


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
