"""The AppDB/EGI profile: what EGI's list readers require beyond the HEPiX format.

A plain HEPiX list is all vmcatcher and vmtrust need, but the readers EGI
sites run were written against lists from the EGI AppDB and require its
``ad:*`` extensions (docs/authoring.md has the table, with the source of each
rule):

* atrope 2.x builds an image only if every key of its ``HepixImage.field_map``
  is present and not null (``ad:group``, ``ad:mpuri``, ``ad:user:fullname``,
  ``ad:user:guid``, ``ad:user:uri``, ``hv:format``, ``sl:osname`` besides the
  HEPiX ones), and one incomplete image makes it refuse the whole list; its
  2.1 release treats an image without ``dc:date:expires`` as expired (and
  crashes comparing the naive default date); its Glance dispatcher keeps
  ``hv:format`` only if it is a lower-case Glance disk format (2.0 uploads
  ``"QCOW2"`` as ``raw``) and 2.1 hands it to ``qemu-img -f``;
* cloudkeeper refuses an appliance without ``ad:mpuri``, per-image
  ``dc:date:expires`` or list ``ad:vo``;
* vmcatcher exports ``ad:mpuri`` and ``ad:vo`` to its event handlers, whose
  Glance properties cloud-info-provider and cASO read.

A list is an EGI list when it carries ``ad:vo`` (``vmtrust list new --vo``):
that is what AppDB's VO lists are, and cloudkeeper reads no list without it.
The list document is the only state, so every authoring verb knows the
profile without a flag.  :func:`complete` fills what can be derived from the
list (the publishing user from the endorser, the marketplace URI from the
list's URI, the image's expiry from the list's); :func:`problems` names what
only the endorser can give (the format and the distribution).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from urllib.parse import quote

from vmtrust import dn, imagelist

__all__ = [
    "ATROPE_IMAGE_KEYS",
    "DEFAULT_GROUP",
    "FORMATS",
    "complete",
    "default_mpuri",
    "is_egi",
    "normalise_format",
    "problems",
    "user_guid",
]

#: ``ad:group`` when none is given: the name AppDB gives an appliance's one group.
DEFAULT_GROUP = "General group"

#: ``hv:format`` values every EGI reader handles, in the form they need (lower case): Glance
#: disk formats atrope 2.0 keeps (anything else becomes ``raw``) that are also qemu-img
#: drivers atrope 2.1 converts from, and ``ova``, which both unpack.  A compressed image
#: (``raw.gz``) is not among them: atrope uploads the compressed bytes as they are.
FORMATS = ("ova", "qcow2", "raw", "vmdk", "vdi", "vhdx")

#: Image keys atrope 2.x reads with ``image_dict[key]`` and refuses when absent or null.
ATROPE_IMAGE_KEYS = (
    "ad:group",
    "ad:mpuri",
    "ad:user:fullname",
    "ad:user:guid",
    "ad:user:uri",
    "dc:description",
    "dc:identifier",
    "dc:title",
    "hv:format",
    "hv:hypervisor",
    "hv:size",
    "hv:uri",
    "hv:version",
    "sl:arch",
    "sl:checksum:sha512",
    "sl:comments",
    "sl:os",
    "sl:osname",
    "sl:osversion",
)

#: What only the endorser can say, and the ``image describe`` option that says it.
_GIVEN_BY = {"hv:format": "--format", "sl:osname": "--osname"}


def is_egi(fields: dict[str, Any]) -> bool:
    """True if the list fields carry a VO: the list is read by EGI's tools."""
    vo = fields.get("ad:vo")
    return isinstance(vo, str) and bool(vo.strip())


def normalise_format(value: str) -> str:
    """``hv:format`` as EGI's readers need it; ValueError names the accepted values."""
    fmt = value.strip().lower()
    if fmt not in FORMATS:
        raise ValueError(
            f"hv:format {value!r} is not read by every EGI tool; use one of "
            f"{', '.join(FORMATS)} (atrope uploads anything else, compressed images too, "
            "as raw)"
        )
    return fmt


