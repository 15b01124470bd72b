"""Which URLs vmtrust fetches: checked before any library sees them.

One rule for the subscriptions file (checked when it is loaded), the lists'
image URIs and every redirect target (checked by the sync before it
connects), so that a URL no library can handle — a host label of 64
characters, a port out of range, an unparsable IPv6 literal — is a clear
reason naming the URL instead of an exception from deep inside ``requests``,
``urllib3`` or the ``idna`` codec.
"""

from __future__ import annotations

import contextlib
import ipaddress
from urllib.parse import urlsplit

__all__ = ["has_credentials", "host_problem", "url_problem"]


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot be connected to as written, or None."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return None
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:  # a label longer than 63 characters, an empty label
        return f"invalid host name ({exc.__cause__ or exc})"
    if len(ascii_host.rstrip(".")) > 253:
        return "invalid host name (longer than 253 characters)"
    if any(c in ascii_host for c in "%\\ "):
        return "invalid host name"
    return None


def url_problem(url: str, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
    """Why vmtrust will not fetch ``url``, or None.

    The reason never quotes the URL (it may hold a password): callers name it,
    redacted.  ``file`` URLs, where allowed, need no host.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port  # raises for a port out of range or not a number
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in schemes:
        names = f"{', '.join(schemes[:-1])} or {schemes[-1]}" if len(schemes) > 1 else schemes[0]
        return f"not an {names} URL"
    if parts.scheme == "file":
        return None
    if not host:
        return "no host in the URL"
    problem = host_problem(host)
    if problem:
        return problem
    if port == 0:
        return "port 0"
    return None


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries user information (``user:password@``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return "@" in parts.netloc
