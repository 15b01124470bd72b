"""The sync service (issue 3): fetching, transfer, reconciler and image stores."""

__all__: list[str] = []  # a namespace: its modules are the API
