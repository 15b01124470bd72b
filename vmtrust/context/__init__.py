"""Contextualisation: cloud-init user-data that makes a trusted image a worker node.

The Python API for sites and pilot frameworks::

    from vmtrust import context

    site = context.load_site("site.yaml")
    vo = context.load_vo("cms.yaml", site)        # refused keys raise ConfigError
    data = context.build(site, vo, cloud="openstack", compress=False)
    lines, problems = context.explain(data, site)  # what a user-data does

``build`` returns the final bytes, already within the cloud's size limit
(gzipped when needed) — pass them to nova's ``user_data`` (base64) or EC2's
``UserData`` as they are.
"""

from __future__ import annotations

from vmtrust.context.check import explain
from vmtrust.context.compose import compose
from vmtrust.context.profiles import SiteProfile, VoProfile, load_site, load_vo
from vmtrust.context.userdata import LIMITS, UserDataError, fit, package, unpack

__all__ = [
    "LIMITS",
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
    site: SiteProfile, vo: VoProfile, *, cloud: str = "openstack", compress: bool = False
) -> bytes:
    """The user-data for ``vo`` on ``site``, sized for ``cloud`` (``openstack`` or ``ec2``)."""
    if cloud not in LIMITS:
        raise UserDataError(f"cloud {cloud!r}: expected one of {', '.join(sorted(LIMITS))}")
    config, parts = compose(site, vo)
    return fit(package(config, parts), cloud, compress=compress)
