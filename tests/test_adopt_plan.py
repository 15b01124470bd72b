"""Adoption's decisions, one by one: :func:`glance_sync.adopt.plan_adoption` is pure.

The images are Glance's JSON as atrope 2.0.0/2.1.0 and cloudkeeper-os 0.9 leave
them (their properties read from their sources; ``tests/test_adopt_atrope.py``
runs atrope itself).  Each reason a copy cannot be adopted in place is a case.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import requests
from test_plan import ID_A, ID_B, desired, held, sha

from glance_sync.adopt import GlanceFile
from glance_sync.adopt_plan import InPlace, plan_adoption
from glance_sync.foreign import Atrope, CloudkeeperOS, make_tool
from vmtrust.errors import GlanceError

PROJECT = "svc0123"
WANTED = desired((ID_A, "1.2"), (ID_B, "7"))
SHA_A = WANTED[ID_A].image.sha512
LIST_ID = WANTED[ID_A].imagelist.identifier


def atrope_image(image_id: str = "g-1", identifier: str = ID_A, **props) -> dict:
    """An image as atrope 2.0.0 leaves it in Glance when the bytes are the list's."""
    image = {
        "id": image_id,
        "name": "EGI Example worker node",
        "owner": PROJECT,
        "status": "active",
        "visibility": "shared",
        "disk_format": "qcow2",  # image_entry's hv:format is QCOW2; 2.1.0 lower-cases it
        "container_format": "bare",
        "os_hash_algo": "sha512",
        "os_hash_value": SHA_A,
        "size": WANTED[ID_A].image.size,
        "created_at": "2026-01-01T00:00:00Z",
        "tags": ["atrope"],
        "appdb_id": identifier,
        "sha512": SHA_A,
        "image_list": "egi-site",
        "vo": "vo.example.org",
    }
    image.update(props)
    return {k: v for k, v in image.items() if v is not None}


def plan(found, held_images=(), wanted=WANTED, tool=None, stored=lambda fmt: fmt):
    return plan_adoption(
        dict(wanted), list(held_images), found, tool=tool or Atrope(), project=PROJECT,
        stored_format=stored,
    )  # fmt: skip


def test_the_list_s_bytes_under_the_right_label_are_adopted_in_place():
    result = plan([atrope_image()])
    assert result.in_place == [InPlace(WANTED[ID_A], atrope_image(), "qcow2")]
    assert (result.retire, result.refused, result.left) == ([], [], [])


def test_of_two_copies_the_older_is_adopted_and_the_other_retired():
    newer = atrope_image("g-2", created_at="2026-02-01T00:00:00Z")
    older = atrope_image("g-1")
    result = plan([newer, older])
    assert [i.image["id"] for i in result.in_place] == ["g-1"]
    (retire,) = result.retire
    assert (retire.image["id"], retire.reupload) == ("g-2", False)
    assert retire.reason == f"a second copy of {ID_A}"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"status": "queued"}, "its Glance status is queued"),
        ({"status": "deactivated"}, "its Glance status is deactivated"),
        ({"os_hash_algo": "md5"}, "Glance hashed it with md5, which cannot be compared"),
        ({"os_hash_value": sha("converted")}, "Glance holds other bytes than the list's file "
                                              "(atrope converted it)"),
        ({"os_hash_value": sha("old"), "sha512": sha("old")},
         f"atrope uploaded another file (sha512 {sha('old')[:16]}…) than the list has now "
         f"(version 1.2, sha512 {SHA_A[:16]}…)"),
        ({"os_hash_value": sha("old"), "sha512": None}, "Glance holds other bytes than the "
                                                        "list's file"),
        ({"size": 1}, "Glance holds other bytes"),
        ({"disk_format": "raw"}, "Glance labels it raw, the list declares qcow2 (hv:format): "
                                 "the label cannot change on an active image"),
        ({"container_format": "ova"}, "container_format is ova, vmtrust stores bare disks"),
    ],
)  # fmt: skip
def test_every_other_copy_is_uploaded_again_and_says_why(change, reason):
    result = plan([atrope_image(**change)])
    assert result.in_place == []
    (retire,) = result.retire
    assert retire.reupload and retire.identifier == ID_A
    assert retire.reason.startswith(reason), retire.reason


def test_atrope_2_1_image_hash_tells_an_older_version_from_a_conversion():
    older = atrope_image(os_hash_value=sha("old"), sha512=None, image_hash="sha512:" + sha("old"))
    converted = atrope_image(os_hash_value=sha("conv"), sha512=None, image_hash="sha512:" + SHA_A)
    assert "than the list has now" in plan([older]).retire[0].reason
    assert "atrope converted it" in plan([converted]).retire[0].reason


