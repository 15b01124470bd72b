"""An OCI image's disk as a download: its one layer, streamed by digest.

The layer is just another HTTP download, with a different checksum: the
manifest is fetched by the digest the image is pinned to (its bytes must hash
to it), its one layer gives size and ``sha256``, and the blob streams through
the same :class:`~glance_sync.download.SourceReader` every image uses — size
and SHA-256 checked as the bytes pass (SHA-512 too when a HEPiX list gives
one), resumed with ``Range``, within ``image_deadline`` — into unpacking,
inspection and the store.  Nothing is written to a cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import requests

from glance_sync.download import HttpSettings, Source, SourceReader
from glance_sync.oci.manifest import parse_manifest
from glance_sync.oci.registry import Registry, repository_scope
from glance_sync.plan import Desired
from vmtrust.errors import ManifestError, OciReferenceError, RegistryError, TransferError
from vmtrust.ociref import parse_pinned

__all__ = ["open_layer"]


def open_layer(
    want: Desired,
    registry: Registry | None,
    session: requests.Session,
    http: HttpSettings,
    progress: Callable[[int], None] | None = None,
) -> SourceReader:
    """A reader over the layer of ``want``'s ``oci://…@sha256:…`` URI."""
    image = want.image
    try:
        ref = parse_pinned(image.uri)
    except OciReferenceError as exc:
        raise TransferError(f"image {image.identifier}: {exc}") from None
    if registry is None:
        raise TransferError(
            f"image {image.identifier}: {image.uri}: an oci:// image needs a subscription of "
            "type oci (its registry, credentials and TLS); refused"
        )
    if ref.host != registry.host:
        raise TransferError(
            f"image {image.identifier}: {image.uri}: not in the subscription's registry "
            f"{registry.host}; refused (its credentials go nowhere else)"
        )
    deadline = registry.deadline()
    try:
        data, digest, content_type = registry.manifest(ref.repository, ref.digest, deadline)
    except RegistryError as exc:
        raise TransferError(f"image {image.identifier}: {exc}") from None
    finally:
        deadline.close()
    try:
        manifest = parse_manifest(data, digest, content_type, f"{ref.repository}@{digest}")
    except ManifestError as exc:
        raise TransferError(f"image {image.identifier}: {exc}") from None
    if len(manifest.layers) != 1:
        raise TransferError(
            f"image {image.identifier}: {ref.repository}@{digest}: {len(manifest.layers)} "
            "layers; a VM image is a manifest whose disk is its one layer"
        )
    layer = manifest.layers[0]
    if layer.size != image.size:
        raise TransferError(
            f"image {image.identifier}: its layer is {layer.size} bytes, the list says "
            f"{image.size} (hv:size)"
        )
    source = Source(
        image.identifier,
        registry.base + registry.blob_path(ref.repository, layer.digest),
        layer.size,
        image.sha512,
        image.format,
        sha256=layer.digest.removeprefix("sha256:"),
        claim="the manifest",
        size_key="",
    )
    http = dataclasses.replace(http, verify=registry.verify)
    auth = registry.auth(repository_scope(ref.repository))
    return SourceReader(source, session, http, progress, auth=auth)
