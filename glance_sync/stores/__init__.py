"""Image stores: where the sync puts trusted images (a directory, Glance, EC2).

:mod:`~glance_sync.stores.base` is the contract every store keeps;
:mod:`~glance_sync.stores.registry` builds the one ``[sync] store`` names, built-in or
from a ``vmtrust.stores`` entry point.
"""

__all__: list[str] = []  # a namespace: its modules are the API
