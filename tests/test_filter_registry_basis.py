"""The filter's decision for images trusted on the registry's word only (issue 15).

A record with ``basis: registry`` (an OCI subscription with ``trust: registry``)
is sealed and bound like any other, yet no one endorsed the image: on worker
flavours the filter refuses it unless ``[vmtrust] accept_registry_trust``.
"""

from __future__ import annotations

import pytest
from sealed_images import OWNER, Glance, trusted_image

from nova_filter.decision import REGISTRY_ONLY, ImageTrust
from vmtrust.record import generate_key_pair, load_private_key


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("keys") / "seal.key"
    generate_key_pair(path)
    return load_private_key(path)


@pytest.mark.parametrize(
    ("basis", "accept", "trusted"),
    [
        ("registry", False, False),
        ("registry", True, True),
        ("cosign", False, True),
        ("hepix", False, True),
    ],
)
def test_registry_basis_is_refused_unless_the_site_accepts_it(key, basis, accept, trusted):
    glance = Glance()
    image_id = glance.add(trusted_image(key, basis=basis))
    decision = ImageTrust(glance, [key.public_key()], [OWNER], accept_registry=accept).decide(
        image_id
    )
    assert decision.trusted is trusted
    if not trusted:
        assert decision.reason == REGISTRY_ONLY


def test_a_registry_record_relabelled_hepix_breaks_the_seal(key):
    glance = Glance()
    image = trusted_image(key, basis="registry")
    image["vmtrust_basis"] = "hepix"  # someone with property rights "upgrades" the image
    image_id = glance.add(image)
    decision = ImageTrust(glance, [key.public_key()], [OWNER]).decide(image_id)
    assert not decision.trusted and "seal" in decision.reason
    image.pop("vmtrust_basis")  # or drops the property
    decision = ImageTrust(glance, [key.public_key()], [OWNER]).decide(glance.add(image))
    assert not decision.trusted and "seal" in decision.reason


def test_the_option_is_registered_and_off_by_default():
    from oslo_config import cfg

    from nova_filter import conf as vmtrust_conf

    conf = cfg.ConfigOpts()
    vmtrust_conf.register(conf)
    conf([])
    assert conf.vmtrust.accept_registry_trust is False
