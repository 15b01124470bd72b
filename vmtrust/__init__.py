"""vmtrust: endorsed virtual-machine image lists for scientific clouds.

The trust core shared by every other part: the HEPiX image list model,
S/MIME signing and verification against an IGTF trust directory, version
order, and (later) site policy, the trust record and its seal.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
