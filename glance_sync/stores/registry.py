"""The store ``[sync] store`` names, built from vmtrust.conf: one registry for every caller.

``vmtrust-sync`` and the site commands (``vmtrust images``, ``vmtrust status``)
ask here, so a store is chosen and configured one way.  The built-in stores are
``local``, ``glance`` and ``ec2``; each module is imported only when its store
is chosen (the Glance store needs openstacksdk, the EC2 store boto3).  Another
package adds a store with an entry point in the group ``vmtrust.stores``: its
name is the ``[sync] store`` value, its object a :class:`~glance_sync.stores.
base.Store` subclass, which registers and reads its own options in
``from_conf`` (docs/decisions/0004-store-and-command-registry.md).  A plug-in
never replaces a built-in store: where trusted images go does not change
because some package was installed.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from glance_sync.stores.base import Store, StoreContext
from vmtrust.errors import ConfigError

if TYPE_CHECKING:
    from oslo_config import cfg

LOG = logging.getLogger("vmtrust.stores")
GROUP = "vmtrust.stores"
_BUILT_IN = {
    "local": "glance_sync.stores.local:LocalStore",
    "glance": "glance_sync.stores.glance:GlanceStore",
    "ec2": "glance_sync.stores.ec2:EC2Store",
}

__all__ = ["GROUP", "StoreContext", "available", "store_from_conf"]


def available() -> dict[str, EntryPoint]:
    """Every store that can be named: the built-in ones, then the plug-ins (first one wins)."""
    found = {name: EntryPoint(name, value, GROUP) for name, value in _BUILT_IN.items()}
    for plugin in entry_points(group=GROUP):
        taken = found.setdefault(plugin.name, plugin)
        if taken.value != plugin.value:
            kind = "the built-in store" if plugin.name in _BUILT_IN else "the plug-in"
            LOG.warning(
                "store plug-in %s (%s) ignored: %s is %s %s",
                plugin.name, plugin.value, plugin.name, kind, taken.value,
            )  # fmt: skip
    return found


def store_from_conf(conf: cfg.ConfigOpts, context: StoreContext) -> Store:
    """The store ``[sync] store`` names, as its section configures it; nothing contacted."""
    name = conf.sync.store
    stores = available()
    where = stores.get(name)
    if where is None:
        raise ConfigError(
            f"[sync] store = {name}: no such store (available: {', '.join(sorted(stores))})"
        )
    try:
        kind = where.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"[sync] store = {name}: {where.value} cannot be loaded: {type(exc).__name__}: {exc}"
        ) from None
    if not (isinstance(kind, type) and issubclass(kind, Store)):
        raise ConfigError(f"[sync] store = {name}: {where.value} is not a store")
    return kind.from_conf(conf, context)
