"""Glance images as the sync leaves them, and a stub Glance at the filter's ``fetch`` boundary.

The images carry real trust records sealed with a real Ed25519 key
(:func:`vmtrust.glanceprops.record_properties`), so every verdict tests reach
comes from the one rule (:func:`vmtrust.glanceprops.judge`).  Shared by the
filter's unit tests (``tests/with_nova``) and the decision-cache tests.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from datetime import UTC, datetime, timedelta

from nova_filter.decision import LookupFailed
from vmtrust.glanceprops import record_properties
from vmtrust.imagelist import format_date
from vmtrust.record import TrustRecord, seal

OWNER = "svc-project"
OTHER = "user-project"
VO = "vo.example.org"
DATA = b"worker node image bytes\n"
SHA512 = hashlib.sha512(DATA).hexdigest()


class Glance:
    """The ``fetch`` boundary: image id → image dict, with a call count."""

    def __init__(self) -> None:
        self.images: dict[str, dict] = {}
        self.calls: list[str] = []
        self.fail: str | None = None
        self._lock = threading.Lock()

    def __call__(self, image_id: str) -> dict | None:
        with self._lock:
            self.calls.append(image_id)
        if self.fail:
            raise LookupFailed(self.fail)
        image = self.images.get(image_id)
        return dict(image) if image is not None else None

    def add(self, image: dict) -> str:
        self.images[image["id"]] = image
        return image["id"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def user_image_dict() -> dict:
    """An image a user uploaded: no trust record at all."""
    return {"id": str(uuid.uuid4()), "owner": OTHER, "status": "active"}


def trusted_image(key, image_id: str | None = None, *, vo: str = VO, **record_fields) -> dict:
    """An active Glance image as the sync leaves it: owned by OWNER, sealed, bound."""
    image_id = image_id or str(uuid.uuid4())
    fields = {
        "image_identifier": "85bfb313-a852-444b-89e7-9cdf8c23dc91",
        "title": "Example worker node",
        "image_version": "1",
        "list_identifier": "65ef8feb-86d4-42ea-9960-f79bcc5a11b4",
        "list_version": "1",
        "endorser_dn": "/DC=org/DC=example/CN=Jane Endorser",
        "endorser_ca": "/DC=org/DC=example/CN=Example CA",
        "vo": vo,
        "subscription": "example",
        "approval": "all",
        "expires": format_date(datetime.now(UTC) + timedelta(days=7)),
        "source_sha512": SHA512,
        "sha512": SHA512,
        "size": len(DATA),
        "store_id": image_id,
    }
    fields.update(record_fields)
    record = TrustRecord(**fields)
    return {
        "id": image_id,
        "name": "wn",
        "owner": OWNER,
        "status": "active",
        "visibility": "shared",
        "os_hash_algo": "sha512",
        "os_hash_value": SHA512,
        "size": len(DATA),
        **record_properties(record, seal(record, key)),
    }
