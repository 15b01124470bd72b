"""trust: hepix for OCI images, and OCI images in a real Glance.

A HEPiX list signed by the endorser (every rule of ``vmtrust list verify``)
names its images as ``oci://registry/repository@sha256:…``: the grid
endorsement applies unchanged, the registry is only the transport, and a
digest the list does not name is never fetched.  The registry is the real one
(tests/oci_registry.py); the list is served by tests/httpserve.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import image_entry, list_document
from httpserve import Server, Site
from oci_registry import LocalRegistry, Pusher
from oci_support import make_service, oci_subscription, qcow2_disk, require_registry, trusted

from vmtrust import imagelist, smime

REPO = "egi_vm_images/ubuntu"


@pytest.fixture
def registry(tmp_path):
    require_registry()
    with LocalRegistry(tmp_path / "registry") as running:
        yield running


@pytest.fixture
def service(tmp_path, ca_dir):
    service = make_service(tmp_path, ca_dir)
    yield service
    service.close()


def publish(site, pki, entries):
    document = list_document(pki.endorser, images=entries)
    site.files["/oci.list"] = smime.sign(
        imagelist.dumps(document), pki.endorser.cert, pki.endorser.key
    )


def oci_entry(identifier, uri, data, **extra):
    return image_entry(
        identifier,
        **{
            "hv:uri": uri,
            "hv:size": len(data),
            "sl:checksum:sha512": hashlib.sha512(data).hexdigest(),
            "hv:format": "QCOW2",
            **extra,
        },
    )


def hepix_sub(registry, site, pki):
    return oci_subscription(
        registry,
        trust="hepix",
        extra=(
            f"url: {site.url('/oci.list')}\n"
            f"endorsers: [{{dn: '{pki.endorser.dn}', ca: '{pki.endorser.ca_dn}'}}]\n"
            "approve: all"
        ),
    )


def test_a_signed_list_pinning_oci_digests_is_synced_with_basis_hepix(
    registry, service, pki, tmp_path
):
    disk = qcow2_disk(tmp_path)
    digest = Pusher(registry).vm_image(REPO, "22.04", disk)
    with Server(Site()) as site:
        publish(site, pki, [oci_entry("wn-1", f"oci://{registry.host}/{REPO}@{digest}", disk)])
        report = service.run((hepix_sub(registry, site, pki),))
    assert report.exit_code == 0, report.failures
    assert trusted(service) == {"wn-1": ("1.2", "hepix")}
    (held,) = service.store.held()
    assert held.record.endorser_dn == pki.endorser.dn
    assert held.record.source_sha512 == hashlib.sha512(disk).hexdigest()


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("tag", "not pinned by digest"),
        ("other registry", "not in the subscription's registry"),
        ("other bytes", "SHA-512"),
        ("unknown digest", "not found"),
    ],
)
def test_what_the_list_does_not_pin_is_not_trusted(registry, service, pki, tmp_path, how, reason):
    disk = qcow2_disk(tmp_path, "a", fill=b"a")
    digest = Pusher(registry).vm_image(REPO, "22.04", disk)
    uri = f"oci://{registry.host}/{REPO}@{digest}"
    listed = disk
    if how == "tag":
        uri = f"oci://{registry.host}/{REPO}:22.04"
    elif how == "other registry":
        uri = f"oci://registry.example.org/{REPO}@{digest}"
    elif how == "other bytes":  # the layer is what the digest pins; the list endorsed others
        listed = bytes(len(disk))
    elif how == "unknown digest":
        uri = f"oci://{registry.host}/{REPO}@sha256:{'0' * 64}"
    with Server(Site()) as site:
        publish(site, pki, [oci_entry("wn-1", uri, listed)])
        report = service.run((hepix_sub(registry, site, pki),))
    assert report.exit_code == 1
    (line,) = report.failures
    assert line.startswith("image wn-1: ") and reason in line, line
    assert trusted(service) == {}


def test_an_oci_uri_in_a_plain_list_subscription_is_refused(registry, service, pki, tmp_path):
    """No registry, credentials or TLS settings: an oci:// image needs a type: oci subscription."""
    from vmtrust.imagelist import Endorser
    from vmtrust.policy import Subscription

    disk = qcow2_disk(tmp_path)
    digest = Pusher(registry).vm_image(REPO, "22.04", disk)
    with Server(Site()) as site:
        publish(site, pki, [oci_entry("wn-1", f"oci://{registry.host}/{REPO}@{digest}", disk)])
        sub = Subscription(
            name="plain",
            url=site.url("/oci.list"),
            endorsers=(Endorser(dn=pki.endorser.dn, ca=pki.endorser.ca_dn),),
            approve_all=True,
        )
        report = service.run((sub,))
    assert report.exit_code == 1
    assert "an oci:// image needs a subscription of type oci" in report.failures[0]


# --- Glance: the properties atrope's Harbor source writes ----------------------------------


def test_oci_images_in_glance_carry_atrope_s_properties_and_the_basis(glance_sync, tmp_path):
    from oci_registry import LocalRegistry as Registry

    require_registry()
    disk = qcow2_disk(tmp_path)
    with Registry(tmp_path / "registry") as registry:
        digest = Pusher(registry).vm_image(REPO, "22.04", disk)
        sub = oci_subscription(registry, trust="registry")
        report = glance_sync.run((sub,))
    assert report.exit_code == 0, report.failures
    image_api = glance_sync.store.conn.image
    (image,) = list(image_api.images(owner=glance_sync.project))
    props = image_api.get(f"/images/{image.id}").json()  # Glance's own JSON, properties on top
    host = registry.host
    assert props["name"] == f"{REPO}:22.04"
    assert props["vmtrust_basis"] == "registry"
    assert props["vmcatcher_event_ad_mpuri"] == f"{host}/{REPO}:22.04-{digest}"
    assert props["vmcatcher_event_dc_description"] == "EGI ubuntu image"
    assert props["os_distro"] == "ubuntu" and props["os_version"] == "22.04"
    assert props["architecture"] == "x86_64"
    attributes = json.loads(props["APPLIANCE_ATTRIBUTES"])
    assert attributes["eu.egi.cloud.image_ref"] == f"{REPO}:22.04"
    assert attributes["eu.egi.cloud.tag"] == "2026-11-20-4d7122d6"
    assert attributes["org.opencontainers.image.revision"] == "4d7122d6"
    assert props["image_hash"].startswith("sha256:")
    assert props["disk_format"] == "qcow2"
    assert props["os_hash_value"] == hashlib.sha512(disk).hexdigest()
