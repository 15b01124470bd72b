"""What makes a server a worker-node server: the flavour and aggregate marks, read fail-closed.

The nova filter (which enforces at scheduling) and ``vmtrust audit`` (which
finds what runs anyway) must agree on which flavours and hosts are marked, so
the keys and the rule for their values live here, once.

A mark is its key being present.  Its value switches enforcement off only
when it is a recognised false (``false``, ``0``, ``no``, ``off``, ``f``,
``n``, any case): a typo, ``enabled``, or an empty string keeps enforcement on,
because the operator set the key and meant something by it.  Values that are
neither a recognised true nor a recognised false are reported by
:func:`unusual`, so the filter can log them.  nova's API refuses anything but
``true`` and ``false`` for the flavour key when ``nova_filter.extra_specs`` is
installed; aggregate metadata has no such validation in nova.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "AGGREGATE_KEY",
    "FALSE_VALUES",
    "FLAVOR_KEY",
    "TRUE_VALUES",
    "aggregate_enforces",
    "enforces",
    "flavour_enforces",
    "unusual",
]

#: Flavour extra spec (validated by ``nova_filter.extra_specs`` in nova's API).
FLAVOR_KEY = "vmtrust:trusted_only"
#: Host aggregate metadata key.
AGGREGATE_KEY = "vmtrust_trusted_only"

#: oslo.utils' boolean strings, so the values nova's own code accepts mean the same here.
TRUE_VALUES = frozenset({"1", "t", "true", "on", "y", "yes"})
FALSE_VALUES = frozenset({"0", "f", "false", "off", "n", "no"})


def _normal(value: object) -> str:
    return str(value).strip().lower()


def enforces(value: object | None) -> bool:
    """Whether a mark with this value enforces; ``None`` (no mark) does not."""
    return value is not None and _normal(value) not in FALSE_VALUES


def unusual(value: object | None) -> bool:
    """A present value that is neither a recognised true nor a recognised false."""
    return value is not None and _normal(value) not in TRUE_VALUES | FALSE_VALUES


def flavour_enforces(extra_specs: Mapping[str, object] | None) -> bool:
    return enforces((extra_specs or {}).get(FLAVOR_KEY))


def aggregate_enforces(metadata: Mapping[str, object] | None) -> bool:
    return enforces((metadata or {}).get(AGGREGATE_KEY))
