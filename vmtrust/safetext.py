"""Untrusted text made safe to show: one printable line, no credentials.

Identifiers, titles, versions and URIs come from lists nobody has vouched for
yet, and server reasons from servers the site does not control.  Whatever
prints or logs them goes through :func:`shown`:

* :func:`clean` writes control and format characters as escapes, so a hostile
  title can neither move the cursor (ANSI escapes), reorder what is read (bidi
  overrides) nor forge a second line of output or of a log;
* :func:`redact` replaces the user information of every URL in the text
  (``https://user:password@host/`` → ``https://***@host/``), so a password a
  list or a site put into a URL never reaches a terminal, a log, ``vmtrust
  status`` or the state database.
"""

from __future__ import annotations

import logging
import re
import unicodedata

__all__ = ["SafeFormatter", "clean", "redact", "shown"]

#: Unicode categories written as escapes: controls, format characters (bidi
#: overrides), surrogates, line and paragraph separators.
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: ``scheme://userinfo@``: the user information runs to the last ``@`` before
#: the path, query or fragment, as URL parsers read it.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def clean(text: object) -> str:
    """``text`` as one printable line: control and format characters become escapes
    (``\\n``, ``\\x1b``, ``\\u202e``), so untrusted data can neither add lines nor
    drive the terminal."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(
        _escape(c) if c != " " and unicodedata.category(c) in _UNSAFE else c for c in value
    )


def redact(text: object) -> str:
    """``text`` with the user information of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", str(text))


def shown(text: object) -> str:
    """What may be printed or logged of untrusted ``text``: redacted, then cleaned."""
    return clean(redact(text))


class SafeFormatter(logging.Formatter):
    """A log formatter that passes every message through :func:`shown`.

    The message becomes one line whatever it quotes; a traceback (debug logs)
    keeps its lines, each of them cleaned and redacted.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = shown(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:
        return "\n".join(shown(line) for line in super().formatException(ei).splitlines())
