"""The CAs a site's subscriptions depend on, and the state of their CRLs.

A list verifies only while every CA of its endorser's chain has a valid CRL in
the CA directory (``[trust] require_crls``), and fetch-crl keeps them current.
When fetch-crl stops, nothing fails until a CRL passes its ``nextUpdate`` — and
then every list of that CA fails at once.  ``vmtrust-sync --check`` and
``vmtrust status --nagios`` look ahead: for the CA each subscription names
(``endorsers[].ca``) and every CA above it, whether its CRL is there and when it
must be renewed.  Only reads the directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vmtrust import dn
from vmtrust.errors import CrlError
from vmtrust.truststore import ChainCertificate, TrustStore

__all__ = ["CrlState", "crl_states"]

_MAX_CHAIN = 10


@dataclass(frozen=True)
class CrlState:
    """One CA a subscription depends on: when its CRL must be renewed, or what is wrong."""

    ca: str  #: the CA's subject, slash form
    next_update: datetime | None = None  #: of its valid CRL (None: no date, or a problem)
    problem: str | None = None


def _certificates(directory: Path) -> list[ChainCertificate]:
    """The CA certificates of an IGTF directory (``<hash>.0`` … ``.9``), read as OpenSSL
    reads them (serial number 0, which some IGTF CAs have, included)."""
    found = []
    for path in sorted(directory.glob("*.[0-9]")):
        try:
            found.append(ChainCertificate.from_pem(path.read_bytes()))
        except (OSError, ValueError):
            continue  # not a certificate: OpenSSL would not use it either
    return found


def _chain(ca: ChainCertificate, certs: list[ChainCertificate]) -> list[ChainCertificate]:
    """``ca`` and the CAs above it that the directory holds."""
    chain = [ca]
    while chain[-1].issuer_key != chain[-1].subject_key and len(chain) < _MAX_CHAIN:
        issuer = next((c for c in certs if c.subject_key == chain[-1].issuer_key), None)
        if issuer is None or issuer in chain:
            break
        chain.append(issuer)
    return chain


def crl_states(trust: TrustStore, ca_names: Iterable[str], at: datetime) -> list[CrlState]:
    """The CRL state of every CA the named CAs depend on, each CA once.

    A named CA the directory does not hold is a problem (no list of it can
    verify); a missing CRL is one only where CRLs are required.
    """
    certs = _certificates(trust.directory)
    states: dict[str, CrlState] = {}
    for name in dict.fromkeys(ca_names):
        ca = next((c for c in certs if _names(name, c)), None)
        if ca is None:
            states.setdefault(
                name, CrlState(name, problem=f"CA {name} is not in {trust.directory}")
            )
            continue
        for cert in _chain(ca, certs):
            subject = cert.subject
            if subject not in states:
                states[subject] = _state(trust, cert, subject, at)
    return list(states.values())


def _names(text: str, cert: ChainCertificate) -> bool:
    """True if the slash-form ``text`` names exactly ``cert``'s subject."""
    try:
        return dn.parse(text) == cert.subject_key
    except ValueError:
        return False


def _state(trust: TrustStore, ca: ChainCertificate, subject: str, at: datetime) -> CrlState:
    try:
        crl = trust.crl_of(ca, at)
    except CrlError as exc:
        return CrlState(subject, problem=str(exc))
    if crl is None:
        if not trust.require_crls:
            return CrlState(subject)
        return CrlState(subject, problem=f"no valid CRL for CA {subject} in {trust.directory}")
    return CrlState(subject, next_update=crl.next_update_utc)
