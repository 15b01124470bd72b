"""IGTF namespace constraints: which subjects a CA may certify.

The IGTF distribution ships, next to each CA certificate ``<hash>.0``, two
files that say the same thing in two languages:

* ``<hash>.namespaces`` (OGF EACL)::

      TO Issuer "/C=DE/O=GermanGrid/CN=GridKa-CA" \\
        PERMIT Subject "/C=DE/O=GermanGrid/.*"

* ``<hash>.signing_policy`` (Globus)::

      access_id_CA   X509   '/C=DE/O=GermanGrid/CN=GridKa-CA'
      pos_rights     globus CA:sign
      cond_subjects  globus '"/C=DE/O=GermanGrid/*"'

A grid CA is trusted only for its own namespace; a CA that issues a
certificate outside it is refused even though the X.509 chain is valid.  No
maintained Python library reads these formats, so this small parser does.
Subjects are matched in slash form against the whole pattern (EACL patterns
are regular expressions, signing-policy patterns are globs where ``*`` is any
text).  In EACL, a ``DENY`` that matches wins over a ``PERMIT``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from vmtrust import dn

__all__ = ["NamespacePolicy", "load_for_ca", "parse_eacl", "parse_signing_policy"]


@dataclass
class NamespacePolicy:
    """Allowed and denied subject patterns for CAs, keyed by CA DN components."""

    permit: dict[dn.Components, list[re.Pattern[str]]] = field(default_factory=dict)
    deny: dict[dn.Components, list[re.Pattern[str]]] = field(default_factory=dict)

    def knows(self, issuer: dn.Components) -> bool:
        return issuer in self.permit or issuer in self.deny

    def allows(self, issuer: dn.Components, subject: str) -> bool:
        if any(p.fullmatch(subject) for p in self.deny.get(issuer, ())):
            return False
        return any(p.fullmatch(subject) for p in self.permit.get(issuer, ()))


def _logical_lines(text: str) -> list[str]:
    """Lines with ``\\`` continuations joined and ``#`` comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    if current.strip():
        lines.append(current)
    return lines


def _glob(pattern: str) -> re.Pattern[str]:
    parts = (re.escape(p) for p in pattern.split("*"))
    return re.compile(".*".join(parts).replace(r"\?", "."))


def _issuer_key(text: str, path: Path) -> dn.Components:
    try:
        return dn.parse(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def parse_eacl(text: str, path: Path, self_dn: dn.Components, policy: NamespacePolicy) -> None:
    """Add the rules of a ``.namespaces`` file to ``policy``."""
    for line in _logical_lines(text):
        try:
            words = shlex.split(line, comments=False, posix=True)
        except ValueError as exc:
            raise ValueError(f"{path}: cannot parse {line!r}: {exc}") from None
        if len(words) < 2 or words[0].upper() != "TO":
            continue
        if words[1].upper() == "SELF":
            issuer, rest = self_dn, words[2:]
        elif words[1].upper() == "ISSUER" and len(words) > 2:
            issuer, rest = _issuer_key(words[2], path), words[3:]
        else:
            raise ValueError(f"{path}: cannot parse {line!r}")
        while len(rest) >= 3:
            action, kind, pattern = rest[0].upper(), rest[1].upper(), rest[2]
            rest = rest[3:]
            if kind != "SUBJECT" or action not in ("PERMIT", "DENY"):
                raise ValueError(f"{path}: unknown rule {action} {kind}")
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{path}: bad pattern {pattern!r}: {exc}") from None
            target = policy.permit if action == "PERMIT" else policy.deny
            target.setdefault(issuer, []).append(compiled)
        if rest:
            raise ValueError(f"{path}: incomplete rule {' '.join(rest)!r} in {line!r}")


def parse_signing_policy(text: str, path: Path, policy: NamespacePolicy) -> None:
    """Add the rules of a Globus ``.signing_policy`` file to ``policy``."""
    issuer: dn.Components | None = None
    for line in _logical_lines(text):
        try:
            words = shlex.split(line, posix=True)
        except ValueError as exc:
            raise ValueError(f"{path}: cannot parse {line!r}: {exc}") from None
        if len(words) >= 3 and words[0] == "access_id_CA" and words[1] == "X509":
            issuer = _issuer_key(words[2], path)
        elif len(words) >= 3 and words[0] == "cond_subjects" and issuer is not None:
            for pattern in shlex.split(words[2], posix=True):
                policy.permit.setdefault(issuer, []).append(_glob(pattern))


def load_for_ca(directory: Path, ca_hash: str, ca_dn: dn.Components) -> NamespacePolicy | None:
    """Rules from ``<hash>.namespaces`` and ``<hash>.signing_policy``; None if neither exists."""
    policy = NamespacePolicy()
    found = False
    for suffix, reader in ((".namespaces", "eacl"), (".signing_policy", "globus")):
        path = directory / f"{ca_hash}{suffix}"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
        found = True
        if reader == "eacl":
            parse_eacl(text, path, ca_dn, policy)
        else:
            parse_signing_policy(text, path, policy)
    return policy if found else None
