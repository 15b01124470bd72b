# ruff: noqa: F401, F811  (pytest fixtures imported from their servers' modules)
"""A worker frozen mid-upload past its lease, the whole system: decision 0011 end to end.

Two real ``vmtrust-sync --worker`` processes, PostgreSQL and etcd as
``tests/test_scaleout.py`` starts them, and two targets in a real Glance (two
projects): ``plain`` stores the list's raw disk as it is, ``qcow2`` stores it
converted (``disk_formats = qcow2``), so one download feeds both (fan-out): the
plain target's upload streams during the download, the converted target's
starts after it, from ``qemu-img``'s output.

The first worker starts alone, so both targets are its.  While its upload into
``plain`` is half done (the download is slowed, as in test_scaleout) it is
stopped with SIGSTOP; the second worker starts, and once the frozen one's lease
has lapsed it takes both targets over and stores each.  Then the frozen worker
resumes where it stood: its open upload fails (uWSGI gave up the stalled body
and the taker's clean-up removed the image), and its converted
upload, which it starts only now, reaches its commit and is refused by the
fence.  It must commit nothing: one trusted image per target, the taker's; no
seal on any image it uploaded; none of its uploads left; the shared state's
outcome of each target the taker's success, not the stale worker's failure.

**Glance's one process and the frozen upload.**  The test Glance serves one
request at a time (uWSGI, one process: sqlite under concurrent writers fails).
The frozen worker's PUT stays open while it is stopped; it holds that one
process only until uWSGI stops waiting for the body (``--socket-timeout``,
here 2 s, deployments keep uWSGI's 4 s), which answers 500 and leaves the
image ``queued``: well before the lease (5 s) lets the taker in.  This test
starts its own Glance so that the timeout is explicit (and uWSGI's, whatever
``VMTRUST_GLANCE_SERVER`` says).  Rejected: several uWSGI processes (the option
was tried: the taker's two commits, concurrent PATCHes, failed once in three
runs with sqlite's "database is locked"); a proxy answering for the frozen
connection (it would test the proxy, not Glance).

Slow (about 40 s: a lease, a Glance start-up, two workers), but part of ``make test``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid

import pytest
from conftest import require_glance, write_clouds_yaml
from etcd_server import etcd
from glance_server import SERVICE_ROLES, GlanceServer
from hostile_images import needs_qemu_img
from httpserve import Behaviour
from pg_server import pg_url, postgres
from test_scaleout import LEASE, _conf, _glance_db, _images, _start
from test_sync_local import entry, publish

from glance_sync.state import StateDB
from vmtrust.glanceprops import MANAGED, SEAL, STATE, UPLOADING
from vmtrust.record import generate_key_pair

IMAGE = bytes(range(256)) * 4096 * 6  # 6 MiB, served in 64 KiB chunks with a pause each

pytestmark = pytest.mark.slow


@pytest.fixture
def frozen_glance(tmp_path_factory):
    """A Glance of its own under uWSGI, dropping a stalled body after 2 s (see above)."""
    require_glance()
    base = tmp_path_factory.mktemp("glance-frozen")
    server = GlanceServer(base, server="uwsgi", body_timeout=2).start()
    yield server
    server.stop()


def _uploading(glance, project: str) -> str | None:
    """The id of an image of ``project`` whose bytes Glance is receiving, half done."""
    for (image_id,) in _glance_db(
        glance, "SELECT id FROM images WHERE status = 'saving' AND deleted = 0 AND owner = ?",
        project,
    ):  # fmt: skip
        data = glance.base / "images" / image_id
        if data.exists() and len(IMAGE) // 4 < data.stat().st_size < len(IMAGE) // 2:
            return image_id
    return None


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@needs_qemu_img
def test_a_worker_frozen_mid_upload_past_its_lease_commits_nothing(
    tmp_path, ca_dir, site, pki, frozen_glance, etcd, pg_url
):
    glance = frozen_glance
    projects = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in ("plain", "qcow2")}
    clouds = write_clouds_yaml(
        tmp_path / "clouds.yaml", glance.url, {n: (p, SERVICE_ROLES) for n, p in projects.items()}
    )
    generate_key_pair(tmp_path / "seal.key")
    (tmp_path / "subs.yaml").write_text(
        f"subscriptions:\n  - name: example\n    url: {site.url('/site.list')}\n"
        f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
        "    approve: all\n"
    )
    publish(site, pki, [entry("wn", IMAGE, site)], "1")
    site.behaviour["/img/wn-1.img"] = Behaviour(stall=0.05)  # about 5 s a download
    where = {"ca_dir": ca_dir, "clouds": clouds, "names": projects, "etcd_url": etcd.tooz_url,
             "db": pg_url, "extra": {"qcow2": "disk_formats = qcow2\n"}}  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    logs = {"frozen": tmp_path / "frozen.log", "taker": tmp_path / "taker.log"}
    frozen = _start(_conf(tmp_path, "a", f"frozen-{tag}", **where), logs["frozen"])
    taker = None
    try:
        # 1. the only worker holds both targets; stop it halfway through its upload
        deadline = time.monotonic() + 90
        while (partial := _uploading(glance, projects["plain"])) is None:
            assert time.monotonic() < deadline, logs["frozen"].read_text()[-3000:]
            assert frozen.poll() is None, logs["frozen"].read_text()[-3000:]
            time.sleep(0.02)
        os.kill(frozen.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        taker = _start(_conf(tmp_path, "b", f"taker-{tag}", **where), logs["taker"])

        # 2. after the lease the taker owns both targets and stores each, Glance answering
        #    it while the frozen worker's upload is still open
        deadline = stopped + LEASE + 90
        while True:
            assert taker.poll() is None, logs["taker"].read_text()[-3000:]
            done = {n: _images(glance, p) for n, p in projects.items()}
            if all(len(i) == 1 and i[0].get(STATE) == "trusted" for i in done.values()):
                break
            assert time.monotonic() < deadline, (done, logs["taker"].read_text()[-3000:])
            time.sleep(0.5)
        assert time.monotonic() - stopped > LEASE / 2 - 1, "not before the lease lapsed"
        stored = {n: i[0]["id"] for n, i in done.items()}
        taker_text = logs["taker"].read_text(errors="replace")
        assert f"removed unfinished Glance image {partial}" in taker_text

        # 3. the frozen worker resumes where it stood, and must commit nothing
        os.kill(frozen.pid, signal.SIGCONT)
        deadline = time.monotonic() + 90
        while "round done" not in logs["frozen"].read_text(errors="replace"):
            assert frozen.poll() is None, logs["frozen"].read_text()[-3000:]
            assert time.monotonic() < deadline, logs["frozen"].read_text()[-3000:]
            time.sleep(0.3)
        time.sleep(LEASE)  # its next round (it joins again) and the taker's, if any
        frozen_text = logs["frozen"].read_text(errors="replace")
        # the converted upload, started after the resume, reached its commit: fenced
        assert re.search(
            r"target qcow2: image wn: target qcow2's lock lapsed before the commit .*: "
            r"not committed", frozen_text
        ), frozen_text[-3000:]  # fmt: skip
        assert "target plain: image wn: " in frozen_text  # its open upload failed
        assert "stored wn 1" not in frozen_text
        assert frozen.poll() is None and taker.poll() is None
    finally:
        for process in (frozen, taker):
            if process is not None:
                _stop(process)

    # one trusted image per target, the taker's, and nothing else live
    for name, project in projects.items():
        (image,) = _images(glance, project)
        assert image["id"] == stored[name] and image["status"] == "active"
        assert image[STATE] == "trusted" and image[MANAGED] in (True, "true", "True")
    stores = re.findall(r"target (\w+): stored wn 1", logs["taker"].read_text())
    assert sorted(stores) == sorted(projects), "each target stored once, by the taker"
    # every image the frozen worker made is gone, none ever carried a seal, none is left
    # half uploaded (deleted rows are kept by Glance: its history of the test)
    owners = tuple(projects.values())
    made = _glance_db(
        glance, "SELECT id, status, deleted FROM images WHERE owner IN (?, ?)", *owners
    )
    theirs = {row[0] for row in made} - set(stored.values())
    assert partial in theirs and len(theirs) >= 2, made  # the plain upload and the qcow2 one
    assert all(row[2] for row in made if row[0] in theirs), made
    sealed = {
        image_id
        for (image_id,) in _glance_db(
            glance, "SELECT image_id FROM image_properties WHERE name = ?", SEAL
        )
    }
    assert not sealed & theirs, "no seal on any of the frozen worker's uploads"
    assert not _glance_db(
        glance,
        "SELECT i.id FROM images i JOIN image_properties p ON p.image_id = i.id "
        "WHERE i.deleted = 0 AND p.deleted = 0 AND p.name = ? AND p.value = ? "
        "AND i.owner IN (?, ?)",
        STATE, UPLOADING, *owners,
    )  # fmt: skip
    for image_id in theirs:
        assert not (glance.base / "images" / image_id).exists()
    # no lost state: the list, and each target's outcome is the taker's success
    db = StateDB(tmp_path / "reader", readonly=True, connection=pg_url)
    try:
        assert db.get("example").list_version == "1"
        for name in projects:
            last = db.target_outcome(name)
            assert last.last_success is not None and last.last_error is None, (name, last)
    finally:
        db.close()
