"""Incremental Glance listings: a pass asks Glance only for what changed, and stays right.

Against the session's real Glance (``tests/glance_server.py``): a store with a
survey file (:mod:`glance_sync.stores.glance_survey`) in the state directory,
``reconcile_passes = 3`` (passes 1, 4, 7 … list everything).  What Glance
itself holds is read directly, never through the store.  Covered: a no-op pass
lists only by ``updated_at``; an image deleted behind vmtrust's back is neither
re-created nor anything retired by the incremental passes, and the next full
reconcile re-creates it; an image deactivated, or whose trust properties were
edited, behind its back is found by the very next pass (Glance stamps the
change); a forged record added to Glance, or slipped into the survey file, is
never trusted and never makes the store touch an image it does not manage; a
Glance that refuses the ``updated_at`` filter gets full listings; a survey file
that is damaged, too old, of another project or readable by others only
forces a full listing.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from glance_server import ADMIN_ROLES
from tcpproxy import Rule, TcpProxy
from test_glance_store import (
    _url,
    get_image,
    make_image,
    patch_image,
    project_images,
    small,
    versions,
)
from test_sync_local import entry, publish

from glance_sync.cloud import connect_cloud
from glance_sync.stores.glance import GlanceStore
from glance_sync.stores.glance_survey import Survey, SurveyFile, filter_time, glance_time, trim
from vmtrust import glanceprops as gp

PASSES = 3


def _surveyed(service, conn=None, **options) -> GlanceStore:
    old = service.store
    survey = SurveyFile(
        Path(service.s.state_dir),
        reconcile_passes=options.pop("reconcile_passes", PASSES),
        reconcile_hours=options.pop("reconcile_hours", 6.0),
        margin=timedelta(seconds=options.pop("margin", 120)),
        project=service.project,
    )
    return GlanceStore(
        conn or old.conn, project_id=service.project, seal_keys=old.seal_keys, survey=survey
    )


@pytest.fixture
def surveyed(glance_sync):
    """The Glance sync with a survey file: full listings every third pass."""
    glance_sync.store = _surveyed(glance_sync)
    return glance_sync


def _requests(glance, mark: int) -> list[str]:
    """Glance's access log lines (request lines) since ``mark`` lines, once all are in."""
    _mark(glance)
    return glance.access_log.read_text().splitlines()[mark:]


def _mark(glance) -> int:
    """Where the access log ends now: the server writes a line after its answer, so wait
    until the lines of the requests already answered are in."""
    count = -1
    while (now := len(glance.access_log.read_text().splitlines())) != count:
        count = now
        time.sleep(0.3)
    return count


def _listings(lines: list[str]) -> list[str]:
    """The store's listings of its managed images (not the tests' own look-ups)."""
    return [line for line in lines if "GET /v2/images?" in line and "vmtrust_managed" in line]


def _no_op(service) -> None:
    report = service.run(service.subs)
    assert report.done == [] and report.failures == [], (report.done, report.failures)


def _survey_file(service) -> Path:
    (path,) = Path(service.s.state_dir).glob("glance-survey-*.json")
    return path


def _oldest(images: dict[str, dict]) -> dict:
    """The image whose update is oldest: deleting it keeps the survey's watermark listed."""
    return min(images.values(), key=lambda image: image["updated_at"])


