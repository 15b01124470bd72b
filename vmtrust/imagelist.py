"""The HEPiX image list: strict reading, typed views, faithful writing.

A list is kept as the JSON document it arrived as (``raw``) plus typed,
validated views (:class:`ImageList`, :class:`Image`, :class:`Endorser`).
Keeping the document means unknown keys and AppDB's habit of sending numbers
as strings survive a read-modify-write unchanged; the typed views mean the
rest of vmtrust never touches an unvalidated value.

Validation collects every problem with its path (``hv:images[2].hv:size: not a
non-negative integer: "12x"``) instead of stopping at the first, because an
endorser fixing a list wants the whole list of mistakes at once.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vmtrust import jsonsafe
from vmtrust.errors import InvalidListStructure

__all__ = [
    "DATE_FORMAT",
    "ENDORSER_REQUIRED",
    "IMAGE_REQUIRED",
    "LIST_REQUIRED",
    "MAY_BE_EMPTY",
    "Endorser",
    "Image",
    "ImageList",
    "dumps",
    "endorser_objects",
    "format_date",
    "image_objects",
    "list_fields",
    "loads",
    "parse_date",
    "validate",
]

DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# [0-9], not \d: \d and strptime would also take "٢٠٢٤-05-01T08:00:00Z".
_DATE_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z\Z")
_SPACE_RE = re.compile(r"\s")  # the characters str.isspace() finds
_SHA512_RE = re.compile(r"[0-9a-fA-F]{128}\Z")
_UINT_RE = re.compile(r"[0-9]{1,20}\Z")
_URI_SCHEMES = ("http://", "https://", "file:")
#: Image URIs may also name OCI artefacts (``oci://registry/repository@sha256:…``),
#: which only a subscription of type oci fetches.
_IMAGE_URI_SCHEMES = (*_URI_SCHEMES, "oci://")

#: List fields a valid list must carry (besides endorser and images).
LIST_REQUIRED = (
    "dc:identifier",
    "dc:title",
    "dc:description",
    "dc:source",
    "dc:date:created",
    "dc:date:expires",
    "hv:version",
    "hv:uri",
)
#: Image fields a valid image must carry.
IMAGE_REQUIRED = (
    "dc:identifier",
    "dc:title",
    "dc:description",
    "hv:uri",
    "hv:size",
    "sl:checksum:sha512",
    "sl:arch",
    "sl:os",
    "sl:osversion",
    "sl:comments",
    "hv:hypervisor",
    "hv:version",
)
ENDORSER_REQUIRED = ("hv:dn", "hv:ca", "hv:email", "dc:creator")
#: Required string fields that may legitimately be empty (AppDB and HVT send "").
MAY_BE_EMPTY = frozenset({"dc:description", "dc:source", "sl:comments", "hv:email", "dc:creator"})


def format_date(moment: datetime) -> str:
    """The only date form HEPiX tools accept: ``YYYY-MM-DDTHH:MM:SSZ`` in UTC."""
    return moment.astimezone(UTC).strftime(DATE_FORMAT)


def parse_date(text: str) -> datetime:
    """Parse the exact HEPiX date form; raise ValueError for anything else."""
    if type(text) is not str:  # a str subclass could hash unlike its text: no cache
        return _parse_date(text)
    return _parse_date_cached(text)


def _parse_date(text: str) -> datetime:
    match = _DATE_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError("not a date of the form YYYY-MM-DDTHH:MM:SSZ")
    # The constructor checks the ranges (month 13, 30 February) as strptime did, at a
    # tenth of its cost: a 10,000-image list has 10,000 dates.
    year, month, day, hour, minute, second = map(int, match.groups())
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


#: Lists repeat their dates (one expiry for every image, the same day for many), and a
#: datetime is immutable, so parsed dates are shared; bounded, so a hostile list of
#: distinct dates costs what it did without the cache.  Failures are not cached.
_parse_date_cached = functools.lru_cache(maxsize=1024)(_parse_date)


@dataclass(frozen=True)
class Endorser:
    """An endorser principal: certificate subject and issuer in slash form."""

    dn: str
    ca: str
    creator: str = ""
    email: str = ""


@dataclass(frozen=True)
class Image:
    identifier: str
    title: str
    description: str
    uri: str
    size: int
    sha512: str  # lower-case hex
    arch: str
    os: str
    osversion: str
    comments: str
    hypervisor: str
    version: str
    format: str | None = None
    osname: str | None = None
    core_minimum: int | None = None
    ram_minimum: int | None = None
    expires: datetime | None = None
    mpuri: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class ImageList:
    identifier: str
    title: str
    description: str
    source: str
    created: datetime
    expires: datetime
    version: str
    uri: str
    endorsers: tuple[Endorser, ...]
    images: tuple[Image, ...]
    vo: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def image(self, identifier: str) -> Image | None:
        for img in self.images:
            if img.identifier == identifier:
                return img
        return None


# --- validation ------------------------------------------------------------------


class _Checker:
    """Collects problems while reading typed values out of JSON objects."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def string(self, obj: dict[str, Any], key: str, path: str, *, required: bool = True) -> Any:
        value = obj.get(key)
        # The common case first, without building the path: a 10,000-image list
        # has 200,000 fields, and this is most of the validation's time.
        if type(value) is str and (not required or value.strip() or key in MAY_BE_EMPTY):
            return value
        where = f"{path}{key}"
        if value is None:
            if required:
                self.fail(where, "missing" if key not in obj else "is null")
            return None
        if not isinstance(value, str):
            self.fail(where, f"not a string: {_show(value)}")
            return None
        if required and not value.strip() and key not in MAY_BE_EMPTY:
            self.fail(where, "is empty")
            return None
        return value

    def converted(
        self,
        obj: dict[str, Any],
        key: str,
        path: str,
        convert: Callable[[Any], Any],
        message: str,
        *,
        required: bool = True,
    ) -> Any:
        if key not in obj:
            if required:
                self.fail(f"{path}{key}", "missing")
            return None
        value = obj[key]
        try:
            return convert(value)
        except (ValueError, TypeError):
            self.fail(f"{path}{key}", f"{message}: {_show(value)}")
            return None


