"""OCI registries as image sources: listing, manifests, cosign signatures, layer downloads."""
