"""The one rule for "is this stored image trusted" (:mod:`vmtrust.trust`), check by check.

Records sealed with a real Ed25519 key; what each store observes is given as a
:class:`~vmtrust.trust.Stored`.  That every reader applies this rule the same
way is tested with the readers (tests/test_glance_readers.py, the stores' and
launches' own tests).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from test_record import KEY, OTHER, RECORD

from vmtrust.errors import SealError
from vmtrust.record import seal
from vmtrust.trust import Code, Stored, Verdict, check_binding, judge, refuse

NOW = datetime(2026, 11, 1, tzinfo=UTC)  # RECORD expires 2026-12-01
STORED = Stored(RECORD.store_id, RECORD.sha512, RECORD.size)
KEYS = [KEY.public_key()]


def reader(record=RECORD, sealed: str | None = None):
    """What a store's reader gives: the record, and a seal (by default the site's, over it)."""
    return lambda: (record, sealed or seal(record, KEY))


def decide(record=RECORD, sealed: str | None = None, stored: Stored = STORED, now=NOW) -> Verdict:
    return judge(reader(record, sealed), stored, keys=KEYS, now=now)


def bind(record=RECORD, sealed: str | None = None, stored: Stored = STORED) -> Verdict:
    return check_binding(reader(record, sealed), stored, keys=KEYS)


# --- the rule ---------------------------------------------------------------------------------


def test_a_record_bound_to_this_image_is_trusted():
    assert decide() == Verdict(True, "trusted", RECORD)
    assert bind() == decide()
    assert decide().vo == RECORD.vo and decide().code == Code.TRUSTED


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (
            dataclasses.replace(STORED, store_id="another-image"),
            f"seal is bound to image {RECORD.store_id}, not this one",
        ),
        (dataclasses.replace(STORED, sha512="0" * 128), "content hash differs from the sealed"),
        (dataclasses.replace(STORED, sha512=""), "content hash differs from the sealed"),
        (dataclasses.replace(STORED, size=21), "size 21 differs from the sealed 20"),
    ],
)
def test_a_binding_that_does_not_hold_is_refused_with_the_verified_record(stored, reason):
    for verdict in (
        decide(stored=stored),
        bind(stored=stored),
    ):
        assert not verdict.trusted and verdict.reason.startswith(reason)
        assert verdict.code == Code.SEAL and verdict.record == RECORD


def test_values_a_store_does_not_compute_are_not_compared():
    assert decide(stored=Stored(RECORD.store_id)).trusted
    expired = dataclasses.replace(RECORD, expires="2020-01-01T00:00:00Z")
    assert bind(expired).trusted  # the planner's
    verdict = decide(expired)
    assert verdict == refuse(Code.EXPIRED, "expired at 2020-01-01T00:00:00Z", expired)


def test_expiry_is_exclusive_and_an_unreadable_one_refuses():
    assert decide(now=datetime(2026, 12, 1, tzinfo=UTC)).code == Code.EXPIRED
    assert decide(now=datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)).trusted
    odd = dataclasses.replace(RECORD, expires="next week")
    assert decide(odd) == refuse(Code.SEAL, "unreadable expiry 'next week'", odd)


@pytest.mark.parametrize("state", ["retired", "uploading", "quarantined"])
def test_a_record_not_in_state_trusted_is_refused_before_its_seal_is_read(state):
    record = dataclasses.replace(RECORD, state=state)
    for sealed in (seal(record, KEY), seal(RECORD, KEY), "not a seal"):
        assert decide(record, sealed) == refuse(Code.STATE, f"trust state is {state}")


def test_a_retired_record_is_genuine_to_the_sync_and_refused_to_everyone_else():
    """Retiring changes only the state: the seal is over the record in state trusted."""
    retired = dataclasses.replace(RECORD, state="retired")
    sealed = seal(RECORD, KEY)
    assert bind(retired, sealed) == Verdict(True, "trusted", retired)
    assert not decide(retired, sealed).trusted
    # A record sealed as retired was never committed by the sync: it does not verify.
    assert bind(retired, seal(retired, KEY)).code == Code.SEAL
    other = dataclasses.replace(RECORD, state="uploading")
    assert bind(other, sealed).code == Code.SEAL


@pytest.mark.parametrize(
    ("record", "key", "why"),
    [
        (dataclasses.replace(RECORD, vo="vo.evil.org"), KEY, "does not match the trust record"),
        (RECORD, OTHER, "sealed by unknown key"),
    ],
)
def test_an_altered_record_or_another_key_is_refused_without_a_record(record, key, why):
    verdict = decide(record, seal(RECORD, key))
    assert verdict.code == Code.SEAL and verdict.record is None and verdict.vo == ""
    assert verdict.reason.startswith(f"seal invalid: image {RECORD.image_identifier}: ")
    assert why in verdict.reason


def test_a_record_the_store_cannot_read_is_refused_like_a_bad_seal():
    def unreadable():
        raise SealError("trust record: missing sha512")

    for verdict in (
        judge(unreadable, STORED, keys=KEYS, now=NOW),
        check_binding(unreadable, STORED, keys=KEYS),
    ):
        assert verdict == refuse(Code.SEAL, "seal invalid: trust record: missing sha512")


def test_a_verdict_cannot_be_trusted_and_refused_at_once():
    with pytest.raises(ValueError, match="trusted=False, code trusted"):
        Verdict(False, "forgot the code")
    with pytest.raises(ValueError):
        Verdict(True, "trusted", RECORD, Code.SEAL)
    with pytest.raises(ValueError):
        refuse(Code.TRUSTED, "not a refusal")
