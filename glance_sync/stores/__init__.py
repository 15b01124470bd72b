"""Image stores: where the sync puts trusted images (a directory, Glance, EC2)."""

__all__: list[str] = []  # a namespace: its modules are the API
