"""User-data bytes: a single cloud-config or a multipart MIME message, gzip, cloud limits.

The size is checked on the final bytes against the target cloud's documented
limit: EC2 takes at most 16,384 bytes before its base64 encoding; nova at most
65,535 characters of base64.  Parts are ``us-ascii`` 7bit whenever their text
allows (``utf-8`` base64 costs a third more), and the whole message is
gzipped when asked or when only that makes it fit — cloud-init gunzips it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import zlib
from email import message_from_bytes
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import yaml

from vmtrust.context.compose import Part
from vmtrust.errors import UserDataError

__all__ = ["LIMITS", "MAX_UNPACKED", "fit", "measured", "package", "unpack"]

#: cloud → (limit, what is measured)
LIMITS = {"ec2": (16384, "raw"), "openstack": (65535, "base64")}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (files, scripts) as literal blocks, readable and exact."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def _cloud_config_text(config: dict) -> str:
    body = yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
    return "#cloud-config\n" + body


def _mime_part(part: Part) -> MIMEText:
    subtype = part.content_type.split("/", 1)[1]
    try:
        part.body.encode("ascii")
        charset = "us-ascii"
    except UnicodeEncodeError:
        charset = "utf-8"
    item = MIMEText(part.body, subtype, charset)
    item.add_header("Content-Disposition", "attachment", filename=part.filename)
    return item


def package(config: dict, parts: list[Part]) -> bytes:
    """One cloud-config when there are no scripts, else multipart/mixed (config first)."""
    text = _cloud_config_text(config)
    if not parts:
        return text.encode("utf-8")
    everything = [Part("00-vmtrust.cfg", "text/cloud-config", text), *parts]
    digest = hashlib.sha256("\0".join(p.body for p in everything).encode()).hexdigest()
    message = MIMEMultipart(boundary=f"==vmtrust-{digest[:32]}==")  # same input, same bytes
    for part in everything:
        message.attach(_mime_part(part))
    return message.as_bytes()


def measured(data: bytes, cloud: str) -> int:
    _, kind = LIMITS[cloud]
    return len(data) if kind == "raw" else len(base64.b64encode(data))


def fit(data: bytes, cloud: str, *, compress: bool = False) -> bytes:
    """``data`` (gzipped if asked or needed) within ``cloud``'s limit, else a clear error."""
    limit, kind = LIMITS[cloud]
    if compress or measured(data, cloud) > limit:
        packed = gzip.compress(data, mtime=0)
        if measured(packed, cloud) > limit:
            raise UserDataError(
                f"user-data is {measured(packed, cloud)} bytes ({kind}) even gzipped "
                f"({len(data)} bytes plain); {cloud} allows {limit}"
            )
        return packed
    return data


#: What user-data may unpack to.  Clouds take at most 64 KiB, so a real user-data is far
#: below this; a gzip bomb of a megabyte would otherwise become gigabytes in memory.
MAX_UNPACKED = 16 * 1024 * 1024


def _gunzip(data: bytes, what: str) -> bytes:
    """gzip members decompressed, refused as soon as they pass :data:`MAX_UNPACKED`."""
    out = bytearray()
    try:
        while data:
            engine = zlib.decompressobj(wbits=31)
            out += engine.decompress(data, MAX_UNPACKED + 1 - len(out))
            if len(out) > MAX_UNPACKED or engine.unconsumed_tail:
                raise UserDataError(
                    f"user-data: {what} unpacks to more than {MAX_UNPACKED} bytes; refused"
                )
            if not engine.eof:
                raise UserDataError(f"user-data: {what} is damaged (truncated)")
            data = engine.unused_data
    except zlib.error as exc:
        raise UserDataError(f"user-data: {what} is damaged ({exc})") from None
    return bytes(out)


def unpack(data: bytes) -> list[Part]:
    """The parts of a user-data blob as cloud-init would see them (gzip, MIME, first line)."""
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, "gzip data")
    head = data[:4096].lower()
    if b"mime-version:" not in head:
        return [Part("part-001", _type_of(data), data.decode("utf-8", errors="replace"))]
    message = message_from_bytes(data)
    parts = []
    for index, item in enumerate(message.walk()):
        if item.is_multipart():
            continue
        payload = item.get_payload(decode=True)  # bytes, or None when there is none
        if not isinstance(payload, bytes):
            payload = b""
        kind = item.get_content_type()
        if payload[:2] == b"\x1f\x8b":
            payload = _gunzip(payload, "gzip part")
            if kind in _GZIP_TYPES:
                kind = "text/plain"  # cloud-init: type unknown until decompressed
        if kind in _RETYPED:
            # as cloud-init does: these types are decided by the first line
            kind = _type_of(payload, default=kind)
        name = item.get_filename() or f"part-{index:03d}"
        parts.append(Part(name, kind, payload.decode("utf-8", errors="replace")))
    return parts


#: content types cloud-init re-types from the payload's first line (user_data.py)
_RETYPED = ("text/plain", "text/x-not-multipart", "text/x-shellscript")
_GZIP_TYPES = ("application/gzip", "application/gzip-compressed", "application/gzipped",
               "application/x-compress", "application/x-compressed", "application/x-gunzip",
               "application/x-gzip", "application/x-gzip-compressed")  # fmt: skip
_STARTS = (
    ("#cloud-config-archive", "text/cloud-config-archive"),
    ("#cloud-config-jsonp", "text/cloud-config-jsonp"),
    ("#cloud-config", "text/cloud-config"),
    ("#cloud-boothook", "text/cloud-boothook"),
    ("#include-once", "text/x-include-once-url"),
    ("#include", "text/x-include-url"),
    ("#part-handler", "text/part-handler"),
    ("## template: jinja", "text/jinja2"),
    ("#!", "text/x-shellscript"),
)


def _type_of(data: bytes, default: str = "text/plain") -> str:
    # cloud-init compares case-insensitively after leading white space
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff").lstrip().lower()
    for start, kind in _STARTS:
        if text.startswith(start):
            return kind
    return default
