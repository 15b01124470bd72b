"""Distinguished names in the grid's slash form (``/DC=org/DC=example/CN=Jane``).

Image lists name the endorser as OpenSSL's ``X509_NAME_oneline`` renders it,
and vmcatcher compared those strings byte for byte.  Renderings differ in
small ways (``-nameopt compat`` escapes ``/`` inside a value as ``\\/``, tools
write ``E=`` or ``emailAddress=``), so vmtrust compares *parsed* names: a
sequence of (attribute type, value) pairs, types mapped to their OID, values
compared exactly.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

# OpenSSL short names (what X509_NAME_oneline prints) for the OIDs grid
# certificates use.
_SHORT_NAMES: dict[ObjectIdentifier, str] = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.USER_ID: "UID",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.TITLE: "title",
    NameOID.GIVEN_NAME: "GN",
    NameOID.SURNAME: "SN",
    NameOID.INITIALS: "initials",
    NameOID.PSEUDONYM: "pseudonym",
    NameOID.GENERATION_QUALIFIER: "generationQualifier",
    NameOID.DN_QUALIFIER: "dnQualifier",
    NameOID.STREET_ADDRESS: "street",
    NameOID.POSTAL_CODE: "postalCode",
    NameOID.BUSINESS_CATEGORY: "businessCategory",
}

# Every spelling accepted when reading a slash-form DN, lower-cased.
_ALIASES: dict[str, str] = {name.lower(): oid.dotted_string for oid, name in _SHORT_NAMES.items()}
_ALIASES.update(
    {
        "commonname": NameOID.COMMON_NAME.dotted_string,
        "countryname": NameOID.COUNTRY_NAME.dotted_string,
        "organizationname": NameOID.ORGANIZATION_NAME.dotted_string,
        "organizationalunitname": NameOID.ORGANIZATIONAL_UNIT_NAME.dotted_string,
        "localityname": NameOID.LOCALITY_NAME.dotted_string,
        "stateorprovincename": NameOID.STATE_OR_PROVINCE_NAME.dotted_string,
        "domaincomponent": NameOID.DOMAIN_COMPONENT.dotted_string,
        "e": NameOID.EMAIL_ADDRESS.dotted_string,
        "email": NameOID.EMAIL_ADDRESS.dotted_string,
        "userid": NameOID.USER_ID.dotted_string,
        "surname": NameOID.SURNAME.dotted_string,
        "givenname": NameOID.GIVEN_NAME.dotted_string,
    }
)

Components = tuple[tuple[str, str], ...]


def _value(attribute: x509.NameAttribute) -> str:
    value = attribute.value
    return value if isinstance(value, str) else value.hex()


def slash(name: x509.Name) -> str:
    """Render ``name`` as X509_NAME_oneline does (certificate order, no escaping)."""
    parts = []
    for rdn in name.rdns:
        for attribute in rdn:
            short = _SHORT_NAMES.get(attribute.oid, attribute.oid.dotted_string)
            parts.append(f"/{short}={_value(attribute)}")
    return "".join(parts)


def components(name: x509.Name) -> Components:
    """The comparable form of a certificate name."""
    return tuple(
        (attribute.oid.dotted_string, _value(attribute)) for rdn in name.rdns for attribute in rdn
    )


def _type_key(kind: str) -> str | None:
    key = kind.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    if key and all(part.isdigit() for part in key.split(".")) and "." in key:
        return key
    return None


def _split(text: str) -> list[str]:
    """Split on ``/`` that is not escaped as ``\\/``, unescaping ``\\/`` and ``\\\\``."""
    segments: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            current.append(nxt if nxt in "/\\" else ch + nxt)
        elif ch == "/":
            segments.append("".join(current))
            current = []
        else:
            current.append(ch)
    segments.append("".join(current))
    return segments


def parse(text: str) -> Components:
    """Parse a slash-form DN into comparable components.

    A segment that does not start with a known attribute type belongs to the
    previous value: ``/CN=host/www.example.org`` is one CN, as OpenSSL printed
    it without escaping.  Raises ValueError for text that is not a DN.
    """
    if not text.startswith("/"):
        raise ValueError(f"not a slash-form DN (must start with '/'): {text!r}")
    result: list[list[str]] = []
    for segment in _split(text[1:]):
        kind, sep, value = segment.partition("=")
        key = _type_key(kind) if sep else None
        if key is None:
            if not result:
                raise ValueError(f"not a slash-form DN: {text!r}")
            result[-1][1] += "/" + segment
            continue
        result.append([key, value])
    return tuple((k, v) for k, v in result)


def same(text: str, name: x509.Name) -> bool:
    """True if the slash-form ``text`` names exactly ``name``."""
    try:
        return parse(text) == components(name)
    except ValueError:
        return False


def normalise(text: str) -> str:
    """A canonical rendering of ``text`` (used for display and pinning keys)."""
    oid_to_short = {oid.dotted_string: short for oid, short in _SHORT_NAMES.items()}
    return "".join(f"/{oid_to_short.get(k, k)}={v}" for k, v in parse(text))
