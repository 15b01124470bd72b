"""The signed message: S/MIME envelope variants, digests, and hostile mutations."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest
from conftest import list_document
from hypothesis import example, given
from hypothesis import strategies as st
from verify_support import refused, verify

from vmtrust import imagelist, smime
from vmtrust.errors import BadSignature, SmimeFormatError, VmtrustError, WeakAlgorithm

requires_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not on PATH")


ENVELOPE = """MIME-Version: 1.0
Content-Type: multipart/signed; protocol="{protocol}"; {micalg}boundary="b0undary"

This is an S/MIME signed message

--b0undary
{content}
--b0undary
Content-Type: {protocol}; name="smime.p7s"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="smime.p7s"

{signature}
--b0undary--
"""


def envelope(content: bytes, der: bytes, *, protocol=smime.SIGNATURE_TYPES[1], micalg="sha-256"):
    """A clear-signed message laid out as ``openssl smime -sign`` writes it."""
    return ENVELOPE.format(
        protocol=protocol,
        micalg=f'micalg="{micalg}"; ' if micalg else "",
        content=content.decode("latin-1"),
        signature=base64.encodebytes(der).decode().strip(),
    ).encode("latin-1")


def openssl_sign(tmp_path, signer, *args: str) -> bytes:
    cert, key = signer.write(tmp_path / "creds", "signer")
    (tmp_path / "list.json").write_bytes(imagelist.dumps(list_document(signer)))
    command = ["openssl", "smime", "-sign", "-in", "list.json", "-out", "list.smime"]
    command += ["-signer", str(cert), "-inkey", str(key), *args]
    subprocess.run(command, cwd=tmp_path, check=True, capture_output=True, timeout=60)
    return (tmp_path / "list.smime").read_bytes()


def test_tampered_signature_bytes(sign, trust):
    message = smime.split(sign())
    der = message.signature[:-1] + bytes([message.signature[-1] ^ 0x01])
    refused(BadSignature, "does not match the list content", envelope(message.content, der), trust)


@pytest.mark.openssl
@requires_openssl
def test_sha1_refused_by_default_allowed_by_option(tmp_path, pki, trust):
    data = openssl_sign(tmp_path, pki.endorser, "-md", "sha1")
    refused(WeakAlgorithm, "SHA-1 digest refused", data, trust)
    assert verify(data, trust, allow_sha1=True).digest_algorithm == "sha1"


@pytest.mark.openssl
@requires_openssl
def test_md5_always_refused(tmp_path, pki, trust):
    data = openssl_sign(tmp_path, pki.endorser, "-md", "md5")
    refused(WeakAlgorithm, "digest md5 is not acceptable", data, trust, allow_sha1=True)


@pytest.mark.openssl
@requires_openssl
def test_openssl_text_mode_output_verifies(tmp_path, pki, trust):
    data = openssl_sign(tmp_path, pki.endorser, "-text")
    assert b"Content-Type: text/plain" in data
    assert verify(data, trust).imagelist.title == "Example site images"


@pytest.mark.parametrize("protocol", smime.SIGNATURE_TYPES)
def test_both_protocol_spellings(sign, trust, protocol):
    data = sign().replace(b"application/x-pkcs7-signature", protocol.encode())
    assert data.count(protocol.encode()) == 2
    assert verify(data, trust).imagelist.version == "3"


def test_rfc2231_protocol_refused(sign, trust):
    old = b'protocol="application/x-pkcs7-signature"'
    data = sign().replace(old, b"protocol*=us-ascii''application%2Fx-pkcs7-signature")
    refused(SmimeFormatError, "RFC 2231", data, trust)


def test_other_protocol_refused(sign, trust):
    data = sign().replace(
        b'protocol="application/x-pkcs7-signature"', b'protocol="application/pgp-signature"'
    )
    refused(SmimeFormatError, "unsupported protocol", data, trust)


@pytest.mark.parametrize("micalg", [None, "sha1", "SHA-512", "unknown-alg"])
def test_micalg_is_informative_only(sign, trust, micalg):
    message = smime.split(sign())
    assert verify(envelope(message.content, message.signature, micalg=micalg), trust)


@pytest.mark.parametrize("convert", ["crlf_to_lf", "lf_to_crlf", "cr_before_eol"])
def test_line_end_canonicalisation(sign, trust, convert):
    data = sign()
    if convert == "crlf_to_lf":
        data = data.replace(b"\r\n", b"\n")
    elif convert == "lf_to_crlf":
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    else:  # OpenSSL's strip_eol drops every CR before a line end
        data = data.replace(b'images",\r\n', b'images",\r\r\n', 1)
    assert verify(data, trust)


def test_three_parts_refused(sign, trust):
    data = sign()
    boundary = data.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    first = data.index(b"--" + boundary)
    second = data.index(b"--" + boundary, first + 1)
    tripled = data[:second] + data[first:second] + data[second:]
    refused(SmimeFormatError, "more than two parts", tripled, trust)
    unclosed = data.replace(b"--" + boundary + b"--", b"--" + boundary)
    refused(SmimeFormatError, "more than two parts", unclosed, trust)


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        (b"Content-Transfer-Encoding: base64\r\n", b"", None),  # OpenSSL assumes base64 too
        (b"Transfer-Encoding: base64", b"Transfer-Encoding: BASE64", None),
        (b"Transfer-Encoding: base64", b"Transfer-Encoding: 7bit", "encoding is 7bit"),
        (b"Transfer-Encoding: base64", b"Transfer-Encoding: base\xe964", "not base64"),
        (b"\r\n\r\nMII", b"\r\n\r\nMI\x0bI", "not valid base64"),  # OpenSSL refuses VT
    ],
)
def test_signature_part_encoding(sign, trust, old, new, error):
    data = sign()
    assert old in data
    data = data.replace(old, new, 1)
    if error is None:
        assert verify(data, trust)
    else:
        refused(SmimeFormatError, error, data, trust)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b'{"hv:imagelist": {}}',
        b"Content-Type: text/plain\n\nhello\n",
        b"MIME-Version: 1.0\nContent-Type: multipart/signed\n\nx",
    ],
)
def test_not_an_smime_message(trust, data):
    with pytest.raises(SmimeFormatError, match="S/MIME message"):
        verify(data, trust)


# --- hostile variants of a good message ---------------------------------------------


def _mutations(data: bytes) -> dict[str, bytes]:
    boundary = data.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    delimiter = b"--" + boundary
    first = data.index(delimiter)
    second = data.index(delimiter, first + 1)
    closing = data.index(delimiter + b"--")
    b64_start = data.index(b"\r\n\r\n", second) + 4
    out = {
        f"truncated@{n}": data[:n]
        for n in (
            0,
            1,
            20,
            first - 5,
            first + 10,
            second - 3,
            second + 30,
            b64_start + 7,
            (b64_start + closing) // 2,
            closing - 5,
            closing + 3,
        )
    }
    for i, n in enumerate(range(b64_start + 3, closing - 4, (closing - b64_start) // 12)):
        if data[n : n + 1] not in (b"\r", b"\n"):
            flipped = b"B" if data[n : n + 1] == b"A" else b"A"
            out[f"flipped-base64-{i}"] = data[:n] + flipped + data[n + 1 :]
    out["no-first-boundary"] = data[:first] + data[first + len(delimiter) :]
    out["no-second-boundary"] = data[:second] + data[second + len(delimiter) :]
    out["no-closing-boundary"] = data[:closing]
    out["boundary-param-changed"] = data.replace(b'boundary="', b'boundary="x', 1)
    out["content-part-twice"] = data[:second] + data[first:second] + data[second:]
    out["signature-part-twice"] = data[:closing] + data[second:]
    out["no-headers"] = data[data.index(b"\r\n\r\n") + 4 :]
    out["nul-in-base64"] = data[: b64_start + 40] + b"\0" + data[b64_start + 40 :]
    out["non-utf8-content"] = data.replace(b"Example site images", b"Example \xff\xfe images")
    out["base64-doubled"] = data[:closing] + data[b64_start:closing] + data[closing:]
    return out


def test_mutations_raise_only_vmtrust_errors(sign, trust):
    good = sign()
    variants = _mutations(good)
    assert len(variants) >= 30
    outcomes = {}
    for name, data in variants.items():
        try:
            verify(data, trust)
            outcomes[name] = "accepted"
        except VmtrustError as exc:
            outcomes[name] = type(exc).__name__
        # anything else (ValueError, KeyError, IndexError ...) fails the test here
    accepted = sorted(name for name, result in outcomes.items() if result == "accepted")
    # a flipped base64 character may land in an unsigned field both OpenSSL and
    # vmtrust ignore; every other mutation must be refused
    assert all(name.startswith("flipped-base64") for name in accepted), outcomes
    assert len(accepted) <= 2, outcomes


@given(st.binary(max_size=40).map(lambda b: bytes(b"ab\r\n"[x % 4] for x in b)))
@example(b"a\r\nb\r\n")  # already canonical: returned as it is
@example(b"a\r\nb\n\r")  # as many CRs and LFs as CRLFs? no: one LF and one CR are alone
@example(b"\r\r\n\n")
def test_canonical_fast_paths_equal_the_rule(data):
    """Every run of CRs before a LF, and a bare LF, becomes one CRLF; a lone CR stays."""
    assert smime.canonical(data) == re.sub(rb"\r*\n", b"\r\n", data)
