"""vmtrust: endorsed virtual-machine image lists for scientific clouds.

The trust core that ``glance_sync`` and ``nova_filter`` build on, and that imports
neither of them: the HEPiX image list model, S/MIME signing and verification
against an IGTF trust directory, the site's subscriptions and approval policy, the
trust record and its seal with the one rule for "is this stored image trusted"
(:mod:`vmtrust.trust`), the error catalogue, contextualisation, launch and audit
for OpenStack and EC2, and the ``vmtrust`` command.  The module map is in
docs/architecture.md; each module's ``__all__`` is its API.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
