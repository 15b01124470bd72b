"""``vmtrust-sync --check``: one line per problem, and never a change — on disk or in Glance.

Each misconfiguration a site meets is made for real (a CRL gone stale, a key
others can read, a list rolled back, Glance without the property protections)
and the check must name it; the state directory, the store and Glance are
compared byte for byte (or image for image) before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import require_glance, write_clouds_yaml
from cryptography.hazmat.primitives import serialization
from glance_server import MEMBER_ROLES, SERVICE_ROLES, GlanceServer
from ops_support import WN, image, make_site, publish, run, subscription

from vmtrust import devpki, record
from vmtrust.truststore import subject_hash


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and directory under ``roots``: mode, size, mtime and content hash."""
    found: dict[str, tuple] = {}
    for root in roots:
        if not root.exists():
            found[str(root)] = ("absent",)
            continue
        for path in [root, *sorted(root.rglob("*"))]:
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            found[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return found


def check(conf: Path):
    result = run("vmtrust-sync", conf, "--check")
    problems = result.stderr.strip().splitlines()
    assert all(line.startswith("vmtrust-sync: check: ") for line in problems), result.stderr
    assert "Traceback" not in result.stderr
    return result, [line.removeprefix("vmtrust-sync: check: ") for line in problems]


@pytest.fixture
def good(tmp_path, ca_dir, site, pki) -> Path:
    """A site whose only subscription is fine."""
    conf = make_site(tmp_path, ca_dir, site, pki)
    publish(site, "/example.list", pki.endorser, [image(site, "wn", WN)])
    (tmp_path / "subs.yaml").write_text(
        "subscriptions:\n" + subscription("example", site.url("/example.list"), pki.endorser)
    )
    return conf


def test_a_sound_site_has_no_problems_and_nothing_changes(good, tmp_path):
    before = snapshot(tmp_path / "state", tmp_path / "store")
    result, problems = check(good)
    assert problems == [] and result.returncode == 0
    assert result.stdout.strip().splitlines()[-1].startswith("no problems (")
    assert "state_dir" in result.stdout and "does not exist yet" in result.stdout
    assert snapshot(tmp_path / "state", tmp_path / "store") == before  # still absent
    assert run("vmtrust-sync", good).returncode == 0  # a real pass, then check again
    before = snapshot(tmp_path / "state", tmp_path / "store")
    result, problems = check(good)
    assert problems == [] and result.returncode == 0, problems
    assert snapshot(tmp_path / "state", tmp_path / "store") == before


def test_every_failing_subscription_is_a_line(tmp_path, ca_dir, site, pki):
    conf = make_site(tmp_path, ca_dir, site, pki)
    result, problems = check(conf)
    assert result.returncode == 1
    assert len(problems) == 2, problems  # example's list verifies; its bad image is no check
    assert any(p.startswith("subscription broken: ") and "HTTP 404" in p for p in problems)
    assert any(p.startswith("subscription revoked: ") and "revoked" in p for p in problems)


def test_a_rolled_back_list_is_a_problem_with_the_state_it_has(good, site, pki, tmp_path):
    publish(site, "/example.list", pki.endorser, [image(site, "wn", WN)], version="9")
    assert run("vmtrust-sync", good).returncode == 0
    publish(site, "/example.list", pki.endorser, [image(site, "wn", WN)], version="7")
    before = snapshot(tmp_path / "state")
    _, problems = check(good)
    (problem,) = problems
    assert problem.startswith("subscription example: ") and "older" in problem.lower()
    assert snapshot(tmp_path / "state") == before


def _crl(ca_dir: Path, pki, **kw) -> Path:
    path = ca_dir / f"{subject_hash(pki.ca.cert)}.r0"
    crl = devpki.make_crl(pki.ca, [pki.revoked.cert], **kw)
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def test_crl_missing_or_stale_is_a_problem_soon_is_a_note(good, ca_dir, pki):
    path = ca_dir / f"{subject_hash(pki.ca.cert)}.r0"
    path.unlink()
    _, problems = check(good)
    assert any("no valid CRL for CA /DC=org/DC=example/CN=Example Test CA" in p for p in problems)
    now = datetime.now(UTC)
    _crl(ca_dir, pki, last_update=now - timedelta(days=3), next_update=now - timedelta(hours=1))
    _, problems = check(good)
    assert any("expired on" in p and "fetch-crl" in p for p in problems), problems
    _crl(ca_dir, pki, last_update=now - timedelta(days=3), next_update=now + timedelta(hours=5))
    result, problems = check(good)
    assert problems == [] and "must be renewed by" in result.stdout


def test_a_ca_the_subscription_names_but_the_directory_lacks(good, tmp_path, ca_dir, pki):
    for path in ca_dir.glob(f"{subject_hash(pki.ca.cert)}.*"):
        path.unlink()
    _, problems = check(good)
    assert f"CA {pki.ca.dn} is not in {ca_dir}" in problems


def test_seal_key_problems(good, tmp_path):
    key = tmp_path / "seal.key"
    key.chmod(0o644)
    _, problems = check(good)
    assert any("mode 0644 lets others use it" in p for p in problems)
    key.chmod(0o640)  # root:vmtrust 0640 is how the units read it
    _, problems = check(good)
    assert problems == []
    other = tmp_path / "other.key"
    record.generate_key_pair(other)
    shutil.copy(tmp_path / "other.key.pub", tmp_path / "seal.key.pub")
    _, problems = check(good)
    assert any("seal.key.pub is not the public half of" in p for p in problems)
    key.unlink()
    _, problems = check(good)
    assert any("seal.key: No such file or directory (make one with 'vmtrust keygen" in p
               for p in problems)  # fmt: skip


def test_state_dir_store_hook_and_textfile_that_cannot_work(good, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    text = good.read_text()
    text = text.replace(f"state_dir = {tmp_path}/state", f"state_dir = {blocker}/state")
    text = text.replace(
        "[store_local]\n",
        f"metrics_textfile = {tmp_path}/nowhere/v.prom\n[store_local]\nhook = {tmp_path}/no-hook\n",
    )
    good.write_text(text.replace(f"path = {tmp_path}/store", f"path = {blocker}"))
    result, problems = check(good)
    assert result.returncode == 1
    assert (
        f"[DEFAULT] state_dir {blocker}/state: does not exist, and {blocker} is not writable"
        in (problems)
        or any(p.startswith(f"[DEFAULT] state_dir {blocker}/state") for p in problems)
    )
    assert f"[store_local] path {blocker}: not a directory" in problems
    assert f"[store_local] hook {tmp_path}/no-hook: not an executable file" in problems
    assert any(p.startswith("[sync] metrics_textfile") for p in problems)
    assert blocker.read_text() == "x"


def test_json_log_format_gives_the_problems_as_records(good, tmp_path):
    (tmp_path / "seal.key").chmod(0o666)
    result = run("vmtrust-sync", good, "--check", "--log-format", "json")
    (line,) = result.stderr.strip().splitlines()
    assert json.loads(line)["message"].startswith("check: [trust] seal_key ")
    assert result.returncode == 1


# --- Glance: the store's role and the property protections ---------------------------------


@pytest.fixture(scope="module")
def open_glance(tmp_path_factory):
    """A second real Glance, started without the property protections vmtrust ships."""
    require_glance()
    server = GlanceServer(tmp_path_factory.mktemp("glance-open"), protections=False).start()
    yield server
    server.stop()


def glance_conf(conf: Path, tmp_path: Path, server, *, sync_roles=SERVICE_ROLES, member=True,
                vo_cloud=False) -> tuple[str, str]:  # fmt: skip
    """Point ``conf`` at ``server``: the sync's project, a member's, clouds.yaml."""
    project, other = "svc" + uuid.uuid4().hex[:10], "vo" + uuid.uuid4().hex[:10]
    clouds = write_clouds_yaml(
        tmp_path / "clouds.yaml",
        server.url,
        {"sync": (project, sync_roles), "member": (other, MEMBER_ROLES)},
    )
    section = f"[store_glance]\ncloud = sync\nclouds_file = {clouds}\nproject_id = {project}\n"
    if member and not vo_cloud:
        section += "check_cloud = member\n"
    if vo_cloud:
        section += f"vo_project = vo.example.org:{other}:member\n"
    text = conf.read_text().replace("[sync]\n", "[sync]\nstore = glance\n")
    conf.write_text(text + section)
    return project, other


def images_of(server, *projects: str) -> list[dict]:
    found = []
    for project in projects:
        for hidden in ("false", "true"):
            reply = server.api(project, MEMBER_ROLES).get(
                f"{server.url}/v2/images", params={"os_hidden": hidden}, timeout=30
            )
            assert reply.status_code == 200, reply.text
            found += reply.json()["images"]
    return found


def test_glance_with_protections_passes_and_nothing_is_created(good, tmp_path, glance):
    project, other = glance_conf(good, tmp_path, glance)
    before = snapshot(tmp_path / "state")
    result, problems = check(good)
    assert problems == [] and result.returncode == 0, problems
    assert f"Glance store: 0 managed image(s) in project {project}" in result.stdout
    assert "property protections ([store_glance] check_cloud member)" in result.stdout
    assert images_of(glance, project, other) == []
    assert snapshot(tmp_path / "state") == before


def test_glance_without_protections_is_a_problem_and_nothing_is_created(
    good, tmp_path, open_glance
):
    project, other = glance_conf(good, tmp_path, open_glance)
    result, problems = check(good)
    assert result.returncode == 1
    (problem,) = problems
    assert problem.startswith(
        "Glance property protections are not in force: a member ([store_glance] check_cloud "
        "member) may set vmtrust_* properties"
    )
    assert images_of(open_glance, project, other) == []


def test_the_cloud_of_a_vo_project_checks_the_protections_too(good, tmp_path, open_glance):
    glance_conf(good, tmp_path, open_glance, vo_cloud=True)
    _, problems = check(good)
    (problem,) = problems
    assert "a member (the cloud of vo_project vo" in problem


def test_without_member_credentials_the_protections_are_a_note(good, tmp_path, glance):
    glance_conf(good, tmp_path, glance, member=False)
    result, problems = check(good)
    assert problems == []
    assert "property protections not checked: no member credentials" in result.stdout


def test_sync_credentials_without_the_service_role(good, tmp_path, glance):
    project, other = glance_conf(good, tmp_path, glance, sync_roles=MEMBER_ROLES)
    _, problems = check(good)
    (problem,) = problems
    assert problem == (
        f"store glance: the sync's credentials may not set vmtrust_* properties in project "
        f"{project}: give its user the role vmtrust_service there"
    )
    assert images_of(glance, project, other) == []


def test_sync_credentials_scoped_to_another_project(good, tmp_path, glance):
    project, _ = glance_conf(good, tmp_path, glance)
    good.write_text(good.read_text().replace(f"project_id = {project}", "project_id = elsewhere"))
    _, problems = check(good)
    (problem,) = problems
    assert problem.startswith("store glance: the sync's credentials: glance POST /images: HTTP 403")
    assert "owned by 'elsewhere'" in problem


def test_unreachable_glance_is_one_line(good, tmp_path):
    glance_conf(good, tmp_path, type("Gone", (), {"url": "http://127.0.0.1:9"})())
    _, problems = check(good)
    (problem,) = problems
    assert problem.startswith("store glance: glance GET /images") and "connect" in problem
    assert os.environ.get("OS_CLOUD") is None
