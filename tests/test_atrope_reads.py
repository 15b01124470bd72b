"""atrope, EGI's image sync, reads the lists vmtrust makes.

atrope 2.0.0 (the PyPI release) runs unchanged from its own environment
(``.venv-atrope``, ``make venv-atrope``) through ``tests/atrope_main.py``: its
``HepixImageList`` parser on list documents, and its whole reading of a published
list — download, ``openssl smime -verify`` against the test CA directory, the
endorser and expiry checks, the image downloads with their SHA-512, and the
Glance dispatcher's image metadata and upload — on lists vmtrust made, signed
and verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import hostile_images
import pytest
from cli_support import ok, write_list
from conftest import IMAGE_SHA512, image_entry
from test_egi_profile import APPDB_ENTRY, IDS, VO, add, describe, egi_list, inner, new_list

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("VMTRUST_ATROPE_VENV", ROOT / ".venv-atrope"))


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    """No vmtrust.conf of the machine."""
    monkeypatch.setattr("oslo_config.cfg.find_config_files", lambda *a, **k: [])


@pytest.fixture(scope="module")
def atrope() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / "bin" / "atrope").exists():
        why = f"no atrope environment at {VENV} (run 'make venv-atrope')"
        if os.environ.get("VMTRUST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"atrope is required here: {why}")
        pytest.skip(why)
    return python


def run_atrope(python: Path, tmp_path: Path, *args: Any) -> dict[str, Any]:
    work = tmp_path / f"atrope-{len(list(tmp_path.glob('atrope-*')))}"
    work.mkdir()
    done = subprocess.run(
        [str(python), str(ROOT / "tests" / "atrope_main.py"), *map(str, args), str(work)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_PROXY": "*", "PYTHONPATH": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def parse(python: Path, tmp_path: Path, lst: Path) -> dict[str, Any]:
    return run_atrope(python, tmp_path, "parse", lst)


# --- the parser ---------------------------------------------------------------------------


def test_atrope_refuses_a_plain_hepix_list(atrope, capsys, tmp_path):
    """What vmtrust wrote before the profile, and still writes without --vo."""
    lst = new_list(capsys, tmp_path / "plain.json")
    add(capsys, lst, describe(capsys, tmp_path, "wn.qcow2", "https://x.org/wn", "--osname", "A"))
    result = parse(atrope, tmp_path, lst)
    assert result == {
        "ok": False,
        "error": "InvalidImageList: Image list is not valid: Invalid image definition, "
        "missing 'ad:group'",
    }


def test_atrope_reads_one_image(atrope, capsys, tmp_path):
    lst = new_list(capsys, tmp_path / "egi.json", None, "--vo", VO)
    add(capsys, lst, describe(capsys, tmp_path, "wn.qcow2", "https://x.org/wn.qcow2",
                              "--format", "QCOW2", "--osname", "AlmaLinux"))  # fmt: skip
    result = parse(atrope, tmp_path, lst)
    assert result["ok"], result
    read = result["list"]
    fields = inner(lst)
    image = fields["hv:images"][0]["hv:image"]
    assert (read["uuid"], read["version"], read["vo"]) == (fields["dc:identifier"], "1", VO)
    assert read["endorser"] == {"dn": "/DC=org/CN=E", "ca": "/CN=C", "name": "Jane Endorser"}
    (got,) = read["images"]
    assert got["identifier"] == image["dc:identifier"] and got["sha512"] == IMAGE_SHA512
    assert (got["format"], got["osname"], got["group"]) == ("qcow2", "AlmaLinux", "General group")
    assert got["mpuri"] == image["ad:mpuri"]
    assert got["user_fullname"] == "Jane Endorser"
    assert got["expired_2_1"] is False


def test_atrope_reads_several_images_with_and_without_optional_fields(atrope, capsys, tmp_path):
    lst = egi_list(capsys, tmp_path)
    result = parse(atrope, tmp_path, lst)
    assert result["ok"], result
    images = result["list"]["images"]
    assert [i["identifier"] for i in images] == list(IDS)
    assert [i["format"] for i in images] == ["qcow2", "raw", "ova"]
    assert [i["group"] for i in images] == ["Worker nodes", "General group", "General group"]
    assert images[0]["mpuri"] == "https://appdb.example.org/vo/wn:7/"
    assert (images[0]["description"], images[0]["comments"]) == ("Worker node", "CVMFS inside")
    assert (images[1]["description"], images[1]["comments"]) == ("", "")
    assert not any(i["expired_2_1"] for i in images)


def test_atrope_reads_appdb_string_numbers(atrope, capsys, tmp_path):
    lst = new_list(capsys, tmp_path / "egi.json", None, "--vo", VO)
    entry = tmp_path / "appdb.json"
    entry.write_text(json.dumps(APPDB_ENTRY))
    add(capsys, lst, entry)
    add(capsys, lst, describe(capsys, tmp_path, "wn.qcow2", "https://x.org/wn.qcow2",
                              "--profile", "egi", "--format", "qcow2", "--osname", "Alma",
                              "--identifier", IDS[0], "--ram-minimum", "1024"))  # fmt: skip
    result = parse(atrope, tmp_path, lst)
    assert result["ok"], result
    appdb, described = result["list"]["images"]
    assert (appdb["size"], appdb["version"], appdb["hypervisor"]) == (
        "20",
        "20150618211400",
        "QEMU,KVM",
    )
    assert appdb["mpuri"] == APPDB_ENTRY["hv:image"]["ad:mpuri"]
    assert described["size"] == 20 and described["expired_2_1"] is False


def test_atrope_2_1_crashes_on_an_image_without_expiry(atrope, capsys, tmp_path):
    """An image with every AppDB key but no dc:date:expires: 2.0 reads it, 2.1's rule
    fails comparing dates; the profile writes the list's expiry there."""
    lst = new_list(capsys, tmp_path / "egi.json", None, "--vo", VO)
    add(capsys, lst, describe(capsys, tmp_path, "wn.qcow2", "https://x.org/wn.qcow2",
                              "--format", "qcow2", "--osname", "Alma"))  # fmt: skip
    fields = inner(lst)
    del fields["hv:images"][0]["hv:image"]["dc:date:expires"]
    bare = write_list(tmp_path / "no-expiry.json", {"hv:imagelist": fields})
    (image,) = parse(atrope, tmp_path, bare)["list"]["images"]
    assert image["expired_2_1"].startswith("TypeError: can't compare offset-naive")
    (image,) = parse(atrope, tmp_path, lst)["list"]["images"]
    assert image["expired_2_1"] is False


