"""Every error vmtrust reports to a user, and every exit status, in one catalogue.

Modelled on python-tuf's ``tuf.api.exceptions``: callers catch the family they
care about (``SignatureError``, ``ListFormatError``, ``PolicyError`` …) and a
site admin reads ``str(exc)``, which names the thing and what was wrong.

Each class carries the process exit status the commands use.  A class that
sets ``exit_code`` also says what it ``means``, once: :func:`exit_statuses`
reads the catalogue from these classes (and :data:`OUTCOMES`, the statuses no
error carries), and the ``--help`` of ``vmtrust`` and ``vmtrust-sync`` and the
README's table are made from it, so they cannot drift apart.  Every status has
one meaning and keeps it: scripts depend on them.  The numbers reuse
vmcatcher's error codes where one exists (11 signature, 12 DN mismatch, 13
endorser not allowed, 17 rollback, 31 identifier, 33 future, 34 expired, 37
JSON, 38 structure) so that scripts written for vmcatcher keep their meaning,
and the BSD ``sysexits`` ones where they fit (70 internal, 74 I/O, 75 try
again); all are below 124 so they never collide with shell conventions for
timeouts and signals.

This module imports nothing: every part of vmtrust, the nova filter included,
imports it.
"""

from __future__ import annotations

__all__ = [
    "AUDIT_FINDINGS",
    "AUDIT_FINDINGS_ACTION_FAILED",
    "INTERNAL_ERROR",
    "INTERRUPTED",
    "OUTCOMES",
    "SUCCESS",
    "USAGE",
    "ArchiveError",
    "AuditError",
    "BadSignature",
    "CertificateExpired",
    "CertificateRevoked",
    "ConfigError",
    "ContextRefused",
    "CoordinationError",
    "CosignError",
    "CrlError",
    "DeadlineExceeded",
    "EC2Error",
    "EndorserMismatch",
    "EndorserNotAllowed",
    "ExpansionError",
    "FetchError",
    "FileTooLarge",
    "GlanceError",
    "HttpError",
    "IdentifierMismatch",
    "InputError",
    "InvalidConfiguration",
    "InvalidJSON",
    "InvalidListStructure",
    "KeyUsageError",
    "LaunchError",
    "ListExpired",
    "ListFormatError",
    "ListFromFuture",
    "ListTooLarge",
    "LocalStoreError",
    "LockError",
    "ManifestError",
    "NamespaceViolation",
    "NoTrustedImage",
    "OciReferenceError",
    "PolicyError",
    "Problems",
    "RegistryError",
    "RegistryNotFound",
    "RollbackError",
    "SealError",
    "SignatureError",
    "SignerCountError",
    "SigningError",
    "SmimeFormatError",
    "StateError",
    "TransferError",
    "UnsafeImageError",
    "UntrustedSigner",
    "UserDataError",
    "VmtrustError",
    "WeakAlgorithm",
    "YamlRefused",
    "catalogue",
    "exit_statuses",
    "help_epilog",
    "markdown_table",
    "summarise",
]


def summarise(problems: list[str]) -> str:
    """The first problem, and how many more there are: one line for many problems."""
    more = len(problems) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return problems[0] + suffix


class VmtrustError(Exception):
    """Base of all errors vmtrust reports to a user.

    ``rule`` is a short stable name of the rule that failed (used by ``--json``
    consumers and logs); ``exit_code`` is the exit status, and ``meaning`` what
    that status means in ``--help`` and the README (set where ``exit_code`` is).
    """

    exit_code = 1
    meaning = "something failed (each failure on its own line of standard error)"
    rule = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- files and configuration ----------------------------------------------------


class InputError(VmtrustError):
    """A file the user named cannot be read or written."""

    exit_code = 3
    meaning = "a file cannot be read or written, or is larger than its limit"
    rule = "input"


class FileTooLarge(InputError):
    """A key, passphrase, certificate, user-data … file larger than vmtrust reads.

    An image list that is too large is a :class:`ListTooLarge` instead (status
    38, as vmcatcher had it).
    """

    rule = "file-size"


class YamlRefused(InputError):
    """A YAML document over a limit (size, aliases, expansion, depth) or with a cycle."""

    rule = "yaml-limits"


class ConfigError(VmtrustError):
    """Bad configuration: a missing file, an option with a wrong value."""

    exit_code = 4
    meaning = "configuration: an option, profile or subscriptions file is wrong"
    rule = "config"


class InvalidConfiguration(ConfigError):
    """A configuration file with one or more problems; ``problems`` has them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(summarise(problems))


class Problems:
    """Collects every problem of one configuration file, then raises them together.

    A site fixing its subscriptions or profiles sees all problems at once, each
    named ``<source>: <key path>: <what is wrong>``, not one per attempt.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{self.source}: {path}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidConfiguration(self.items)


# --- list content -------------------------------------------------------------


class ListFormatError(VmtrustError):
    """The image list is not acceptable as data (independent of any signature)."""

    exit_code = 38
    meaning = "invalid image list structure, or a list larger than the limit"
    rule = "list-structure"


