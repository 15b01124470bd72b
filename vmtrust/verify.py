"""Every rule that decides whether a signed image list is trusted, in one place.

The order follows the reference subscriber (smimeX509validation, then
vmcatcher's checks), so that a list fails on the same rule it would fail on
there:

1. size limit; 2. S/MIME envelope; 3. CMS signature over the content, exactly
one signer, no weak digest; 4. signer chain to a trusted CA, validity now,
CRLs for every CA, namespaces; 5. signer key usage; 6. JSON and list
structure; 7. ``hv:dn``/``hv:ca`` equal the signer's subject and issuer;
8. endorser pinning; 9. identifier pinning; 10. not created in the future;
11. not expired; 12. no rollback (version, and creation date if given).

Nothing here does I/O except reading the CA directory through the trust
store; callers fetch the bytes and persist what rollback protection needs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509

from vmtrust import cms, dn, imagelist, jsonsafe, smime, version
from vmtrust.errors import (
    EndorserMismatch,
    EndorserNotAllowed,
    IdentifierMismatch,
    KeyUsageError,
    ListExpired,
    ListFromFuture,
    ListTooLarge,
    RollbackError,
)
from vmtrust.imagelist import Endorser, ImageList, format_date
from vmtrust.truststore import ChainCertificate, TrustStore

__all__ = ["Policy", "VerifiedList", "key_usage_problem", "verify_signed_list"]


@dataclass(frozen=True)
class Policy:
    """What the site requires of a list, beyond a valid signature."""

    trust: TrustStore
    #: allowed endorser principals; empty means any endorser the CA directory trusts
    endorsers: tuple[Endorser, ...] = ()
    #: expected ``dc:identifier`` of the list (identifier pinning)
    identifier: str | None = None
    #: the last accepted ``hv:version``: a lower one is a rollback
    min_version: str | None = None
    #: the last accepted ``dc:date:created``: an earlier one is a rollback
    min_created: datetime | None = None
    allow_sha1: bool = False
    clock_skew: timedelta = timedelta(minutes=5)
    max_bytes: int = jsonsafe.DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class VerifiedList:
    """A list that passed every rule, with what the caller needs to record."""

    imagelist: ImageList
    signer: x509.Certificate
    chain: tuple[ChainCertificate, ...]  #: leaf first, as OpenSSL verified it
    endorser: Endorser  #: the signer in slash form, as the list names it
    digest_algorithm: str
    sha512: str = field(default="")  #: of the raw signed bytes, to detect unchanged lists

    def summary(self) -> dict[str, object]:
        """The machine-readable summary ``vmtrust list verify --json`` prints."""
        lst = self.imagelist
        return {
            "identifier": lst.identifier,
            "title": lst.title,
            "version": lst.version,
            "uri": lst.uri,
            "endorser": {"dn": self.endorser.dn, "ca": self.endorser.ca},
            "created": format_date(lst.created),
            "expires": format_date(lst.expires),
            "vo": lst.vo,
            "sha512": self.sha512,
            "images": [
                {
                    "identifier": img.identifier,
                    "title": img.title,
                    "version": img.version,
                    "uri": img.uri,
                    "size": img.size,
                    "sha512": img.sha512,
                    "format": img.format,
                }
                for img in lst.images
            ],
        }


def key_usage_problem(cert: x509.Certificate) -> str | None:
    """Why ``cert``'s key usage does not allow signing a list, or None when it does.

    The reference subscriber's rule (OpenSSL's S/MIME signing purpose, which
    vmcatcher applies): without a keyUsage extension any use is allowed; with
    one, digitalSignature or nonRepudiation must be among its bits.  The
    endorser's side (:func:`vmtrust.authoring.check_signable`) asks the same, so
    what ``vmtrust list sign`` signs, subscribers accept, and the other way round.
    """
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if usage.digital_signature or usage.content_commitment:
        return None
    return "key usage allows neither digitalSignature nor nonRepudiation"


def _check_key_usage(cert: x509.Certificate) -> None:
    problem = key_usage_problem(cert)
    if problem is not None:
        raise KeyUsageError(f"signer certificate {dn.slash(cert.subject)}: {problem}")


def _match_endorser(lst: ImageList, signer: x509.Certificate) -> Endorser:
    for endorser in lst.endorsers:
        if dn.names(endorser.dn, endorser.ca, signer):
            return endorser
    named = "; ".join(f"{e.dn} issued by {e.ca}" for e in lst.endorsers)
    raise EndorserMismatch(
        f"list {lst.identifier}: signed by {dn.slash(signer.subject)} issued by "
        f"{dn.slash(signer.issuer)}, but hv:endorser names {named}"
    )


def _pinned(endorser: Endorser, allowed: Iterable[Endorser]) -> bool:
    for entry in allowed:
        try:
            if dn.parse(entry.dn) == dn.parse(endorser.dn) and (
                dn.parse(entry.ca) == dn.parse(endorser.ca)
            ):
                return True
        except ValueError:
            continue
    return False


def _check_freshness(lst: ImageList, policy: Policy, now: datetime) -> None:
    """Rules 9-12: identifier pinning, creation and expiry dates, rollback."""
    if policy.identifier is not None and lst.identifier != policy.identifier:
        raise IdentifierMismatch(
            f"list {lst.identifier}: expected identifier {policy.identifier} "
            "(a list may not change its dc:identifier)"
        )
    if lst.created > now + policy.clock_skew:
        raise ListFromFuture(
            f"list {lst.identifier}: dc:date:created {format_date(lst.created)} is in the future"
        )
    if now > lst.expires:
        raise ListExpired(
            f"list {lst.identifier}: expired at {format_date(lst.expires)} (dc:date:expires)"
        )
    if policy.min_version is not None and version.compare(lst.version, policy.min_version) < 0:
        raise RollbackError(
            f"list {lst.identifier}: version {lst.version} is older than the accepted "
            f"version {policy.min_version} (rollback refused)"
        )
    if policy.min_created is not None and lst.created < policy.min_created:
        raise RollbackError(
            f"list {lst.identifier}: created {format_date(lst.created)}, before the accepted "
            f"list of {format_date(policy.min_created)} (rollback refused)"
        )


def verify_signed_list(data: bytes, policy: Policy, now: datetime | None = None) -> VerifiedList:
    """Verify the raw bytes of a signed list; return it or raise a VmtrustError."""
    now = now or datetime.now(UTC)
    if len(data) > policy.max_bytes:
        raise ListTooLarge(
            f"signed list: {len(data)} bytes is larger than the limit of {policy.max_bytes} bytes"
        )
    message = smime.split(data)
    signature = cms.verify_detached(
        message.signature, message.content, allow_sha1=policy.allow_sha1
    )
    chain = policy.trust.validate(signature.signer, list(signature.certificates), now)
    _check_key_usage(signature.signer)
    lst = imagelist.loads(smime.strip_text_headers(message.content), max_bytes=policy.max_bytes)
    named = _match_endorser(lst, signature.signer)
    if policy.endorsers and not _pinned(named, policy.endorsers):
        allowed = "; ".join(f"{e.dn} issued by {e.ca}" for e in policy.endorsers)
        raise EndorserNotAllowed(
            f"list {lst.identifier}: endorser {named.dn} issued by {named.ca} is not among the "
            f"allowed endorsers ({allowed})"
        )
    _check_freshness(lst, policy, now)
    return VerifiedList(
        imagelist=lst,
        signer=signature.signer,
        chain=chain,
        endorser=Endorser(
            dn=dn.slash(signature.signer.subject),
            ca=dn.slash(signature.signer.issuer),
            creator=named.creator,
            email=named.email,
        ),
        digest_algorithm=signature.digest_algorithm,
        sha512=hashlib.sha512(data).hexdigest(),
    )
