"""What a sync pass did and what failed: one line each, and which images failed.

Lines quote lists and servers (identifiers, titles, URIs, reasons), so every
line is redacted here — a password in a URL never reaches the command's
output, the logs or the state database — and cleaned where it is printed
(:func:`vmtrust.safetext.shown`).  Image downloads run on several threads;
the report takes their lines under a lock.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field

from vmtrust.safetext import redact

LOG = logging.getLogger("vmtrust.sync")


@dataclass(frozen=True)
class ImageFailure:
    """An image of a subscription that could not be brought to its listed state."""

    subscription: str
    identifier: str
    version: str
    title: str
    reason: str


@dataclass
class Report:
    done: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    images: list[ImageFailure] = field(default_factory=list)  #: failures of single images
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def fail(self, line: str, *images: ImageFailure) -> None:
        """Record one failure, and the images it is about (``line`` is their reason)."""
        line = redact(line)
        LOG.debug("failure: %s", line)  # printed once, by the command, after the run
        with self._lock:
            self.failures.append(line)
            self.images.extend(dataclasses.replace(image, reason=line) for image in images)

    def fail_once(self, line: str) -> None:
        """Record ``line`` unless this pass already did (a failure that repeats)."""
        if redact(line) not in self.failures:
            self.fail(line)

    def add(self, line: str) -> None:
        with self._lock:
            self.done.append(line)

    def merge(self, other: Report, image: ImageFailure) -> None:
        """Take ``other``'s lines; each of its failures is a failure of ``image``."""
        for line in other.failures:
            self.fail(line, image)
        with self._lock:
            self.done.extend(other.done)

    def failing(self, subscription: str) -> list[ImageFailure]:
        return [f for f in self.images if f.subscription == subscription]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


def unexpected(what: str, exc: BaseException) -> str:
    """One line for an exception nobody foresaw; its traceback goes to the debug log."""
    LOG.debug("%s: unexpected error", what, exc_info=exc)
    text = " ".join(str(exc).split())[:300] or "no message"
    return f"{what}: unexpected {type(exc).__name__}: {text} (traceback with -vv)"
