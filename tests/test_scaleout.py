# ruff: noqa: F401, F811  (pytest fixtures imported from their servers' modules)
"""The whole system of issue 16's scale-out: 2 worker processes, 4 Glance targets, etcd, PostgreSQL.

Two ``vmtrust-sync --worker`` processes share four targets (four projects of
one real Glance: each target is its own Glance store, as four clouds would
be), the state in PostgreSQL, the coordination in etcd.  One worker is killed
with SIGKILL while it uploads: the other finishes its targets after the lease,
no target is written by both, no half-uploaded image is left, and the shared
state knows every target's last pass.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import write_clouds_yaml
from etcd_server import etcd
from glance_server import SERVICE_ROLES
from httpserve import Behaviour
from pg_server import pg_url, postgres
from test_coordination import balanced_members
from test_sync_local import entry, publish

from glance_sync.state import StateDB
from vmtrust.glanceprops import MANAGED, STATE, UPLOADING
from vmtrust.record import generate_key_pair

ROOT = Path(__file__).resolve().parent.parent
LEASE = 5
IMAGE = bytes(range(256)) * 4096 * 4  # 4 MiB, served in 64 KiB chunks with a pause each


def _conf(
    tmp_path: Path,
    n: str,
    member: str,
    *,
    ca_dir,
    clouds,
    names,
    etcd_url,
    db,
    extra: dict[str, str] | None = None,
) -> Path:
    """Worker ``n``'s vmtrust.conf: one Glance target per entry of ``names`` (target →
    project), each with its ``extra`` lines, the state in ``db``, coordination in etcd."""
    targets = "".join(
        f"[target:{name}]\nstore = glance\ncloud = {name}\nproject_id = {project}\n"
        + (extra or {}).get(name, "")
        for name, project in names.items()
    )
    path = tmp_path / f"worker-{n}.conf"
    path.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state-{n}\n"
        f"[trust]\nca_dir = {ca_dir}\nseal_key = {tmp_path}/seal.key\n"
        f"[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\ntargets = {', '.join(names)}\n"
        f"state_connection = {db}\nhttp_retries = 1\n"
        f"[store_glance]\nclouds_file = {clouds}\n"
        f"[coordination]\nbackend_url = {etcd_url}\nmember_id = {member}\nlease = {LEASE}\n"
        f"{targets}"
    )
    return path


def _images(glance, project: str) -> list[dict]:
    reply = glance.api(project).get(f"{glance.url}/v2/images", params={"owner": project})
    reply.raise_for_status()
    return reply.json()["images"]


def _glance_db(glance, query: str, *args) -> list[tuple]:
    """Glance's own database, read-only: what it holds, deleted images included."""
    database = f"file:{glance.base / 'glance.sqlite'}?mode=ro"
    with contextlib.closing(sqlite3.connect(database, uri=True, timeout=5)) as conn:
        return conn.execute(query, args).fetchall()


def _partial_upload(glance, projects: set[str]) -> tuple[str, str] | None:
    """(project, image id) of an image the sync created and whose bytes Glance has not
    all received yet (``queued`` before the upload starts, ``saving`` during it), if any.

    Read from Glance's own database and file store: its API answers one request at
    a time (tests/glance_server.py), so it would answer only after the upload.  Both
    states count: on a loaded machine the bytes of a small image may all arrive between
    two looks, and killing the worker before its upload ends is what is tested.
    """
    rows = _glance_db(
        glance, "SELECT id, owner FROM images WHERE status IN ('queued', 'saving') AND deleted = 0"
    )
    for image_id, owner in rows:
        data = glance.base / "images" / image_id
        if owner in projects and (not data.exists() or data.stat().st_size < len(IMAGE)):
            return owner, image_id
    return None


def _start(conf: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "glance_sync", "--worker", "--config-file", str(conf),
         "--interval", "3600", "-v"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env,
    )  # fmt: skip


