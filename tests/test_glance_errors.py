"""Glance failures during a sync: one clear line each, no half-created image, nothing retired.

Against the session's real Glance (``tests/glance_server.py``), a second one
with a small ``image_size_cap``, a TCP proxy that answers 503, stalls or cuts
an upload (``tests/tcpproxy.py``), a port nobody listens on, and a
``vmtrust-sync`` process killed with SIGKILL mid-upload.  After every failure
the project holds no image in state queued/saving/uploading (at the latest
after the next clean run, whose cleanup removes images left ``uploading``),
and images trusted before stay trusted and active.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import require_glance, write_clouds_yaml
from glance_server import MEMBER_ROLES, SERVICE_ROLES, GlanceServer, free_port
from httpserve import Behaviour, Server, Site
from tcpproxy import Rule, TcpProxy
from test_sync_local import entry, publish

from glance_sync.cloud import connect_cloud
from glance_sync.stores.glance import GlanceStore
from vmtrust import glanceprops as gp
from vmtrust.errors import VmtrustError

BIN = Path(sys.executable).parent
IMAGE_A = b"A" * 60_000
IMAGE_B = b"B" * 80_000
BIG = b"G" * 300_000
UNFINISHED = ("queued", "saving", "uploading", "importing")


# --- helpers --------------------------------------------------------------------------------


def _store(service, url: str, *, roles: str = SERVICE_ROLES, token: str | None = None,
           timeout: float | None = None, name: str = "x",
           retries: int | None = None) -> GlanceStore:  # fmt: skip
    """A GlanceStore for the service's project, reaching Glance at ``url``.

    ``retries`` sets openstacksdk's ``image_status_code_retries`` (default 5, with
    exponential backoff from 0.5 s: 15 s per call that keeps answering 503).
    """
    path = Path(service.s.state_dir).parent / f"clouds-{name}-{uuid.uuid4().hex[:6]}.yaml"
    write_clouds_yaml(path, url, {name: (service.project, roles)})
    if retries is not None:
        path.write_text(path.read_text() + f"    image_status_code_retries: {retries}\n")
    if token is not None:
        text = path.read_text()
        start = text.index("token: '") + len("token: '")
        path.write_text(text[:start] + token + text[text.index("'", start) :])
    return GlanceStore(
        connect_cloud(name, str(path), timeout),
        project_id=service.project,
        seal_keys=[service.s.seal_key.public_key()],
    )


def _attempt(service) -> tuple[int, list[str]]:
    """Run a pass; (exit status, failure lines) whether it reports or raises a VmtrustError."""
    try:
        report = service.run(service.subs)
    except VmtrustError as exc:
        return exc.exit_code, [str(exc)]
    return report.exit_code, report.failures


def _images(server, project: str) -> list[dict]:
    api = server.api(project, SERVICE_ROLES)
    found = []
    for hidden in ("false", "true"):
        reply = api.get(
            f"{server.url}/v2/images",
            params={"owner": project, "limit": 1000, "os_hidden": hidden},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        found += reply.json()["images"]
    return found


def _leftovers(server, project: str) -> list[tuple[str, str, str | None]]:
    return [
        (i["id"], i["status"], i.get(gp.STATE))
        for i in _images(server, project)
        if i["status"] in UNFINISHED or i.get(gp.STATE) == gp.UPLOADING
    ]


def _trusted(service, server) -> dict[str, str]:
    """identifier → image id of every image gp.judge trusts (at most one per identifier)."""
    keys = [service.s.seal_key.public_key()]
    result: dict[str, str] = {}
    for image in _images(server, service.project):
        if gp.judge(image, keys, datetime.now(UTC), owners=[service.project]).trusted:
            identifier = image["vmtrust_image_identifier"]
            assert identifier not in result, f"two trusted images for {identifier}"
            result[identifier] = image["id"]
    return result


def _one_line(line: str, *words: str) -> None:
    assert "\n" not in line and "Traceback" not in line, line
    for word in words:
        assert word in line, (word, line)


@pytest.fixture
def stored(glance_sync, glance, site, pki):
    """``a`` trusted in Glance; the list also approves ``b``, not stored yet (its first
    download failed), so the next pass only creates ``b``."""
    b = entry("b", IMAGE_B, site)
    site.behaviour["/img/b-1.img"] = Behaviour(status=404)
    publish(site, pki, [entry("a", IMAGE_A, site), b], "1")
    report = glance_sync.run(glance_sync.subs)
    assert len(report.failures) == 1 and "404" in report.failures[0]
    site.behaviour.clear()
    before = _trusted(glance_sync, glance)
    assert set(before) == {"a"}
    glance_sync.good_store = glance_sync.store  # type: ignore[attr-defined]  # for the test
    glance_sync.trusted_a = before["a"]  # type: ignore[attr-defined]  # for the test
    return glance_sync


def _a_still_trusted(service, server) -> None:
    trusted = _trusted(service, server)
    assert trusted.get("a") == service.trusted_a
    image = server.api(service.project).get(f"{server.url}/v2/images/{trusted['a']}").json()
    assert image["status"] == "active" and image[gp.STATE] == "trusted"


def _clean_run_converges(service, server) -> None:
    service.store = service.good_store
    code, failures = _attempt(service)
    assert (code, failures) == (0, [])
    assert _leftovers(server, service.project) == []
    assert set(_trusted(service, server)) == {"a", "b"}
    _a_still_trusted(service, server)


# --- 401, 403 -------------------------------------------------------------------------------


def test_401_is_one_line_and_nothing_is_retired(stored, glance):
    stored.store = _store(stored, glance.url, token="not-a-test-token")
    code, failures = _attempt(stored)
    assert code != 0 and len(failures) == 1
    _one_line(failures[0], "glance", "401")
    _a_still_trusted(stored, glance)
    assert _leftovers(glance, stored.project) == []
    _clean_run_converges(stored, glance)


def test_403_without_the_service_role_creates_nothing(stored, glance):
    stored.store = _store(stored, glance.url, roles=MEMBER_ROLES)
    code, failures = _attempt(stored)
    assert code == 1 and len(failures) == 1
    _one_line(failures[0], "glance POST /images", "HTTP 403")
    assert _leftovers(glance, stored.project) == []
    assert len(_images(glance, stored.project)) == 1
    _a_still_trusted(stored, glance)
    _clean_run_converges(stored, glance)


def test_403_line_carries_glances_reason(stored, glance):
    stored.store = _store(stored, glance.url, roles=MEMBER_ROLES)
    _, failures = _attempt(stored)
    (line,) = failures
    assert "<" not in line and ">" not in line, line
    assert "vmtrust_" in line and "reserved" in line, line


# --- 413 from a Glance with a small image_size_cap -----------------------------------------


class CappedGlance(GlanceServer):
    CAP = 100_000

    def _configure(self) -> None:
        super()._configure()
        conf = self.etc / "glance-api.conf"
        text = conf.read_text()
        conf.write_text(text.replace("[DEFAULT]\n", f"[DEFAULT]\nimage_size_cap = {self.CAP}\n", 1))


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    require_glance()
    server = CappedGlance(tmp_path_factory.mktemp("capped")).start()
    yield server
    server.stop()


def test_413_image_over_the_size_cap_leaves_nothing_and_others_are_stored(
    glance_sync, capped, site, pki
):
    glance_sync.store = _store(glance_sync, capped.url)
    assert len(BIG) > CappedGlance.CAP > len(IMAGE_A)
    publish(site, pki, [entry("a", IMAGE_A, site), entry("big", BIG, site)], "1")
    code, failures = _attempt(glance_sync)
    assert code == 1 and len(failures) == 1
    _one_line(failures[0], "glance PUT /images/", "/file", "HTTP 413")
    assert _leftovers(capped, glance_sync.project) == []
    assert set(_trusted(glance_sync, capped)) == {"a"}
    assert len(_images(capped, glance_sync.project)) == 1
    # The next run tries again, fails the same way, and still leaves nothing behind.
    code, failures = _attempt(glance_sync)
    assert code == 1 and "HTTP 413" in failures[0]
    assert _leftovers(capped, glance_sync.project) == []
    assert set(_trusted(glance_sync, capped)) == {"a"}


# --- 5xx, stalls, cut uploads through a proxy ---------------------------------------------


@pytest.fixture
def proxy(glance):
    with TcpProxy(glance.port) as running:
        yield running


def _through(stored, proxy, *rules: Rule, timeout: float | None = None) -> None:
    proxy.rules[:] = list(rules)
    stored.store = _store(stored, proxy.url, timeout=timeout, retries=1)


def test_503_on_create_is_one_line_and_the_next_run_stores_it(stored, glance, proxy):
    _through(stored, proxy, Rule("POST", "/v2/images", status=503, times=None))
    code, failures = _attempt(stored)
    assert code == 1 and len(failures) == 1
    _one_line(failures[0], "glance POST /images", "HTTP 503")
    assert _leftovers(glance, stored.project) == []
    _a_still_trusted(stored, glance)
    _clean_run_converges(stored, glance)


def test_503_on_the_upload_is_never_trusted_and_leaves_nothing(stored, glance, proxy):
    _through(stored, proxy, Rule("PUT", "/file", status=503))
    code, failures = _attempt(stored)
    assert code == 1 and len(failures) == 1
    _one_line(failures[0])
    assert _leftovers(glance, stored.project) == []
    assert set(_trusted(stored, glance)) == {"a"}
    _a_still_trusted(stored, glance)
    _clean_run_converges(stored, glance)


def test_503_on_the_upload_names_the_put_and_the_status(stored, glance, proxy):
    _through(stored, proxy, Rule("PUT", "/file", status=503))
    _, failures = _attempt(stored)
    assert len(failures) == 1
    _one_line(failures[0], "glance PUT /images/", "/file", "HTTP 503")
    assert sum(seen.startswith("PUT ") for seen in proxy.seen) == 1  # a stream is not replayed


def test_503_on_the_commit_patch_removes_the_uploaded_image(stored, glance, proxy):
    _through(stored, proxy, Rule("PATCH", "/v2/images/", status=503, times=None))
    code, failures = _attempt(stored)
    assert code == 1 and len(failures) == 1
    _one_line(failures[0], "glance PATCH /images/", "HTTP 503")
    assert any(seen.startswith("DELETE /v2/images/") for seen in proxy.seen)
    assert _leftovers(glance, stored.project) == []
    assert len(_images(glance, stored.project)) == 1
    _a_still_trusted(stored, glance)
    _clean_run_converges(stored, glance)


def test_409_on_the_commit_is_one_line_and_removes_the_image(stored, glance, proxy):
    _through(stored, proxy, Rule("PATCH", "/v2/images/", status=409, times=None))
    code, failures = _attempt(stored)
    assert code == 1 and len(failures) == 1
    _one_line(failures[0], "glance PATCH /images/", "HTTP 409")
    assert _leftovers(glance, stored.project) == []
    assert len(_images(glance, stored.project)) == 1
    _a_still_trusted(stored, glance)
    _clean_run_converges(stored, glance)


def test_bytes_damaged_on_the_way_to_glance_are_caught_by_its_hash(stored, glance, proxy):
    """Glance stores what arrived; its os_hash_value differs from vmtrust's: removed."""
    _through(stored, proxy, Rule("PUT", "/file", flip_at=20_000))
    code, failures = _attempt(stored)
    assert code == 1 and len(failures) == 1
    _one_line(failures[0], "image b:", "differs from vmtrust's SHA-512", "removed")
    assert _leftovers(glance, stored.project) == []
    assert len(_images(glance, stored.project)) == 1  # only "a"
    _a_still_trusted(stored, glance)
    _clean_run_converges(stored, glance)


