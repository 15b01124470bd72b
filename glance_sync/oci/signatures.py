"""Finding an image's cosign signatures in its registry, and checking them.

Two places, both read (the registry decides which it has):

1. cosign's tag ``sha256-<hex>.sig`` in the image's repository: an image
   manifest whose layers are simple-signing payloads, each with its signature
   in the layer annotation;
2. OCI 1.1 referrers of the image's digest — ``/v2/<name>/referrers/<digest>``
   where the registry serves it, else the fallback tag ``sha256-<hex>`` holding
   an index — whose artifact type is cosign's signature
   (``application/vnd.dev.cosign.artifact.sig.v1+json``, what
   ``cosign sign --registry-referrers-mode=oci-1-1`` writes): the same layers,
   and a ``subject`` that must be the image.

Sigstore bundles (cosign 3's default, ``--new-bundle-format``) are noticed and
refused with a reason: their in-toto statement names the digest but no
repository, and vmtrust requires both (docs/oci.md).  Every payload blob is
fetched by digest and checked against it; the trust decision itself is
:func:`vmtrust.cosign.verify`.
"""

from __future__ import annotations

import contextlib

from glance_sync.httpclient import Deadline
from glance_sync.oci.manifest import parse_index, parse_manifest
from glance_sync.oci.registry import Registry
from vmtrust import cosign
from vmtrust.cosign import CosignKey
from vmtrust.errors import CosignError, ManifestError, RegistryError, RegistryNotFound

__all__ = ["COSIGN_ARTIFACT", "MAX_SIGNATURES", "SIGSTORE_BUNDLE", "find"]

COSIGN_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle"
#: Signature layers examined per image at most (each costs a blob request).
MAX_SIGNATURES = 16


def _signature_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


def _referrers(
    registry: Registry, repository: str, digest: str, deadline: Deadline, problems: list[str]
) -> list[str]:
    """Digests of the cosign signature manifests that refer to ``digest``."""
    found = registry.referrers(repository, digest, deadline)
    if found is None:  # no referrers API: the fallback tag, if anyone wrote one
        try:
            data, _, _ = registry.manifest(repository, digest.replace(":", "-"), deadline)
            found = parse_index(data, f"referrers tag of {digest}")
        except (RegistryNotFound, ManifestError):
            found = ()
    result = []
    for item in found:
        kind = item.artifact_type
        if kind == COSIGN_ARTIFACT:
            result.append(item.digest)
        elif kind.startswith(SIGSTORE_BUNDLE):
            problems.append(
                "a Sigstore bundle (cosign --new-bundle-format) names no repository; not "
                "accepted (sign with --new-bundle-format=false)"
            )
    return result


def find(
    registry: Registry,
    repository: str,
    digest: str,
    keys: tuple[CosignKey, ...],
    identity: str,
    deadline: Deadline,
) -> CosignKey:
    """The site key whose signature vouches for manifest ``digest`` of ``identity``.

    CosignError (one line) when none does: no signature at all, or why the first
    one failed (and how many others did).
    """
    problems: list[str] = []
    manifests = []
    with contextlib.suppress(RegistryNotFound):  # no .sig tag: perhaps referrers
        manifests.append(registry.manifest(repository, _signature_tag(digest), deadline))
    for ref in _referrers(registry, repository, digest, deadline, problems)[:MAX_SIGNATURES]:
        try:
            manifests.append(registry.manifest(repository, ref, deadline))
        except RegistryNotFound:
            problems.append(f"referrer {ref[:19]}… not found")
    checked = 0
    for data, sig_digest, content_type in manifests:
        try:
            manifest = parse_manifest(data, sig_digest, content_type, f"signature {sig_digest}")
        except ManifestError as exc:
            problems.append(str(exc))
            continue
        if manifest.subject is not None and manifest.subject.digest != digest:
            problems.append(f"signature manifest {sig_digest[:19]}… refers to another image")
            continue
        for layer in manifest.layers:
            if layer.media_type != cosign.SIMPLE_SIGNING or checked >= MAX_SIGNATURES:
                continue
            checked += 1
            if layer.size > cosign.MAX_PAYLOAD:
                problems.append(f"payload {layer.digest[:19]}… is {layer.size} bytes")
                continue
            try:
                payload = registry.blob(repository, layer.digest, cosign.MAX_PAYLOAD, deadline)
                return cosign.verify(
                    payload,
                    layer.annotations.get(cosign.SIGNATURE_ANNOTATION),
                    keys,
                    digest=digest,
                    identity=identity,
                )
            except (CosignError, RegistryNotFound) as exc:
                problems.append(str(exc))
            except RegistryError as exc:
                problems.append(str(exc))
    if not problems:
        raise CosignError(f"no cosign signature (no tag {_signature_tag(digest)}, no referrer)")
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise CosignError(f"no valid cosign signature: {problems[0]}{more}")