class ListTooLarge(ListFormatError):
    rule = "list-size"


class InvalidJSON(ListFormatError):
    exit_code = 37
    meaning = "the image list is not valid JSON"
    rule = "list-json"


class InvalidListStructure(ListFormatError):
    """One or more fields are missing or malformed; ``problems`` has them all."""

    rule = "list-structure"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid image list: {summarise(problems)}")


# --- the signed envelope and the signature --------------------------------------


class SignatureError(VmtrustError):
    """The S/MIME envelope or the CMS signature is not valid."""

    exit_code = 11
    meaning = "S/MIME or signature invalid, more than one signer, SHA-1 (--allow-sha1)"
    rule = "signature"


class CosignError(SignatureError):
    """A cosign signature that does not vouch for the image (one line: which and why)."""

    rule = "cosign"


class SmimeFormatError(SignatureError):
    rule = "smime-format"


class SignerCountError(SignatureError):
    rule = "single-signer"


class WeakAlgorithm(SignatureError):
    rule = "weak-algorithm"


class BadSignature(SignatureError):
    rule = "signature-content"


# --- the signer certificate and its chain ---------------------------------------


class UntrustedSigner(VmtrustError):
    """The signer certificate does not chain to a trusted CA under site rules."""

    exit_code = 14
    meaning = "signer not trusted: unknown CA, expired, outside namespace, key usage"
    rule = "chain"


class CertificateExpired(UntrustedSigner):
    rule = "certificate-validity"


class CertificateRevoked(UntrustedSigner):
    exit_code = 15
    meaning = "signer certificate revoked"
    rule = "revoked"


class CrlError(UntrustedSigner):
    """A CRL is missing, stale, or not signed by its CA."""

    exit_code = 16
    meaning = "a CRL is missing or stale (--no-require-crls accepts a missing one)"
    rule = "crl"


class NamespaceViolation(UntrustedSigner):
    rule = "namespace"


class KeyUsageError(UntrustedSigner):
    rule = "key-usage"


# --- list policy (who signed what, when, which version) -------------------------


class PolicyError(VmtrustError):
    """The list verified cryptographically but the site's rules refuse it."""

    exit_code = 20
    meaning = "refused by site policy: a list, or what a VO asks of the context"
    rule = "policy"


class EndorserMismatch(PolicyError):
    exit_code = 12
    meaning = "the list's hv:dn/hv:ca are not its signer"
    rule = "endorser-dn"


class EndorserNotAllowed(PolicyError):
    exit_code = 13
    meaning = "the endorser is not among the allowed ones"
    rule = "endorser-pinned"


class IdentifierMismatch(PolicyError):
    exit_code = 31
    meaning = "the list's identifier differs from the expected one (--identifier)"
    rule = "identifier-pinned"


class ListFromFuture(PolicyError):
    exit_code = 33
    meaning = "the list was created in the future"
    rule = "created-in-future"


class ListExpired(PolicyError):
    exit_code = 34
    meaning = "the list has expired"
    rule = "expired"


class RollbackError(PolicyError):
    exit_code = 17
    meaning = "rollback: the list is older than the accepted version (--min-version)"
    rule = "rollback"


class ContextRefused(PolicyError, InvalidConfiguration):
    """What a VO asks for (in a profile, or in a user-data) that the site's policy refuses.

    ``context build`` and ``context check`` exit with the policy status for it;
    ``problems`` holds every refusal, each naming the key, as for a
    configuration file with problems.
    """

    rule = "context-policy"


# --- authoring ------------------------------------------------------------------


class SigningError(VmtrustError):
    """An endorser's list or credentials are not fit to sign with."""

    exit_code = 21
    meaning = "not signable: the list or the endorser's credentials (authoring)"
    rule = "signing"


# --- trust records --------------------------------------------------------------


class SealError(VmtrustError):
    """A trust record whose seal is missing, malformed or does not verify."""

    exit_code = 22
    meaning = "a trust record's seal is missing, malformed or does not verify"
    rule = "seal"


# --- contextualisation ----------------------------------------------------------


class UserDataError(VmtrustError):
    """User-data that does not fit the cloud, or that cannot be unpacked."""

    exit_code = 5
    meaning = "user-data too large for the cloud, or damaged"
    rule = "user-data"


# --- fetching and transferring (vmtrust-sync) -----------------------------------


class FetchError(VmtrustError):
    """A list cannot be fetched."""

    exit_code = 10
    meaning = "cannot fetch: HTTP or TLS failure, refused URL or redirect, deadline"
    rule = "fetch"


class HttpError(FetchError):
    """A URL or redirect vmtrust refuses to follow, or an HTTP exchange it gives up."""

    rule = "http"


class DeadlineExceeded(HttpError):
    rule = "deadline"


class RegistryError(FetchError):
    """An OCI registry that cannot be reached, refuses the site, or answers nonsense."""

    rule = "registry"