def test_atrope_reads_a_bumped_list(atrope, capsys, tmp_path):
    lst = egi_list(capsys, tmp_path)
    ok(capsys, "list", "bump", lst, "--lifetime-days", "90")
    result = parse(atrope, tmp_path, lst)
    assert result["ok"] and result["list"]["version"] == "2"
    assert not any(i["expired_2_1"] for i in result["list"]["images"])


# --- a published list: signed and verified by vmtrust, then read by atrope -------------------


def test_atrope_syncs_a_list_vmtrust_signed(atrope, capsys, tmp_path, pki, ca_dir, site):
    cert, key = pki.endorser.write(tmp_path / "globus", "endorser")
    disk = b"a VMDK disk\n" * 64
    (tmp_path / "vm.ova").write_bytes(hostile_images.ova([("vm-disk1.vmdk", disk)]))
    lst = egi_list(capsys, tmp_path, cert, base=site.url("/img"))
    # one image as AppDB writes its format, put in by hand: what the profile prevents
    fields = inner(lst)
    appdb = {**image_entry("9d1c6a52-3e0f-4b7a-8f2d-5c4b3a291807")["hv:image"]}
    appdb.update({k: v for k, v in fields["hv:images"][0]["hv:image"].items() if k[:3] == "ad:"})
    appdb.update(
        {"hv:uri": site.url("/img/appdb.img"), "dc:date:expires": fields["dc:date:expires"]}
    )
    fields["hv:images"].append({"hv:image": appdb})
    write_list(lst, {"hv:imagelist": fields})
    signed = tmp_path / "site.list"
    ok(capsys, "list", "sign", lst, "--cert", cert, "--key", key, "--out", signed)
    assert ok(capsys, "list", "verify", signed, "--ca-dir", ca_dir).startswith("OK: list")
    for name in ("wn.qcow2", "ui.raw", "vm.ova"):
        site.files[f"/img/{name}"] = (tmp_path / name).read_bytes()
    site.files["/img/appdb.img"] = (tmp_path / "wn.qcow2").read_bytes()
    site.files["/lists/site.list"] = signed.read_bytes()

    result = run_atrope(atrope, tmp_path, "fetch", site.url("/lists/site.list"), ca_dir,
                        pki.endorser.dn, pki.ca.dn)  # fmt: skip
    assert result["ok"], result
    assert (result["verified"], result["trusted"], result["expired"]) == (True, True, False)
    images = {i["identifier"]: i for i in result["list"]["images"]}
    assert all(i["verified"] for i in images.values())  # downloaded, SHA-512 checked
    made = {c["metadata"]["appdb_id"]: c for c in result["glance"]}
    wn = made[IDS[0]]
    meta = wn["metadata"]
    assert (meta["disk_format"], meta["container_format"]) == ("qcow2", "bare")
    assert (meta["os_distro"], meta["os_version"], meta["architecture"]) == (
        "almalinux",
        "9",
        "x86_64",
    )
    assert meta["vmcatcher_event_ad_mpuri"] == "https://appdb.example.org/vo/wn:7/"
    assert meta["vo"] == VO and meta["sha512"] == IMAGE_SHA512
    described = fields["hv:images"][0]["hv:image"]
    assert json.loads(meta["APPLIANCE_ATTRIBUTES"]) == described
    assert wn["uploaded_sha512"] == hashlib.sha512((tmp_path / "wn.qcow2").read_bytes()).hexdigest()
    assert made[IDS[1]]["metadata"]["disk_format"] == "raw"
    assert made[IDS[2]]["metadata"]["disk_format"] == "vmdk"  # the OVA's disk, unpacked
    assert made[IDS[2]]["uploaded_sha512"] == hashlib.sha512(disk).hexdigest()
    # atrope 2.0 keeps a disk format only in lower case: AppDB's "QCOW2" goes to Glance as raw
    assert made["9d1c6a52-3e0f-4b7a-8f2d-5c4b3a291807"]["metadata"]["disk_format"] == "raw"
