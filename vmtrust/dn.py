"""Distinguished names in the grid's slash form (``/DC=org/DC=example/CN=Jane``).

Image lists name the endorser as OpenSSL's ``X509_NAME_oneline`` renders it,
and vmcatcher compared those strings byte for byte.  Renderings differ in
small ways, so vmtrust compares *parsed* names: a sequence of (attribute
type, value) pairs, types mapped to their OID, values compared exactly.

What :func:`parse` understands (all seen from OpenSSL, 1.x and 3.x):

* ``/`` between attributes; OpenSSL 3 also joins the attributes of a
  multi-valued RDN with ``+`` (``/CN=Jane+UID=jd``);
* OpenSSL 3 escapes ``/`` and ``+`` inside a value as ``\\/`` and ``\\+``;
  OpenSSL 1.x does not, so an unescaped ``/`` or ``+`` that is not followed by
  a known attribute type and ``=`` belongs to the value (``/CN=host/www.example.org``);
* both print every byte outside ``' '``..``'~'`` as ``\\xHH`` (the UTF-8 of a
  UTF8String, the UTF-16 of a BMPString); a backslash itself is never escaped;
* attribute types in any case, OpenSSL's short and long names, ``E=`` and
  ``Email=``, dotted OIDs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import cast

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

__all__ = [
    "Attribute",
    "Components",
    "attributes",
    "components",
    "names",
    "normalise",
    "parse",
    "same",
    "slash",
]

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
    NameOID.POSTAL_ADDRESS: "postalAddress",
    NameOID.JURISDICTION_COUNTRY_NAME: "jurisdictionC",
    NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME: "jurisdictionST",
    NameOID.JURISDICTION_LOCALITY_NAME: "jurisdictionL",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
    NameOID.UNSTRUCTURED_NAME: "unstructuredName",
    NameOID.X500_UNIQUE_IDENTIFIER: "x500UniqueIdentifier",
    NameOID.INN: "INN",
    NameOID.OGRN: "OGRN",
    NameOID.SNILS: "SNILS",
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

_OID_RE = re.compile(r"[0-9]+(\.[0-9]+)+\Z")
_HEX_BYTE = re.compile(r"x([0-9A-Fa-f]{2})")
# The bytes X509_NAME_oneline copies as they are; every other byte becomes \xHH.
_PRINTABLE = re.compile(r"[ -~]*\Z")
# How the value of each string type reaches X509_NAME_oneline as bytes (UTF-8 if absent).
_WIRE_CODECS = {"BMPString": "utf-16-be", "UniversalString": "utf-32-be"}


#: One attribute of a name, in certificate order: the dotted OID, the value (text; the hex
#: of a binary value) and the ASN.1 string type it was encoded as ("" when not known).
#: :mod:`vmtrust.truststore` reads CA names without cryptography's x509 parser into these.
Attribute = tuple[str, str, str]

_SHORT_BY_DOTTED = {oid.dotted_string: short for oid, short in _SHORT_NAMES.items()}


def _value(attribute: x509.NameAttribute) -> str:
    value = attribute.value
    return value if isinstance(value, str) else value.hex()


def attributes(name: x509.Name) -> list[Attribute]:
    """The attributes of ``name``, in certificate order."""
    return [
        (
            attribute.oid.dotted_string,
            _value(attribute),
            # cryptography keeps the ASN.1 string type in the private ``_type``
            getattr(getattr(attribute, "_type", None), "name", ""),
        )
        for rdn in name.rdns
        for attribute in rdn
    ]


def _render(value: str, codec: str = "utf-8") -> str:
    """``value`` as X509_NAME_oneline prints it: bytes outside ' '..'~' as ``\\xHH``."""
    if codec == "utf-8" and _PRINTABLE.match(value):
        return value
    return "".join(
        chr(byte) if 0x20 <= byte <= 0x7E else f"\\x{byte:02X}"
        for byte in value.encode(codec, "surrogatepass")
    )


def slash(name: x509.Name | Sequence[Attribute]) -> str:
    """Render ``name`` as X509_NAME_oneline does (certificate order, ``/`` between attributes).

    This is the OpenSSL 1.x form vmcatcher and vmcaster wrote into lists:
    ``/`` and ``+`` inside values are not escaped, non-printable bytes are
    (``/CN=M\\xC3\\xBCller``).  :func:`parse` reads it back, and OpenSSL 3's form.
    """
    return "".join(
        f"/{_SHORT_BY_DOTTED.get(oid, oid)}={_render(value, _WIRE_CODECS.get(kind, 'utf-8'))}"
        for oid, value, kind in (attributes(name) if isinstance(name, x509.Name) else name)
    )


def components(name: x509.Name | Sequence[Attribute]) -> Components:
    """The comparable form of a certificate name."""
    attrs = attributes(name) if isinstance(name, x509.Name) else name
    return tuple((oid, value) for oid, value, _ in attrs)


def _type_key(kind: str) -> str | None:
    key = kind.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    if _OID_RE.match(key):
        return key
    return None


# A segment is a list of units: a str (text as written, or an escaped "/" or
# "+") or an int (one byte written as \xHH).
_Units = list[str | int]


def _split(text: str) -> list[tuple[str, str, _Units]]:
    """Split at unescaped ``/`` and ``+``: (separator, literal text, units) per segment.

    The literal text (escapes left as written) is used to find the attribute
    type; the units carry the unescaped value.
    """
    segments: list[tuple[str, str, _Units]] = []
    separator, start = "/", 0
    units: _Units = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1 : i + 2]
            hex_byte = _HEX_BYTE.match(text, i + 1)
            if nxt in ("/", "+"):
                units.append(nxt)
                i += 2
                continue
            if hex_byte:
                units.append(int(hex_byte.group(1), 16))
                i = hex_byte.end()
                continue
            units.append(ch)  # OpenSSL never escapes a backslash itself
        elif ch in "/+":
            segments.append((separator, text[start:i], units))
            separator, start, units = ch, i + 1, []
        else:
            units.append(ch)
        i += 1
    segments.append((separator, text[start:], units))
    return segments


def _decode(units: _Units) -> str:
    """The value of ``units``; bytes written as ``\\xHH`` are decoded as OpenSSL wrote them."""
    if not any(isinstance(u, int) for u in units):
        return "".join(cast("list[str]", units))  # only text: checked above
    raw = b"".join(bytes([u]) if isinstance(u, int) else u.encode() for u in units)
    # A UTF8String (the usual case); the NUL-padded UniversalString and
    # BMPString forms (only when NULs sit where those put them); else single
    # bytes (a T61String in Latin-1).
    candidates = ["utf-8"]
    if len(raw) % 4 == 0 and not any(raw[0::4]):
        candidates.append("utf-32-be")
    if len(raw) % 2 == 0 and 0 in raw[0::2]:
        candidates.append("utf-16-be")
    for codec in candidates:
        try:
            value = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        if "\x00" not in value:
            return value
    return raw.decode("latin-1")


def parse(text: str) -> Components:
    """Parse a slash-form DN into comparable components.

    A segment that does not start with a known attribute type belongs to the
    previous value: ``/CN=host/www.example.org`` is one CN, as OpenSSL 1.x
    printed it without escaping.  Raises ValueError for text that is not a DN.
    """
    if not text.startswith("/"):
        raise ValueError(f"not a slash-form DN (must start with '/'): {text!r}")
    result: list[tuple[str, _Units]] = []
    for separator, literal, units in _split(text[1:]):
        kind, sep, _ = literal.partition("=")
        key = _type_key(kind) if sep else None
        if key is None:
            if not result:
                raise ValueError(f"not a slash-form DN: {text!r}")
            result[-1][1].extend([separator, *units])
            continue
        # The value starts after the first "=" of the segment.
        result.append((key, units[units.index("=") + 1 :]))
    return tuple((key, _decode(units)) for key, units in result)


def same(text: str, name: x509.Name) -> bool:
    """True if the slash-form ``text`` names exactly ``name``."""
    try:
        return parse(text) == components(name)
    except ValueError:
        return False


def names(subject: str, issuer: str, cert: x509.Certificate) -> bool:
    """True if slash-form ``subject`` and ``issuer`` name ``cert`` (as ``hv:dn``/``hv:ca``
    must name the certificate that signed the list)."""
    return same(subject, cert.subject) and same(issuer, cert.issuer)


def normalise(text: str) -> str:
    """One rendering for every way of writing the same name (short attribute names,
    upper-case ``\\xHH``): what a value derived from a DN, such as the EGI profile's
    ``ad:user:guid``, is computed from, so that it does not depend on the tool that
    printed the DN.  ValueError for text that is not a DN."""
    return "".join(f"/{_SHORT_BY_DOTTED.get(k, k)}={_render(v)}" for k, v in parse(text))