def test_503_on_listing_changes_nothing(stored, glance, proxy):
    _through(stored, proxy, Rule("GET", "/v2/images", status=503, times=None))
    code, failures = _attempt(stored)
    assert code != 0 and len(failures) == 1
    _one_line(failures[0], "glance GET /images", "HTTP 503")
    assert not [s for s in proxy.seen if not s.startswith("GET ")]
    _a_still_trusted(stored, glance)
    _clean_run_converges(stored, glance)


def test_stalled_upload_times_out_and_leaves_nothing(stored, glance, proxy):
    _through(stored, proxy, Rule("PUT", "/file", stall=True), timeout=0.5)
    code, failures = _attempt(stored)
    assert code == 1 and len(failures) == 1
    _one_line(failures[0], "glance PUT /images/", "timed out")
    assert _leftovers(glance, stored.project) == []
    _a_still_trusted(stored, glance)
    _clean_run_converges(stored, glance)


def test_stalled_listing_times_out_and_changes_nothing(stored, glance, proxy):
    _through(stored, proxy, Rule("GET", "/v2/images", stall=True, times=None), timeout=0.5)
    code, failures = _attempt(stored)
    assert code != 0 and len(failures) == 1
    _one_line(failures[0], "glance GET /images", "timed out")
    _a_still_trusted(stored, glance)
    _clean_run_converges(stored, glance)


