"""Contextualisation: cloud-init user-data that makes a trusted image a worker node.

The Python API for sites and pilot frameworks::

    from vmtrust import context

    site = context.load_site("site.yaml")
    vo = context.load_vo("cms.yaml", site)        # refusals raise ContextRefused
    flavour = context.Flavour(vcpus=8, ram_mb=16000, swap_mb=0, scratch_gb=80)
    data = context.build(site, vo, cloud="openstack", flavour=flavour)
    lines, problems = context.explain(data, site)  # what a user-data does, what is refused

``build`` returns the final bytes, already within the cloud's size limit
(gzipped when needed) — pass them to nova's ``user_data`` (base64) or EC2's
``UserData`` as they are.  Without a flavour, the machine measures its CPUs,
memory and scratch space at boot for its machine/job features.
"""

from __future__ import annotations

from vmtrust.context.check import explain
from vmtrust.context.compose import compose
from vmtrust.context.profiles import Flavour, SiteProfile, VoProfile
from vmtrust.context.site import load_site
from vmtrust.context.userdata import LIMITS, fit, package, unpack
from vmtrust.context.vo import load_vo
from vmtrust.errors import ContextRefused, UserDataError

__all__ = [
    "LIMITS",
    "ContextRefused",
    "Flavour",
    "SiteProfile",
    "UserDataError",
    "VoProfile",
    "build",
    "explain",
    "load_site",
    "load_vo",
    "unpack",
]


def build(
    site: SiteProfile,
    vo: VoProfile,
    *,
    cloud: str = "openstack",
    compress: bool = False,
    flavour: Flavour | None = None,
) -> bytes:
    """The user-data for ``vo`` on ``site``, sized for ``cloud`` (``openstack`` or ``ec2``)."""
    if cloud not in LIMITS:
        raise UserDataError(f"cloud {cloud!r}: expected one of {', '.join(sorted(LIMITS))}")
    config, parts = compose(site, vo, flavour)
    return fit(package(config, parts), cloud, compress=compress)
