"""No retirement by accident (issue 10 §4): what a failed list keeps comes from sealed records.

A new sync host, a reinstall or a restored backup starts with an empty or an
old state directory while the store still holds sealed records.  Until now
an unreachable list then retired every image of its subscription at once
(its expiry was taken to be "now"), and everything was downloaded again
under new ids when the list came back.  Also closed here: an empty state
directory let an older list back in (no rollback protection), and approved
images that were waiting under ``new_images: refuse``.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
from conftest import list_document
from httpserve import Behaviour
from test_glance_store import project_images, versions
from test_sync_local import IMAGE_A, IMAGE_B, entry, trusted

from glance_sync.plan import Held, KnownList, last_accepted
from glance_sync.service import SyncService
from vmtrust import imagelist, smime
from vmtrust.record import TrustRecord

NOW = datetime.now(UTC).replace(microsecond=0)


def publish(site, pki, images: list[dict], version: str, *, expires=None, identifier=None):
    document = list_document(
        pki.endorser,
        version=version,
        images=images,
        expires=expires,
        **({"identifier": identifier} if identifier else {}),
    )
    document["hv:imagelist"]["hv:uri"] = site.url("/site.list")
    site.files["/site.list"] = smime.sign(
        imagelist.dumps(document), pki.endorser.cert, pki.endorser.key
    )


@pytest.fixture
def host(tmp_path):
    """Another sync host for the same store: ``host(service)`` has a state directory of its own."""
    made: list[SyncService] = []

    def make(service: SyncService, name: str = "reinstalled") -> SyncService:
        settings = dataclasses.replace(service.s, state_dir=tmp_path / name)
        made.append(SyncService(settings, service.store))
        return made[-1]

    yield make
    for service in made:
        service.close()


def image_requests(site, since: int = 0) -> list[str]:
    return [path for path, _ in site.requests[since:] if path.startswith("/img/")]


def test_an_empty_state_dir_and_an_unreachable_list_retire_nothing(sync, site, pki, host):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    assert sync.run(sync.subs).exit_code == 0
    stored = {h.store_id for h in sync.store.held()}
    new = host(sync)
    site.behaviour["/site.list"] = Behaviour(status=503)
    lines: list[str] = []
    new.run(sync.subs, dry_run=True, out=lines.append)
    assert lines == [
        "keep    a (its list failed this run; kept until the list expires)",
        "keep    b (its list failed this run; kept until the list expires)",
    ]
    report = new.run(sync.subs)
    assert report.exit_code == 1 and "unreachable" in report.failures[0]
    assert report.done == []
    assert trusted(sync) == {"a": "1", "b": "1"}
    # The list is back: nothing is downloaded again, the same images stay.
    del site.behaviour["/site.list"]
    served = len(site.requests)
    report = new.run(sync.subs)
    assert report.failures == [] and report.done == []
    assert image_requests(site, served) == []
    assert {h.store_id for h in sync.store.held() if not h.retired} == stored
    # Unreachable again, past the expiry the records give: now they leave.
    site.behaviour["/site.list"] = Behaviour(status=503)
    new.run(sync.subs, now=NOW + timedelta(days=60))
    assert trusted(sync) == {}


def test_a_state_older_than_the_records_does_not_shorten_their_life(sync, site, pki, host):
    images = [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)]
    publish(site, pki, images, "1", expires=NOW + timedelta(days=2))
    assert sync.run(sync.subs).exit_code == 0
    restored = host(sync, "backup")  # a host whose state stops at version 1
    assert restored.run(sync.subs).failures == []
    publish(site, pki, images, "2", expires=NOW + timedelta(days=28))
    assert sync.run(sync.subs).done == ["refreshed a metadata", "refreshed b metadata"]
    site.behaviour["/site.list"] = Behaviour(status=503)
    report = restored.run(sync.subs, now=NOW + timedelta(days=5))
    assert report.done == []  # version 1 expired at day 2; the records say day 28
    assert trusted(sync) == {"a": "1", "b": "1"}
    restored.run(sync.subs, now=NOW + timedelta(days=29))
    assert trusted(sync) == {}


def test_a_record_whose_seal_is_bad_extends_nothing(sync, site, pki, host):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    assert sync.run(sync.subs).exit_code == 0
    (forged,) = sync.store.root.glob("images/b/*.json")
    content = json.loads(forged.read_text())
    content["record"].update(list_version="99", expires="2099-01-01T00:00:00Z")
    forged.write_text(json.dumps(content))
    new = host(sync)
    site.behaviour["/site.list"] = Behaviour(status=503)
    report = new.run(sync.subs, now=NOW + timedelta(days=60))
    assert sorted(report.done) == [
        "retired a: expired at " + sync.store.held()[0].record.expires,
        # a record whose seal fails names nothing: the store id says which image went
        f"retired b/{forged.stem}: seal invalid: image b: seal does not match the trust record "
        "(record or image altered, or copied from another image)",
    ]
    assert trusted(sync) == {}
    # Nor does it raise the version the next list must reach.
    del site.behaviour["/site.list"]
    publish(site, pki, [entry("a", IMAGE_A, site)], "2")
    assert host(sync, "third").run(sync.subs).failures == []
    assert trusted(sync) == {"a": "1"}


def test_an_empty_state_dir_does_not_let_an_older_list_back_in(sync, site, pki, host):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    older = site.files["/site.list"]
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "2")
    assert sync.run(sync.subs).exit_code == 0
    site.files["/site.list"] = older  # still signed, not expired: a replay
    report = host(sync).run(sync.subs)
    (line,) = report.failures
    assert "rollback" in line and "version 2" in line
    assert trusted(sync) == {"a": "1", "b": "1"}
    publish(site, pki, [entry("c", IMAGE_A, site)], "3", identifier="another-list")
    (line,) = host(sync, "third").run(sync.subs).failures
    assert "expected identifier" in line  # pinned by the records too


def test_an_empty_state_dir_does_not_approve_images_that_were_waiting(sync, site, pki, host):
    careful = (dataclasses.replace(sync.subs[0], new_images="refuse"),)
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    assert sync.run(careful).exit_code == 0
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "2")
    assert sync.run(careful).exit_code == 0
    assert trusted(sync) == {"a": "1"}  # b waits for the site's approval
    assert host(sync).run(careful).failures == []
    assert trusted(sync) == {"a": "1"}  # and still does on a reinstalled host


def test_glance_an_empty_state_dir_and_an_unreachable_list_retire_nothing(
    glance_sync, site, pki, glance, host
):
    publish(site, pki, [entry("img-a", IMAGE_A, site), entry("img-b", IMAGE_B, site)], "1")
    assert glance_sync.run(glance_sync.subs).failures == []
    before = project_images(glance, glance_sync.project)
    new = host(glance_sync)
    site.behaviour["/site.list"] = Behaviour(status=503)
    report = new.run(glance_sync.subs)
    assert len(report.failures) == 1 and report.done == []
    assert project_images(glance, glance_sync.project) == before  # untouched, still active
    del site.behaviour["/site.list"]
    served = len(site.requests)
    report = new.run(glance_sync.subs)
    assert report.failures == [] and report.done == []
    assert image_requests(site, served) == []
    assert set(project_images(glance, glance_sync.project)) == set(before)
    assert versions(glance, glance_sync) == {"img-a": "1", "img-b": "1"}


# --- the rule itself ----------------------------------------------------------------------


def held(version: str, expires: str, *, subscription="s", seal_ok=True, list_id="L") -> Held:
    record = TrustRecord(
        image_identifier="i",
        title="t",
        image_version="1",
        list_identifier=list_id,
        list_version=version,
        endorser_dn="/CN=e",
        endorser_ca="/CN=c",
        vo="",
        subscription=subscription,
        approval="all",
        expires=expires,
        source_sha512="0" * 128,
        sha512="0" * 128,
        size=1,
        store_id="x",
    )
    return Held("x", record, seal_ok)


def at(days: int) -> datetime:
    return datetime(2030, 1, 1, tzinfo=UTC) + timedelta(days=days)


def text(days: int) -> str:
    return imagelist.format_date(at(days))


@pytest.mark.parametrize(
    ("state", "records", "expected"),
    [
        (KnownList(), [], KnownList()),
        (KnownList(), [held("2", text(10)), held("2", text(12))], KnownList("L", "2", at(12))),
        (KnownList("L", "1", at(3)), [held("2", text(10))], KnownList("L", "2", at(10))),
        (KnownList("L", "3", at(5)), [held("2", text(10))], KnownList("L", "3", at(5))),
        (KnownList("L", "2", at(20)), [held("2", text(10))], KnownList("L", "2", at(20))),
        (KnownList(), [held("9", text(99), seal_ok=False)], KnownList()),
        (KnownList(), [held("9", text(99), subscription="other")], KnownList()),
        (
            KnownList("L", "1", at(3)),
            [held("9", text(99), list_id="M")],
            KnownList("L", "1", at(3)),
        ),
        (KnownList(), [held("2", "not a date")], KnownList()),
    ],
    ids=[
        "nothing",
        "records only",
        "records newer",
        "state newer",
        "same version",
        "bad seal",
        "other subscription",
        "other list",
        "unreadable expiry",
    ],
)
def test_last_accepted_is_the_newest_list_state_or_sealed_records_know(state, records, expected):
    assert last_accepted("s", state, records) == expected
