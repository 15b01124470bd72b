"""The sync service, ``vmtrust-sync``: signed lists in, trusted images out.

A pass fetches and verifies every subscription's list (:mod:`glance_sync.lists`),
plans what the store should hold (:mod:`glance_sync.plan`), pulls each image through
download, unpacking and inspection, and commits it to a store (a directory, Glance,
EC2: :mod:`glance_sync.stores`) with its trust record and seal
(:mod:`glance_sync.service`).  It also gives ``vmtrust`` the site commands
``images`` and ``status`` (:mod:`glance_sync.sitecmd`, as entry points), and OCI
registries as sources (:mod:`glance_sync.oci`).
"""

__all__: list[str] = []  # a namespace: its modules are the API
