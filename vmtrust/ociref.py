"""Names in an OCI registry: repositories, tags, digests and ``oci://`` references.

Pure functions of the trust core (the subscriptions file and the sync both use
them).  Everything here is checked against the OCI distribution grammar before
it goes into a URL path: a repository or tag that a registry (or a Harbor API answer)
sends is data from a server the site does not control, and ``..``, ``?`` or a
``/`` in a tag must never reach a request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeGuard
from urllib.parse import urlsplit

from vmtrust.errors import OciReferenceError
from vmtrust.safetext import redact
from vmtrust.urls import url_problem

__all__ = [
    "PinnedReference",
    "is_accessory_tag",
    "is_digest",
    "is_repository",
    "is_tag",
    "parse_pinned",
    "registry_base",
]

#: The distribution spec's repository name: path components of lower-case letters and
#: digits joined by separators, at most 255 characters in all.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*\Z")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
#: Tags that hold signatures, attestations, SBOMs and OCI 1.1 referrer indexes, not images.
_ACCESSORY_TAG = re.compile(r"sha256-[0-9a-f]{64}(?:\.[a-z]+)?\Z")


def is_repository(name: object) -> TypeGuard[str]:
    return isinstance(name, str) and len(name) <= 255 and bool(_REPOSITORY.match(name))


def is_tag(name: object) -> TypeGuard[str]:
    return isinstance(name, str) and bool(_TAG.match(name))


def is_digest(value: object) -> TypeGuard[str]:
    """``sha256:`` and 64 lower-case hexadecimal digits: the only digests vmtrust accepts."""
    return isinstance(value, str) and bool(_DIGEST.match(value))


def is_accessory_tag(tag: str) -> bool:
    """cosign's ``sha256-<hex>.sig``/``.att``/``.sbom`` and the referrers fallback tags."""
    return bool(_ACCESSORY_TAG.match(tag))


def registry_base(url: str) -> tuple[str, str]:
    """``(base URL, host[:port])`` of a registry URL such as ``https://registry.example.org``.

    The URL names the registry only: no path, query or user information.
    """
    shown = redact(url)
    problem = url_problem(url)
    if problem:
        raise OciReferenceError(f"registry {shown}: {problem}")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise OciReferenceError(
            f"registry {shown}: credentials in the URL are refused (use credentials:)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise OciReferenceError(
            f"registry {shown}: give only the scheme and host (no path, query or fragment)"
        )
    return f"{parts.scheme}://{parts.netloc}", parts.netloc.lower()


@dataclass(frozen=True)
class PinnedReference:
    """``oci://host[:port]/repository@sha256:…``: an artefact pinned by its manifest digest."""

    host: str
    repository: str
    digest: str

    def __str__(self) -> str:
        return f"oci://{self.host}/{self.repository}@{self.digest}"


def parse_pinned(uri: str) -> PinnedReference:
    """Parse an ``oci://`` image URI; a tag instead of a digest is refused (not pinned)."""
    if not uri.startswith("oci://"):
        raise OciReferenceError(f"{uri}: not an oci:// reference")
    rest = uri[len("oci://") :]
    host, _, path = rest.partition("/")
    name, at, digest = path.partition("@")
    if not host or not path:
        raise OciReferenceError(f"{uri}: expected oci://registry/repository@sha256:<digest>")
    if url_problem(f"https://{host}/"):
        raise OciReferenceError(f"{uri}: {url_problem(f'https://{host}/')}")
    if not at:
        raise OciReferenceError(f"{uri}: not pinned by digest (use @sha256:<digest>, not a tag)")
    if not is_repository(name):
        raise OciReferenceError(f"{uri}: {name!r} is not a valid repository name")
    if not is_digest(digest):
        raise OciReferenceError(f"{uri}: {digest!r} is not a sha256 digest")
    return PinnedReference(host.lower(), name, digest)
