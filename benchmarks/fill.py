"""Thousands of images for the scale benchmarks: a signed list of them, and stores holding them.

Storing 10,000 images through the sync costs most of an hour on the test Glance
(sqlite, one worker: a create is four requests), and nothing a no-op pass
measures depends on how they got there.  So:

* :func:`publish_many` signs one list of N entries (validated once, not once
  per entry as ``authoring.add_image`` would);
* :func:`desired` is what the sync itself makes of that list (its own list
  phase: fetched, verified, approved);
* :func:`fill_glance` writes, straight into the test Glance's sqlite database,
  the rows the Glance store's create leaves — the image, its properties (the
  list metadata, the trust record and a seal by the site's key, bound to the
  image id and Glance's SHA-512) and its location — as the sync's own code
  computes them (:func:`glance_sync.stores.glance_meta.list_properties`,
  :func:`vmtrust.glanceprops.record_properties`);
* :func:`fill_local` stores each image through the local store's own ``create``.

Fidelity is checked, not assumed: the benchmarks let the real sync store a few
images of the same list beside the filled ones, compare their shape
(:func:`same_shape`), and require the next pass to do nothing.
"""

from __future__ import annotations

import hashlib
import io
import math
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from glance_sync.plan import Desired
from vmtrust import authoring, devpki, imagelist, smime
from vmtrust import glanceprops as gp

GIB = 1024**3
#: Glance's columns among what the store writes; everything else is a property row.
COLUMNS = ("name", "disk_format", "container_format", "visibility", "min_disk", "min_ram")


def tiny(n: int) -> bytes:
    """The bytes of image ``n`` (small and distinct)."""
    return f"image {n}\n".encode() * 64


def entry(identifier: str, uri: str, data: bytes) -> dict[str, Any]:
    """An hv:image entry as an AppDB list has them (RAW, x86_64, KVM)."""
    return {
        "hv:image": {
            "dc:identifier": identifier,
            "dc:title": f"Image {identifier}",
            "dc:description": "A benchmark image",
            "hv:uri": uri,
            "hv:size": len(data),
            "sl:checksum:sha512": hashlib.sha512(data).hexdigest(),
            "sl:arch": "x86_64",
            "sl:os": "Linux",
            "sl:osname": "AlmaLinux",
            "sl:osversion": "9",
            "sl:comments": "",
            "hv:hypervisor": "KVM",
            "hv:version": "1",
            "hv:format": "RAW",
        }
    }


def publish_many(
    pki: devpki.DevPKI,
    www: Path,
    base: str,
    name: str,
    entries: list[dict[str, Any]],
    *,
    version: str = "1",
) -> None:
    """Sign one list of ``entries`` as ``<base>/<name>.list`` (validated once); the
    list's identifier is fixed by ``name``, so a later version replaces it."""
    doc = authoring.new_list(
        title=name,
        description="",
        source="",
        uri=f"{base}/{name}.list",
        endorser_dn=pki.endorser.dn,
        endorser_ca=pki.endorser.ca_dn,
        identifier=str(uuid.uuid5(uuid.NAMESPACE_URL, f"vmtrust-benchmark:{name}")),
        first_version=version,
    )
    doc, _ = authoring.add_image(doc, entries[0])
    doc["hv:imagelist"]["hv:images"].extend(entries[1:])
    imagelist.validate(doc)
    body = smime.sign(imagelist.dumps(doc), pki.endorser.cert, pki.endorser.key)
    (www / f"{name}.list").write_bytes(body)


def write_images(www: Path, base: str, count: int, prefix: str = "img") -> list[dict[str, Any]]:
    """``count`` tiny images served from ``www``; their list entries."""
    entries = []
    for n in range(count):
        data = tiny(n)
        (www / f"{prefix}-{n}.img").write_bytes(data)
        entries.append(entry(f"{prefix}-{n}", f"{base}/{prefix}-{n}.img", data))
    return entries


def desired(conf: Path) -> tuple[Any, dict[str, Desired]]:
    """(settings, identifier → Desired) as the sync's list phase makes them from ``conf``."""
    from glance_sync import settings as settings_mod
    from glance_sync.httpclient import make_session
    from glance_sync.lists import ListPhase
    from glance_sync.report import Report
    from glance_sync.state import StateDB
    from vmtrust.conf import make_conf
    from vmtrust.policy import load_subscriptions

    settings = settings_mod.from_conf(make_conf([str(conf)]))
    state = StateDB(settings.state_dir)
    try:
        phase = ListPhase(settings, state, make_session())
        report = Report()
        subs = load_subscriptions(settings.subscriptions_file)
        verified = list(phase.verified(subs, [], report, datetime.now(UTC)))
        assert not report.failures, report.failures
    finally:
        state.close()
    wanted: dict[str, Desired] = {}
    for item in verified:
        wanted.update(item.wanted)
    return settings, wanted


