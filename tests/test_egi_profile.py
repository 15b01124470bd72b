"""The AppDB/EGI profile (:mod:`vmtrust.egiprofile`): what vmtrust's authoring verbs write
into a list with ``ad:vo``, what they refuse, and what vmcatcher and cloudkeeper read of it.

atrope's own parser runs on the same lists in ``tests/test_atrope_reads.py``.  vmcatcher
and cloudkeeper cannot run here (Python 2 with M2Crypto; Ruby): their reading is written
down below from their source, as the reference gives it, and applied to vmtrust's lists.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_support import fails, ok, write_list
from conftest import IMAGE_BYTES, image_entry, list_document

from vmtrust import authoring, egiprofile, imagelist
from vmtrust.errors import SigningError

LIST_URI = "https://images.example.org/lists/site.list"
VO = "vo.example.org"
IDS = (
    "85bfb313-a852-444b-89e7-9cdf8c23dc91",
    "0b8a4a37-4c0e-4c0c-9e4e-2d2f3b1f6f00",
    "5f0e9d4c-1b2a-4c3d-8e7f-6a5b4c3d2e1f",
)


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    """No vmtrust.conf of the machine."""
    monkeypatch.setattr("oslo_config.cfg.find_config_files", lambda *a, **k: [])


def inner(path: Path) -> dict[str, Any]:
    return json.loads(path.read_bytes())["hv:imagelist"]


# --- lists made with the command line, as an endorser does ---------------------------------


def new_list(capsys, path: Path, cert: Path | None = None, *extra: str) -> Path:
    """``vmtrust list new`` (EGI with ``--vo`` in ``extra``); the endorser from ``cert``."""
    who = ["--cert", cert] if cert else ["--endorser-dn", "/DC=org/CN=E", "--endorser-ca", "/CN=C"]
    person = ["--creator", "Jane Endorser", "--email", "jane@example.org"]
    ok(capsys, "list", "new", *who, "--title", "Site", "--uri", LIST_URI, *person, *extra,
       "--out", path)  # fmt: skip
    return path


def describe(capsys, tmp_path: Path, name: str, uri: str, *options: str) -> Path:
    """``vmtrust image describe`` of a small file ``name``; the entry's path."""
    image = tmp_path / name
    if not image.exists():
        image.write_bytes(IMAGE_BYTES if name.endswith(".qcow2") else name.encode() * 100)
    out = tmp_path / f"{name}.json"
    ok(capsys, "image", "describe", image, "--uri", uri, "--title", f"Image {name}",
       "--osversion", "9", *options, "--out", out)  # fmt: skip
    return out


def add(capsys, lst: Path, entry: Path) -> None:
    ok(capsys, "list", "add-image", lst, entry)


def egi_list(capsys, tmp_path: Path, cert: Path | None = None, base: str = "https://x.org") -> Path:
    """An EGI list of three images: optional fields given, left out, and an OVA."""
    lst = new_list(capsys, tmp_path / "egi.json", cert, "--vo", VO)
    full = describe(capsys, tmp_path, "wn.qcow2", f"{base}/wn.qcow2", "--profile", "egi",
                    "--format", "QCOW2", "--osname", "AlmaLinux", "--identifier", IDS[0],
                    "--description", "Worker node", "--comments", "CVMFS inside",
                    "--group", "Worker nodes", "--mpuri", "https://appdb.example.org/vo/wn:7/",
                    "--core-minimum", "2", "--ram-minimum", "2048",
                    "--image-version", "9.4.1")  # fmt: skip
    bare = describe(capsys, tmp_path, "ui.raw", f"{base}/ui.raw", "--format", "RAW",
                    "--osname", "Debian", "--identifier", IDS[1])  # fmt: skip
    ova = describe(capsys, tmp_path, "vm.ova", f"{base}/vm.ova", "--format", "OVA",
                   "--osname", "Ubuntu", "--identifier", IDS[2])  # fmt: skip
    for entry in (full, bare, ova):
        add(capsys, lst, entry)
    return lst


