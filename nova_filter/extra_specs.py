"""nova's extra-spec validator for the ``vmtrust:`` namespace (nova-api hosts).

Registered through nova's own entry point group
``nova.api.extra_spec_validators`` (``pyproject.toml``), in the form of nova's
validators in ``nova/api/validation/extra_specs/``.  Once nova-api has loaded
it, the namespace is known: from microversion 2.86 on, nova's API refuses
``vmtrust:trusted_only`` with any value but ``true`` or ``false`` (``on``,
``enabled``, ``True`` …) and any other ``vmtrust:`` key (a typo such as
``vmtrust:trusted-only``) with HTTP 400, instead of storing a mark the filter
would have to guess at.  The filter still fails closed on whatever reaches it
(older microversions skip validation, and aggregate metadata has none).

Install vmtrust on nova-api hosts for this, then restart nova-api.
"""

from __future__ import annotations

from nova.api.validation.extra_specs import base

from vmtrust.enforcement import FLAVOR_KEY

__all__ = ["EXTRA_SPEC_VALIDATORS", "register"]

EXTRA_SPEC_VALIDATORS = [
    base.ExtraSpecValidator(
        name=FLAVOR_KEY,
        description=(
            "Marks a worker-node flavour: with 'true', nova-scheduler's TrustedImageFilter "
            "lets a server of this flavour boot only from an image the site's vmtrust-sync "
            "sealed, and refuses boot from volume. 'false' (or no key) leaves the flavour "
            "alone. Any other value is refused here; the filter would enforce it."
        ),
        value={
            "type": str,
            "description": "true or false, in lower case",
            "enum": ("true", "false"),
        },
    ),
]


def register() -> list[base.ExtraSpecValidator]:
    """Entry point ``nova.api.extra_spec_validators``: nova-api calls it once at start."""
    return EXTRA_SPEC_VALIDATORS
