"""The endorser's functions in :mod:`vmtrust.authoring`, without the command line."""

from __future__ import annotations

import copy
import hashlib
import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from conftest import IMAGE_SHA512, image_entry, list_document
from cryptography.hazmat.primitives import serialization

from vmtrust import authoring, imagelist, smime
from vmtrust.conf import make_conf
from vmtrust.errors import InputError, InvalidListStructure, KeyUsageError, SigningError
from vmtrust.truststore import TrustStore
from vmtrust.verify import Policy, verify_signed_list

NOW = datetime(2031, 5, 1, 8, 0, 0, tzinfo=UTC)
IMAGE_ID = "85bfb313-a852-444b-89e7-9cdf8c23dc91"
NEW_ID = "0b8a4a37-4c0e-4c0c-9e4e-2d2f3b1f6f00"


def _new(**kw):
    args = {
        "title": "Site images",
        "description": "for vo.example.org",
        "source": "https://images.example.org/",
        "uri": "https://images.example.org/site.list",
        "endorser_dn": "/DC=org/DC=example/O=People/CN=Jane Endorser",
        "endorser_ca": "/DC=org/DC=example/CN=Example Test CA",
    }
    return authoring.new_list(**{**args, **kw})


# --- new_list, describe_image ------------------------------------------------------------


def test_new_list_is_valid_and_dated():
    document = _new(now=NOW, creator="Jane", email="jane@example.org", vo="vo.example.org")
    lst = imagelist.validate(document)
    assert (lst.created, lst.expires) == (NOW, NOW + timedelta(days=28))
    assert document["hv:imagelist"]["dc:date:created"] == "2031-05-01T08:00:00Z"
    assert uuid.UUID(lst.identifier).version == 4
    assert (lst.version, lst.images, lst.vo, lst.title) == (
        "1",
        (),
        "vo.example.org",
        "Site images",
    )
    assert lst.endorsers[0].dn == "/DC=org/DC=example/O=People/CN=Jane Endorser"
    x509 = document["hv:imagelist"]["hv:endorser"]["hv:x509"]
    assert (x509["hv:email"], x509["dc:creator"]) == ("jane@example.org", "Jane")
    assert (lst.endorsers[0].email, lst.endorsers[0].creator) == ("jane@example.org", "Jane")


def test_new_list_identifier_lifetime_and_now_default():
    assert imagelist.validate(_new()).identifier != imagelist.validate(_new()).identifier
    lst = imagelist.validate(_new(identifier="my-list", lifetime=timedelta(days=3)))
    assert lst.identifier == "my-list"
    assert abs(lst.created - datetime.now(UTC)) < timedelta(seconds=30)
    assert lst.expires - lst.created == timedelta(days=3)
    assert "ad:vo" not in _new()["hv:imagelist"]


def test_hash_stream_and_describe_image(tmp_path):
    data = bytes(range(256)) * 8193  # not a whole number of chunks
    assert authoring.hash_stream(io.BytesIO(data)) == (len(data), hashlib.sha512(data).hexdigest())
    path = tmp_path / "img"
    path.write_bytes(b"example image bytes\n")
    entry = authoring.describe_image(
        path,
        uri="https://x.org/i",
        title="I",
        osversion="9",
        identifier=NEW_ID,
        image_format="QCOW2",
        osname="AlmaLinux",
        extra={"hv:ram_minimum": 2048},
    )
    image = entry["hv:image"]
    assert (image["hv:size"], image["sl:checksum:sha512"]) == (20, IMAGE_SHA512)
    assert (image["dc:identifier"], image["hv:format"], image["sl:osname"]) == (
        NEW_ID,
        "QCOW2",
        "AlmaLinux",
    )
    assert image["hv:ram_minimum"] == 2048 and image["sl:os"] == "Linux"
    with pytest.raises(InputError):
        authoring.describe_image(tmp_path / "none", uri="https://x/", title="I", osversion="9")
    with pytest.raises(InvalidListStructure, match="hv:uri"):
        authoring.describe_image(path, uri="ftp://x/", title="I", osversion="9")


