"""vmtrust.cosign: cosign's simple-signing signatures, verified offline with site keys.

Interoperability: ``tests/data/cosign`` holds a signature vmtrust did not make,
from the sigstore-rs project (its README says where exactly); it verifies with
its key, and is refused for any other digest or repository.  The rest signs
with keys made here.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from oci_registry import cosign_payload, p256_key, sign_payload, write_public_key

from vmtrust import cosign
from vmtrust.errors import ConfigError, CosignError, InputError

DATA = Path(__file__).parent / "data" / "cosign"
FOREIGN_DIGEST = "sha256:f3cfc9d0dbf931d3db4685ec659b7ac68e2a578219da4aae65427886e649b06b"
FOREIGN_IDENTITY = "registry-testing.svc.lan/busybox"
DIGEST = "sha256:" + "ab" * 32
IDENTITY = "registry.example.org/egi_vm_images/ubuntu"


@pytest.fixture
def foreign():
    key = cosign.load_key(DATA / "sigstore-rs-cosign.pub")
    payload = (DATA / "sigstore-rs-busybox.payload.json").read_bytes()
    signature = (DATA / "sigstore-rs-busybox.sig").read_text().strip()
    return key, payload, signature


def test_a_signature_made_by_sigstore_tooling_verifies(foreign):
    key, payload, signature = foreign
    assert (
        cosign.verify(payload, signature, (key,), digest=FOREIGN_DIGEST, identity=FOREIGN_IDENTITY)
        is key
    )


@pytest.mark.parametrize(
    ("digest", "identity", "reason"),
    [
        (DIGEST, FOREIGN_IDENTITY, "signed for manifest sha256:f3cfc9d0"),
        (FOREIGN_DIGEST, "registry-testing.svc.lan/busybox-evil", "signed for 'registry-testing"),
        (FOREIGN_DIGEST, "other.example.org/busybox", "signed for 'registry-testing"),
    ],
)
def test_the_foreign_signature_is_refused_for_another_digest_or_repository(
    foreign, digest, identity, reason
):
    key, payload, signature = foreign
    with pytest.raises(CosignError, match=reason.replace("(", r"\(")):
        cosign.verify(payload, signature, (key,), digest=digest, identity=identity)


def test_the_foreign_payload_altered_by_one_byte_is_refused(foreign):
    key, payload, signature = foreign
    altered = payload.replace(b"busybox", b"busyb0x")
    with pytest.raises(CosignError, match="none of the site's keys"):
        cosign.verify(altered, signature, (key,), digest=FOREIGN_DIGEST, identity=FOREIGN_IDENTITY)


@pytest.mark.parametrize("make", [p256_key, Ed25519PrivateKey.generate], ids=["p256", "ed25519"])
def test_site_keys_of_both_kinds(tmp_path, make):
    key = make()
    site_key = cosign.load_key(write_public_key(key, tmp_path / "k.pub"))
    payload = cosign_payload(DIGEST, IDENTITY)
    assert (
        cosign.verify(
            payload, sign_payload(key, payload), (site_key,), digest=DIGEST, identity=IDENTITY
        )
        is site_key
    )


def test_any_of_several_keys_may_sign(tmp_path, foreign):
    mine = p256_key()
    keys = (foreign[0], cosign.load_key(write_public_key(mine, tmp_path / "k.pub")))
    payload = cosign_payload(DIGEST, IDENTITY)
    assert (
        cosign.verify(payload, sign_payload(mine, payload), keys, digest=DIGEST, identity=IDENTITY)
        is keys[1]
    )


def _signed(payload: bytes, tmp_path):
    key = p256_key()
    return (
        payload,
        sign_payload(key, payload),
        (cosign.load_key(write_public_key(key, tmp_path / "k.pub")),),
    )


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"critical": {"identity": {"docker-reference": IDENTITY},
                       "image": {"docker-manifest-digest": DIGEST},
                       "type": "atomic container signature"}},
         "critical.type is 'atomic container signature'"),
        ({"critical": {"identity": {"docker-reference": IDENTITY},
                       "image": {"docker-manifest-digest": DIGEST,
                                 "Docker-manifest-digest": "sha256:" + "cd" * 32},
                       "type": cosign.SIGNATURE_TYPE}},
         "docker-manifest-digest appears as"),
        ({"critical": {"identity": {}, "image": {"docker-manifest-digest": DIGEST},
                       "type": cosign.SIGNATURE_TYPE}},
         "identity.docker-reference missing"),
        ({"critical": {"identity": {"docker-reference": ["x"]},
                       "image": {"docker-manifest-digest": DIGEST},
                       "type": cosign.SIGNATURE_TYPE}},
         "must be strings"),
        ([], "is not an object"),
    ],
)  # fmt: skip
def test_malformed_payloads_are_refused_even_when_signed(tmp_path, document, reason):
    payload, signature, keys = _signed(json.dumps(document).encode(), tmp_path)
    with pytest.raises(CosignError, match=reason):
        cosign.verify(payload, signature, keys, digest=DIGEST, identity=IDENTITY)


def test_duplicate_keys_and_oversized_payloads_are_refused(tmp_path):
    duplicate = (
        b'{"critical":{"identity":{"docker-reference":"' + IDENTITY.encode() + b'"},'
        b'"image":{"docker-manifest-digest":"' + DIGEST.encode() + b'",'
        b'"docker-manifest-digest":"sha256:' + b"cd" * 32 + b'"},'
        b'"type":"cosign container image signature"}}'
    )
    payload, signature, keys = _signed(duplicate, tmp_path)
    with pytest.raises(CosignError, match="duplicate key"):
        cosign.verify(payload, signature, keys, digest=DIGEST, identity=IDENTITY)
    big = cosign_payload(DIGEST, IDENTITY)[:-1] + b',"x":"' + b"a" * 70000 + b'"}'
    payload, signature, keys = _signed(big, tmp_path)
    with pytest.raises(CosignError, match="larger than the limit"):
        cosign.verify(payload, signature, keys, digest=DIGEST, identity=IDENTITY)


def test_an_older_capitalised_payload_is_read_as_cosign_reads_it(tmp_path):
    old = json.dumps({"Critical": {"Identity": {"docker-reference": IDENTITY},
                                   "Image": {"Docker-manifest-digest": DIGEST},
                                   "Type": cosign.SIGNATURE_TYPE}}).encode()  # fmt: skip
    payload, signature, keys = _signed(old, tmp_path)
    assert cosign.verify(payload, signature, keys, digest=DIGEST, identity=IDENTITY)


@pytest.mark.parametrize(
    ("signature", "reason"),
    [(None, "no dev.cosignproject.cosign/signature"), ("not*base64", "not valid base64"),
     ("A" * 2000, "not a signature"), (base64.b64encode(b"\x30\x02").decode(), "none of the")],
)  # fmt: skip
def test_bad_signature_annotations(tmp_path, signature, reason):
    payload, _, keys = _signed(cosign_payload(DIGEST, IDENTITY), tmp_path)
    with pytest.raises(CosignError, match=reason):
        cosign.verify(payload, signature, keys, digest=DIGEST, identity=IDENTITY)


def test_key_files_other_than_p256_or_ed25519_are_refused(tmp_path):
    for name, key in (
        ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("p384", ec.generate_private_key(ec.SECP384R1())),
    ):
        path = write_public_key(key, tmp_path / f"{name}.pub")
        with pytest.raises(ConfigError, match="only ECDSA P-256 and Ed25519 keys"):
            cosign.load_key(path)
    private = tmp_path / "private.pem"
    private.write_bytes(
        p256_key().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )  # fmt: skip
    with pytest.raises(ConfigError, match="not a PEM public key"):
        cosign.load_key(private)
    with pytest.raises(InputError, match="No such file"):
        cosign.load_key(tmp_path / "missing.pub")
