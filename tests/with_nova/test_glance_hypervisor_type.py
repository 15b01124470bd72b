"""The hypervisor_type the Glance store writes, through nova's own ImagePropertiesFilter.

``hv:hypervisor = QEMU,KVM`` (AppDB's "runs on either") becomes ``qemu``
(:func:`glance_sync.stores.glance_meta.nova_hypervisor`): a libvirt host with
KVM advertises both ``kvm`` and ``qemu`` domains in its supported instances
(``nova/virt/libvirt/driver.py _get_instance_capabilities``), a host without
KVM only ``qemu``, so ``qemu`` admits both and still keeps the image off Xen or
VMware hosts.  nova's real filter and objects decide here; the host states are
nova's test fakes with what such hosts advertise.
"""

from __future__ import annotations

import pytest
from nova import objects
from nova.scheduler import filters
from nova.tests.unit.scheduler.fakes import FakeHostState

from glance_sync.stores.glance_meta import nova_hypervisor

HVM = "hvm"
HOSTS = {
    "libvirt-kvm": [("x86_64", "kvm", HVM), ("x86_64", "qemu", HVM)],
    "libvirt-qemu": [("x86_64", "qemu", HVM)],
    "xen": [("x86_64", "xen", HVM)],
}


def passing(hypervisor_type: str | None) -> set[str]:
    props = {"architecture": "x86_64"}
    if hypervisor_type:
        props["hypervisor_type"] = hypervisor_type
    spec = objects.RequestSpec(
        image=objects.ImageMeta.from_dict({"properties": props}),
        flavor=objects.Flavor(extra_specs={}),
    )
    hosts = [
        FakeHostState(name, "node", {"supported_instances": caps, "hypervisor_version": 1})
        for name, caps in HOSTS.items()
    ]
    handler = filters.HostFilterHandler()
    classes = handler.get_matching_classes(
        ["nova.scheduler.filters.image_props_filter.ImagePropertiesFilter"]
    )
    return {h.host for h in handler.get_filtered_objects([c() for c in classes], hosts, spec)}


@pytest.mark.parametrize(
    ("listed", "hosts"),
    [
        ("QEMU,KVM", {"libvirt-kvm", "libvirt-qemu"}),
        ("KVM", {"libvirt-kvm"}),
        ("QEMU", {"libvirt-kvm", "libvirt-qemu"}),
        ("KVM,Xen", set(HOSTS)),  # left out: nova cannot say "either" for these
    ],
)
def test_listed_hypervisors_admit_exactly_the_hosts_that_run_them(listed, hosts):
    assert passing(nova_hypervisor(listed)) == hosts