APPDB_ENTRY = {  # as AppDB writes an image: every number a string, its own key order
    "hv:image": {
        "dc:identifier": IDS[1],
        "dc:title": "AppDB image",
        "dc:description": "",
        "ad:mpuri": f"https://appdb.example.org/store/vo/image/{IDS[1]}:484/",
        "ad:base_mpuri": "https://appdb.example.org/store/vm/image/abc:6450:1469784811/",
        "ad:appid": "993",
        "ad:group": "General group",
        "hv:uri": "https://x.org/appdb.img",
        "hv:size": str(len(IMAGE_BYTES)),
        "sl:checksum:sha512": image_entry()["hv:image"]["sl:checksum:sha512"],
        "hv:format": "QCOW2",
        "hv:hypervisor": "QEMU,KVM",
        "hv:version": "20150618211400",
        "hv:core_minimum": "1",
        "hv:ram_minimum": "512",
        "ad:ram_recommended": "1024",
        "ad:core_recommended": "4",
        "sl:arch": "x86_64",
        "sl:os": "Linux",
        "sl:osname": "CentOS",
        "sl:osversion": "7",
        "sl:comments": "",
    }
}


# --- what vmcatcher and cloudkeeper read --------------------------------------------------

HEPIX_DATE = "%Y-%m-%dT%H:%M:%SZ"  # hepixvmitrust time_format_definition; cloudkeeper DATE_FORMAT

#: vmcatcher's handler environment (vmcatcher launch.py): variable ← image key, or
#: ``hv:imagelist.KEY`` for a list field; a variable is set only when its value is not empty.
VMCATCHER_EVENTS = {
    "VMCATCHER_EVENT_DC_IDENTIFIER": "dc:identifier",
    "VMCATCHER_EVENT_DC_TITLE": "dc:title",
    "VMCATCHER_EVENT_DC_DESCRIPTION": "dc:description",
    "VMCATCHER_EVENT_HV_URI": "hv:uri",
    "VMCATCHER_EVENT_HV_SIZE": "hv:size",
    "VMCATCHER_EVENT_HV_VERSION": "hv:version",
    "VMCATCHER_EVENT_HV_HYPERVISOR": "hv:hypervisor",
    "VMCATCHER_EVENT_HV_FORMAT": "hv:format",
    "VMCATCHER_EVENT_SL_ARCH": "sl:arch",
    "VMCATCHER_EVENT_SL_OS": "sl:os",
    "VMCATCHER_EVENT_SL_OSVERSION": "sl:osversion",
    "VMCATCHER_EVENT_SL_COMMENTS": "sl:comments",
    "VMCATCHER_EVENT_SL_CHECKSUM_SHA512": "sl:checksum:sha512",
    "VMCATCHER_EVENT_AD_MPURI": "ad:mpuri",
    "VMCATCHER_EVENT_IL_DC_IDENTIFIER": "hv:imagelist.dc:identifier",
    "VMCATCHER_EVENT_VO": "hv:imagelist.ad:vo",
}


def vmcatcher_reads(document: dict[str, Any]) -> list[dict[str, str]]:
    """The images vmcatcher's subscriber keeps of a list, as handler environments.

    hepixvmitrust's decoder (``VMimageListDecoder``) refuses a list without its required
    keys or with a date not in the exact HEPiX form, and **silently drops** an image
    missing one of its twelve keys; vmcatcher stores ``hv:size`` in an integer column and
    compares ``int(hv:size)`` with the file's length.
    """
    fields = document["hv:imagelist"]
    for key in (*imagelist.LIST_REQUIRED, "hv:endorser", "hv:images"):
        assert key in fields, f"vmcatcher refuses the list: no {key}"
    for key in ("dc:date:created", "dc:date:expires"):
        time.strptime(fields[key], HEPIX_DATE)
    assert set(imagelist.ENDORSER_REQUIRED) <= set(fields["hv:endorser"]["hv:x509"])
    kept = []
    for entry in fields["hv:images"]:
        image = entry["hv:image"]
        if not set(imagelist.IMAGE_REQUIRED) <= set(image):
            continue
        int(image["hv:size"])
        values = {**image, **{f"hv:imagelist.{k}": v for k, v in fields.items()}}
        kept.append(
            {
                var: str(values[key])
                for var, key in VMCATCHER_EVENTS.items()
                if str(values.get(key, ""))
            }
        )
    return kept


