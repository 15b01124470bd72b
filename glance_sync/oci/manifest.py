"""OCI and Docker manifests, indexes and descriptors, read strictly.

A manifest's digest is the SHA-256 of the exact bytes the registry returned
(:func:`glance_sync.oci.registry.Registry.manifest` computes and checks it);
this module turns those bytes into typed values or one line saying what is
wrong.  JSON goes through :mod:`vmtrust.jsonsafe` (no duplicate keys — two
parsers reading different values from one manifest is a known way to smuggle
a layer past a verifier).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmtrust import jsonsafe
from vmtrust.errors import ListFormatError, ManifestError
from vmtrust.ociref import is_digest

__all__ = [
    "ACCEPT",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "INDEXES",
    "MANIFESTS",
    "MAX_ANNOTATIONS",
    "MAX_MANIFEST",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Descriptor",
    "Manifest",
    "descriptor",
    "media_type_of",
    "parse_index",
    "parse_manifest",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
#: What the sync asks for: every manifest type, so that no registry converts one.
ACCEPT = ", ".join((*MANIFESTS, *INDEXES))
#: Registries refuse manifests over 4 MiB (the distribution spec's suggestion).
MAX_MANIFEST = 4 * 1024 * 1024
MAX_ANNOTATIONS = 256


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str = ""


@dataclass(frozen=True)
class Manifest:
    digest: str  #: sha256 of the bytes as served
    media_type: str
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str]
    config: Descriptor | None = None
    artifact_type: str = ""
    subject: Descriptor | None = None


def _annotations(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ANNOTATIONS:
        raise ManifestError(f"{where}: annotations must be a map of at most {MAX_ANNOTATIONS}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise ManifestError(f"{where}: annotation {key!r} is not a string")
    return dict(value)


def descriptor(value: Any, where: str) -> Descriptor:
    """A content descriptor: media type, sha256 digest, size (and annotations)."""
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: not a descriptor object")
    media_type = value.get("mediaType")
    digest = value.get("digest")
    size = value.get("size")
    artifact_type = value.get("artifactType", "")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestError(f"{where}: mediaType missing")
    if not is_digest(digest):
        raise ManifestError(f"{where}: digest {str(digest)[:80]!r} is not sha256:<64 hex digits>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}: size is not a non-negative integer")
    if not isinstance(artifact_type, str):
        raise ManifestError(f"{where}: artifactType is not a string")
    return Descriptor(
        media_type, digest, size, _annotations(value.get("annotations"), where), artifact_type
    )


def _document(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = jsonsafe.loads(data, what=what, max_bytes=MAX_MANIFEST)
    except ListFormatError as exc:
        raise ManifestError(str(exc)) from None
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        raise ManifestError(f"{what}: not a schemaVersion 2 manifest")
    return document


def media_type_of(data: bytes, content_type: str, what: str) -> str:
    """The manifest's media type: its own ``mediaType`` field, which must agree with
    the Content-Type the registry sent (when that names a manifest type)."""
    document = _document(data, what)
    declared = document.get("mediaType")
    served = content_type.split(";")[0].strip()
    if declared is not None and not isinstance(declared, str):
        raise ManifestError(f"{what}: mediaType is not a string")
    if declared and served in (*MANIFESTS, *INDEXES) and declared != served:
        raise ManifestError(f"{what}: served as {served} but says it is {declared}")
    kind = declared or served
    if kind not in (*MANIFESTS, *INDEXES):
        raise ManifestError(f"{what}: unsupported manifest type {kind!r}")
    return kind


def parse_manifest(data: bytes, digest: str, content_type: str, what: str) -> Manifest:
    """An image manifest (OCI or Docker v2); an index is refused here."""
    kind = media_type_of(data, content_type, what)
    if kind in INDEXES:
        raise ManifestError(f"{what}: an index of several manifests, not one image")
    document = _document(data, what)
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise ManifestError(f"{what}: layers missing")
    config = document.get("config")
    subject = document.get("subject")
    artifact_type = document.get("artifactType", "")
    if not isinstance(artifact_type, str):
        raise ManifestError(f"{what}: artifactType is not a string")
    return Manifest(
        digest=digest,
        media_type=kind,
        layers=tuple(descriptor(layer, f"{what}: layers[{i}]") for i, layer in enumerate(layers)),
        annotations=_annotations(document.get("annotations"), what),
        config=descriptor(config, f"{what}: config") if config is not None else None,
        artifact_type=artifact_type,
        subject=descriptor(subject, f"{what}: subject") if subject is not None else None,
    )


def parse_index(data: bytes, what: str) -> tuple[Descriptor, ...]:
    """The manifests an OCI index lists (a referrers answer or fallback tag)."""
    document = _document(data, what)
    manifests = document.get("manifests")
    if not isinstance(manifests, list):
        raise ManifestError(f"{what}: manifests missing")
    return tuple(descriptor(m, f"{what}: manifests[{i}]") for i, m in enumerate(manifests))
