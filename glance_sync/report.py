"""What a sync pass did and what failed: one line each, and which images failed.

Lines quote lists and servers (identifiers, titles, URIs, reasons), so every
line is redacted here — a password in a URL never reaches the command's
output, the logs or the state database — and cleaned where it is printed
(:func:`vmtrust.safetext.shown`).  Image downloads run on several threads;
the report takes their lines under a lock.

Beside the lines, every outcome is an :class:`Event` with the subscription,
image and version in fields of their own: the sync's log writes one line per
event (:mod:`glance_sync.eventlog`) and its metrics count them
(:mod:`glance_sync.metrics`), so neither has to parse a sentence.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from vmtrust.errors import VmtrustError
from vmtrust.safetext import redact

__all__ = ["Event", "ImageFailure", "Report", "rule_of", "unexpected"]

LOG = logging.getLogger("vmtrust.sync")


@dataclass(frozen=True)
class ImageFailure:
    """An image of a subscription that could not be brought to its listed state."""

    subscription: str
    identifier: str
    version: str
    title: str
    reason: str
    #: the target it failed in (``[sync] targets``; docs/federation.md); "": every target
    target: str = ""


@dataclass(frozen=True)
class Event:
    """One outcome of a pass, with what it is about in fixed fields.

    ``kind``: ``list-verified``, ``list-failed``, ``stored``, ``image-failed``,
    ``retired``, ``refreshed``, ``purged``, ``changed`` (what the store
    converged) or ``failed`` (anything else).  ``line`` is the report's
    (redacted) sentence; ``rule`` the rule of the error that caused a failure;
    ``at`` seconds since the pass started.
    """

    kind: str
    line: str
    subscription: str = ""
    image: str = ""
    version: str = ""
    rule: str = ""
    at: float = 0.0
    target: str = ""  #: the target it happened in, when the sync has several

    @property
    def failed(self) -> bool:
        return self.kind.endswith("failed")


def rule_of(exc: BaseException) -> str:
    """The rule an error reports under: its own, ``io`` for the operating system's,
    ``unexpected`` for exceptions nobody foresaw."""
    if isinstance(exc, VmtrustError):
        return exc.rule
    return "io" if isinstance(exc, OSError) else "unexpected"


@dataclass
class Report:
    done: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    images: list[ImageFailure] = field(default_factory=list)  #: failures of single images
    events: list[Event] = field(default_factory=list)
    #: bytes downloaded per subscription (failed and resumed downloads included)
    transferred: Counter[str] = field(default_factory=Counter)
    #: told of every event as it happens (the event log); None: nobody listens
    listener: Callable[[Event], None] | None = field(default=None, repr=False, compare=False)
    started: float = field(default_factory=time.monotonic, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    #: the target this view of the report is about (:meth:`scoped`)
    target: str = field(default="", compare=False)
    prefix: str = field(default="", compare=False)  #: put before each line of this view
    #: target → the last failure line of its views (:meth:`scoped`), shared by all views
    target_errors: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    _scoped: bool = field(default=False, repr=False, compare=False)

    def scoped(self, target: str, prefix: str) -> Report:
        """A view of this report for one target: the same lines, events and lock (one
        report per pass), each new line led by ``prefix`` and each failing image
        marked with ``target`` — so ``vmtrust status --target`` finds it."""
        return dataclasses.replace(self, target=target, prefix=prefix, _scoped=True)

    def _event(
        self,
        kind: str,
        line: str,
        *,
        subscription: str = "",
        image: str = "",
        version: str = "",
        rule: str = "",
    ) -> None:
        event = Event(
            kind, line, subscription, image, version, rule, time.monotonic() - self.started,
            target=self.target if self.prefix else "",
        )  # fmt: skip
        with self._lock:
            self.events.append(event)
        if self.listener is not None:
            self.listener(event)

    def fail(
        self,
        line: str,
        *images: ImageFailure,
        rule: str = "",
        kind: str = "",
        subscription: str = "",
    ) -> None:
        """Record one failure, and the images it is about (``line`` is their reason)."""
        line = redact(self.prefix + line)
        LOG.debug("failure: %s", line)  # printed once, by the command, after the run
        images = tuple(
            dataclasses.replace(image, reason=line, target=self.target) for image in images
        )
        with self._lock:
            self.failures.append(line)
            self.images.extend(images)
            if self._scoped:
                self.target_errors[self.target] = line
        for image in images:
            self._event(
                kind or "image-failed",
                line,
                subscription=image.subscription,
                image=image.identifier,
                version=image.version,
                rule=rule,
            )
        if not images:
            self._event(kind or "failed", line, subscription=subscription, rule=rule)

    def fail_once(self, line: str) -> None:
        """Record ``line`` unless this pass already did (a failure that repeats)."""
        if redact(self.prefix + line) not in self.failures:
            self.fail(line)

    def add(
        self,
        line: str,
        kind: str = "changed",
        *,
        subscription: str = "",
        image: str = "",
        version: str = "",
    ) -> None:
        """Record a change the pass made."""
        line = redact(self.prefix + line)
        with self._lock:
            self.done.append(line)
        self._event(kind, line, subscription=subscription, image=image, version=version)

    def note(self, kind: str, line: str, *, subscription: str = "", version: str = "") -> None:
        """An event that changed nothing (a list verified)."""
        self._event(kind, redact(line), subscription=subscription, version=version)

    def count_bytes(self, subscription: str, count: int) -> None:
        with self._lock:
            self.transferred[subscription] += count

    def merge(self, other: Report, image: ImageFailure) -> None:
        """Take ``other``'s lines and events; each of its failures is a failure of ``image``."""
        for event in other.events:
            if event.failed:
                self.fail(event.line, image, rule=event.rule)
            else:
                self.add(
                    event.line,
                    event.kind,
                    subscription=event.subscription,
                    image=event.image,
                    version=event.version,
                )
        with self._lock:
            self.transferred.update(other.transferred)

    def failing(self, subscription: str, target: str = "") -> list[ImageFailure]:
        """The subscription's failing images in ``target`` (with those of every target)."""
        return [
            f for f in self.images if f.subscription == subscription and f.target in ("", target)
        ]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


def unexpected(what: str, exc: BaseException) -> str:
    """One line for an exception nobody foresaw; its traceback goes to the debug log."""
    LOG.debug("%s: unexpected error", what, exc_info=exc)
    text = " ".join(str(exc).split())[:300] or "no message"
    return f"{what}: unexpected {type(exc).__name__}: {text} (traceback with -vv)"
