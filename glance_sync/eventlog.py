"""The sync's log: one line per event, with what it is about in fixed keys; text or JSON lines.

Every outcome of a pass is a :class:`~glance_sync.report.Event`.  :func:`log_event`
writes it as one record of the ``vmtrust.sync.event`` logger, carrying the
subscription, image, version, event kind and rule as fields of their own, so
a site can find every line about one image with ``grep image=wn-9`` or a
``jq`` filter instead of parsing sentences:

* **text** (the default)::

    2026-11-26 10:00:02,123 vmtrust.sync.event INFO event=stored subscription=cms \\
    image=wn-9 version=9.5.1 rule=- stored wn-9 9.5.1 (CMS worker node)

  (one line, folded here).  The five keys are always there, in this order
  (``-`` when they do not apply); a value with a space, quote, ``=`` or
  backslash is quoted, so a hostile image identifier cannot forge a key.  The
  rest of the line is the sentence, cleaned like every other line
  (:class:`~vmtrust.safetext.SafeFormatter`).
* **json**: every record of the command — events, warnings, errors — is one JSON
  object per line with the keys ``time``, ``level``, ``logger``, ``event``,
  ``subscription``, ``image``, ``version``, ``rule`` and ``message`` (``null``
  when they do not apply), and ``traceback`` with ``-vv``.  Non-ASCII and control
  characters are JSON escapes, so a record is always one line.

Nothing secret reaches either: every string is passed through
:func:`vmtrust.safetext.redact` (user information of URLs), and credentials of
subscriptions are never part of an event.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

from glance_sync.report import Event
from vmtrust.safetext import SafeFormatter, redact, shown

__all__ = [
    "EVENT_LOG",
    "FORMATS",
    "KEYS",
    "JsonFormatter",
    "TextFormatter",
    "configure",
    "log_event",
]

EVENT_LOG = logging.getLogger("vmtrust.sync.event")
KEYS = ("event", "subscription", "image", "version", "rule")
FORMATS = ("text", "json")
_PLAIN = re.compile(r'[^\s"=\\]+\Z')


def log_event(event: Event) -> None:
    """Write ``event`` as one record (a listener for :class:`~glance_sync.report.Report`)."""
    fields = {
        "event": event.kind,
        "subscription": event.subscription,
        "image": event.image,
        "version": event.version,
        "rule": event.rule,
    }
    level = logging.ERROR if event.failed else logging.INFO
    EVENT_LOG.log(level, "%s", event.line, extra={"vmtrust": fields})


def _value(text: str) -> str:
    """A key's value in a text line: as it is, or quoted when it could be misread."""
    if not text:
        return "-"
    shown_text = shown(text)
    if _PLAIN.match(shown_text):
        return shown_text
    return '"' + shown_text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class TextFormatter(SafeFormatter):
    """The command's usual log lines; an event's line leads with its five keys."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "vmtrust", None)
        if fields is None:
            return super().formatMessage(record)
        keys = " ".join(f"{key}={_value(fields.get(key, ''))}" for key in KEYS)
        record.message = f"{keys} {shown(record.message)}"
        return logging.Formatter.formatMessage(self, record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, the same keys on every line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "vmtrust", {})
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        for key in KEYS:
            line[key] = redact(fields[key]) if fields.get(key) else None
        line["message"] = redact(record.getMessage())
        if record.exc_info:
            line["traceback"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=True)


_installed: list[logging.Handler] = []  #: the handler configure() added, to replace it


def configure(verbose: int, log_format: str) -> None:
    """Set up the command's logging on standard error.

    In text form the summary the command prints after a pass already names each
    failure once, so without ``-v`` the event lines stay quiet; with ``-v`` (the
    systemd units' setting) every event is logged as it happens.  In JSON form
    the events are the output: failures show at the default level, and the
    command prints no text summary (:mod:`glance_sync.cli`).  Like
    :func:`logging.basicConfig`, it leaves a root logger that someone else set up
    (a program embedding the sync, a test runner) alone.
    """
    root = logging.getLogger()
    for old in _installed:
        root.removeHandler(old)
    _installed.clear()
    quiet = log_format == "text" and verbose == 0
    EVENT_LOG.setLevel(logging.CRITICAL if quiet else logging.NOTSET)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if root.handlers:
        return
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    _installed.append(handler)
    root.setLevel([logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)])