def cloudkeeper_reads(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The appliances cloudkeeper 2.0 builds of a list (``ImageList.from_hash``), or the
    refusal it raises (``InvalidImageListHashError``/``InvalidApplianceHashError``).

    The list needs ``dc:identifier`` and ``dc:date:expires``; each appliance needs its
    ``dc:identifier``, ``ad:mpuri``, the list's ``ad:vo`` and its own ``dc:date:expires``
    (``Time.strptime`` with the HEPiX form), and its image ``hv:uri`` and
    ``sl:checksum:sha512``; an expired appliance is skipped.
    """
    fields = document["hv:imagelist"]

    def present(obj: dict[str, Any], key: str, what: str) -> Any:
        if obj.get(key) in (None, ""):
            raise AssertionError(f"cloudkeeper refuses {what}: {key} is nil or empty")
        return obj[key]

    present(fields, "dc:identifier", "the list")
    datetime.strptime(present(fields, "dc:date:expires", "the list"), HEPIX_DATE)
    appliances = []
    for entry in fields["hv:images"]:
        image = entry["hv:image"]
        what = f"appliance {image.get('dc:identifier')}"
        present(fields, "ad:vo", what)
        for key in ("dc:identifier", "ad:mpuri", "hv:uri", "sl:checksum:sha512"):
            present(image, key, what)
        expires = datetime.strptime(present(image, "dc:date:expires", what), HEPIX_DATE)
        appliances.append(
            {
                "identifier": image["dc:identifier"],
                "mpuri": image["ad:mpuri"],
                "vo": fields["ad:vo"],
                "expired": expires.replace(tzinfo=UTC) < datetime.now(UTC),
                "ram": int(image.get("hv:ram_minimum") or 0),  # Ruby's to_i
            }
        )
    return appliances


# --- the profile written by the command line ----------------------------------------------


def test_list_with_vo_gets_every_field_egi_readers_require(capsys, tmp_path):
    lst = egi_list(capsys, tmp_path)
    fields = inner(lst)
    full, bare, ova = (e["hv:image"] for e in fields["hv:images"])
    assert fields["ad:vo"] == VO
    for image in (full, bare, ova):
        assert egiprofile.problems(image, now=datetime.now(UTC)) == []
        assert image["dc:date:expires"] == fields["dc:date:expires"]
        assert image["ad:user:fullname"] == "Jane Endorser"
        assert image["ad:user:uri"] == "mailto:jane@example.org"
        assert image["ad:user:guid"] == str(uuid.uuid5(uuid.NAMESPACE_X500, "/DC=org/CN=E"))
        assert list(image) == sorted(image)  # vmtrust's entries stay sorted
    assert (full["ad:group"], full["ad:mpuri"]) == (
        "Worker nodes",
        "https://appdb.example.org/vo/wn:7/",
    )
    assert (full["hv:core_minimum"], full["hv:ram_minimum"]) == (2, 2048)
    assert bare["ad:group"] == ova["ad:group"] == "General group"
    assert bare["ad:mpuri"] == f"{LIST_URI}#{IDS[1]}:1"
    assert [i["hv:format"] for i in (full, bare, ova)] == ["qcow2", "raw", "ova"]
    # what vmtrust itself reads of it is unchanged
    lst_view = imagelist.validate(json.loads(lst.read_bytes()))
    assert [i.format for i in lst_view.images] == ["qcow2", "raw", "ova"]
    assert lst_view.images[0].mpuri == "https://appdb.example.org/vo/wn:7/"


def test_plain_list_stays_plain(capsys, tmp_path):
    lst = new_list(capsys, tmp_path / "plain.json")
    add(
        capsys, lst, describe(capsys, tmp_path, "wn.qcow2", "https://x.org/wn", "--format", "QCOW2")
    )
    image = inner(lst)["hv:images"][0]["hv:image"]
    assert "ad:vo" not in inner(lst)
    assert not [k for k in image if k.startswith("ad:")] and "dc:date:expires" not in image
    assert image["hv:format"] == "QCOW2"  # as given: vmtrust and vmcatcher read any case


def test_appdb_entry_keeps_its_strings_and_order(capsys, tmp_path):
    lst = new_list(capsys, tmp_path / "egi.json", None, "--vo", VO)
    entry = tmp_path / "appdb.json"
    entry.write_text(json.dumps(APPDB_ENTRY))
    add(capsys, lst, entry)
    image = inner(lst)["hv:images"][0]["hv:image"]
    original = APPDB_ENTRY["hv:image"]
    assert list(image)[: len(original)] == list(original)  # AppDB's order, new keys after
    for key in ("hv:size", "hv:core_minimum", "hv:ram_minimum", "ad:ram_recommended", "ad:appid"):
        assert image[key] == original[key] and isinstance(image[key], str)
    assert image["ad:mpuri"] == original["ad:mpuri"] and image["hv:format"] == "qcow2"
    assert imagelist.validate(json.loads(lst.read_bytes())).images[0].size == len(IMAGE_BYTES)


def test_vmcatcher_reads_every_image_and_gets_mpuri_and_vo(capsys, tmp_path):
    egi = json.loads(egi_list(capsys, tmp_path).read_bytes())
    events = vmcatcher_reads(egi)
    assert len(events) == 3
    assert events[0]["VMCATCHER_EVENT_AD_MPURI"] == "https://appdb.example.org/vo/wn:7/"
    assert events[1]["VMCATCHER_EVENT_AD_MPURI"] == f"{LIST_URI}#{IDS[1]}:1"
    assert {e["VMCATCHER_EVENT_VO"] for e in events} == {VO}
    assert events[0]["VMCATCHER_EVENT_HV_FORMAT"] == "qcow2"
    plain = new_list(capsys, tmp_path / "plain.json")
    add(capsys, plain, describe(capsys, tmp_path, "p.qcow2", "https://x.org/p", "--format", "RAW"))
    (event,) = vmcatcher_reads(json.loads(plain.read_bytes()))
    assert "VMCATCHER_EVENT_AD_MPURI" not in event and "VMCATCHER_EVENT_VO" not in event


def test_cloudkeeper_builds_every_appliance_of_an_egi_list(capsys, tmp_path):
    egi = json.loads(egi_list(capsys, tmp_path).read_bytes())
    appliances = cloudkeeper_reads(egi)
    assert [a["identifier"] for a in appliances] == list(IDS)
    assert not any(a["expired"] for a in appliances)
    assert [a["ram"] for a in appliances] == [2048, 0, 0]
    lst = new_list(capsys, tmp_path / "s.json", None, "--vo", VO)
    entry = tmp_path / "appdb.json"
    entry.write_text(json.dumps(APPDB_ENTRY))
    add(capsys, lst, entry)
    assert cloudkeeper_reads(json.loads(lst.read_bytes()))[0]["ram"] == 512  # "512".to_i
    plain = list_document(images=[image_entry()])  # a HEPiX list: what vmtrust wrote before
    with pytest.raises(AssertionError, match="ad:mpuri is nil"):
        cloudkeeper_reads(plain)


def test_bump_moves_the_images_that_follow_the_list(capsys, tmp_path):
    lst = egi_list(capsys, tmp_path)
    fields = inner(lst)
    own = "2099-01-01T00:00:00Z"
    fields["hv:images"][2]["hv:image"]["dc:date:expires"] = own
    write_list(lst, {"hv:imagelist": fields})
    before = fields["dc:date:expires"]
    ok(capsys, "list", "bump", lst, "--lifetime-days", "60")
    after = inner(lst)
    assert after["dc:date:expires"] != before
    expiries = [e["hv:image"]["dc:date:expires"] for e in after["hv:images"]]
    assert expiries == [after["dc:date:expires"], after["dc:date:expires"], own]


def test_bump_completes_an_egi_list_written_before_the_profile():
    """A list with ad:vo and plain images (as vmtrust wrote them before) is completed."""
    now = datetime(2031, 5, 1, 8, tzinfo=UTC)
    document = list_document(images=[image_entry(), image_entry(IDS[1], **{"sl:osname": None})])
    result = authoring.bump(document, now=now)
    first, second = (e["hv:image"] for e in result["hv:imagelist"]["hv:images"])
    assert egiprofile.problems(first, now=now) == []
    assert first["dc:date:expires"] == "2031-05-29T08:00:00Z"
    # no refusal: the renewal goes through, and add-image names what is missing
    assert egiprofile.problems(second) == [
        "sl:osname: missing (give it with 'vmtrust image describe --osname')"
    ]
    with pytest.raises(SigningError, match=r"hv:images\[1\]\.sl:osname: missing"):
        authoring.add_image(result, image_entry(IDS[2]))


# --- refusals ----------------------------------------------------------------------------

DESCRIBE = ["--uri", "https://x.org/i", "--title", "T", "--osversion", "9"]


def test_describe_egi_needs_format_and_osname_before_reading_the_file(capsys, tmp_path):
    missing_file = tmp_path / "not-there.img"
    args = ["image", "describe", missing_file, *DESCRIBE, "--profile", "egi"]
    err = fails(capsys, 21, *args)
    assert "needs hv:format (--format) and sl:osname (--osname)" in err
    assert "sl:osname (--osname)" in fails(capsys, 21, *args, "--format", "qcow2")
    assert "hv:format (--format)" in fails(capsys, 21, *args, "--osname", "Alma", "--format", " ")
    assert "not-there.img" in fails(capsys, 3, *args, "--osname", "Alma", "--format", "qcow2")


@pytest.mark.parametrize("fmt", ["raw.gz", "tar.gz", "vhd", "iso", "QCOW"])
def test_describe_egi_refuses_formats_an_egi_reader_mishandles(fmt, capsys, tmp_path):
    image = tmp_path / "i.img"
    image.write_bytes(b"x")
    egi = ["--profile", "egi", "--osname", "A", "--format"]
    err = fails(capsys, 21, "image", "describe", image, *DESCRIBE, *egi, fmt)
    assert f"hv:format {fmt!r} is not read by every EGI tool" in err
    assert "ova, qcow2, raw, vmdk, vdi, vhdx" in err


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("--group", "", "one printable line"),
        ("--group", " ", "one printable line"),
        ("--group", "a\x00b", "one printable line"),  # a NUL ends vmcatcher's handler call
        ("--group", "Workers\u202e", "one printable line"),
        ("--mpuri", "https://x/\nX-Header: 1", "printable, without blanks"),
        ("--mpuri", "https://x/a b", "printable, without blanks"),
    ],
)
def test_describe_refuses_values_egi_readers_cannot_carry(option, value, rule, capsys, tmp_path):
    image = tmp_path / "i.img"
    image.write_bytes(b"x")
    err = fails(capsys, 21, "image", "describe", image, *DESCRIBE, option, value)
    assert f"{option} " in err and f"must be {rule}" in err


@pytest.mark.parametrize("vo", ["", " ", "vo. example", "vo\n"])
def test_new_refuses_a_blank_vo(vo, capsys, tmp_path):
    out = tmp_path / "l.json"
    err = fails(capsys, 4, "list", "new", "--endorser-dn", "/CN=e", "--endorser-ca", "/CN=c",
                "--title", "T", "--uri", LIST_URI, "--vo", vo, "--out", out)  # fmt: skip
    assert "--vo" in err and not out.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sl:osname": None}, r"hv:images\[0\]\.sl:osname: missing \(give it with 'vmtrust "
         r"image describe --osname'\)"),
        ({"hv:format": None}, r"hv:format: missing \(give it with '[^']*--format'"),
        ({"hv:format": "raw.bz2"}, r"hv:format 'raw.bz2' is not read by every EGI tool"),
        ({"sl:osname": " "}, r"sl:osname: is empty"),
        ({"ad:mpuri": ""}, r"ad:mpuri: is empty"),
        ({"dc:date:expires": "2020-01-01T00:00:00Z"}, r"expires: 2020-01-01T00:\S+ is past"),
    ],
)  # fmt: skip
def test_add_image_refuses_what_egi_readers_refuse(change, message, capsys, tmp_path):
    lst = new_list(capsys, tmp_path / "egi.json", None, "--vo", VO)
    before = lst.read_bytes()
    entry = tmp_path / "e.json"
    entry.write_text(json.dumps(image_entry(**change)))
    err = fails(capsys, 21, "list", "add-image", lst, entry)
    assert "has ad:vo, so EGI's tools read it" in err
    assert re.search(message, err), err
    assert lst.read_bytes() == before  # nothing half-written


def test_one_incomplete_image_is_named_when_another_is_added():
    """atrope refuses a whole list for one image: adding a good one does not hide a bad one."""
    document = list_document(images=[image_entry(**{"sl:osname": None})])
    with pytest.raises(SigningError, match=r"hv:images\[0\]\.sl:osname: missing") as caught:
        authoring.add_image(document, image_entry(IDS[1]))
    assert "hv:images[1]" not in str(caught.value)


# --- the profile's functions ---------------------------------------------------------------


def test_complete_keeps_what_the_endorser_gave():
    fields = list_document()["hv:imagelist"]
    given = {"ad:group": "G", "ad:mpuri": "M", "ad:user:fullname": "F", "ad:user:guid": "U",
             "ad:user:uri": "R", "dc:date:expires": "2099-01-01T00:00:00Z"}  # fmt: skip
    image = {**image_entry()["hv:image"], **given}
    completed = egiprofile.complete(fields, image)
    assert {k: completed[k] for k in given} == given
    assert completed["hv:format"] == "qcow2"
    assert egiprofile.complete(fields, completed) == completed  # idempotent


def test_a_derived_mpuri_follows_the_version_a_given_one_stays(capsys, tmp_path):
    lst = egi_list(capsys, tmp_path)
    fields = inner(lst)
    given, derived = (dict(e) for e in fields["hv:images"][:2])
    for entry, name in ((given, "given.json"), (derived, "derived.json")):
        entry["hv:image"] = {**entry["hv:image"], "hv:version": "2.0"}
        (tmp_path / name).write_text(json.dumps(entry))  # an entry taken from the list
        add(capsys, lst, tmp_path / name)
    images = [e["hv:image"] for e in inner(lst)["hv:images"]]
    assert images[0]["ad:mpuri"] == "https://appdb.example.org/vo/wn:7/"
    assert images[1]["ad:mpuri"] == f"{LIST_URI}#{IDS[1]}:2.0"


def test_vmcaster_endorser_array_gives_the_user():
    fields = list_document()["hv:imagelist"]
    fields["hv:endorser"] = [fields["hv:endorser"], {"hv:x509": {"hv:dn": "/CN=Other"}}]
    completed = egiprofile.complete(fields, image_entry()["hv:image"])
    assert completed["ad:user:fullname"] == "Jane Endorser"


def test_user_guid_is_the_endorsers_whatever_the_spelling():
    guid = egiprofile.user_guid("/DC=org/DC=example/CN=Jane")
    assert guid == egiprofile.user_guid("/dc=org/domainComponent=example/commonName=Jane")
    assert guid != egiprofile.user_guid("/DC=org/DC=example/CN=John")
    assert uuid.UUID(egiprofile.user_guid("not a DN")).version == 5


def test_mpuri_names_one_version_of_one_image():
    image = image_entry()["hv:image"]
    first = egiprofile.default_mpuri(LIST_URI, image)
    assert first == f"{LIST_URI}#{IDS[0]}:1.2"
    assert egiprofile.default_mpuri(LIST_URI, {**image, "hv:version": "1.3"}) != first
    odd = egiprofile.default_mpuri(LIST_URI, {**image, "hv:version": "1 #2/x"})
    assert odd.endswith(":1%20%232%2Fx") and odd.count("#") == 1


def test_user_uri_without_an_email_is_empty_not_invented():
    fields = list_document()["hv:imagelist"]
    fields["hv:endorser"]["hv:x509"]["hv:email"] = ""
    assert egiprofile.complete(fields, image_entry()["hv:image"])["ad:user:uri"] == ""


def test_expiry_of_an_added_image_is_the_lists_when_not_given():
    now = datetime.now(UTC)
    document = list_document(expires=now + timedelta(days=3))
    result, _ = authoring.add_image(document, image_entry(IDS[1]))
    images = [e["hv:image"] for e in result["hv:imagelist"]["hv:images"]]
    assert {i["dc:date:expires"] for i in images} == {
        imagelist.format_date(now + timedelta(days=3))
    }


def test_egi_list_signs_and_verifies_with_vmtrust(capsys, tmp_path, pki, ca_dir):
    """The profile's fields and AppDB's strings are nothing vmtrust's verifier minds."""
    cert, key = pki.endorser.write(tmp_path / "globus", "endorser")
    lst = egi_list(capsys, tmp_path, cert)
    entry = tmp_path / "appdb.json"
    entry.write_text(json.dumps({"hv:image": {**APPDB_ENTRY["hv:image"], "dc:identifier": "x-1"}}))
    add(capsys, lst, entry)
    signed = tmp_path / "site.list"
    ok(capsys, "list", "sign", lst, "--cert", cert, "--key", key, "--out", signed)
    summary = json.loads(ok(capsys, "list", "verify", signed, "--ca-dir", ca_dir, "--json"))
    assert [i["identifier"] for i in summary["images"]] == [*IDS, "x-1"]
    assert summary["images"][3]["size"] == len(IMAGE_BYTES)
    shown = json.loads(ok(capsys, "list", "show", signed, "--json"))
    assert shown["hv:imagelist"]["hv:images"][3]["hv:image"]["hv:size"] == "20"