def test_no_op_passes_list_only_what_changed_and_change_nothing(surveyed, site, pki, glance):
    publish(site, pki, [entry(f"img-{i}", small(str(i)), site) for i in range(3)], "1")
    assert surveyed.run(surveyed.subs).failures == []  # pass 1: full (no survey yet)
    assert surveyed.store.full_listing is True
    before = project_images(glance, surveyed.project)

    mark, calls = _mark(glance), surveyed.store.calls
    _no_op(surveyed)  # pass 2
    assert surveyed.store.calls - calls == 2  # visible and hidden
    listings = _listings(_requests(glance, mark))
    assert surveyed.store.full_listing is False
    assert len(listings) == 2 and all("updated_at=gte" in line for line in listings), listings
    assert project_images(glance, surveyed.project) == before  # updated_at included

    path = _survey_file(surveyed)
    assert path.stat().st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text())
    assert doc["project"] == surveyed.project and set(doc["images"]) == set(before)
    assert all("APPLIANCE_ATTRIBUTES" not in image for image in doc["images"].values())

    _no_op(surveyed)  # pass 3
    assert surveyed.store.full_listing is False
    mark = _mark(glance)
    _no_op(surveyed)  # pass 4: the full reconcile
    assert surveyed.store.full_listing is True
    assert not any("updated_at" in line for line in _listings(_requests(glance, mark)))
    assert versions(glance, surveyed) == {f"img-{i}": "1" for i in range(3)}


def test_a_listing_from_a_new_process_builds_on_the_file(surveyed, site, pki, glance):
    publish(site, pki, [entry(f"img-{i}", small(str(i)), site) for i in range(2)], "1")
    assert surveyed.run(surveyed.subs).failures == []
    surveyed.store = _surveyed(surveyed)  # what the next vmtrust-sync process starts with
    mark = _mark(glance)
    _no_op(surveyed)
    assert surveyed.store.full_listing is False
    assert all("updated_at=gte" in line for line in _listings(_requests(glance, mark)))


def test_image_deleted_behind_its_back_is_recreated_by_the_next_full_reconcile(
    surveyed, site, pki, glance
):
    publish(site, pki, [entry(f"img-{i}", small(str(i)), site) for i in range(3)], "1")
    assert surveyed.run(surveyed.subs).failures == []  # pass 1
    images = project_images(glance, surveyed.project)
    gone = _oldest(images)
    reply = glance.api(surveyed.project).delete(_url(glance, f"/images/{gone['id']}"), timeout=30)
    assert reply.status_code == 204

    for _ in range(PASSES - 1):  # passes 2, 3: incremental, nothing re-created or retired
        _no_op(surveyed)
        assert surveyed.store.full_listing is False
        left = project_images(glance, surveyed.project)
        assert left == {k: v for k, v in images.items() if k != gone["id"]}

    report = surveyed.run(surveyed.subs)  # pass 4: the full reconcile finds it missing
    assert surveyed.store.full_listing is True
    assert report.failures == []
    assert report.done == [f"stored {gone['vmtrust_image_identifier']} 1 (Example worker node)"]
    assert versions(glance, surveyed) == {f"img-{i}": "1" for i in range(3)}
    _no_op(surveyed)


def test_image_deactivated_behind_its_back_is_retired_and_replaced_at_once(
    surveyed, site, pki, glance
):
    publish(site, pki, [entry(f"img-{i}", small(str(i)), site) for i in range(2)], "1")
    assert surveyed.run(surveyed.subs).failures == []
    target = _oldest(project_images(glance, surveyed.project))
    reply = glance.api(surveyed.project, ADMIN_ROLES).post(
        _url(glance, f"/images/{target['id']}/actions/deactivate"), timeout=30
    )
    assert reply.status_code == 204, reply.text

    report = surveyed.run(surveyed.subs)  # incremental: Glance stamped the deactivation
    assert surveyed.store.full_listing is False
    assert report.failures == []
    identifier = target["vmtrust_image_identifier"]
    assert report.done[0] == f"retired {identifier}: status is deactivated"
    assert report.done[1].startswith(f"stored {identifier} 1")
    after = get_image(glance, surveyed.project, target["id"])
    assert after["vmtrust_state"] == "retired"
    assert versions(glance, surveyed) == {"img-0": "1", "img-1": "1"}