def test_a_compressed_or_archived_list_file_is_never_adopted_as_it_is():
    """atrope 2.0.0 uploads a .gz as it is: its hash is the list's, yet it is no disk."""
    for fmt in ("QCOW2.gz", "OVA", "raw.xz"):
        entry = replace(WANTED[ID_A].image, format=fmt)
        wanted = {ID_A: replace(WANTED[ID_A], image=entry)}
        (retire,) = plan([atrope_image()], wanted=wanted).retire
        assert retire.reason.startswith(f"the list's file is {fmt}: Glance holds it as published")


def test_a_site_that_stores_another_format_gets_the_converted_upload():
    (retire,) = plan([atrope_image()], stored=lambda fmt: "raw").retire
    assert retire.reason == "the site stores raw ([store_glance] disk_formats), not qcow2"


def test_copies_of_an_image_vmtrust_already_holds_are_retired_not_adopted():
    current = held(WANTED[ID_A], "vm-1")
    result = plan([atrope_image()], [current])
    assert result.in_place == []
    (retire,) = result.retire
    assert not retire.reupload and retire.reason == f"vmtrust already holds {ID_A} 1.2"
    # an older version vmtrust holds does not count: the copy is adopted (the plan retires
    # vmtrust's older one as superseded)
    older = held(desired((ID_A, "1.1"))[ID_A], "vm-0")
    assert [i.image["id"] for i in plan([atrope_image()], [older]).in_place] == ["g-1"]
    retired = replace(current, retired=True)
    assert len(plan([atrope_image()], [retired]).in_place) == 1


def test_a_copy_in_another_project_is_refused_with_the_fix_and_not_copied():
    result = plan([atrope_image(owner="atrope-project")])
    assert result.in_place == [] and result.retire == []
    (refused,) = result.refused
    assert refused.want is WANTED[ID_A]
    assert "is owned by project atrope-project, not by the sync's project svc0123" in refused.reason
    assert "[store_glance] project_id = atrope-project" in refused.reason
    assert "'openstack image set --project svc0123 g-1', its id stays" in refused.reason
    # beside an adoptable copy in the sync's project, the other one is only listed
    result = plan([atrope_image("g-2", owner="atrope-project"), atrope_image()])
    assert [i.image["id"] for i in result.in_place] == ["g-1"] and result.refused == []
    (left,) = result.left
    assert left.image["id"] == "g-2" and "owned by project atrope-project" in left.reason


def test_a_copy_owned_by_another_target_s_project_is_that_target_s_not_refused_here():
    """[sync] targets with two projects of one Glance: atrope shared its image from the
    north target's project with the south target's (a VO project).  South must neither
    refuse it (that would stop south's own upload) nor touch it: north adopts it."""
    image = atrope_image(owner="north-project")
    result = plan_adoption(
        dict(WANTED), [], [image], tool=Atrope(), project=PROJECT,
        stored_format=lambda fmt: fmt, elsewhere={"north-project": "north"},
    )  # fmt: skip
    assert (result.in_place, result.retire, result.refused) == ([], [], [])
    (left,) = result.left
    assert left.reason == "owned by project north-project, target north's: adopted there, not here"
    # a project no target has is still refused with the fix
    result = plan_adoption(
        dict(WANTED), [], [image], tool=Atrope(), project=PROJECT,
        stored_format=lambda fmt: fmt, elsewhere={"other-project": "north"},
    )  # fmt: skip
    assert len(result.refused) == 1


def test_images_the_site_does_not_approve_or_cannot_place_are_left_alone():
    found = [
        atrope_image("g-1", identifier="not-in-any-list"),
        atrope_image("g-2", appdb_id=None),
    ]
    result = plan(found)
    assert (result.in_place, result.retire, result.refused) == ([], [], [])
    assert [(i.image["id"], i.reason) for i in result.left] == [
        ("g-1", "no list that verified in this pass approves it in vmtrust"),
        ("g-2", "atrope recorded no image identifier"),
    ]
    lines = result.describe(Atrope(), "deactivate")
    assert lines[0] == (
        "leave    atrope image g-1 (EGI Example worker node), appdb_id not-in-any-list, "
        "image_list egi-site: no list that verified in this pass approves it in vmtrust; "
        "left alone (to remove it: openstack image delete g-1)"
    )


