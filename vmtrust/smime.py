"""The S/MIME envelope of a signed image list: split it, and make one.

Endorsers sign with ``openssl smime -sign`` (or M2Crypto, which is OpenSSL):
a ``multipart/signed`` message whose first part is the list JSON and whose
second part is a detached PKCS#7 signature.  The first part must be taken
*byte for byte* from the message, because the signature covers those bytes.
Python's ``email`` package rewrites parts as it parses them, so the
multipart body is split here on the boundary exactly as RFC 2046 and
OpenSSL's ``SMIME_read_PKCS7`` do; the ``email`` package is still used for
what it is good at, the header fields and their parameters.

Signing is delegated entirely to ``cryptography``'s PKCS7SignatureBuilder,
whose S/MIME output ``openssl smime -verify`` accepts (tested).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from vmtrust.errors import SmimeFormatError

__all__ = [
    "OPAQUE_TYPES",
    "SIGNATURE_TYPES",
    "SignedMessage",
    "canonical",
    "is_smime",
    "sign",
    "split",
    "strip_text_headers",
]

SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")
#: S/MIME with the content inside the signature (``openssl smime -sign -nodetach``)
OPAQUE_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
#: A line end as OpenSSL's ``strip_eol`` sees it: any run of CRs before the LF.
_EOL = re.compile(rb"\r*\n")
#: What OpenSSL's base64 decoder skips; anything else is corruption.
_BASE64_SPACE = re.compile(rb"[ \t\r\n]+")


@dataclass(frozen=True)
class SignedMessage:
    """The two parts of a clear-signed message."""

    content: bytes  #: part 1 as signed: line ends canonicalised to CRLF
    signature: bytes  #: DER of the PKCS#7 SignedData
    micalg: str | None  #: the digest the sender announced (informative only)


def canonical(data: bytes) -> bytes:
    """S/MIME canonical text: every line end CRLF, as OpenSSL hashes it.

    This is why a list whose line ends were turned into LF on the way still
    verifies, as it does with ``openssl smime -verify``.  Like OpenSSL's
    ``strip_eol``, CRs directly before a line end are part of the line end
    (``"a\\r\\r\\n"`` hashes as ``"a\\r\\n"``), so both accept the same bytes.
    """
    if b"\r" not in data:  # LF-only text: the common case after a trip through git or an editor
        return data.replace(b"\n", b"\r\n")
    crlf = data.count(b"\r\n")
    if crlf == data.count(b"\r") == data.count(b"\n"):
        # Every CR starts a CRLF and every LF ends one: already canonical, as a list
        # signed by OpenSSL arrives.  Three counts cost a third of two copies.
        return data
    if b"\r\r" not in data:  # at most one CR before a line end: bytes.replace is 10x a regex
        return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return _EOL.sub(b"\r\n", data)


def is_smime(data: bytes) -> bool:
    """Cheap test: does ``data`` look like an S/MIME message rather than JSON?

    Opaque S/MIME counts, so that :func:`split` can say it is not supported
    rather than a JSON parser saying it is not JSON.
    """
    head = data.lstrip()[:1]
    start = data[:4096].lower()
    return head not in (b"{", b"[") and (
        b"multipart/signed" in start or any(kind.encode() in start for kind in OPAQUE_TYPES)
    )


def _headers(data: bytes) -> tuple[Message, bytes]:
    match = _BLANK_LINE.search(data)
    if match is None:
        raise SmimeFormatError("S/MIME message: no blank line after the headers")
    header_bytes, body = data[: match.start()], data[match.end() :]
    return BytesHeaderParser().parsebytes(header_bytes + b"\n\n"), body


def _delimiter_at(body: bytes, start: int, delimiter: bytes) -> int:
    """Offset of the next line that begins with ``delimiter`` at or after ``start``."""
    if start == 0 and body.startswith(delimiter):
        return 0
    pos = body.find(b"\n" + delimiter, max(start - 1, 0))
    return -1 if pos < 0 else pos + 1


def _line_end(body: bytes, pos: int) -> int:
    end = body.find(b"\n", pos)
    return len(body) if end < 0 else end + 1


def _part_end(body: bytes, delimiter_pos: int) -> int:
    """The part ends before the line break that precedes its closing delimiter."""
    end = delimiter_pos - 1  # the "\n" before the delimiter
    while end > 0 and body[end - 1 : end] == b"\r":
        end -= 1
    return end


def split(data: bytes) -> SignedMessage:
    """Split a ``multipart/signed`` message into content and signature.

    Raises :class:`SmimeFormatError` naming what is wrong with the envelope.
    """
    headers, body = _headers(data)
    if headers.get_content_type() in OPAQUE_TYPES:
        raise SmimeFormatError(
            f"S/MIME message: opaque S/MIME ({OPAQUE_TYPES[0]}) is not supported: image lists "
            "are clear-signed (multipart/signed, 'openssl smime -sign' without -nodetach)"
        )
    if headers.get_content_type() != "multipart/signed":
        raise SmimeFormatError(
            f"S/MIME message: Content-Type is {headers.get_content_type()}, not multipart/signed"
        )
    protocol = headers.get_param("protocol") or ""
    if not isinstance(protocol, str):  # RFC 2231 encoded: no S/MIME producer writes that
        raise SmimeFormatError("S/MIME message: protocol parameter uses RFC 2231 encoding")
    protocol = protocol.lower()
    if protocol not in SIGNATURE_TYPES:
        raise SmimeFormatError(f"S/MIME message: unsupported protocol {protocol or '(none)'!r}")
    boundary = headers.get_boundary()
    if not boundary:
        raise SmimeFormatError("S/MIME message: multipart/signed without a boundary")
    delimiter = b"--" + boundary.encode("ascii", "replace")

    first = _delimiter_at(body, 0, delimiter)
    if first < 0:
        raise SmimeFormatError("S/MIME message: boundary not found in the body")
    content_start = _line_end(body, first)
    second = _delimiter_at(body, content_start, delimiter)
    if second < 0:
        raise SmimeFormatError("S/MIME message: only one part (no signature part)")
    content = body[content_start : _part_end(body, second)]
    sig_start = _line_end(body, second)
    closing = _delimiter_at(body, sig_start, delimiter)
    if closing < 0:
        raise SmimeFormatError("S/MIME message: signature part is not closed by the boundary")
    # Exactly two parts, as OpenSSL's SMIME_read_PKCS7 requires: the next
    # delimiter must be the close delimiter, not the start of a third part.
    if not body.startswith(delimiter + b"--", closing):
        raise SmimeFormatError(
            "S/MIME message: more than two parts, or the closing boundary is missing"
        )
    signature = _signature_part(body[sig_start : _part_end(body, closing)])
    micalg = headers.get_param("micalg")
    return SignedMessage(
        content=canonical(content),
        signature=signature,
        micalg=micalg if isinstance(micalg, str) else None,
    )


def _signature_part(part: bytes) -> bytes:
    message = BytesParser().parsebytes(part)
    kind = message.get_content_type()
    if kind not in SIGNATURE_TYPES:
        raise SmimeFormatError(f"S/MIME message: second part is {kind}, not a PKCS#7 signature")
    # str(): a header with non-ASCII bytes comes back as an email.header.Header
    encoding = str(message.get("Content-Transfer-Encoding") or "").strip().lower()
    payload = message.get_payload(decode=False)
    if not isinstance(payload, str):
        raise SmimeFormatError("S/MIME message: signature part is not a single body")
    # OpenSSL decodes the signature part as base64 whatever it declares; an
    # absent header is accepted as it is there, another declared encoding is not.
    if encoding not in ("", "base64"):
        raise SmimeFormatError(f"S/MIME message: signature part encoding is {encoding}, not base64")
    try:
        return base64.b64decode(_BASE64_SPACE.sub(b"", payload.encode("ascii")), validate=True)
    except (binascii.Error, ValueError):
        raise SmimeFormatError("S/MIME message: signature part is not valid base64") from None


def strip_text_headers(content: bytes) -> bytes:
    """Drop a ``Content-Type: text/plain`` header block (``openssl smime -sign -text``)."""
    if content[:13].lower() != b"content-type:":
        return content
    match = _BLANK_LINE.search(content)
    return content[match.end() :] if match else content


_DIGESTS: dict[str, type[hashes.SHA256 | hashes.SHA512]] = {
    "sha256": hashes.SHA256,
    "sha512": hashes.SHA512,
}


def sign(
    content: bytes,
    certificate: x509.Certificate,
    key: pkcs7.PKCS7PrivateKeyTypes,
    *,
    digest: str = "sha256",
    extra_certificates: list[x509.Certificate] | None = None,
) -> bytes:
    """Detached S/MIME signature over ``content``, as ``openssl smime -sign`` makes it.

    The signer certificate (and any ``extra_certificates``, for a chain with
    intermediates) is embedded, content is canonicalised to CRLF.
    """
    builder = pkcs7.PKCS7SignatureBuilder().set_data(content)
    builder = builder.add_signer(certificate, key, _DIGESTS[digest]())
    for extra in extra_certificates or ():
        builder = builder.add_certificate(extra)
    return builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