def test_upload_cut_mid_way_leaves_nothing(stored, glance, proxy, site, pki):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", BIG, site)], "3")
    _through(stored, proxy, Rule("PUT", "/file", cut_after=100_000))
    code, failures = _attempt(stored)
    assert code == 1 and len(failures) == 1
    _one_line(failures[0], "glance PUT /images/")
    assert _leftovers(glance, stored.project) == []
    _a_still_trusted(stored, glance)
    _clean_run_converges(stored, glance)


def test_cut_upload_whose_removal_also_fails_is_removed_by_the_next_run(
    stored, glance, proxy, site, pki
):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", BIG, site)], "3")
    _through(
        stored,
        proxy,
        Rule("PUT", "/file", cut_after=100_000),
        Rule("DELETE", "/v2/images/", status=503, times=None),
    )
    code, failures = _attempt(stored)
    assert code == 1 and len(failures) == 1
    _one_line(failures[0], "glance PUT /images/")
    (left,) = _leftovers(glance, stored.project)
    assert left[2] == gp.UPLOADING
    assert set(_trusted(stored, glance)) == {"a"}  # the unfinished image is never trusted
    held = {h.store_id for h in stored.good_store.held()}
    assert left[0] not in held  # nor even listed as held
    _clean_run_converges(stored, glance)
    assert left[0] not in {i["id"] for i in _images(glance, stored.project)}