def _glance_rows(
    want: Desired, key: Any, project: str, visibility: str
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(image id, Glance columns, properties) of ``want`` as the Glance store leaves it."""
    from glance_sync.stores.glance_meta import list_properties
    from vmtrust.record import seal

    image_id = str(uuid.uuid4())
    data_sha, size = want.image.sha512, want.image.size
    record = want.record(store_id=image_id, sha512=data_sha, size=size, disk_format="raw")
    props: dict[str, Any] = {
        **list_properties(want, size),
        "disk_format": "raw",
        "container_format": "bare",
        "visibility": visibility,
        **gp.record_properties(record, seal(record, key)),
        gp.SHARED_WITH: "",
        "min_disk": math.ceil(size / GIB),
    }
    props.setdefault("min_ram", 0)
    columns = {name: props.pop(name) for name in COLUMNS}
    return image_id, columns, {k: str(v) for k, v in props.items()}


def fill_glance(
    glance: Any, project: str, wanted: list[Desired], key: Any, visibility: str = "shared"
) -> list[str]:
    """Write ``wanted`` into the test Glance's database as the store would; their ids.

    Stamped a day ago, as a site's images are (stored by earlier passes), not all in the
    last minutes, which an incremental listing's safety margin would include.
    """
    now = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    images, props, locations, ids = [], [], [], []
    for want in wanted:
        image_id, columns, properties = _glance_rows(want, key, project, visibility)
        ids.append(image_id)
        data = tiny(int(want.identifier.rsplit("-", 1)[1]))
        images.append(
            (image_id, columns["name"], len(data), "active", now, now, 0,
             columns["disk_format"], columns["container_format"],
             hashlib.md5(data, usedforsecurity=False).hexdigest(), project,
             columns["min_disk"], columns["min_ram"], 0, len(data), visibility, 0,
             "sha512", hashlib.sha512(data).hexdigest())
        )  # fmt: skip
        props += [(image_id, name, value, now, now, 0) for name, value in properties.items()]
        path = glance.base / "images" / image_id
        path.write_bytes(data)
        locations.append((image_id, f"file://{path}", now, now, 0, '{"store": "fs"}', "active"))
    db = sqlite3.connect(glance.base / "glance.sqlite", timeout=60)
    try:
        with db:
            db.executemany(
                "INSERT INTO images (id, name, size, status, created_at, updated_at, deleted, "
                "disk_format, container_format, checksum, owner, min_disk, min_ram, protected, "
                "virtual_size, visibility, os_hidden, os_hash_algo, os_hash_value) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                images,
            )
            db.executemany(
                "INSERT INTO image_properties (image_id, name, value, created_at, updated_at, "
                "deleted) VALUES (?,?,?,?,?,?)",
                props,
            )
            db.executemany(
                "INSERT INTO image_locations (image_id, value, created_at, updated_at, deleted, "
                "meta_data, status) VALUES (?,?,?,?,?,?,?)",
                locations,
            )
    finally:
        db.close()
    return ids


def same_shape(real: dict[str, Any], filled: dict[str, Any]) -> None:
    """Assert a filled image has the keys of one the sync stored, and equal values where
    they do not depend on the image (the record's list fields, formats, visibility)."""
    assert set(real) == set(filled), set(real) ^ set(filled)
    for name in ("disk_format", "container_format", "visibility", "status", "min_disk",
                 "min_ram", "os_hash_algo", "os_distro", "architecture", "hypervisor_type",
                 gp.MANAGED, gp.STATE, gp.SHARED_WITH, "vmtrust_list_version",
                 "vmtrust_list_identifier", "vmtrust_expires", "vmtrust_subscription"):  # fmt: skip
        assert real.get(name) == filled.get(name), (name, real.get(name), filled.get(name))


def fill_local(store: Any, wanted: list[Desired], key: Any) -> None:
    """Store each of ``wanted`` through the local store's own create (bytes, record, seal)."""
    from vmtrust.record import seal

    for want in wanted:
        data = tiny(int(want.identifier.rsplit("-", 1)[1]))

        def finish(store_id: str, size: int, sha512: str, *, stored_format=None, want=want):
            record = want.record(store_id=store_id, sha512=sha512, size=size, disk_format="raw")
            return record, seal(record, key)

        store.create(want, io.BytesIO(data), "raw", finish)
