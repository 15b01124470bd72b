"""OCI registries as image sources: listing, manifests, cosign signatures, layer downloads."""

__all__: list[str] = []  # a namespace: its modules are the API