# --- the command: Glance down, kill -9 mid-upload, a plain run ----------------------------


IMAGE = os.urandom(2 * 1024 * 1024)


@pytest.fixture
def cli(tmp_path: Path, ca_dir: Path, pki, glance):
    """A vmtrust.conf with [sync] store = glance in a fresh project, and its list site."""
    with Server(Site()) as site:
        project = "cli" + uuid.uuid4().hex[:12]
        clouds = write_clouds_yaml(
            tmp_path / "clouds.yaml", glance.url, {"sync": (project, SERVICE_ROLES)}
        )
        publish(site, pki, [entry("wn", IMAGE, site)], "1")
        (tmp_path / "subs.yaml").write_text(
            "subscriptions:\n  - name: example\n"
            f"    url: {site.url('/site.list')}\n"
            f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
            "    vo: vo.example.org\n    approve: all\n"
        )
        conf = tmp_path / "vmtrust.conf"
        conf.write_text(
            f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
            f"[trust]\nca_dir = {ca_dir}\nseal_key = {tmp_path}/seal.key\n"
            f"[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\nhttp_retries = 1\n"
            "http_backoff = 0.01\nstore = glance\n"
            f"[store_glance]\ncloud = sync\nclouds_file = {clouds}\nproject_id = {project}\n"
            "api_timeout = 30\n"
        )
        subprocess.run(
            [BIN / "vmtrust", "keygen", "--out", tmp_path / "seal.key"],
            check=True,
            capture_output=True,
        )
        yield conf, site, project, clouds


def _sync(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "vmtrust-sync", "--config-file", conf], capture_output=True, text=True, timeout=120
    )


def _listed(conf: Path) -> list[dict]:
    out = subprocess.run(
        [BIN / "vmtrust", "--config-file", conf, "images", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cli_run_into_glance_then_images_lists_it_trusted(cli, glance):
    conf, _, project, _ = cli
    result = _sync(conf)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (row,) = _listed(conf)
    assert row["identifier"] == "wn" and row["state"] == "trusted"
    assert row["sha512"] == hashlib.sha512(IMAGE).hexdigest()
    (image,) = _images(glance, project)
    assert row["location"] == f"glance:{image['id']}" and image["status"] == "active"


def _glance_down(
    cli, glance, *, first: bool = True
) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    """Store ``wn`` (if ``first``), run with clouds.yaml pointing at a dead port; restore it."""
    conf, _, project, clouds = cli
    if first:
        assert _sync(conf).returncode == 0
    before = _images(glance, project)
    good = clouds.read_text()
    clouds.write_text(good.replace(glance.url, f"http://127.0.0.1:{free_port()}"))
    try:
        result = _sync(conf)
    finally:
        clouds.write_text(good)
    return result, before


def test_cli_glance_down_fails_and_changes_nothing(cli, glance):
    conf, _, project, _ = cli
    result, before = _glance_down(cli, glance)
    assert result.returncode != 0
    assert _images(glance, project) == before
    assert [r["state"] for r in _listed(conf)] == ["trusted"]


def test_cli_glance_down_is_one_line_saying_cannot_connect(cli, glance):
    result, _ = _glance_down(cli, glance, first=False)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr[-500:]
    assert len(lines) == 1 and lines[0].startswith("vmtrust-sync: glance GET /images")
    assert "cannot connect" in lines[0]
    assert result.returncode == 1  # a pass with failures: one line each, exit 1


def test_cli_kill_9_mid_upload_then_rerun_converges(cli, glance):
    conf, site, project, _ = cli
    site.behaviour[next(p for p in site.files if p.startswith("/img/"))] = Behaviour(stall=0.05)
    process = subprocess.Popen(
        [BIN / "vmtrust-sync", "--config-file", conf],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    files = glance.base / "images"  # Glance's file store writes the upload as it arrives
    before = set(files.iterdir())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not set(files.iterdir()) - before:
            time.sleep(0.02)
        time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    left = _leftovers(glance, project)
    assert left and all(state == gp.UPLOADING for _, _, state in left), (
        "kill should land mid-upload"
    )
    site.behaviour.clear()
    result = _sync(conf)
    assert result.returncode == 0, result.stderr
    assert _leftovers(glance, project) == []
    rows = _listed(conf)
    assert [(r["identifier"], r["state"]) for r in rows] == [("wn", "trusted")]
    assert len(_images(glance, project)) == 1
