"""The trust record, its canonical encoding and seal, and the site's seal key files."""

from __future__ import annotations

import base64
import dataclasses
import json
import stat
from pathlib import Path

import pytest
from conftest import IMAGE_SHA512
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmtrust.errors import ConfigError, SealError
from vmtrust.record import (
    SEAL_CONTEXT,
    TrustRecord,
    check_seal,
    generate_key_pair,
    key_id,
    load_private_key,
    load_public_key,
    seal,
)

RECORD = TrustRecord(
    image_identifier="85bfb313-a852-444b-89e7-9cdf8c23dc91",
    title="Example worker node",
    image_version="1.2",
    list_identifier="65ef8feb-86d4-42ea-9960-f79bcc5a11b4",
    list_version="3",
    endorser_dn="/DC=org/DC=example/O=People/CN=Jane Endorser",
    endorser_ca="/DC=org/DC=example/CN=Example Test CA",
    vo="vo.example.org",
    subscription="example",
    approval="all",
    expires="2026-12-01T00:00:00Z",
    source_sha512=IMAGE_SHA512,
    sha512=IMAGE_SHA512,
    size=20,
    store_id="85bfb313-a852-444b-89e7-9cdf8c23dc91-1.2.img",
)
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def changed(value):
    """A different value of the same type."""
    return value + 1 if isinstance(value, int) else value + "x"


# --- canonical encoding -----------------------------------------------------------------


def test_canonical_is_prefixed_sorted_compact_json():
    data = RECORD.canonical()
    assert data.startswith(SEAL_CONTEXT)
    body = data[len(SEAL_CONTEXT) :]
    parsed = json.loads(body)
    # basis "hepix" is left out: records sealed before the field existed still verify
    assert parsed == {k: v for k, v in dataclasses.asdict(RECORD).items() if k != "basis"}
    assert list(parsed) == sorted(parsed)
    assert b'", "' not in body and b'": ' not in body and b"\n" not in body
    assert b'"size":20,' in body and b'"state":"trusted"' in body


def test_canonical_is_ascii_and_stable_for_unicode():
    record = dataclasses.replace(RECORD, title="Zürich — ☃")
    body = record.canonical()
    assert body.isascii() and b"\\u00fc" in body
    assert body == TrustRecord.from_dict(json.loads(body[len(SEAL_CONTEXT) :])).canonical()


# --- seal and check_seal ------------------------------------------------------------------


def test_seal_format_and_check_returns_key_id():
    sealed = seal(RECORD, KEY)
    kid, _, signature = sealed.partition(":")
    assert kid == key_id(KEY.public_key()) and len(kid) == 16 and int(kid, 16) >= 0
    assert len(base64.b64decode(signature, validate=True)) == 64
    assert check_seal(RECORD, sealed, [KEY.public_key()]) == kid
    assert check_seal(RECORD, sealed, [OTHER.public_key(), KEY.public_key()]) == kid
    assert check_seal(RECORD, sealed, iter([KEY.public_key()])) == kid


def test_seal_does_not_depend_on_how_the_record_was_built():
    rebuilt = TrustRecord.from_dict({**dataclasses.asdict(RECORD), "size": "20"})
    assert check_seal(rebuilt, seal(RECORD, KEY), [KEY.public_key()])


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TrustRecord)])
def test_changing_any_field_breaks_the_seal(name: str):
    sealed = seal(RECORD, KEY)
    altered = dataclasses.replace(RECORD, **{name: changed(getattr(RECORD, name))})
    with pytest.raises(SealError, match="does not match the trust record"):
        check_seal(altered, sealed, [KEY.public_key()])


def test_swapped_payload_and_copied_properties_break_the_seal():
    sealed = seal(RECORD, KEY)
    other_bytes = dataclasses.replace(RECORD, sha512="0" * 128, size=21)
    snapshot = dataclasses.replace(RECORD, store_id="another-image-id")
    for record in (other_bytes, snapshot):
        with pytest.raises(SealError):
            check_seal(record, sealed, [KEY.public_key()])


def test_seal_by_an_unknown_key():
    sealed = seal(RECORD, OTHER)
    with pytest.raises(SealError, match=f"sealed by unknown key {key_id(OTHER.public_key())}"):
        check_seal(RECORD, sealed, [KEY.public_key()])
    with pytest.raises(SealError, match="unknown key"):
        check_seal(RECORD, sealed, [])


def test_seal_by_another_key_claiming_a_trusted_key_id():
    signature = seal(RECORD, OTHER).partition(":")[2]
    forged = f"{key_id(KEY.public_key())}:{signature}"
    with pytest.raises(SealError, match="does not match"):
        check_seal(RECORD, forged, [KEY.public_key()])


def test_seal_over_another_record_does_not_verify():
    other = dataclasses.replace(RECORD, image_identifier="another")
    with pytest.raises(SealError, match=f"image {RECORD.image_identifier}: "):
        check_seal(RECORD, seal(other, KEY), [KEY.public_key()])


def _malformed() -> list[object]:
    kid, _, sig = seal(RECORD, KEY).partition(":")
    raw = base64.b64decode(sig)
    return [
        None,
        5,
        "",
        kid,
        sig,
        f"{kid}:",
        f"{kid}:{sig}\n",
        f"{kid}:{sig[:-4]}",
        f"{kid}:{sig.replace('=', '')}",
        f"{kid}:é{sig}",
        f"{kid}:{base64.b64encode(raw[:32]).decode()}",
        f"{kid}:{base64.b64encode(raw + b'x').decode()}",
        f"{kid}:{base64.b64encode(bytes(64)).decode()}",
        f"{kid.upper()}:{sig}",
        f" {kid}:{sig}",
    ]