# --- add_image, remove_image -------------------------------------------------------------


def test_add_image_replaces_or_appends_without_mutating():
    document = list_document()
    original = copy.deepcopy(document)
    replaced, was = authoring.add_image(document, image_entry(IMAGE_ID, **{"dc:title": "New"}))
    assert was is True and document == original
    assert [i["hv:image"]["dc:title"] for i in replaced["hv:imagelist"]["hv:images"]] == ["New"]
    added, was = authoring.add_image(document, image_entry(NEW_ID))
    assert was is False
    assert len(added["hv:imagelist"]["hv:images"]) == 2
    with pytest.raises(InvalidListStructure, match=r"hv:images\[1\]\.sl:checksum:sha512"):
        authoring.add_image(added, image_entry(NEW_ID, **{"sl:checksum:sha512": "00"}))
    with pytest.raises(SigningError):
        authoring.add_image(document, {"dc:identifier": NEW_ID})


def test_remove_image():
    document = list_document(images=[image_entry(IMAGE_ID), image_entry(NEW_ID)])
    result = authoring.remove_image(document, IMAGE_ID)
    assert [i["hv:image"]["dc:identifier"] for i in result["hv:imagelist"]["hv:images"]] == [NEW_ID]
    assert len(document["hv:imagelist"]["hv:images"]) == 2
    with pytest.raises(SigningError, match="no image with dc:identifier"):
        authoring.remove_image(result, IMAGE_ID)
    with pytest.raises(SigningError):
        authoring.remove_image({"hv:imagelist": {}}, IMAGE_ID)


# --- bump --------------------------------------------------------------------------------


def test_bump_default_lifetime_is_the_configured_28_days():
    assert make_conf([]).endorser.lifetime_days == 28
    document = list_document(version="3")
    document["hv:imagelist"]["x:custom"] = {"kept": True}
    result = authoring.bump(document, now=NOW)
    fields = result["hv:imagelist"]
    assert fields["hv:version"] == "4"
    assert fields["dc:date:created"] == "2031-05-01T08:00:00Z"
    assert fields["dc:date:expires"] == "2031-05-29T08:00:00Z"
    assert fields["x:custom"] == {"kept": True}
    assert document["hv:imagelist"]["hv:version"] == "3"  # input untouched


@pytest.mark.parametrize(
    ("current", "expected"), [("3", "4"), ("1.2.9", "1.2.10"), ("rc1", "rc2"), ("0009", "0010")]
)
def test_bump_version(current, expected):
    assert authoring.bump(list_document(version=current))["hv:imagelist"]["hv:version"] == expected


def test_bump_explicit_version_and_lifetime():
    result = authoring.bump(list_document(), new_version="10", lifetime=timedelta(days=1), now=NOW)
    assert result["hv:imagelist"]["hv:version"] == "10"
    assert result["hv:imagelist"]["dc:date:expires"] == "2031-05-02T08:00:00Z"
    for stale in ("3", "2.99", "1.9"):
        with pytest.raises(SigningError, match="not newer"):
            authoring.bump(list_document(version="3"), new_version=stale)


# --- load_credentials, check_signable, sign_document -------------------------------------


