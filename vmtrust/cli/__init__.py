"""The vmtrust command line."""

__all__: list[str] = []  # a namespace: its modules are the API
