"""An OCI subscription's images: the registry listed, each tag read, its trust checked.

For ``trust: cosign`` and ``trust: registry`` there is no signed list: the
listing is the list.  :func:`list_registry` turns the registry's current state
into the same shapes a verified HEPiX list gives the rest of the pass — an
:class:`~vmtrust.imagelist.ImageList` of :class:`~vmtrust.imagelist.Image` —
so planning, storing, sealing and retiring are the ones every list gets:

* **identity** ``<registry host>/<repository>:<tag>`` (or ``@<digest>`` for a
  subscribed digest); **version** the manifest digest.  A tag that moves to a
  new manifest is a new version, stored before the old one is retired; a tag
  that disappears retires its image.
* A **VM image** is, as in EGI's registry, a manifest with the annotation
  ``eu.egi.cloud.tag`` (layer annotations merged over the manifest's, as
  atrope merges them) whose disk is its one layer; other tags (container
  images, cosign's ``.sig`` tags, referrer indexes) are not images and are
  passed over.  The annotations are the image's metadata, mapped as atrope
  maps them, so Glance gets the same properties (docs/oci.md).
* **Trust**: with ``cosign``, a signature by one of the site's keys naming this
  manifest digest and this repository (:mod:`glance_sync.oci.signatures`).  A
  tag whose current manifest fails that is *refused*: reported, and whatever
  the store holds for it is kept as it is (it was trusted when stored), never
  replaced by the untrusted version.
* **Failures**: anything that stops the listing itself — the registry down,
  401, a repository that does not exist, the deadline ``[sync]
  registry_deadline`` — fails the subscription, and its images stay as they
  are until their records expire, as a list's do.  A listing is valid for the
  subscription's ``valid_days``: the synthesised list is dated by the day, so
  records are re-sealed with a new expiry once a day while the registry
  answers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import requests

from glance_sync.httpclient import Deadline, HttpSettings
from glance_sync.oci import harbor, signatures
from glance_sync.oci.manifest import INDEXES, media_type_of, parse_manifest
from glance_sync.oci.registry import Registry
from vmtrust.errors import CosignError, ManifestError, RegistryError, RegistryNotFound
from vmtrust.imagelist import Endorser, Image, ImageList
from vmtrust.ociref import is_accessory_tag, is_digest, is_tag
from vmtrust.policy import Subscription

__all__ = [
    "CONTAINER_FORMAT",
    "DISK_FORMAT",
    "IMAGE_REF",
    "SYNC_ANNOTATION",
    "OciListing",
    "disk_format",
    "list_registry",
    "make_registry",
]

LOG = logging.getLogger("vmtrust.sync")

SYNC_ANNOTATION = "eu.egi.cloud.tag"  #: what makes an artefact a VM image (atrope's rule)
IMAGE_REF = "eu.egi.cloud.image_ref"  #: added, as atrope adds it: ``<repository>:<tag>``
DISK_FORMAT = "org.openstack.glance.disk_format"
CONTAINER_FORMAT = "org.openstack.glance.container_format"
#: Glance's container formats a layer may have: a bare disk, or an OVA archive.
_CONTAINERS = {"bare": None, "ova": "OVA"}
_FORMAT = re.compile(r"[a-z0-9][a-z0-9.-]{0,15}\Z")


@dataclass
class OciListing:
    """What one listing of a registry found: the trusted images, and the refused ones."""

    imagelist: ImageList
    endorser: Endorser  #: the registry's word (registry trust) or the first signer (cosign)
    endorsers: dict[str, Endorser] = field(default_factory=dict)  #: per image: its signer
    digests: dict[str, str] = field(default_factory=dict)  #: per image: its layer digest
    #: (identifier, version, title, reason) of tags whose current manifest is not trusted
    refused: list[tuple[str, str, str, str]] = field(default_factory=list)


def make_registry(
    sub: Subscription, session: requests.Session, http: HttpSettings, max_bytes: int
) -> Registry:
    """The registry client of an OCI subscription, for one pass."""
    assert sub.oci is not None
    return Registry(
        sub.oci.registry,
        credentials=sub.credentials,
        verify=sub.tls_ca or http.verify,
        session=session,
        settings=http,
        max_bytes=max_bytes,
    )


def _selected(sub: Subscription, tags: list[str]) -> list[str]:
    """The tags (and subscribed digests) of one repository the subscription follows."""
    oci = sub.oci
    assert oci is not None
    tags = [t for t in tags if is_tag(t) and not is_accessory_tag(t)]  # names from a server
    if oci.tags:
        return [t for t in oci.tags if is_digest(t) or t in tags]
    if oci.tag_pattern:
        pattern = re.compile(oci.tag_pattern)
        return [t for t in tags if pattern.fullmatch(t)]
    return tags


def _candidates(sub: Subscription, registry: Registry, deadline: Deadline) -> list[tuple[str, str]]:
    oci = sub.oci
    assert oci is not None
    if oci.project:
        repositories = harbor.project_tags(registry, oci.project, deadline)
    else:
        assert oci.repository is not None
        try:
            repositories = {oci.repository: registry.tags(oci.repository, deadline)}
        except RegistryNotFound:
            raise RegistryError(
                f"registry {registry.base}: repository {oci.repository} not found"
            ) from None
    return [(repo, ref) for repo, tags in repositories.items() for ref in _selected(sub, tags)]


def disk_format(annotations: dict[str, str], what: str) -> str:
    """``hv:format`` of a layer: Glance's disk format, or OVA for an OVA container."""
    disk = annotations.get(DISK_FORMAT, "raw").strip().lower()
    container = annotations.get(CONTAINER_FORMAT, "bare").strip().lower()
    if container not in _CONTAINERS:
        raise ManifestError(f"{what}: container format {container[:40]!r} is not bare or ova")
    if not _FORMAT.match(disk):
        raise ManifestError(f"{what}: disk format {disk[:40]!r} is not a format name")
    return _CONTAINERS[container] or disk