def test_load_credentials(pki, tmp_path):
    cert_path, key_path = pki.endorser.write(tmp_path, "e")
    cert, key = authoring.load_credentials(cert_path, key_path)
    assert cert == pki.endorser.cert and key.public_key() == pki.endorser.key.public_key()
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(
        pki.endorser.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    assert authoring.load_credentials(cert_path, encrypted, b"pw")[0] == cert
    with pytest.raises(SigningError, match=r"encrypted.*--passphrase-file"):
        authoring.load_credentials(cert_path, encrypted)
    with pytest.raises(SigningError, match="wrong passphrase"):
        authoring.load_credentials(cert_path, encrypted, b"nope")
    with pytest.raises(SigningError, match=r"not a PEM X\.509 certificate"):
        authoring.load_credentials(key_path, key_path)
    with pytest.raises(InputError):
        authoring.load_credentials(tmp_path / "none", key_path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-digital-signature", "digitalSignature"),
        ("dn-mismatch", "hv:endorser names"),
        ("ca-mismatch", "hv:endorser names"),
        ("key-mismatch", "does not belong"),
        ("expired-cert", "not valid now"),
        ("expired-list", "already expired"),
    ],
)
def test_check_signable_refusals(case, message, pki):
    signer = {"no-digital-signature": pki.no_sign, "expired-cert": pki.expired}.get(
        case, pki.endorser
    )
    now = datetime.now(UTC)
    kw = {
        "dn-mismatch": {"dn": "/DC=org/DC=example/O=People/CN=Someone Else"},
        "ca-mismatch": {"ca": pki.other_ca.dn},
        "expired-list": {"created": now - timedelta(days=9), "expires": now - timedelta(days=1)},
    }.get(case, {})
    key = pki.revoked.key if case == "key-mismatch" else signer.key
    document = list_document(signer, **kw)
    with pytest.raises(SigningError, match=message):
        authoring.check_signable(document, signer.cert, key)
    with pytest.raises(SigningError):
        authoring.sign_document(document, signer.cert, key)


@pytest.mark.parametrize("name", ["endorser", "non_repudiation", "no_key_usage", "no_sign"])
def test_list_sign_signs_exactly_what_subscribers_accept(name, pki, ca_dir):
    """One key-usage rule on both sides (before, ``list sign`` refused a certificate with
    nonRepudiation alone, or with no keyUsage extension, which every subscriber accepts)."""
    signer = getattr(pki, name)
    document = list_document(signer)
    signed = smime.sign(imagelist.dumps(document), signer.cert, signer.key)
    try:
        verify_signed_list(signed, Policy(trust=TrustStore(ca_dir)))
        accepted = True
    except KeyUsageError:
        accepted = False
    try:
        authoring.check_signable(document, signer.cert, signer.key)
        signable = True
    except SigningError as exc:
        assert "key usage allows neither digitalSignature nor nonRepudiation" in str(exc)
        signable = False
    assert signable == accepted == (name != "no_sign")


def test_check_signable_accepts_and_validates(pki):
    lst = authoring.check_signable(list_document(pki.endorser), pki.endorser.cert, pki.endorser.key)
    assert lst.images[0].identifier == IMAGE_ID
    broken = list_document(pki.endorser)
    del broken["hv:imagelist"]["dc:title"]
    with pytest.raises(InvalidListStructure, match="dc:title"):
        authoring.check_signable(broken, pki.endorser.cert, pki.endorser.key)
    later = datetime.now(UTC) + timedelta(days=60)
    with pytest.raises(SigningError, match="already expired"):
        authoring.check_signable(
            list_document(pki.endorser), pki.endorser.cert, pki.endorser.key, now=later
        )


@pytest.mark.parametrize("digest", ["sha256", "sha512"])
def test_signed_document_verifies(digest, pki, ca_dir):
    document = list_document(pki.endorser)
    signed = authoring.sign_document(document, pki.endorser.cert, pki.endorser.key, digest=digest)
    message = smime.split(signed)
    assert message.micalg == {"sha256": "sha-256", "sha512": "sha-512"}[digest]
    verified = verify_signed_list(signed, Policy(trust=TrustStore(ca_dir)))
    assert verified.endorser.dn == pki.endorser.dn and verified.endorser.ca == pki.ca.dn
    assert verified.imagelist.raw == document


def test_signed_document_with_intermediate_chain_verifies(pki, ca_dir):
    signer = pki.sub_endorser
    document = list_document(signer)
    signed = authoring.sign_document(document, signer.cert, signer.key, chain=[pki.sub_ca.cert])
    verified = verify_signed_list(signed, Policy(trust=TrustStore(ca_dir)))
    assert verified.chain[1].der == pki.sub_ca.cert.public_bytes(serialization.Encoding.DER)