def test_trust_properties_edited_behind_its_back_are_quarantined_by_the_next_pass(
    surveyed, site, pki, glance
):
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    assert surveyed.run(surveyed.subs).failures == []
    (image_id,) = project_images(glance, surveyed.project)
    ops = [{"op": "replace", "path": "/vmtrust_expires", "value": "2099-01-01T00:00:00Z"}]
    assert patch_image(glance, surveyed.project, image_id, ops).status_code == 200

    report = surveyed.run(surveyed.subs)
    assert surveyed.store.full_listing is False
    assert report.failures == []
    assert report.done[0].startswith(f"retired {image_id}: seal invalid")
    assert get_image(glance, surveyed.project, image_id)["vmtrust_state"] == "retired"
    assert versions(glance, surveyed) == {"img-a": "1"}


def test_forged_record_added_to_glance_is_never_trusted(surveyed, site, pki, glance):
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    assert surveyed.run(surveyed.subs).failures == []
    (original,) = project_images(glance, surveyed.project).values()
    copied = {k: v for k, v in original.items() if k.startswith("vmtrust_")}
    forged = make_image(glance, surveyed.project, small("a"), **copied)

    report = surveyed.run(surveyed.subs)
    assert surveyed.store.full_listing is False  # found by the incremental listing
    assert report.failures == []
    assert report.done == [f"retired img-a: seal is bound to image {original['id']}, not this one"]
    assert get_image(glance, surveyed.project, forged["id"])["vmtrust_state"] == "retired"
    assert versions(glance, surveyed) == {"img-a": "1"}
    assert all(h.store_id != forged["id"] for h in surveyed.store.held() if h.seal_ok)


def _slip(service, glance, **fields) -> tuple[dict, dict, Path]:
    """(the sync's image, an unmanaged image of its project, the survey file) after one
    pass, with an entry for the unmanaged image slipped into the file: the sync's
    image's properties and genuine seal, plus ``fields``."""
    (original,) = project_images(glance, service.project).values()
    bystander = make_image(glance, service.project, small("b"))  # not managed
    path = _survey_file(service)
    doc = json.loads(path.read_text())
    doc["images"][bystander["id"]] = {**trim(original), "id": bystander["id"], **fields}
    path.write_text(json.dumps(doc))
    service.store = _surveyed(service)
    return original, bystander, path


def test_entry_slipped_into_the_survey_file_is_never_trusted(surveyed, site, pki, glance):
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    assert surveyed.run(surveyed.subs).failures == []
    original, bystander, path = _slip(surveyed, glance)

    report = surveyed.run(surveyed.subs)
    assert report.failures == [] and report.done == []
    assert surveyed.store.full_listing is True  # the entry failed its check: Glance decides
    assert get_image(glance, surveyed.project, bystander["id"]) == bystander  # untouched
    assert versions(glance, surveyed) == {"img-a": "1"}
    assert set(json.loads(path.read_text())["images"]) == {original["id"]}


def test_retired_entry_slipped_into_the_survey_file_deletes_nothing(surveyed, site, pki, glance):
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    assert surveyed.run(surveyed.subs).failures == []
    retired = {"vmtrust_state": "retired", "vmtrust_retired_at": "2000-01-01T00:00:00Z"}
    original, bystander, path = _slip(surveyed, glance, **retired)
    surveyed.s.retire_mode = "delete"  # and long past the grace period

    report = surveyed.run(surveyed.subs)
    (line,) = report.failures
    assert "not a managed image of the project" in line and bystander["id"] in line
    assert get_image(glance, surveyed.project, bystander["id"]) == bystander
    assert versions(glance, surveyed) == {"img-a": "1"}
    assert set(json.loads(path.read_text())["images"]) == {original["id"]}
    surveyed.store = _surveyed(surveyed)  # the next process: refused once is enough
    _no_op(surveyed)