def _mpuri_stem(list_uri: str, image: dict[str, Any]) -> str:
    return f"{list_uri}#{quote(str(image.get('dc:identifier', '')), safe='')}:"


def default_mpuri(list_uri: str, image: dict[str, Any]) -> str:
    """A marketplace URI for an image outside AppDB: the list's URI, the image and version.

    AppDB's ``ad:mpuri`` names one version of one image (``…/image/<uuid>:<n>/``);
    cloud-info-provider publishes it and cASO accounts usage under it, so it
    must change with ``hv:version`` and stay the same otherwise.
    """
    return _mpuri_stem(list_uri, image) + quote(str(image.get("hv:version", "")), safe="")


def _endorser(fields: dict[str, Any]) -> dict[str, Any]:
    objects = imagelist.endorser_objects(fields)
    first = objects[0] if objects else None
    return first if isinstance(first, dict) else {}


def user_guid(endorser_dn: str) -> str:
    """A stable ``ad:user:guid`` for an endorser: the RFC 4122 name-based UUID of its DN."""
    try:
        canonical = dn.normalise(endorser_dn)
    except ValueError:
        canonical = endorser_dn
    return str(uuid.uuid5(uuid.NAMESPACE_X500, canonical))


def complete(fields: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    """The image with the EGI fields derivable from its list filled in where absent.

    ``image`` is the inner ``hv:image`` object; a new object is returned.  A
    value the endorser gave is kept, except ``hv:format``, which is written in
    the case the readers need when it names a format they handle.
    """
    result = dict(image)
    endorser = _endorser(fields)
    subject = str(endorser.get("hv:dn") or "")
    creator = str(endorser.get("dc:creator") or "").strip()
    email = str(endorser.get("hv:email") or "").strip()
    derived = {
        "ad:group": DEFAULT_GROUP,
        "ad:user:fullname": creator or subject,
        "ad:user:guid": user_guid(subject),
        "ad:user:uri": f"mailto:{email}" if "@" in email else "",
        "ad:mpuri": default_mpuri(str(fields.get("hv:uri", "")), image),
        "dc:date:expires": fields.get("dc:date:expires"),
    }
    for key, value in derived.items():
        if result.get(key) is None and value is not None:
            result[key] = value
    mpuri = result.get("ad:mpuri")
    if isinstance(mpuri, str) and mpuri.startswith(_mpuri_stem(str(fields.get("hv:uri")), image)):
        # one vmtrust derived, kept in an entry whose version was changed since
        result["ad:mpuri"] = derived["ad:mpuri"]
    fmt = result.get("hv:format")
    if isinstance(fmt, str) and fmt.strip().lower() in FORMATS:
        result["hv:format"] = fmt.strip().lower()
    # Key order survives (a round trip changes only what was edited), and a sorted
    # entry, as vmtrust and vmilisttool write them, stays sorted.
    return dict(sorted(result.items())) if list(image) == sorted(image) else result


def problems(image: dict[str, Any], *, now: datetime | None = None) -> list[str]:
    """What keeps EGI's readers from reading ``image`` (the inner object), each as
    ``key: what is wrong``; an empty list when nothing does."""
    found = []
    for key in ATROPE_IMAGE_KEYS:
        if image.get(key) is None:
            option = _GIVEN_BY.get(key)
            hint = f" (give it with 'vmtrust image describe {option}')" if option else ""
            found.append(f"{key}: missing{hint}")
    for key in ("sl:osname", "ad:mpuri"):
        value = image.get(key)
        if isinstance(value, str) and not value.strip():
            found.append(f"{key}: is empty")
    fmt = image.get("hv:format")
    if isinstance(fmt, str):
        try:
            if normalise_format(fmt) != fmt:
                found.append(f"hv:format: {fmt!r} must be written in lower case")
        except ValueError as exc:
            found.append(str(exc))
    expires = image.get("dc:date:expires")
    if expires is None:
        found.append("dc:date:expires: missing (atrope 2.1 takes the image as expired)")
    elif now is not None:
        try:
            if imagelist.parse_date(expires) <= now:
                found.append(f"dc:date:expires: {expires} is past")
        except ValueError:
            pass  # the HEPiX validation names a malformed date
    return found