def _show(value: Any) -> str:
    # A deeply nested value in a field that wants a scalar: json.dumps could
    # hit the recursion limit, and the message would be unreadable anyway.
    if isinstance(value, dict | list) and jsonsafe.depth(value, 4) > 4:
        return "[...]" if isinstance(value, list) else "{...}"
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _uint(value: Any) -> int:
    """A non-negative integer, sent as a JSON number or (AppDB) a decimal string."""
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and _UINT_RE.match(value):
        return int(value)
    raise ValueError


def _sha512(value: Any) -> str:
    if isinstance(value, str) and _SHA512_RE.match(value):
        return value.lower()
    raise ValueError


def _version(value: Any) -> str:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    raise ValueError


def _uri(value: Any, schemes: tuple[str, ...] = _URI_SCHEMES) -> str:
    if isinstance(value, str) and value.startswith(schemes) and not _SPACE_RE.search(value):
        return value
    raise ValueError


def _image_uri(value: Any) -> str:
    return _uri(value, _IMAGE_URI_SCHEMES)


def list_fields(document: Any) -> dict[str, Any] | None:
    """The object holding the list fields: inside ``hv:imagelist`` or (legacy) the top level."""
    if not isinstance(document, dict):
        return None
    inner = document.get("hv:imagelist", document)
    return inner if isinstance(inner, dict) else None


def endorser_objects(fields: dict[str, Any]) -> list[Any]:
    """The ``hv:x509`` objects of ``hv:endorser``, object or (vmcaster) array form."""
    value = fields.get("hv:endorser")
    entries = value if isinstance(value, list) else [value]
    return [e.get("hv:x509") if isinstance(e, dict) else None for e in entries]


