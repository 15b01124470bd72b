"""The endorser's side of the ``vmtrust`` command: new, describe, add/remove, bump, sign.

Editing verbs write atomically: no temporary file is left behind and a failed
command leaves the list exactly as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import fails, no_tmp_files, ok, run, write_list
from conftest import image_entry, list_document
from cryptography.hazmat.primitives import serialization

from vmtrust import fileio, imagelist

NOW = datetime.now(UTC)
IMAGE_ID = "85bfb313-a852-444b-89e7-9cdf8c23dc91"
NEW_ID = "0b8a4a37-4c0e-4c0c-9e4e-2d2f3b1f6f00"


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    """No vmtrust.conf of the machine and no passphrase from the environment."""
    monkeypatch.setattr("oslo_config.cfg.find_config_files", lambda *a, **k: [])
    monkeypatch.delenv("VMTRUST_KEY_PASSPHRASE", raising=False)


@pytest.fixture
def creds(pki, tmp_path):
    return pki.endorser.write(tmp_path / "globus", "endorser")


@pytest.fixture
def lst(tmp_path, pki):
    return write_list(tmp_path / "list.json", list_document(pki.endorser))


def fields(path: Path) -> dict:
    return json.loads(path.read_bytes())["hv:imagelist"]


def near_now(text: str) -> datetime:
    moment = imagelist.parse_date(text)
    assert abs(moment - datetime.now(UTC)) < timedelta(seconds=30)
    return moment


# --- the whole workflow ------------------------------------------------------------------


def test_endorser_workflow_end_to_end(capsys, tmp_path, creds, ca_dir, pki):
    cert, key = creds
    new, img, out = tmp_path / "new.json", tmp_path / "image.json", tmp_path / "list.smime"
    image_file = tmp_path / "wn.img"
    image_file.write_bytes(b"a small image\n" * 100)
    uri = "https://images.example.org/site.list"
    ok(capsys, "list", "new", "--cert", cert, "--title", "Site images", "--uri", uri, "--out", new)
    describe = ["image", "describe", image_file, "--uri", "https://x.org/wn.img"]
    ok(capsys, *describe, "--title", "Worker", "--osversion", "9", "--out", img)
    ok(capsys, "list", "add-image", new, img)
    ok(capsys, "list", "sign", new, "--cert", cert, "--key", key, "--out", out)

    stdout = ok(capsys, "list", "verify", out, "--ca-dir", ca_dir)
    identifier = fields(new)["dc:identifier"]
    assert stdout.startswith(f"OK: list {identifier} (Site images) version 1, 1 image,")
    assert f"signed by {pki.endorser.dn}" in stdout

    summary = json.loads(ok(capsys, "list", "verify", out, "--ca-dir", ca_dir, "--json"))
    assert summary["identifier"] == identifier and summary["version"] == "1"
    assert summary["endorser"] == {"dn": pki.endorser.dn, "ca": pki.ca.dn}
    assert imagelist.parse_date(summary["expires"]) > NOW + timedelta(days=27)
    assert [i["size"] for i in summary["images"]] == [1400]
    assert no_tmp_files(tmp_path)


@pytest.mark.openssl
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("digest", ["sha256", "sha512"])
def test_openssl_accepts_what_vmtrust_signs(digest, capsys, tmp_path, creds, ca_dir, lst):
    cert, key = creds
    out, content = tmp_path / "list.smime", tmp_path / "content"
    ok(capsys, "list", "sign", lst, "--cert", cert, "--key", key, "--digest", digest, "--out", out)
    command = ["openssl", "smime", "-verify", "-in", out, "-CApath", ca_dir, "-out", content]
    proc = subprocess.run(command, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(content.read_bytes()) == json.loads(lst.read_bytes())


# --- list new, image describe ------------------------------------------------------------


def test_new_without_cert_and_lifetime(capsys, tmp_path):
    out = tmp_path / "new.json"
    args = ["list", "new", "--title", "T", "--uri", "https://x.org/l", "--out", out]
    fails(capsys, 4, *args)  # neither --cert nor --endorser-dn/--endorser-ca
    args += ["--endorser-dn", "/CN=e", "--endorser-ca", "/CN=ca", "--lifetime-days"]
    ok(capsys, *args, "3")
    new = fields(out)
    assert new["hv:endorser"]["hv:x509"]["hv:dn"] == "/CN=e"
    created = near_now(new["dc:date:created"])
    assert imagelist.parse_date(new["dc:date:expires"]) - created == timedelta(days=3)
    for days in ("0", "99999999999"):
        assert "--lifetime-days" in fails(capsys, 4, *args, days)


def test_describe_large_image(capsys, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 5)  # crosses the 1 MiB read chunks
    image = tmp_path / "big.img"
    image.write_bytes(data)
    options = "--uri https://x.org/big.img --title Big --osversion 9 --format RAW --core-minimum 2"
    out = ok(capsys, "image", "describe", image, *options.split(), "--identifier", NEW_ID)
    entry = json.loads(out)["hv:image"]
    assert entry["hv:size"] == len(data)
    assert entry["sl:checksum:sha512"] == hashlib.sha512(data).hexdigest()
    assert (entry["dc:identifier"], entry["hv:format"], entry["hv:core_minimum"]) == (
        NEW_ID,
        "RAW",
        2,
    )


def test_describe_missing_image(capsys, tmp_path):
    args = ["--uri", "https://x.org/i", "--title", "I", "--osversion", "9"]
    assert "No such file" in fails(capsys, 3, "image", "describe", tmp_path / "none", *args)
    fails(capsys, 3, "image", "describe", tmp_path, *args)


# --- add-image, remove-image -------------------------------------------------------------


def test_add_image_replaces_same_identifier_and_appends_new(capsys, tmp_path, lst):
    entry = tmp_path / "image.json"
    entry.write_text(json.dumps(image_entry(IMAGE_ID, **{"dc:title": "Renamed"})))
    rc, _, err = run(capsys, "list", "add-image", lst, entry)
    assert rc == 0 and err == f"replaced image {IMAGE_ID}\n"
    assert [i["hv:image"]["dc:title"] for i in fields(lst)["hv:images"]] == ["Renamed"]
    entry.write_text(json.dumps(image_entry(NEW_ID)))
    rc, _, err = run(capsys, "list", "add-image", lst, entry)
    assert rc == 0 and err == f"added image {NEW_ID}\n"
    ids = [i["hv:image"]["dc:identifier"] for i in fields(lst)["hv:images"]]
    assert ids == [IMAGE_ID, NEW_ID]
    assert fields(lst)["ad:vo"] == "vo.example.org"  # the rest of the list is kept
    assert no_tmp_files(tmp_path)


def test_add_image_with_out_leaves_original(capsys, tmp_path, lst):
    entry, out = tmp_path / "image.json", tmp_path / "out.json"
    entry.write_text(json.dumps(image_entry(NEW_ID)))
    before = lst.read_bytes()
    ok(capsys, "list", "add-image", lst, entry, "--out", out)
    assert lst.read_bytes() == before
    assert len(fields(out)["hv:images"]) == 2


def test_add_invalid_image_leaves_list_unchanged(capsys, tmp_path, lst):
    entry = tmp_path / "image.json"
    entry.write_text(json.dumps(image_entry(NEW_ID, **{"hv:size": "12x"})))
    before = lst.read_bytes()
    err = fails(capsys, 38, "list", "add-image", lst, entry)
    assert "hv:images[1].hv:size" in err
    entry.write_text("[]")
    fails(capsys, 21, "list", "add-image", lst, entry)
    assert lst.read_bytes() == before and no_tmp_files(tmp_path)


def test_remove_image(capsys, tmp_path, lst):
    before = lst.read_bytes()
    err = fails(capsys, 21, "list", "remove-image", lst, NEW_ID)
    assert NEW_ID in err and lst.read_bytes() == before
    rc, _, err = run(capsys, "list", "remove-image", lst, IMAGE_ID)
    assert rc == 0 and err == f"removed image {IMAGE_ID}\n"
    assert fields(lst)["hv:images"] == []
    assert no_tmp_files(tmp_path)


# --- bump --------------------------------------------------------------------------------


def test_bump_defaults(capsys, tmp_path, lst):
    ok(capsys, "list", "bump", lst)
    bumped = fields(lst)
    assert bumped["hv:version"] == "4"
    created = near_now(bumped["dc:date:created"])
    assert imagelist.parse_date(bumped["dc:date:expires"]) - created == timedelta(days=28)
    assert no_tmp_files(tmp_path)


def test_bump_explicit_version_lifetime_and_config(capsys, tmp_path, lst):
    ok(capsys, "list", "bump", lst, "--version", "10", "--lifetime-days", "5")
    bumped = fields(lst)
    assert bumped["hv:version"] == "10"
    created = near_now(bumped["dc:date:created"])
    assert imagelist.parse_date(bumped["dc:date:expires"]) - created == timedelta(days=5)
    conf = tmp_path / "vmtrust.conf"
    conf.write_text("[endorser]\nlifetime_days = 7\n")
    ok(capsys, "--config-file", conf, "list", "bump", lst)
    bumped = fields(lst)
    assert bumped["hv:version"] == "11"
    created = near_now(bumped["dc:date:created"])
    assert imagelist.parse_date(bumped["dc:date:expires"]) - created == timedelta(days=7)


@pytest.mark.parametrize("version", ["3", "2", "1.9"])
def test_bump_refuses_older_version(version, capsys, tmp_path, lst):
    before = lst.read_bytes()
    err = fails(capsys, 21, "list", "bump", lst, "--version", version)
    assert "not newer than 3" in err
    assert lst.read_bytes() == before and no_tmp_files(tmp_path)


# --- atomic writes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()]
)
def test_failed_write_leaves_original_and_no_temporary(failure, capsys, tmp_path, lst, monkeypatch):
    def replace(src, dst):
        raise failure

    before = lst.read_bytes()
    monkeypatch.setattr(fileio.os, "replace", replace)
    rc, _, err = run(capsys, "list", "bump", lst)
    monkeypatch.undo()
    assert rc == (3 if isinstance(failure, OSError) else 120)
    assert err.count("\n") == 1 and err.startswith("vmtrust: ")
    assert lst.read_bytes() == before
    assert no_tmp_files(tmp_path)


def test_write_into_missing_directory(capsys, tmp_path, lst):
    fails(capsys, 3, "list", "bump", lst, "--out", tmp_path / "no" / "such" / "dir.json")


# --- sign --------------------------------------------------------------------------------


def _sign(capsys, tmp_path, lst, cert, key, *extra):
    out = tmp_path / "out.smime"
    return run(capsys, "list", "sign", lst, "--cert", cert, "--key", key, "--out", out, *extra)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-digital-signature", "digitalSignature"),
        ("dn-mismatch", "hv:endorser names"),
        ("ca-mismatch", "hv:endorser names"),
        ("expired-list", "expired"),
        ("key-mismatch", "private key does not belong"),
        ("expired-cert", "not valid now"),
    ],
)
def test_sign_refusals(case, message, capsys, tmp_path, pki):
    signer = {"no-digital-signature": pki.no_sign, "expired-cert": pki.expired}.get(
        case, pki.endorser
    )
    cert, key = signer.write(tmp_path / "globus", "signer")
    kw = {
        "dn-mismatch": {"dn": "/DC=org/DC=example/O=People/CN=Someone Else"},
        "ca-mismatch": {"ca": pki.other_ca.dn},
        "expired-list": {"created": NOW - timedelta(days=30), "expires": NOW - timedelta(1)},
    }.get(case, {})
    if case == "key-mismatch":
        key = pki.revoked.write(tmp_path / "other", "other")[1]
    lst = write_list(tmp_path / "list.json", list_document(signer, **kw))
    rc, _, err = _sign(capsys, tmp_path, lst, cert, key)
    assert rc == 21 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out.smime").exists()


@pytest.fixture
def encrypted_key(pki, tmp_path):
    path = tmp_path / "encrypted.key.pem"
    path.write_bytes(
        pki.endorser.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret passphrase"),
        )
    )
    return path


def test_sign_with_encrypted_key(capsys, tmp_path, creds, encrypted_key, lst, ca_dir, monkeypatch):
    cert = creds[0]
    secret = tmp_path / "passphrase"
    secret.write_text("s3cret passphrase\n")
    rc, _, err = _sign(capsys, tmp_path, lst, cert, encrypted_key, "--passphrase-file", secret)
    assert rc == 0, err
    ok(capsys, "list", "verify", tmp_path / "out.smime", "--ca-dir", ca_dir)

    secret.write_text("wrong\n")
    rc, _, err = _sign(capsys, tmp_path, lst, cert, encrypted_key, "--passphrase-file", secret)
    assert rc == 21 and "wrong passphrase" in err and err.count("\n") == 1

    (tmp_path / "out.smime").unlink()
    monkeypatch.setenv("VMTRUST_KEY_PASSPHRASE", "s3cret passphrase")
    assert _sign(capsys, tmp_path, lst, cert, encrypted_key)[0] == 0
    assert (tmp_path / "out.smime").exists()


def test_sign_encrypted_key_without_passphrase_or_tty(capsys, tmp_path, creds, encrypted_key, lst):
    rc, _, err = _sign(capsys, tmp_path, lst, creds[0], encrypted_key)
    assert rc == 21 and err.count("\n") == 1
    assert "encrypted" in err and "--passphrase-file" in err
