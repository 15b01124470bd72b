"""The list metadata the Glance store writes besides the trust record (no Glance needed)."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import image_entry, list_document

from glance_sync.plan import Desired
from glance_sync.stores.glance_meta import list_properties, min_ram_mib, stale_properties
from vmtrust import imagelist


def desired(pki, **fields) -> Desired:
    data = b"x" * 1000
    entry = image_entry(
        "wn-1", **{"hv:size": len(data), "sl:checksum:sha512": hashlib.sha512(data).hexdigest(),
                   **fields}
    )  # fmt: skip
    lst = imagelist.validate(list_document(pki.endorser, images=[entry]))
    return Desired("sub", "all", lst.images[0], lst, lst.endorsers[0], "vo.example.org")


@pytest.mark.parametrize(
    ("value", "mib"),
    [(None, None), (0, None), (512, 512), (2048, 2048), (2 * 1024**3, 2048), (1024**2, 1)],
)
def test_ram_minimum_in_bytes_or_megabytes(value, mib):
    assert min_ram_mib(value) == mib


def test_properties_for_nova_and_egi_consumers(pki):
    mpuri = "https://appdb.example.org/store/vm/image/x:1/"
    fields = {"hv:hypervisor": "KVM", "sl:arch": "amd64", "hv:ram_minimum": 2048, "ad:mpuri": mpuri}
    want = desired(pki, **fields)
    props = list_properties(want, 3 * 1024**3, "EGI ")
    assert props["name"] == f"EGI {want.image.title}"
    assert (props["architecture"], props["hypervisor_type"]) == ("x86_64", "kvm")
    assert (props["min_ram"], props["min_disk"]) == (2048, 3)
    assert props["vmcatcher_event_ad_mpuri"] == mpuri
    assert props["vmcatcher_event_vo"] == "vo.example.org"
    assert json.loads(props["APPLIANCE_ATTRIBUTES"]) == want.image.raw
    assert props["image_hash"] == f"sha512:{want.image.sha512}"
    assert "hypervisor_type" not in list_properties(want, 1, hypervisor_type=False)


def test_unknown_hypervisor_and_arch_are_left_out(pki):
    props = list_properties(desired(pki, **{"hv:hypervisor": "VirtualBox", "sl:arch": "mips"}), 1)
    assert "hypervisor_type" not in props and "architecture" not in props


def test_stale_properties_are_only_the_stores_own():
    image = {"hypervisor_type": "kvm", "vmcatcher_event_ad_mpuri": "x", "site_note": "keep",
             "os_distro": "alma", "vmtrust_state": "trusted"}  # fmt: skip
    assert stale_properties(image, {"os_distro": "alma"}) == [
        "hypervisor_type",
        "vmcatcher_event_ad_mpuri",
    ]


@pytest.mark.parametrize(
    ("listed", "nova"),
    [
        ("KVM", "kvm"),
        ("qemu", "qemu"),
        # AppDB's "runs on either": qemu is what KVM hosts advertise as well as TCG hosts
        ("QEMU,KVM", "qemu"),
        ("KVM, QEMU", "qemu"),
        ("kvm,kvm", "kvm"),
        ("Xen", "xen"),
        # several hypervisors nova cannot express in one value: no constraint at all
        ("KVM,Xen", None),
        ("QEMU,KVM,VirtualBox", None),
    ],
)
def test_hypervisor_lists_become_one_value_nova_matches_or_none(pki, listed, nova):
    props = list_properties(desired(pki, **{"hv:hypervisor": listed}), 1)
    assert props.get("hypervisor_type") == nova


def test_image_list_is_the_subscription_as_atrope_writes_it(pki):
    """atrope's image_list is its source's name; the list's UUID has its own property."""
    want = desired(pki)
    assert list_properties(want, 1)["image_list"] == "sub" != want.imagelist.identifier


def test_os_distro_is_lower_case_as_openstack_expects(pki):
    """atrope copies sl:osname verbatim ("AlmaLinux"); Glance's metadefs and nova want the
    lower-case libosinfo-style name."""
    props = list_properties(desired(pki, **{"sl:osname": "AlmaLinux", "sl:osversion": "9.4"}), 1)
    assert (props["os_distro"], props["os_version"]) == ("almalinux", "9.4")
    fallback = list_properties(desired(pki, **{"sl:osname": "", "sl:os": "Linux"}), 1)
    assert fallback["os_distro"] == "linux"