def _image(
    registry: Registry, repository: str, ref: str, deadline: Deadline
) -> tuple[Image, str] | None:
    """The image a tag holds now and its layer digest; None if it is not a VM image."""
    data, digest, content_type = registry.manifest(repository, ref, deadline)
    what = f"{repository}{'@' if is_digest(ref) else ':'}{ref}"
    if media_type_of(data, content_type, what) in INDEXES:
        LOG.info("%s: an index, not a VM image; passed over", what)
        return None
    manifest = parse_manifest(data, digest, content_type, what)
    annotations = dict(manifest.annotations)
    if manifest.layers:  # atrope takes the first layer: so is an artefact an image for it
        annotations.update(manifest.layers[0].annotations)
    if SYNC_ANNOTATION not in annotations:
        LOG.info("%s: no %s annotation, not a VM image; passed over", what, SYNC_ANNOTATION)
        return None
    if len(manifest.layers) != 1:
        raise ManifestError(
            f"{what}: {len(manifest.layers)} layers; a VM image is a manifest whose disk is "
            "its one layer"
        )
    layer = manifest.layers[0]
    host = registry.host
    annotations[IMAGE_REF] = what
    image = Image(
        identifier=f"{host}/{what}",
        title=what,
        description=annotations.get("eu.egi.cloud.description", ""),
        uri=f"oci://{host}/{repository}@{digest}",
        size=layer.size,
        sha512="",  # pinned by the manifest digest; the layer's sha256 is checked as it streams
        arch=annotations.get("org.openstack.glance.architecture", ""),
        os=annotations.get("org.openstack.glance.os_type", ""),
        osversion=annotations.get("org.openstack.glance.os_version", ""),
        comments="",
        hypervisor="",
        version=digest,
        format=disk_format(annotations, what),
        osname=annotations.get("org.openstack.glance.os_distro") or None,
        mpuri=f"{host}/{what}-{digest}",  # atrope's identifier: what cASO and GLUE show
        raw=annotations,
    )
    return image, layer.digest


def list_registry(
    sub: Subscription, registry: Registry, deadline_seconds: float, now: datetime
) -> OciListing:
    """List the subscription's images now; RegistryError when the listing itself fails."""
    assert sub.oci is not None and sub.trust in ("cosign", "registry")
    deadline = Deadline(deadline_seconds)
    try:
        return _list(sub, registry, deadline, now)
    finally:
        deadline.close()


def _list(sub: Subscription, registry: Registry, deadline: Deadline, now: datetime) -> OciListing:
    oci = sub.oci
    assert oci is not None
    images: list[Image] = []
    endorsers: dict[str, Endorser] = {}
    digests: dict[str, str] = {}
    refused: list[tuple[str, str, str, str]] = []
    for repository, ref in _candidates(sub, registry, deadline):
        what = f"{repository}{'@' if is_digest(ref) else ':'}{ref}"
        identifier = f"{registry.host}/{what}"
        version = ref
        try:
            try:
                found = _image(registry, repository, ref, deadline)
            except RegistryNotFound:
                LOG.info("%s: gone while listing (a tag deleted meanwhile)", identifier)
                continue
            if found is None:
                continue
            image, layer_digest = found
            version = image.version
            if sub.trust == "cosign":
                identity = f"{oci.signed_registry or registry.host}/{repository}"
                key = signatures.find(registry, repository, version, oci.keys, identity, deadline)
                endorsers[identifier] = Endorser(dn=f"cosign:{key.key_id}", ca="cosign")
        except (ManifestError, CosignError, RegistryError) as exc:
            if deadline.expired:  # the registry as a whole is too slow: the subscription fails
                raise RegistryError(
                    f"registry {registry.base}: listing not complete within [sync] "
                    f"registry_deadline ({deadline.seconds:g} s)"
                ) from None
            refused.append((identifier, version, what, str(exc)))
            continue
        digests[identifier] = layer_digest
        images.append(image)
    registry_word = Endorser(dn=f"registry:{registry.host}", ca="registry")
    endorser = next(iter(endorsers.values()), registry_word)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    imagelist = ImageList(
        identifier=f"oci:{oci.where}",
        title=f"{oci.where} ({sub.trust})",
        description=f"images of {oci.where}, trusted by {sub.trust}",
        source=oci.registry,
        created=day,
        expires=day + timedelta(days=oci.valid_days),
        version=day.strftime("%Y%m%d"),
        uri=oci.registry,
        endorsers=(endorser,),
        images=tuple(images),
        vo=sub.vo,
    )
    return OciListing(imagelist, endorser, endorsers, digests, refused)
