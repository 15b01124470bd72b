"""The nova-scheduler filter that lets only trusted images onto worker-node flavours.

Enable it in nova.conf (see ``etc/nova/nova-vmtrust.conf``)::

    [filter_scheduler]
    available_filters = nova.scheduler.filters.all_filters
    available_filters = nova_filter.TrustedImageFilter
    enabled_filters = ...,TrustedImageFilter

The class is loaded on first access, so importing this package costs nothing
until nova-scheduler asks for the filter, and the package itself can be
imported (for its options) where nova is not installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrustedImageFilter"]


def __getattr__(name: str) -> Any:
    if name == "TrustedImageFilter":
        from nova_filter.filter import TrustedImageFilter

        return TrustedImageFilter
    raise AttributeError(f"module 'nova_filter' has no attribute {name!r}")