def image_objects(fields: dict[str, Any]) -> Iterator[tuple[int, Any]]:
    images = fields.get("hv:images")
    if isinstance(images, list):
        for index, entry in enumerate(images):
            yield index, entry.get("hv:image") if isinstance(entry, dict) else None


def _check_unknown_depth(
    c: _Checker, obj: dict[str, Any], known: set[str] | frozenset[str], path: str
) -> None:
    """Refuse deep nesting under keys validation does not otherwise read.

    Every object of the list structure (document, list, endorser wrapper,
    hv:x509, image wrapper, image) is checked, so a valid list is bounded in
    depth everywhere and can be written back with json.dumps.
    """
    # A set operation finds the unknown keys (most are known); a scalar has no depth, so
    # AppDB's ad:* strings need no walk.  Problems are reported in the document's order.
    deep = {
        key
        for key in obj.keys() - known
        if isinstance(obj[key], (dict, list)) and jsonsafe.depth(obj[key]) > jsonsafe.MAX_DEPTH
    }
    for key in obj if deep else ():
        if key in deep:
            c.fail(f"{path}{key}", "nesting is too deep")


def _read_endorsers(c: _Checker, fields: dict[str, Any]) -> tuple[Endorser, ...]:
    if "hv:endorser" not in fields:
        c.fail("hv:endorser", "missing")
        return ()
    value = fields["hv:endorser"]
    if isinstance(value, list) and not value:
        c.fail("hv:endorser", "is an empty array")
        return ()
    endorsers = []
    wrappers = value if isinstance(value, list) else [value]
    for index, obj in enumerate(endorser_objects(fields)):
        outer = "hv:endorser." if not isinstance(value, list) else f"hv:endorser[{index}]."
        path = f"{outer}hv:x509."
        if isinstance(wrappers[index], dict):
            _check_unknown_depth(c, wrappers[index], {"hv:x509"}, outer)
        if not isinstance(obj, dict):
            c.fail(path.rstrip("."), "missing or not an object")
            continue
        dn, ca, email, creator = (c.string(obj, key, path) for key in ENDORSER_REQUIRED)
        _check_unknown_depth(c, obj, set(ENDORSER_REQUIRED), path)
        if dn and ca:
            endorsers.append(Endorser(dn=dn, ca=ca, creator=creator or "", email=email or ""))
    return tuple(endorsers)


_IMAGE_KNOWN = {
    *IMAGE_REQUIRED,
    "hv:format",
    "sl:osname",
    "hv:core_minimum",
    "hv:ram_minimum",
    "dc:date:expires",
    "ad:mpuri",
}


def _read_image(c: _Checker, obj: dict[str, Any], path: str) -> Image | None:
    before = len(c.problems)
    s = {
        key: c.string(obj, key, path)
        for key in (
            "dc:identifier",
            "dc:title",
            "dc:description",
            "sl:arch",
            "sl:os",
            "sl:osversion",
            "sl:comments",
            "hv:hypervisor",
        )
    }
    uri = c.converted(obj, "hv:uri", path, _image_uri, "not an http, https, file or oci URL")
    size = c.converted(obj, "hv:size", path, _uint, "not a non-negative integer")
    sha = c.converted(obj, "sl:checksum:sha512", path, _sha512, "not 128 hexadecimal digits")
    version = c.converted(obj, "hv:version", path, _version, "not a version string")
    fmt = c.string(obj, "hv:format", path, required=False)
    osname = c.string(obj, "sl:osname", path, required=False)
    mpuri = c.string(obj, "ad:mpuri", path, required=False)
    cores = c.converted(
        obj, "hv:core_minimum", path, _uint, "not a non-negative integer", required=False
    )
    ram = c.converted(
        obj, "hv:ram_minimum", path, _uint, "not a non-negative integer", required=False
    )
    expires = c.converted(
        obj,
        "dc:date:expires",
        path,
        parse_date,
        "not a date of the form YYYY-MM-DDTHH:MM:SSZ",
        required=False,
    )
    _check_unknown_depth(c, obj, _IMAGE_KNOWN, path)
    if len(c.problems) > before:
        return None
    return Image(
        identifier=s["dc:identifier"],
        title=s["dc:title"],
        description=s["dc:description"],
        uri=uri,
        size=size,
        sha512=sha,
        arch=s["sl:arch"],
        os=s["sl:os"],
        osversion=s["sl:osversion"],
        comments=s["sl:comments"],
        hypervisor=s["hv:hypervisor"],
        version=version,
        format=fmt,
        osname=osname,
        core_minimum=cores,
        ram_minimum=ram,
        expires=expires,
        mpuri=mpuri,
        raw=obj,
    )