def test_glance_refusing_the_updated_at_filter_gets_full_listings(glance_sync, site, pki, glance):
    publish(site, pki, [entry(f"img-{i}", small(str(i)), site) for i in range(2)], "1")
    with TcpProxy(
        glance.port, [Rule(method="GET", path="updated_at", status=400, times=None)]
    ) as p:
        clouds = Path(glance_sync.clouds)
        text = clouds.read_text().replace(glance.url, p.url)
        (clouds.parent / "proxied.yaml").write_text(text)
        conn = connect_cloud("sync", str(clouds.parent / "proxied.yaml"))
        glance_sync.store = _surveyed(glance_sync, conn)
        assert glance_sync.run(glance_sync.subs).failures == []
        for _ in range(2):
            _no_op(glance_sync)
            assert glance_sync.store.full_listing is True
        refused = [line for line in p.seen if "updated_at" in line]
        assert refused and all(line.startswith("GET ") for line in refused)
    assert versions(glance, glance_sync) == {"img-0": "1", "img-1": "1"}


def test_survey_that_is_unusable_only_forces_a_full_listing(surveyed, site, pki, glance):
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    assert surveyed.run(surveyed.subs).failures == []
    path = _survey_file(surveyed)
    good = path.read_text()

    def full_after(damage) -> bool:
        path.write_text(good)
        path.chmod(0o600)
        damage()
        surveyed.store = _surveyed(surveyed)
        _no_op(surveyed)
        return surveyed.store.full_listing

    assert full_after(lambda: None) is False  # the control: the file as written is used
    assert full_after(lambda: path.write_text(good[: len(good) // 2])) is True
    assert full_after(lambda: path.write_text("[]")) is True
    assert full_after(lambda: path.chmod(0o644)) is True
    other = json.loads(good) | {"project": "another"}
    assert full_after(lambda: path.write_text(json.dumps(other))) is True
    old = json.loads(good) | {"full_at": time.time() - 7 * 3600}
    assert full_after(lambda: path.write_text(json.dumps(old))) is True
    ahead = json.loads(good) | {"full_at": time.time() + 3600}  # the clock went back
    assert full_after(lambda: path.write_text(json.dumps(ahead))) is True
    assert full_after(path.unlink) is True
    assert versions(glance, surveyed) == {"img-a": "1"}


def test_survey_not_written_is_a_warning_and_a_full_listing_next(
    surveyed, site, pki, glance, caplog
):
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    assert surveyed.run(surveyed.subs).failures == []
    path = _survey_file(surveyed)
    path.unlink()
    path.mkdir()  # a directory where the file goes: the rename fails
    try:
        _no_op(surveyed)
        assert "not saved" in caplog.text
    finally:
        path.rmdir()
    surveyed.store = _surveyed(surveyed)
    _no_op(surveyed)
    assert surveyed.store.full_listing is True


def test_reconcile_passes_one_lists_everything_every_pass(glance_sync, site, pki, glance):
    glance_sync.store = _surveyed(glance_sync, reconcile_passes=1)
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    assert glance_sync.run(glance_sync.subs).failures == []
    mark = _mark(glance)
    _no_op(glance_sync)
    assert glance_sync.store.full_listing is True
    assert not any("updated_at" in line for line in _requests(glance, mark))


# --- the file's pieces, without Glance -------------------------------------------------------


def test_glance_times_and_the_watermark():
    assert glance_time("2026-12-02T12:00:00Z") == datetime(2026, 12, 2, 12, tzinfo=UTC)
    assert glance_time("2026-12-02T12:00:00") == datetime(2026, 12, 2, 12, tzinfo=UTC)
    assert glance_time("yesterday") is None and glance_time(None) is None
    assert filter_time(datetime(2026, 12, 2, 12, 0, 0, 500, tzinfo=UTC)) == "2026-12-02T12:00:00Z"
    survey = Survey(
        {
            "a": {"id": "a", "updated_at": "2026-12-02T12:00:00Z"},
            "b": {"id": "b", "updated_at": "2026-12-02T12:00:05Z"},
            "c": {"id": "c", "updated_at": "garbage"},
        }
    )
    assert survey.watermark() == datetime(2026, 12, 2, 12, 0, 5, tzinfo=UTC)
    assert Survey().watermark() is None


def test_survey_file_keeps_only_managed_images_of_its_project(tmp_path: Path):
    file = SurveyFile(tmp_path, endpoint="http://glance/v2", project="p1")
    image = {"id": "i1", "owner": "p1", gp.MANAGED: "true", "updated_at": "2026-12-02T12:00:00Z"}
    file.save(Survey({"i1": image}, full_at=time.time()))
    assert file.load() is not None
    assert os.stat(file.path).st_mode & 0o777 == 0o600
    for bad in ({**image, "owner": "p2"}, {**image, gp.MANAGED: "false"}, {**image, "id": "i2"}):
        file.save(Survey({"i1": bad}, full_at=time.time()))
        assert file.load() is None, bad
    other = SurveyFile(tmp_path, endpoint="http://other/v2", project="p1")
    assert other.path != file.path and other.load() is None


def test_membership_removed_behind_its_back_is_repaired_by_the_next_full_reconcile(
    glance_sync, site, pki, glance, tmp_path
):
    """What a VO project accepted is asked on full reconciles (and passes that store):
    a membership change does not touch the image's updated_at."""
    from test_glance_share import _remove_member, vo_cloud, vo_subs
    from test_glance_store import VO, members, visible_to

    b, conn_b, _ = vo_cloud(glance, tmp_path)
    survey = _surveyed(glance_sync).surveyor.file
    glance_sync.store = GlanceStore(
        glance_sync.store.conn, project_id=glance_sync.project,
        seal_keys=glance_sync.store.seal_keys, vo_projects={VO: [(b, conn_b)]}, survey=survey,
    )  # fmt: skip
    subs = vo_subs(glance_sync)
    publish(site, pki, [entry("img-a", small("a"), site)], "1")
    assert glance_sync.run(subs).failures == []  # pass 1 (full)
    (image_id,) = project_images(glance, glance_sync.project)
    assert members(glance, glance_sync.project, image_id) == {b: "accepted"}
    _remove_member(glance, glance_sync.project, image_id, b)

    calls = glance_sync.store.calls
    for _ in range(PASSES - 1):  # passes 2, 3: incremental, no listing as the VO project
        _no_op(glance_sync)
        assert members(glance, glance_sync.project, image_id) == {}
    assert glance_sync.store.calls - calls == 2 * (PASSES - 1)

    report = glance_sync.run(subs)  # pass 4: the full reconcile asks the VO project
    assert glance_sync.store.full_listing is True
    assert report.failures == []
    assert report.done == [
        f"accepted img-a for project {b} (Glance did not list it as accepted there)"
    ]
    assert members(glance, glance_sync.project, image_id) == {b: "accepted"}
    assert image_id in visible_to(glance, b)


def test_a_watermark_from_the_future_is_not_listed_by(tmp_path: Path):
    """Glance's clock ran ahead once: asking for updates since then would hide the rest."""
    from glance_sync.stores.glance_survey import Surveyor

    file = SurveyFile(tmp_path, endpoint="http://glance/v2", project="p1")
    ahead = filter_time(datetime.now(UTC) + timedelta(days=2))
    image = {"id": "i1", "owner": "p1", gp.MANAGED: "true", "updated_at": ahead}
    file.save(Survey({"i1": image}, full_at=time.time()))
    asked: list[datetime | None] = []

    def managed(since):
        asked.append(since)
        return [image]

    surveyor = Surveyor(file, managed, lambda: "http://glance/v2")
    surveyor.listing(new_pass=True)
    assert asked == [None] and surveyor.full_listing is True
    file.save(Survey({"i1": {**image, "updated_at": filter_time(datetime.now(UTC))}},
                     full_at=time.time()))  # fmt: skip
    asked.clear()
    Surveyor(file, managed, lambda: "http://glance/v2").listing(new_pass=True)
    assert asked and asked[0] is not None  # the control: a present watermark is used
