"""openstacksdk connections from a clouds.yaml entry: one home for the sync, launch and audit.

The sync (``[store_glance] cloud``), ``vmtrust launch --cloud`` and ``vmtrust
audit --cloud`` all name a cloud of clouds.yaml the same way; keystoneauth does
the authentication, token renewal, endpoint discovery and TLS.  It lives in the
trust core because the core may not import the sync service (the import rules
in docs/architecture.md) and the sync may import the core.  Nothing here talks
to the network: an unknown cloud or a bad file fails here, an unreachable
cloud when the connection is first used.  openstacksdk is imported only when a
connection is made, so the commands that never need it do not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmtrust.errors import ConfigError, VmtrustError

if TYPE_CHECKING:
    from openstack.connection import Connection

__all__ = ["connect_cloud", "openstacksdk", "request"]


def openstacksdk(needed_by: str) -> Any:
    """The ``openstack`` module, or one line saying how to install it for ``needed_by``."""
    try:
        import openstack
    except ImportError:
        raise ConfigError(
            f"{needed_by} needs openstacksdk: pip install 'vmtrust[glance]'"
        ) from None
    return openstack


def connect_cloud(
    cloud: str,
    clouds_file: str = "",
    timeout: float | None = None,
    *,
    label: str,
    app_name: str,
) -> Connection:
    """A connection for the clouds.yaml entry ``cloud``.

    ``label`` names where the cloud came from in messages (``[store_glance] cloud``,
    ``audit: cloud``); ``app_name`` is what the cloud's logs see in the user agent.
    Environment variables (``OS_*``) are not read: the named entry is the whole truth.
    """
    openstack = openstacksdk(f"{label} {cloud}")
    from openstack import config as os_config
    from openstack import exceptions as os_exc

    files = [clouds_file] if clouds_file else None
    try:
        config = os_config.OpenStackConfig(config_files=files, load_envvars=False)
        options: dict[str, Any] = {"api_timeout": timeout} if timeout else {}
        region = config.get_one(cloud=cloud, **options)
    except (os_exc.ConfigException, os_exc.SDKException, OSError, ValueError) as exc:
        where = f" in {clouds_file}" if clouds_file else ""
        raise ConfigError(f"{label} {cloud}{where}: {exc}") from None
    return openstack.connection.Connection(config=region, app_name=app_name)


def request(
    conn: Any,
    service: str,
    method: str,
    url: str,
    ok: tuple[int, ...],
    *,
    error: type[VmtrustError],
    **kw: Any,
) -> Any:
    """One REST call through the connection's ``service`` adapter (``compute``, ``image``).

    ``launch`` and ``audit`` call nova and Glance this way, not through openstacksdk's
    proxies (some of which ignore HTTP errors), and check every status: a keystoneauth
    failure or a status outside ``ok`` raises ``error`` as one line naming the call,
    with at most 200 characters of the answer.
    """
    from keystoneauth1 import exceptions as ks_exc

    what = f"{service} {method} {url}"
    try:
        reply = getattr(conn, service).request(url, method, raise_exc=False, **kw)
    except ks_exc.ClientException as exc:
        raise error(f"{what}: {' '.join(str(exc).split())[:200]}") from None
    if reply.status_code not in ok:
        raise error(f"{what}: HTTP {reply.status_code} {' '.join(reply.text.split())[:200]}")
    return reply
