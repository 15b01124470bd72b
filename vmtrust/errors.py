"""Every way a list, a signature or a signer can fail, as one exception hierarchy.

Modelled on python-tuf's ``tuf.api.exceptions``: callers catch the family they
care about (``SignatureError``, ``ListFormatError``, ``PolicyError`` …) and a
site admin reads ``str(exc)``, which names the thing and what was wrong.

Each class carries the process exit status the ``vmtrust`` command uses.  The
numbers reuse vmcatcher's error codes where one exists (11 signature, 12 DN
mismatch, 13 endorser not allowed, 17 rollback, 31 identifier, 33 future, 34
expired, 37 JSON, 38 structure) so that scripts written for vmcatcher can keep
their meaning; all are below 124 so they never collide with shell conventions
for timeouts and signals.
"""

from __future__ import annotations


def summarise(problems: list[str]) -> str:
    """The first problem, and how many more there are: one line for many problems."""
    more = len(problems) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return problems[0] + suffix


class VmtrustError(Exception):
    """Base of all errors vmtrust reports to a user.

    ``rule`` is a short stable name of the rule that failed (used by ``--json``
    consumers and logs); ``exit_code`` is the CLI exit status.
    """

    exit_code = 1
    rule = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(VmtrustError):
    """Bad configuration: a missing file, an option with a wrong value."""

    exit_code = 4
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


class InputError(VmtrustError):
    """A file the user named cannot be read or written."""

    exit_code = 3
    rule = "input"


# --- list content -------------------------------------------------------------


class ListFormatError(VmtrustError):
    """The image list is not acceptable as data (independent of any signature)."""

    exit_code = 38
    rule = "list-structure"


class ListTooLarge(ListFormatError):
    exit_code = 38
    rule = "list-size"


class InvalidJSON(ListFormatError):
    exit_code = 37
    rule = "list-json"


class InvalidListStructure(ListFormatError):
    """One or more fields are missing or malformed; ``problems`` has them all."""

    exit_code = 38
    rule = "list-structure"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid image list: {summarise(problems)}")


# --- the signed envelope and the signature --------------------------------------


class SignatureError(VmtrustError):
    """The S/MIME envelope or the CMS signature is not valid."""

    exit_code = 11
    rule = "signature"


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
    rule = "chain"


class CertificateExpired(UntrustedSigner):
    rule = "certificate-validity"


class CertificateRevoked(UntrustedSigner):
    exit_code = 15
    rule = "revoked"


class CrlError(UntrustedSigner):
    """A CRL is missing, stale, or not signed by its CA."""

    exit_code = 16
    rule = "crl"


class NamespaceViolation(UntrustedSigner):
    rule = "namespace"


class KeyUsageError(UntrustedSigner):
    rule = "key-usage"


# --- list policy (who signed what, when, which version) -------------------------


class PolicyError(VmtrustError):
    """The list verified cryptographically but the site's rules refuse it."""

    exit_code = 20
    rule = "policy"


class EndorserMismatch(PolicyError):
    exit_code = 12
    rule = "endorser-dn"


class EndorserNotAllowed(PolicyError):
    exit_code = 13
    rule = "endorser-pinned"


class IdentifierMismatch(PolicyError):
    exit_code = 31
    rule = "identifier-pinned"


class ListFromFuture(PolicyError):
    exit_code = 33
    rule = "created-in-future"


class ListExpired(PolicyError):
    exit_code = 34
    rule = "expired"


class RollbackError(PolicyError):
    exit_code = 17
    rule = "rollback"


# --- authoring ------------------------------------------------------------------


class SigningError(VmtrustError):
    """An endorser's list or credentials are not fit to sign with."""

    exit_code = 21
    rule = "signing"