_LIST_KNOWN = {*LIST_REQUIRED, "hv:endorser", "hv:images", "ad:vo"}


def validate(document: Any) -> ImageList:
    """Turn a decoded JSON document into an :class:`ImageList` or raise
    :class:`InvalidListStructure` listing every problem found."""
    c = _Checker()
    fields = list_fields(document)
    if fields is None:
        raise InvalidListStructure(["(top level): not a JSON object with hv:imagelist"])
    s = {
        key: c.string(fields, key, "")
        for key in ("dc:identifier", "dc:title", "dc:description", "dc:source")
    }
    vo = c.string(fields, "ad:vo", "", required=False)
    created = c.converted(
        fields, "dc:date:created", "", parse_date, "not a date of the form YYYY-MM-DDTHH:MM:SSZ"
    )
    expires = c.converted(
        fields, "dc:date:expires", "", parse_date, "not a date of the form YYYY-MM-DDTHH:MM:SSZ"
    )
    version = c.converted(fields, "hv:version", "", _version, "not a version string")
    uri = c.converted(fields, "hv:uri", "", _uri, "not an http, https or file URL")
    endorsers = _read_endorsers(c, fields)
    images: list[Image] = []
    if "hv:images" not in fields:
        c.fail("hv:images", "missing")
    elif not isinstance(fields["hv:images"], list):
        c.fail("hv:images", f"not an array: {_show(fields['hv:images'])}")
    seen: dict[str, int] = {}
    for index, obj in image_objects(fields):
        path = f"hv:images[{index}]."
        entry = fields["hv:images"][index]
        if isinstance(entry, dict):
            _check_unknown_depth(c, entry, {"hv:image"}, path)
        if not isinstance(obj, dict):
            c.fail(f"hv:images[{index}]", 'not an object of the form {"hv:image": {...}}')
            continue
        image = _read_image(c, obj, path)
        if image is None:
            continue
        if image.identifier in seen:
            c.fail(
                f"{path}dc:identifier",
                f"duplicate of hv:images[{seen[image.identifier]}]: {image.identifier}",
            )
            continue
        seen[image.identifier] = index
        images.append(image)
    if created and expires and expires <= created:
        c.fail("dc:date:expires", "is not after dc:date:created")
    _check_unknown_depth(c, fields, _LIST_KNOWN, "")
    if fields is not document:
        _check_unknown_depth(c, document, {"hv:imagelist"}, "(top level).")
    if c.problems:
        raise InvalidListStructure(c.problems)
    return ImageList(
        identifier=s["dc:identifier"],
        title=s["dc:title"],
        description=s["dc:description"],
        source=s["dc:source"],
        created=created,
        expires=expires,
        version=version,
        uri=uri,
        endorsers=endorsers,
        images=tuple(images),
        vo=vo,
        raw=document,
    )


def loads(data: bytes, *, max_bytes: int = jsonsafe.DEFAULT_MAX_BYTES) -> ImageList:
    """Parse and validate the JSON bytes of a list (not its S/MIME envelope)."""
    return validate(jsonsafe.loads(data, what="image list", max_bytes=max_bytes))


def dumps(document: dict[str, Any]) -> bytes:
    """Serialise a list document the way HEPiX tools write it (indent 4, ASCII, LF).

    Key order is kept as it is in the document so that a round trip changes
    nothing but what was edited.
    """
    return (json.dumps(document, indent=4, ensure_ascii=True) + "\n").encode("ascii")
