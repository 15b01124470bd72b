"""The Glance store's connections to OpenStack, made the OpenStack way.

Credentials come from a ``clouds.yaml`` cloud name (``[store_glance] cloud``,
read by :mod:`vmtrust.clouds`, which launch and the audit use too) or, as nova
and cinder read theirs, from keystoneauth options in the ``[store_glance]``
section (``auth_type``, ``auth_url``, ``endpoint_override`` …).  Either way the
result is an openstacksdk :class:`~openstack.connection.Connection`;
keystoneauth does the authentication, token renewal, endpoint discovery and
TLS.  Nothing here talks to the network: a bad option fails when the
configuration is read, an unreachable cloud when the store is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmtrust import clouds
from vmtrust.errors import ConfigError

if TYPE_CHECKING:
    from openstack.connection import Connection
    from oslo_config import cfg

__all__ = ["NEEDED_BY", "USER_AGENT", "connect", "connect_cloud", "connect_options"]

USER_AGENT = "vmtrust-sync"
NEEDED_BY = "[sync] store = glance"


def connect_cloud(cloud: str, clouds_file: str = "", timeout: float | None = None) -> Connection:
    """A connection for the clouds.yaml entry ``cloud`` (the store's or a VO project's)."""
    return clouds.connect_cloud(
        cloud, clouds_file, timeout, label="[store_glance] cloud", app_name=USER_AGENT
    )


def connect_options(conf: cfg.ConfigOpts, group: str = "store_glance") -> Connection:
    """A connection from keystoneauth options in ``[group]``."""
    openstack = clouds.openstacksdk(NEEDED_BY)
    from keystoneauth1 import exceptions as ks_exc
    from keystoneauth1 import loading as ks_loading

    section = getattr(conf, group)
    if not section.auth_type:
        raise ConfigError(
            f"[{group}] neither cloud nor auth_type is set: name a clouds.yaml cloud, or give "
            "keystoneauth options (auth_type, auth_url, ...)"
        )
    try:
        auth = ks_loading.load_auth_from_conf_options(conf, group)
        session = ks_loading.load_session_from_conf_options(conf, group, auth=auth)
    except (ks_exc.ClientException, ValueError, TypeError) as exc:
        raise ConfigError(f"[{group}] keystoneauth options: {exc}") from None
    session.timeout = section.api_timeout
    extra: dict[str, Any] = {}
    if section.endpoint_override:
        extra["image_endpoint_override"] = section.endpoint_override
    if section.region_name:
        extra["region_name"] = section.region_name
    if section.valid_interfaces:
        extra["interface"] = section.valid_interfaces[0]
    return openstack.connection.Connection(session=session, app_name=USER_AGENT, **extra)


def connect(conf: cfg.ConfigOpts) -> Connection:
    section = conf.store_glance
    if section.cloud:
        return connect_cloud(section.cloud, section.clouds_file, section.api_timeout)
    return connect_options(conf)
