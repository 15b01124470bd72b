"""vmtrust launch, the Glance half: finding the VO's current trusted image in a real Glance.

Images are written by vmtrust's own Glance store (a real sync into the real
Glance of the test session); the seal of every candidate is checked client-side.
The server-creation half runs against nova's in-process stack in tests/with_nova.
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_plan import desired
from test_record import RECORD
from test_sync_local import IMAGE_A, IMAGE_B, entry, publish

from vmtrust.errors import NoTrustedImage
from vmtrust.launch import find_trusted_image, newest
from vmtrust.record import generate_key_pair, load_public_key, seal
from vmtrust.trust import Code, Verdict, refuse

BIN = Path(sys.executable).parent
VO = "vo.example.org"  #: the VO of test_plan's desired images


@pytest.fixture
def cms(glance_sync):
    glance_sync.subs = tuple(dataclasses.replace(s, vo="cms") for s in glance_sync.subs)
    return glance_sync


def _find(service, **kw):
    return find_trusted_image(
        service.store.conn,
        kw.pop("vo", "cms"),
        [service.s.seal_key.public_key()],
        [service.project],
        **kw,
    )


def test_newest_trusted_version_of_the_vo(cms, site, pki):
    publish(site, pki, [entry("wn", IMAGE_A, site, "1"), entry("ui", IMAGE_B, site, "7")], "1")
    assert cms.run(cms.subs).failures == []
    publish(site, pki, [entry("wn", IMAGE_B, site, "2"), entry("ui", IMAGE_B, site, "7")], "2")
    assert cms.run(cms.subs).failures == []
    found = _find(cms, identifier="wn")
    assert (found.identifier, found.version, found.vo) == ("wn", "2", "cms")
    assert {_find(cms).identifier} <= {"wn", "ui"}
    with pytest.raises(NoTrustedImage, match="no trusted image of VO atlas"):
        _find(cms, vo="atlas")


def test_altered_image_is_not_offered(cms, site, pki, glance):
    publish(site, pki, [entry("wn", IMAGE_A, site, "1")], "1")
    assert cms.run(cms.subs).failures == []
    found = _find(cms, identifier="wn")
    # the service project (which may write vmtrust_*) moves the expiry: the seal breaks
    reply = glance.api(cms.project).patch(
        f"{glance.url}/v2/images/{found.id}",
        json=[{"op": "replace", "path": "/vmtrust_expires", "value": "2099-01-01T00:00:00Z"}],
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
    )
    assert reply.status_code == 200
    with pytest.raises(NoTrustedImage, match=r"1 candidate\(s\) refused.*seal"):
        _find(cms, identifier="wn")


def test_other_keys_and_owners_are_not_trusted(cms, site, pki, tmp_path):
    publish(site, pki, [entry("wn", IMAGE_A, site, "1")], "1")
    assert cms.run(cms.subs).failures == []
    other = load_public_key(generate_key_pair(tmp_path / "other.key"))
    with pytest.raises(NoTrustedImage, match="sealed by unknown key"):
        find_trusted_image(cms.store.conn, "cms", [other], [cms.project])
    with pytest.raises(NoTrustedImage, match="not a trusted project"):
        find_trusted_image(cms.store.conn, "cms", [cms.s.seal_key.public_key()], ["someone"])


def test_cli_find_only_json(cms, site, pki, tmp_path):
    publish(site, pki, [entry("wn", IMAGE_A, site, "3")], "1")
    assert cms.run(cms.subs).failures == []
    pub = tmp_path / "seal.pub"
    from cryptography.hazmat.primitives import serialization

    pub.write_bytes(
        cms.s.seal_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    args = [BIN / "vmtrust", "launch", "--cloud", "sync", "--clouds-file", cms.clouds,
            "--seal-key", pub, "--owner", cms.project, "--find-only"]  # fmt: skip
    done = subprocess.run([*args, "--vo", "cms", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    image = json.loads(done.stdout)["image"]
    assert (image["identifier"], image["version"], image["vo"]) == ("wn", "3", "cms")
    missing = subprocess.run([*args, "--vo", "atlas"], capture_output=True, text=True)
    assert missing.returncode == 51
    assert missing.stderr.startswith("vmtrust: no trusted image of VO atlas")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_equal_image_versions_go_to_the_newest_list_in_version_order(glance_sync):
    """Two trusted images of version 1, from lists 9 and 10: list 10 is the newer.

    (Compared as text, "9" > "10", and launch chose the image of the older list.)
    The images are stored by the Glance store itself, with records sealed by the
    sync's key, as the sync stores them."""
    key = glance_sync.s.seal_key
    for identifier, list_version in (("wn-old", "9"), ("wn-new", "10")):
        (want,) = desired((identifier, "1"), list_version=list_version).values()

        def finish(store_id, size, sha512, *, stored_format=None, want=want):
            record = want.record(store_id=store_id, sha512=sha512, size=size, disk_format="raw")
            return record, seal(record, key)

        glance_sync.store.create(want, io.BytesIO(IMAGE_A), "raw", finish)
    found = _find(glance_sync, vo=VO)
    assert (found.identifier, found.version) == ("wn-new", "1")


def test_the_newest_candidate_by_image_then_list_version():
    """The choice both launches make, on records alone (vmcatcher's version order)."""

    def judged(image_version: str, list_version: str, vo: str = VO) -> tuple:
        record = dataclasses.replace(
            RECORD, image_version=image_version, list_version=list_version, vo=vo
        )
        name = f"{image_version}/{list_version}"
        return name, name, Verdict(True, "trusted", record)

    def pick(*candidates: tuple, identifier: str | None = None) -> str:
        return newest(candidates, vo=VO, identifier=identifier, where="here")[0]

    assert pick(judged("1", "9"), judged("1", "10"), judged("1", "2")) == "1/10"
    assert pick(judged("1.10", "1"), judged("1.9", "99")) == "1.10/1"
    assert pick(judged("2", "1"), judged("3", "1", vo="other")) == "2/1"
    refused = ("x", "x", refuse(Code.SEAL, "seal invalid: altered"))
    with pytest.raises(NoTrustedImage, match=r"^no trusted image of VO .* here \(1 candidate"):
        pick(refused, judged("9", "9", vo="other"))
    with pytest.raises(NoTrustedImage, match="no trusted image wn of VO"):
        pick(judged("1", "1"), identifier="wn")