def test_two_workers_four_targets_one_killed_mid_upload(
    tmp_path, ca_dir, site, pki, glance, etcd, pg_url
):
    tag = uuid.uuid4().hex[:6]
    names = {f"cloud{i}-{tag}": f"proj{i}-{uuid.uuid4().hex[:8]}" for i in range(4)}
    clouds = write_clouds_yaml(
        tmp_path / "clouds.yaml", glance.url, {n: (p, SERVICE_ROLES) for n, p in names.items()}
    )
    generate_key_pair(tmp_path / "seal.key")
    (tmp_path / "subs.yaml").write_text(
        f"subscriptions:\n  - name: example\n    url: {site.url('/site.list')}\n"
        f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
        "    approve: all\n"
    )
    publish(site, pki, [entry("wn", IMAGE, site)], "1")
    site.behaviour["/img/wn-1.img"] = Behaviour(stall=0.05)  # about 3 s a download
    doomed_id, survivor_id = balanced_members(list(names))
    from tooz import hashring

    ring = hashring.HashRing([doomed_id.encode(), survivor_id.encode()])
    doomed_targets = [n for n in names if ring.get_nodes(n.encode()) == {doomed_id.encode()}]
    assert len(doomed_targets) == 2
    where = {"ca_dir": ca_dir, "clouds": clouds, "names": names, "etcd_url": etcd.tooz_url,
             "db": pg_url}  # fmt: skip
    doomed_conf = _conf(tmp_path, "a", doomed_id, **where)
    survivor_conf = _conf(tmp_path, "b", survivor_id, **where)
    doomed = _start(doomed_conf, tmp_path / "a.log")
    survivor = _start(survivor_conf, tmp_path / "b.log")
    logs = {"a": tmp_path / "a.log", "b": tmp_path / "b.log"}
    try:
        # wait for the doomed worker to be uploading into one of its targets, then kill it
        deadline = time.monotonic() + 90
        theirs = {names[n] for n in doomed_targets}
        while (uploading := _partial_upload(glance, theirs)) is None:
            assert time.monotonic() < deadline, logs["a"].read_text()[-3000:]
            assert doomed.poll() is None, logs["a"].read_text()[-3000:]
            time.sleep(0.05)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
        killed = time.monotonic()
        # the survivor finishes its own targets, then takes the dead worker's over
        deadline = killed + LEASE + 90
        while True:
            assert survivor.poll() is None, logs["b"].read_text()[-3000:]
            done = {n: _images(glance, p) for n, p in names.items()}
            if all(
                len(images) == 1 and images[0].get(STATE) == "trusted" for images in done.values()
            ):
                break
            assert time.monotonic() < deadline, (done, logs["b"].read_text()[-3000:])
            time.sleep(0.5)
        took = time.monotonic() - killed
    finally:
        for process in (doomed, survivor):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
    assert took > LEASE / 2 - 1  # not before the dead worker's lease ended
    # no orphan: the half-uploaded image is gone, each project holds its one trusted image
    for project in names.values():
        (image,) = _images(glance, project)
        assert image[MANAGED] in (True, "true", "True") and image["status"] == "active"
        assert image["id"] != uploading[1]
    assert not (glance.base / "images" / uploading[1]).exists()
    # no target written twice: each target stored once, by one worker
    text = {k: v.read_text(errors="replace") for k, v in logs.items()}
    for name in names:
        stored = {k: len(re.findall(rf"target {re.escape(name)}: stored wn 1", t))
                  for k, t in text.items()}  # fmt: skip
        assert sum(stored.values()) == 1, (name, stored)
        if name in doomed_targets:
            assert stored["b"] == 1  # the survivor's, after the kill
    # no lost state: the shared database knows the list and every target's last pass
    db = StateDB(tmp_path / "reader", readonly=True, connection=pg_url)
    try:
        assert db.get("example").list_version == "1"
        for name in names:
            last = db.target_outcome(name)
            assert last.last_success is not None and last.last_error is None, (name, last)
    finally:
        db.close()
    engine = sa.create_engine(pg_url.replace("postgresql:", "postgresql+psycopg:"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM image_failure")).scalar_one() == 0
    engine.dispose()