@pytest.mark.parametrize("sealed", _malformed())
def test_malformed_seals_are_seal_errors(sealed):
    with pytest.raises(SealError, match=f"^image {RECORD.image_identifier}: "):
        check_seal(RECORD, sealed, [KEY.public_key()])


# --- from_dict ----------------------------------------------------------------------------


def test_from_dict_round_trip_and_defaults():
    data = dataclasses.asdict(RECORD)
    assert TrustRecord.from_dict(data) == RECORD
    del data["state"], data["disk_format"]
    assert TrustRecord.from_dict({**data, "glance_extra": 1}) == RECORD


def test_from_dict_reads_size_stored_as_text():
    assert TrustRecord.from_dict({**dataclasses.asdict(RECORD), "size": "20"}).size == 20


def test_from_dict_names_every_missing_field():
    data = dataclasses.asdict(RECORD)
    del data["sha512"], data["store_id"]
    with pytest.raises(SealError, match=r"^trust record: missing sha512, store_id$"):
        TrustRecord.from_dict(data)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("size", True),
        ("size", 1.5),
        ("size", "20.0"),
        ("size", "-1"),
        ("size", -1),
        ("size", "²"),
        ("size", "\u0662\u0660"),  # Arabic-Indic digits: isdigit() but not a stored size
        ("size", None),
        ("title", 5),
        ("store_id", None),
        ("sha512", b"00"),
        ("state", 1),
    ],
)
def test_from_dict_rejects_wrong_types(name: str, value: object):
    with pytest.raises(SealError, match=f"^trust record: {name} "):
        TrustRecord.from_dict({**dataclasses.asdict(RECORD), name: value})


# --- key files ----------------------------------------------------------------------------


def test_generate_key_pair_writes_a_private_and_a_public_file(tmp_path: Path):
    path = tmp_path / "keys" / "seal.key"
    public = generate_key_pair(path)
    assert public == tmp_path / "keys" / "seal.key.pub"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"PRIVATE" not in public.read_bytes()
    private_key, public_key = load_private_key(path), load_public_key(public)
    assert key_id(private_key.public_key()) == key_id(public_key)
    assert check_seal(RECORD, seal(RECORD, private_key), [public_key])


@pytest.mark.parametrize("existing", ["seal.key", "seal.key.pub"])
def test_generate_key_pair_refuses_to_overwrite(tmp_path: Path, existing: str):
    (tmp_path / existing).write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="already exists"):
        generate_key_pair(tmp_path / "seal.key")
    assert (tmp_path / existing).read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == [existing]


def test_generate_key_pair_overwrite_makes_a_new_key(tmp_path: Path):
    path = tmp_path / "seal.key"
    generate_key_pair(path)
    before = key_id(load_private_key(path).public_key())
    generate_key_pair(path, overwrite=True)
    assert key_id(load_private_key(path).public_key()) != before
    assert key_id(load_public_key(Path(f"{path}.pub"))) != before


def _pem(tmp_path: Path, name: str, data: bytes) -> Path:
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


def _ec_files(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _pem(tmp_path, "ec.key", private), _pem(tmp_path, "ec.pub", public)


GARBAGE = [
    b"",
    b"not a key\n",
    bytes(range(256)),
    b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    b"x" * (64 * 1024 + 1),
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_key_files_are_config_errors(tmp_path: Path, data: bytes):
    path = _pem(tmp_path, "seal.key", data)
    with pytest.raises(ConfigError, match=f"^seal key {path}: "):
        load_private_key(path)
    with pytest.raises(ConfigError, match=f"^seal public key {path}: "):
        load_public_key(path)


def test_non_ed25519_keys_are_config_errors(tmp_path: Path):
    private, public = _ec_files(tmp_path)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_private_key(private)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_public_key(public)


def test_wrong_kind_and_encrypted_keys_are_config_errors(tmp_path: Path):
    generate_key_pair(tmp_path / "seal.key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_private_key(tmp_path / "seal.key.pub")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(tmp_path / "seal.key")
    encrypted = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_private_key(_pem(tmp_path, "encrypted.key", encrypted))


# --- basis (issue 15) --------------------------------------------------------------------


def test_a_record_sealed_before_basis_existed_still_verifies_and_means_hepix():
    """An existing store's records have no basis: same bytes sealed, same seal, basis hepix."""
    key = Ed25519PrivateKey.generate()
    old_fields = {k: v for k, v in dataclasses.asdict(RECORD).items() if k != "basis"}
    old_canonical = SEAL_CONTEXT + json.dumps(
        old_fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")
    sealed = f"{key_id(key.public_key())}:" + base64.b64encode(key.sign(old_canonical)).decode()
    record = TrustRecord.from_dict(old_fields)
    assert record.basis == "hepix"
    assert check_seal(record, sealed, [key.public_key()])


def test_basis_is_sealed_and_cannot_be_dropped_or_changed():
    key = Ed25519PrivateKey.generate()
    registry = dataclasses.replace(RECORD, basis="registry")
    sealed = seal(registry, key)
    assert b'"basis":"registry"' in registry.canonical()
    for forged in ("hepix", "cosign"):
        with pytest.raises(SealError, match="does not match"):
            check_seal(dataclasses.replace(registry, basis=forged), sealed, [key.public_key()])
    dropped = {k: v for k, v in dataclasses.asdict(registry).items() if k != "basis"}
    with pytest.raises(SealError, match="does not match"):
        check_seal(TrustRecord.from_dict(dropped), sealed, [key.public_key()])


def test_unknown_basis_is_refused():
    with pytest.raises(SealError, match="unknown basis 'web'"):
        TrustRecord.from_dict({**dataclasses.asdict(RECORD), "basis": "web"})
