"""OCI registry sources through whole sync passes, against a real registry on loopback.

The registry is Debian's docker-registry (CNCF distribution 2.8), started by the
tests (tests/oci_registry.py); artefacts are pushed through the distribution API
in EGI's layout; cosign signatures are made the way cosign stores them.
"""

from __future__ import annotations

import pytest
from oci_registry import LocalRegistry, Pusher
from oci_support import make_service, oci_subscription, qcow2_disk, require_registry, trusted


@pytest.fixture
def registry(tmp_path):
    require_registry()
    with LocalRegistry(tmp_path / "registry") as running:
        yield running


@pytest.fixture
def pusher(registry):
    return Pusher(registry)


@pytest.fixture
def service(tmp_path, ca_dir):
    service = make_service(tmp_path, ca_dir)
    yield service
    service.close()


REPO = "egi_vm_images/ubuntu"


def test_registry_trust_stores_the_tagged_image_with_basis_registry(
    registry, pusher, service, tmp_path
):
    disk = qcow2_disk(tmp_path)
    digest = pusher.vm_image(REPO, ["22.04", "22.04-2026-11-20"], disk)
    sub = oci_subscription(registry, trust="registry", extra="tag_pattern: '[^-]*'")
    report = service.run((sub,))
    assert report.exit_code == 0, report.failures
    assert trusted(service) == {f"{registry.host}/{REPO}:22.04": (digest, "registry")}