class RegistryNotFound(RegistryError):
    """HTTP 404 from a registry: no such repository, tag, manifest or blob (or API)."""


class TransferError(VmtrustError):
    """An image could not be downloaded or does not match what the list says."""

    exit_code = 40
    meaning = "image transfer: download, size or SHA-512, unsafe or damaged image"
    rule = "transfer"


class UnsafeImageError(TransferError):
    """Disk bytes that are not what the list declares, or that could reach other files."""

    rule = "inspection"


class ArchiveError(TransferError):
    """An OVA or tar archive that is malformed, hostile or ambiguous."""

    rule = "archive"


class ExpansionError(TransferError):
    """An image that unpacks to more than the site allows."""

    rule = "expansion"


class ManifestError(TransferError):
    """An OCI manifest, index or descriptor that cannot be read as the spec says."""

    rule = "oci-manifest"


class OciReferenceError(TransferError):
    """A repository, tag, digest or oci:// reference that is not valid."""

    rule = "oci-reference"


class StateError(VmtrustError):
    """The state database cannot be read or written."""

    exit_code = 74  # EX_IOERR
    meaning = "the state database cannot be read or written"
    rule = "state"


class LockError(VmtrustError):
    """Another process holds the lock (a second sync of the same state or store)."""

    exit_code = 75  # EX_TEMPFAIL
    meaning = "another vmtrust-sync is running (try again later)"
    rule = "lock"


class CoordinationError(VmtrustError):
    """The coordination service (``[coordination] backend_url``) cannot be used."""

    exit_code = 69  # EX_UNAVAILABLE
    meaning = "the coordination service of several sync workers cannot be reached"
    rule = "coordination"


# --- stores ---------------------------------------------------------------------


class LocalStoreError(VmtrustError):
    exit_code = 41
    meaning = "the local store cannot be read or written"
    rule = "store"


class GlanceError(VmtrustError):
    exit_code = 42
    meaning = "a Glance call failed"
    rule = "glance"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  #: Glance's HTTP status, when it answered


class EC2Error(VmtrustError):
    """An EC2, EBS or S3 call failed, or an image does not fit EC2's limits."""

    exit_code = 43
    meaning = "an EC2, EBS or S3 call failed, or an image does not fit EC2"
    rule = "ec2"


# --- launch and audit -----------------------------------------------------------


class LaunchError(VmtrustError):
    exit_code = 50
    meaning = "launch failed: the cloud refused or failed"
    rule = "launch"


class NoTrustedImage(LaunchError):
    exit_code = 51
    meaning = "no trusted image to launch"
    rule = "no-trusted-image"


class AuditError(VmtrustError):
    """The audit could not complete (an API refused or failed); nothing was changed."""

    exit_code = 61
    meaning = "the audit failed"
    rule = "audit"


# --- the catalogue --------------------------------------------------------------

SUCCESS = 0
USAGE = 2
AUDIT_FINDINGS = 60
AUDIT_FINDINGS_ACTION_FAILED = 62
INTERNAL_ERROR = 70  # EX_SOFTWARE
INTERRUPTED = 120  # 130 (SIGINT) - 10: below 124

#: The exit statuses no error carries, and what they mean.
OUTCOMES: dict[int, str] = {
    SUCCESS: "success",
    USAGE: "command-line usage",
    AUDIT_FINDINGS: "audit findings",
    AUDIT_FINDINGS_ACTION_FAILED: "audit findings, and an action on them failed",
    INTERNAL_ERROR: "internal error (a bug: please report it with the output of --debug)",
    INTERRUPTED: "interrupted",
}


def _subclasses(cls: type[VmtrustError]) -> list[type[VmtrustError]]:
    found = []
    for sub in cls.__subclasses__():
        if sub.__module__ == __name__ and sub not in found:
            found.append(sub)
            found.extend(s for s in _subclasses(sub) if s not in found)
    return found


def catalogue() -> list[type[VmtrustError]]:
    """Every error class of this module, the base first, in the order they are defined."""
    return [VmtrustError, *_subclasses(VmtrustError)]


def exit_statuses() -> dict[int, str]:
    """Every exit status of ``vmtrust`` and ``vmtrust-sync`` and its meaning, by status.

    Read from the classes that set an ``exit_code`` (their subclasses exit with
    the same status) and :data:`OUTCOMES`.
    """
    statuses = dict(OUTCOMES)
    for cls in catalogue():
        if "exit_code" in vars(cls):
            statuses[cls.exit_code] = cls.meaning
    return dict(sorted(statuses.items()))


def help_epilog() -> str:
    """The exit statuses as the ``--help`` of the commands shows them, one per line."""
    lines = [f"  {code:<4}{meaning}" for code, meaning in exit_statuses().items()]
    return "\n".join(["Exit status:", *lines])


def markdown_table() -> str:
    """The exit statuses as the table of the README."""
    rows = [f"| {code} | {meaning} |" for code, meaning in exit_statuses().items()]
    return "\n".join(["| status | meaning |", "|---|---|", *rows])
