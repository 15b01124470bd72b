"""The planner's guarantees (issue 3, "State and reconciliation"), one by one.

make_plan is pure, so every rule is checked here without a store or network:
desired images come from validated list documents, held images are built
directly with records made by Desired.record.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from conftest import image_entry, list_document

from glance_sync.plan import Create, Desired, Held, Purge, Refresh, Replace, Retire, make_plan
from vmtrust.imagelist import Endorser, format_date, validate

NOW = datetime.now(UTC).replace(microsecond=0)
ID_A = "85bfb313-a852-444b-89e7-9cdf8c23dc91"
ID_B = "0b4c3d1e-1111-4222-8333-944455556666"
SUB = "site"
ENDORSER = Endorser(dn="/DC=org/DC=example/O=People/CN=Jane", ca="/DC=org/DC=example/CN=CA")


def sha(text: str) -> str:
    return hashlib.sha512(text.encode()).hexdigest()


def desired(
    *images: tuple[str, str],
    list_version: str = "3",
    subscription: str = SUB,
    approval: str = "all",
    expires: datetime | None = None,
    image_expires: datetime | None = None,
    checksum: str | None = None,
) -> dict[str, Desired]:
    """Desired set from one validated list; ``images`` are (identifier, version) pairs."""
    entries = [
        image_entry(
            ident,
            **{
                "hv:version": version,
                "sl:checksum:sha512": checksum or sha(f"{ident}-{version}"),
                "dc:date:expires": image_expires and format_date(image_expires),
            },
        )
        for ident, version in images or ((ID_A, "1.2"),)
    ]
    lst = validate(
        list_document(
            version=list_version,
            created=NOW - timedelta(hours=1),
            expires=expires or NOW + timedelta(days=28),
            images=entries,
        )
    )
    return {
        image.identifier: Desired(
            subscription=subscription,
            approval=approval,
            image=image,
            imagelist=lst,
            endorser=ENDORSER,
            vo="vo.example.org",
        )
        for image in lst.images
    }


def held(want: Desired, store_id: str = "img-1", **kwargs) -> Held:
    """What the store would report after storing ``want`` correctly."""
    record = want.record(
        store_id=store_id, sha512=sha(store_id + "-stored"), size=20, disk_format="qcow2"
    )
    return Held(store_id=store_id, record=record, seal_ok=True, **kwargs)


def plan_for(want: dict[str, Desired], have: list[Held], **kwargs):
    kwargs.setdefault("frozen", {})
    return make_plan(want, have, now=NOW, **kwargs)


def retired_ids(plan) -> set[str]:
    return {a.held.store_id for a in plan.actions if isinstance(a, Retire)}


def test_empty_store_creates_every_desired_image():
    want = desired((ID_A, "1.2"), (ID_B, "7"))
    plan = plan_for(want, [])
    assert sorted(plan.actions, key=lambda a: a.desired.identifier) == [
        Create(want[ID_B]),
        Create(want[ID_A]),
    ]
    assert plan.kept == []


def test_identical_run_plans_nothing():
    want = desired((ID_A, "1.2"), (ID_B, "7"))
    have = [held(want[ID_A], "img-a"), held(want[ID_B], "img-b")]
    plan = plan_for(want, have)
    assert plan.actions == []
    assert plan.kept == []
    assert plan.describe() == []


@pytest.mark.parametrize(
    "change",
    [{"list_version": "4"}, {"approval": "identifier"}, {"subscription": "other"}],
    ids=["list-version", "approval", "subscription"],
)
def test_same_bytes_new_metadata_refreshes_only(change):
    old = desired()[ID_A]
    new = desired(**change)
    have = held(old)
    plan = plan_for(new, [have])
    assert plan.actions == [Refresh(have, new[ID_A])]


def test_refresh_when_list_expiry_moves():
    old = desired(expires=NOW + timedelta(days=2))[ID_A]
    new = desired(expires=NOW + timedelta(days=30))
    have = held(old)
    assert plan_for(new, [have]).actions == [Refresh(have, new[ID_A])]


def test_new_version_replaces_and_carries_old():
    old = held(desired((ID_A, "1.2"))[ID_A], "img-old")
    want = desired((ID_A, "1.3"), list_version="4")
    plan = plan_for(want, [old])
    assert plan.actions == [Replace(want[ID_A], (old,))]
    assert not any(isinstance(a, Retire) for a in plan.actions)


@pytest.mark.parametrize(
    ("version", "checksum"),
    [("1.2", sha("respun")), ("1.3", sha(f"{ID_A}-1.2"))],
    ids=["same-version-new-bytes", "new-version-same-bytes"],
)
def test_change_of_bytes_or_version_is_a_replace(version, checksum):
    old = held(desired((ID_A, "1.2"))[ID_A], "img-old")
    want = desired((ID_A, version), checksum=checksum)
    assert (want[ID_A].image.version, want[ID_A].image.sha512) != (
        old.record.image_version,
        old.record.source_sha512,
    )
    assert plan_for(want, [old]).actions == [Replace(want[ID_A], (old,))]


def test_new_version_carries_every_older_version():
    v1 = held(desired((ID_A, "1.1"))[ID_A], "img-1")
    v2 = held(desired((ID_A, "1.2"))[ID_A], "img-2")
    want = desired((ID_A, "1.3"))
    plan = plan_for(want, [v1, v2])
    assert plan.actions == [Replace(want[ID_A], (v1, v2))]


def test_after_replace_old_leftover_is_retired_once_new_exists():
    """A run interrupted between create and retire converges on the next run."""
    old = held(desired((ID_A, "1.2"))[ID_A], "img-old")
    want = desired((ID_A, "1.3"))
    new = held(want[ID_A], "img-new")
    plan = plan_for(want, [old, new])
    assert [type(a) for a in plan.actions] == [Retire]
    assert retired_ids(plan) == {"img-old"}


def test_expired_old_version_is_retired_not_carried():
    """If the new version never arrives, an expired old one must not stay trusted."""
    stale = desired((ID_A, "1.2"), expires=NOW + timedelta(days=1), image_expires=NOW)[ID_A]
    live = held(desired((ID_A, "1.1"))[ID_A], "img-live")
    old = held(stale, "img-stale")
    want = desired((ID_A, "1.3"))
    plan = plan_for(want, [old, live])
    assert Replace(want[ID_A], (live,)) in plan.actions
    assert retired_ids(plan) == {"img-stale"}
    assert len(plan.actions) == 2
    plan = plan_for(want, [old])
    assert sorted(type(a).__name__ for a in plan.actions) == ["Create", "Retire"]


def test_unreadable_record_expiry_fails_closed():
    have = held(desired()[ID_A])
    bad = replace(have, record=replace(have.record, expires="tomorrow"))
    plan = plan_for({}, [bad], frozen={SUB: NOW + timedelta(days=3)})
    assert plan.kept == []
    (action,) = plan.actions
    assert action.held == bad and "unreadable expiry" in action.reason


def test_image_gone_from_newer_list_is_retired():
    old = desired((ID_A, "1.2"), (ID_B, "7"))
    have = [held(old[ID_A], "img-a"), held(old[ID_B], "img-b")]
    want = desired((ID_A, "1.2"), list_version="4")
    plan = plan_for(want, have)
    assert retired_ids(plan) == {"img-b"}
    assert Refresh(have[0], want[ID_A]) in plan.actions
    assert len(plan.actions) == 2


def test_failed_subscription_keeps_images_untouched():
    have = [held(desired((ID_A, "1.2"))[ID_A], "img-a")]
    plan = plan_for({}, have, frozen={SUB: NOW + timedelta(days=3)})
    assert plan.actions == []
    assert plan.kept == have


def test_failed_subscription_does_not_touch_other_subscriptions():
    frozen_img = held(desired((ID_A, "1.2"))[ID_A], "img-a")
    gone = held(desired((ID_B, "7"), subscription="other")[ID_B], "img-b")
    plan = plan_for({}, [frozen_img, gone], frozen={SUB: NOW + timedelta(days=3)})
    assert plan.kept == [frozen_img]
    assert retired_ids(plan) == {"img-b"}


@pytest.mark.parametrize("ago", [timedelta(0), timedelta(seconds=1)], ids=["now", "past"])
def test_failed_subscription_with_expired_list_retires(ago):
    have = held(desired((ID_A, "1.2"))[ID_A], "img-a")
    plan = plan_for({}, [have], frozen={SUB: NOW - ago})
    assert plan.kept == []
    assert [a.held for a in plan.actions if isinstance(a, Retire)] == [have]


@pytest.mark.parametrize("ago", [timedelta(0), timedelta(hours=1)], ids=["now", "past"])
def test_record_expiry_passed_retires_even_if_frozen(ago):
    past = NOW - ago
    old = desired(expires=NOW + timedelta(days=1), image_expires=past)[ID_A]
    assert old.expires == past
    have = held(old)
    plan = plan_for({}, [have], frozen={SUB: NOW + timedelta(days=3)})
    assert plan.kept == []
    (action,) = plan.actions
    assert isinstance(action, Retire) and action.held == have
    assert "expired" in action.reason


def test_record_keeps_earliest_of_list_and_image_expiry():
    soon = NOW + timedelta(hours=2)
    want = desired(expires=NOW + timedelta(days=9), image_expires=soon)[ID_A]
    assert held(want).record.expires == format_date(soon)


@pytest.mark.parametrize(
    "broken",
    [{"seal_ok": False}, {"record": None}, {"record": None, "seal_ok": False}],
    ids=["bad-seal", "no-record", "both"],
)
def test_untrusted_held_is_retired(broken):
    want = desired()
    good = held(want[ID_A])
    bad = replace(good, **broken)
    plan = plan_for({}, [bad], frozen={SUB: NOW + timedelta(days=3)})
    assert plan.kept == []
    assert [a.held for a in plan.actions if isinstance(a, Retire)] == [bad]


def test_untrusted_held_is_retired_and_desired_recreated():
    want = desired()
    bad = replace(held(want[ID_A]), seal_ok=False, problem="seal mismatch")
    plan = plan_for(want, [bad])
    assert plan.actions == [Retire(bad, "seal mismatch"), Create(want[ID_A])]


def retired(store_id: str, age: timedelta) -> Held:
    return held(desired()[ID_A], store_id, retired=True, retired_at=NOW - age)


@pytest.mark.parametrize("days", [7, 8], ids=["at-grace", "past-grace"])
def test_retired_past_grace_is_purged_in_delete_mode(days):
    old = retired("img-old", timedelta(days=days))
    plan = plan_for({}, [old], retire_mode="delete", grace=timedelta(days=7))
    assert plan.actions == [Purge(old)]


@pytest.mark.parametrize(
    ("mode", "age"),
    [
        ("delete", timedelta(days=6)),
        ("deactivate", timedelta(days=30)),
        ("hide", timedelta(days=30)),
    ],
)
def test_retired_within_grace_or_not_deleting_is_left_alone(mode, age):
    old = retired("img-old", age)
    plan = plan_for({}, [old], retire_mode=mode, grace=timedelta(days=7))
    assert plan.actions == []
    assert plan.kept == []


def test_retired_copy_is_not_counted_as_holding_the_image():
    want = desired()
    old = retired("img-old", timedelta(days=1))
    assert plan_for(want, [old]).actions == [Create(want[ID_A])]


def test_duplicates_of_same_version_keep_one_retire_rest():
    want = desired()
    copies = [held(want[ID_A], f"img-{n}") for n in range(3)]
    plan = plan_for(want, copies)
    assert len(plan.actions) == 2
    assert all(isinstance(a, Retire) for a in plan.actions)
    assert len(retired_ids(plan)) == 2
    assert len({c.store_id for c in copies} - retired_ids(plan)) == 1


def test_duplicates_and_old_version_alongside_current():
    want = desired((ID_A, "1.3"))
    old = held(desired((ID_A, "1.2"))[ID_A], "img-old")
    copies = [held(want[ID_A], "img-n1"), held(want[ID_A], "img-n2")]
    plan = plan_for(want, [old, *copies])
    assert all(isinstance(a, Retire) for a in plan.actions)
    assert retired_ids(plan) == {"img-old", "img-n2"}


def test_describe_mentions_every_action():
    a_old = desired((ID_A, "1.2"))[ID_A]
    want = desired((ID_A, "1.3"), list_version="4")
    other = desired((ID_B, "7"), subscription="other")[ID_B]
    frozen_id = "ffffffff-1111-4222-8333-944455556666"
    kept = held(desired((frozen_id, "2"), subscription="frozen")[frozen_id], "img-kept")
    bad = Held(store_id="img-bad", record=None, seal_ok=False, problem="record unreadable")
    old = retired("img-gone", timedelta(days=30))
    have = [held(a_old, "img-a"), held(other, "img-b"), kept, bad, old]
    new_id = "aaaaaaaa-1111-4222-8333-944455556666"
    want.update(desired((new_id, "5")))
    plan = plan_for(
        want,
        have,
        frozen={"frozen": NOW + timedelta(days=1)},
        retire_mode="delete",
        grace=timedelta(days=7),
    )
    kinds = sorted(type(a).__name__ for a in plan.actions)
    assert kinds == ["Create", "Purge", "Replace", "Retire", "Retire"]
    text = "\n".join(plan.describe())
    assert len(plan.describe()) == len(plan.actions) + len(plan.kept)
    for needle in (
        f"create  {new_id} 5",
        f"replace {ID_A} 1.2 -> 1.3",
        f"retire  {ID_B}",
        "retire  img-bad: record unreadable",
        "purge   img-gone",
        f"keep    {frozen_id}",
    ):
        assert needle in text


def test_describe_mentions_refresh():
    have = held(desired()[ID_A])
    plan = plan_for(desired(list_version="9"), [have])
    assert plan.describe() == [f"refresh {ID_A} metadata (list 9)"]
