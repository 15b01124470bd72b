"""The list's metadata as the Glance properties clouds and EGI tools read.

Besides the trust record (:mod:`vmtrust.glanceprops`), an image in Glance
carries what nova, Horizon and the EGI tools expect, as atrope and
cloudkeeper-os wrote it (see docs/glance.md for the table):

* nova and Horizon: ``architecture``, ``os_distro``, ``os_version``,
  ``hypervisor_type``, ``min_ram`` (MiB), ``min_disk`` (GiB);
* cloud-info-provider, cloud-info-api and cASO: ``vmcatcher_event_*`` (the
  vmcatcher event variables, lower-cased), ``APPLIANCE_ATTRIBUTES`` (the
  list's ``hv:image`` entry as JSON);
* atrope's identity properties ``appdb_id``, ``image_list`` (the subscription's
  name, as atrope writes its source's name), ``image_hash``.

Where vmtrust differs from atrope it does so on purpose (docs/glance.md has the
table): ``os_distro`` in lower case and ``architecture`` in nova's names, as
OpenStack expects them; ``hypervisor_type``, ``min_ram`` and ``min_disk``, which
atrope leaves out, for nova's scheduler and Horizon's flavour choice.
"""

from __future__ import annotations

import json
import math
import re

from glance_sync.hooks import event_environment
from glance_sync.plan import Desired, Held

__all__ = [
    "GIB",
    "LIST_PROPERTIES",
    "MIB",
    "list_properties",
    "min_ram_mib",
    "nova_hypervisor",
    "stale_properties",
]

#: hv:hypervisor → nova's hypervisor_type (nova.objects.fields.HVType); others are omitted,
#: since a wrong value would make ImagePropertiesFilter refuse every host.
_HYPERVISORS = {"kvm": "kvm", "qemu": "qemu", "xen": "xen", "vmware": "vmware", "hyperv": "hyperv"}
_ARCHES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "i386": "i686",
    "i686": "i686",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}
#: What :func:`list_properties` may write besides ``name``, ``min_ram``, ``min_disk`` and
#: the ``vmcatcher_event_*`` variables: a refresh removes those the entry no longer gives.
LIST_PROPERTIES = frozenset(
    {
        "architecture",
        "os_distro",
        "os_version",
        "hypervisor_type",
        "APPLIANCE_ATTRIBUTES",
        "appdb_id",
        "image_list",
        "image_hash",
    }
)
MIB = 1024 * 1024
GIB = 1024 * MIB


def min_ram_mib(value: int | None) -> int | None:
    """``hv:ram_minimum`` in MiB: the spec says bytes, AppDB sends MB.

    A value of a mebibyte or more can only be bytes (no VM needs a terabyte
    of RAM as its minimum); a smaller one is read as MiB, as AppDB meant it.
    """
    if not value:
        return None
    return math.ceil(value / MIB) if value >= MIB else value


def nova_hypervisor(value: str) -> str | None:
    """nova's ``hypervisor_type`` for ``hv:hypervisor``, or None to leave it out.

    AppDB lists say ``QEMU,KVM``: the image runs on either.  nova takes one value,
    matched against what each host advertises; a libvirt host with KVM advertises
    both ``kvm`` and ``qemu`` domains, a host without KVM only ``qemu``.  So ``qemu``
    admits exactly the hosts the list allows (``kvm`` would shut out the plain QEMU
    ones).  Any other list of several hypervisors, or one nova does not know, leaves
    the property out: any single value would refuse hosts the list allows.
    """
    names = {part.lower() for part in re.split(r"[\s,;/]+", value) if part}
    known = {_HYPERVISORS.get(name) for name in names}
    if not names or None in known:
        return None
    if known == {"qemu", "kvm"}:
        return "qemu"
    return known.pop() if len(known) == 1 else None


def list_properties(
    want: Desired, size: int, prefix: str = "", *, hypervisor_type: bool = True
) -> dict[str, str | int]:
    """Everything but the trust record, from the verified list entry.

    ``hypervisor_type = False`` leaves nova's hypervisor_type out: nova's
    ImagePropertiesFilter refuses hosts whose hypervisor differs (a "kvm" image
    on hosts that report "qemu"), which some sites do not want from list data.
    """
    image = want.image
    props: dict[str, str | int] = {"name": f"{prefix}{image.title}"[:255]}
    arch = _ARCHES.get(image.arch.strip().lower())
    if arch:
        props["architecture"] = arch
    distro = (image.osname or image.os).strip().lower()
    if distro:
        props["os_distro"] = distro
    if image.osversion.strip():
        props["os_version"] = image.osversion.strip()
    hypervisor = nova_hypervisor(image.hypervisor)
    if hypervisor and hypervisor_type:
        props["hypervisor_type"] = hypervisor
    ram = min_ram_mib(image.ram_minimum)
    if ram:
        props["min_ram"] = ram
    if size:
        props["min_disk"] = math.ceil(size / GIB)
    placeholder = Held(store_id="", record=None, seal_ok=False)
    env = event_environment("AvailablePostfix", image, want.imagelist, placeholder)
    for name, value in env.items():
        if name.startswith("VMCATCHER_EVENT_") and name not in (
            "VMCATCHER_EVENT_TYPE",
            "VMCATCHER_EVENT_UUID_SESSION",
            "VMCATCHER_EVENT_FILENAME",
        ):
            props[name.lower()] = value
    if want.vo:
        props["vmcatcher_event_vo"] = want.vo
    props["APPLIANCE_ATTRIBUTES"] = json.dumps(image.raw, sort_keys=True)
    props["appdb_id"] = image.identifier
    # atrope's meaning: the name the site gave the list (its sources.yaml key); the
    # list's own UUID is vmtrust_list_identifier.
    props["image_list"] = want.subscription
    props["image_hash"] = f"sha512:{image.sha512}" if image.sha512 else want.digest
    if image.uri.startswith("oci://"):
        _oci_properties(want, props)
    return props


def _oci_properties(want: Desired, props: dict[str, str | int]) -> None:
    """What atrope's Harbor source writes, where it differs from a list entry's.

    The OCI annotations are the image's metadata (``APPLIANCE_ATTRIBUTES``, as
    atrope); the marketplace URI is atrope's identifier
    ``<registry>/<repository>:<tag>-<digest>`` (cASO's ``ImageId``, GLUE's
    ``MarketplaceURL``); the description is ``eu.egi.cloud.description``.
    """
    image = want.image
    if image.mpuri:
        props["vmcatcher_event_ad_mpuri"] = image.mpuri
    if image.description:
        props["vmcatcher_event_dc_description"] = image.description
    props["vmcatcher_event_dc_title"] = image.title
    props["vmcatcher_event_hv_uri"] = image.uri


def stale_properties(image: dict, wanted: dict) -> list[str]:
    """List properties ``image`` carries that the entry (``wanted``) no longer gives."""
    return sorted(
        key
        for key in image
        if key not in wanted and (key in LIST_PROPERTIES or key.startswith("vmcatcher_event_"))
    )