def test_cloudkeeper_os_images_are_known_by_image_and_list_identifier():
    """cloudkeeper-os 0.9 writes APPLIANCE_* properties and keeps images in the VO project."""
    attributes = json.dumps({"sl:checksum:sha512": SHA_A, "dc:identifier": ID_A})
    base = atrope_image(
        tags=[], appdb_id=None, sha512=None, image_list=None, vo=None,
        APPLIANCE_ID=ID_A, APPLIANCE_IMAGE_LIST_ID=LIST_ID, APPLIANCE_STATUS="ACTIVE",
        APPLIANCE_VO="vo.example.org", APPLIANCE_ATTRIBUTES=attributes,
    )  # fmt: skip
    tool = make_tool("cloudkeeper-os")
    assert isinstance(tool, CloudkeeperOS) and tool.claimed_sha512(base) == SHA_A
    assert tool.queries([LIST_ID, LIST_ID]) == [{"APPLIANCE_IMAGE_LIST_ID": LIST_ID}]
    assert len(plan([base], tool=tool).in_place) == 1
    eol = {**base, "id": "g-2", "APPLIANCE_STATUS": "EOL"}
    other_list = {**base, "id": "g-3", "APPLIANCE_IMAGE_LIST_ID": "another-list"}
    result = plan([eol, other_list], tool=tool)
    assert [(i.image["id"], i.reason) for i in result.left] == [
        ("g-2", "cloudkeeper-os marked it as replaced"),
        ("g-3", "no list that verified in this pass approves it in vmtrust"),
    ]
    tags, props = tool.marks(base)
    assert tags == set() and props == {"APPLIANCE_ID", "APPLIANCE_IMAGE_LIST_ID",
                                       "APPLIANCE_STATUS", "APPLIANCE_VO"}  # fmt: skip
    assert tool.claimed_sha512({**base, "APPLIANCE_ATTRIBUTES": "{not json"}) is None


def test_atrope_marks_and_claims():
    tool = make_tool("atrope", "atrope-catchall")
    assert tool.queries([]) == [{"tag": "atrope-catchall"}]
    assert tool.marks(atrope_image()) == ({"atrope-catchall"}, {"sha512", "vo", "project"})
    assert tool.claimed_sha512({"image_hash": "sha512:ABC"}) == "abc"
    assert tool.claimed_sha512({"sha512": "DEF"}) == "def"
    assert tool.claimed_sha512({"image_hash": "md5:x"}) is None
    with pytest.raises(ValueError, match="unknown tool 'vmcatcher'"):
        make_tool("vmcatcher")


def test_a_community_image_of_another_project_neither_blocks_nor_is_adopted():
    """Any project may publish a community image tagged atrope with an approved appdb_id:
    it must not stop the real copy's adoption, nor, alone, the upload of the image."""
    fake = atrope_image("g-9", owner="someone", visibility="community")
    alone = plan([fake])
    assert (alone.in_place, alone.retire, alone.refused) == ([], [], [])
    (left,) = alone.left
    assert left.reason == "a community image of project someone: anyone can publish one"
    beside = plan([fake, atrope_image()])
    assert [i.image["id"] for i in beside.in_place] == ["g-1"] and beside.refused == []
    # atrope 2.1.0's own community images (sharing_model) are in its project: adopted
    own = plan([atrope_image(visibility="community")])
    assert len(own.in_place) == 1


def test_with_a_version_of_its_own_vmtrust_updates_as_usual_and_refuses_nothing():
    """vmtrust holds an older version and atrope's copy is in another project: the pass
    replaces vmtrust's own as it would without --adopt; refusing would leave the image
    out of the approved set, and the plan would retire vmtrust's version."""
    older = held(desired((ID_A, "1.1"))[ID_A], "vm-0")
    result = plan([atrope_image(owner="atrope-project")], [older])
    assert result.refused == [] and result.in_place == []
    (left,) = result.left
    assert "owned by project atrope-project, which the sync cannot retire" in left.reason


class _Reply:
    def __init__(self, chunks):
        self.chunks = chunks
        self.closed = False

    def iter_content(self, size):
        yield from self.chunks

    def close(self):
        self.closed = True


class _Store:
    """Glance's answer to GET /images/{id}/file, and nothing else."""

    def __init__(self, reply):
        self.reply = reply
        self.asked = []

    def call(self, method, url, ok, **kw):
        self.asked.append((method, url, kw.get("stream")))
        return self.reply


def test_reading_back_is_bounded_and_a_lost_body_is_one_line():
    def broken():
        yield b"x" * 10
        raise requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead")

    store = _Store(_Reply([b"x" * 10, b"y" * 10]))
    raw = GlanceFile(store, "g-1", 15)
    assert store.asked == [("GET", "/images/g-1/file", True)]
    assert raw.read() == b"x" * 10
    with pytest.raises(GlanceError, match=r"^glance GET /images/g-1/file: more than the 15 bytes"):
        raw.read()
    raw = GlanceFile(_Store(_Reply(broken())), "g-1", 100)
    raw.read()
    with pytest.raises(GlanceError, match=r"connection lost \(Connection broken: Incomplete"):
        raw.read()
    exact = GlanceFile(_Store(_Reply([b"z" * 15])), "g-1", 15)
    assert (exact.read(), exact.read()) == (b"z" * 15, b"")
