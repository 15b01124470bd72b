"""Every reader of a Glance image decides by the one rule: the filter's view and the store's.

What the nova filter, ``vmtrust launch`` and the audit decide about a Glance
image (:func:`vmtrust.glanceprops.judge`) and what the Glance store reports of
the same image when the sync holds it (``GlanceStore._held``, what quarantine
and ``vmtrust images`` go by) must agree on every tampering, with the same
reason.  The images are Glance's JSON as the sync leaves it, sealed with a real
key (tests/sealed_images.py); only the tampering differs.  Before the rule had
one home, the store compared Glance's ``os_hash_value`` without its algorithm
and worded each refusal its own way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sealed_images import OWNER, trusted_image

from glance_sync.stores.glance import GlanceStore
from vmtrust import glanceprops
from vmtrust.imagelist import format_date

GLANCE_KEY = Ed25519PrivateKey.generate()


def _views(image: dict) -> tuple[glanceprops.Verdict, object]:
    verdict = glanceprops.judge(image, [GLANCE_KEY.public_key()], datetime.now(UTC), owners=[OWNER])
    store = GlanceStore(None, project_id=OWNER, seal_keys=[GLANCE_KEY.public_key()])
    return verdict, store._held(image)


def test_a_good_glance_image_is_trusted_by_every_reader():
    image = trusted_image(GLANCE_KEY)
    verdict, held = _views(image)
    assert verdict.trusted and held.seal_ok and held.problem is None
    assert held.record == verdict.record and held.store_id == image["id"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        # Glance hashed with another algorithm: its value is no SHA-512 of the bytes, even
        # when it reads like the sealed one (the store used to compare the value alone)
        ({"os_hash_algo": "sha256"}, "content hash differs from the sealed SHA-512"),
        ({"os_hash_algo": None, "os_hash_value": None}, "content hash differs"),
        ({"os_hash_algo": "sha512", "os_hash_value": None}, "content hash differs"),
        ({"os_hash_value": "0" * 128}, "content hash differs"),
        ({"id": "a-copy"}, "seal is bound to image "),
        ({"size": 7}, "size 7 differs from the sealed"),
        ({"vmtrust_vo": "vo.evil.org"}, "seal invalid: "),
        ({"vmtrust_seal": "garbage"}, "seal invalid: "),
        ({"vmtrust_size": "x"}, "seal invalid: trust record: size is not an integer"),
        ({"status": "queued"}, "status is queued"),
        ({"status": "deactivated"}, "status is deactivated"),
    ],
)
def test_every_glance_reader_refuses_the_same_tampering_for_the_same_reason(change, reason):
    verdict, held = _views({**trusted_image(GLANCE_KEY), **change})
    assert not verdict.trusted and not held.seal_ok
    assert verdict.reason.startswith(reason) and held.problem == verdict.reason


def test_a_retired_glance_image_keeps_its_checked_record_for_the_sync_only():
    retired = {**trusted_image(GLANCE_KEY), "vmtrust_state": "retired"}  # hidden, still active
    retired["vmtrust_retired_at"] = format_date(datetime.now(UTC) - timedelta(days=1))
    verdict, held = _views(retired)
    assert not verdict.trusted and verdict.reason == "trust state is retired"
    assert held.retired and held.seal_ok and held.problem is None
    assert held.record is not None and held.record.state == "retired"
    assert held.retired_at is not None
    # Deactivated (the default retire mode): Glance's status says so first, the store
    # does not mind — retired images are not expected to be usable.
    verdict, held = _views({**retired, "status": "deactivated"})
    assert verdict.reason == "status is deactivated" and held.seal_ok and held.problem is None
    # A retired image whose record was altered is reported so, and names nothing.
    _, altered = _views({**retired, "vmtrust_image_identifier": "someone-else"})
    assert altered.retired and not altered.seal_ok and altered.record is None
