"""``vmtrust audit`` rules that need no nova: paging, refusals to guess, actions, the command.

The end-to-end behaviour (nova's own API and the real Glance) is in
``tests/with_nova/test_audit_functional.py``.  Here the cloud is stubbed at the
HTTP boundary the audit uses — ``conn.compute`` and ``conn.image``, keystoneauth
adapters answering ``request(url, method, …)`` — with servers shaped as nova
2.79 shows them and images carrying real sealed records, so every verdict still
comes from :func:`vmtrust.glanceprops.judge`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cli_support import fails, run
from sealed_images import OWNER, trusted_image, user_image_dict

from vmtrust import audit
from vmtrust.record import generate_key_pair, load_private_key

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seal") / "seal.key"
    generate_key_pair(path)
    return path


@pytest.fixture(scope="module")
def key(key_file):
    return load_private_key(key_file)


class Reply:
    def __init__(self, status: int, body: object = None) -> None:
        self.status_code, self._body = status, body
        self.text = json.dumps(body) if body is not None else ""

    def json(self):
        if self._body is None:
            raise ValueError("no JSON")
        return self._body


class Cloud:
    """nova and Glance as the audit sees them: canned replies, every call recorded."""

    def __init__(self) -> None:
        self.servers: list[dict] = []
        self.aggregates: list[dict] = []
        self.images: dict[str, dict] = {}
        self.attachments: dict[str, list[dict]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.action_status = 202
        self.image_status: int | None = None
        self.repeat_marker = False
        self.compute = _Service(self, "compute")
        self.image = _Service(self, "image")

    def answer(self, service: str, method: str, url: str, kw: dict) -> Reply:
        self.calls.append((service, method, url))
        if service == "image":
            image_id = url.rsplit("/", 1)[-1]
            if self.image_status:
                return Reply(self.image_status, {"message": "down"})
            image = self.images.get(image_id)
            return Reply(200, image) if image else Reply(404, {"message": "gone"})
        assert kw["headers"] == {"OpenStack-API-Version": "compute 2.79"}
        if url == "/os-aggregates":
            return Reply(200, {"aggregates": self.aggregates})
        if url == "/servers/detail":
            params = kw["params"]
            assert params["all_tenants"] == "True"
            ids = [s["id"] for s in self.servers]
            start = ids.index(params["marker"]) + 1 if "marker" in params else 0
            page = self.servers[start : start + params["limit"]]
            body: dict = {"servers": page}
            if len(page) == params["limit"]:
                marker = self.servers[0]["id"] if self.repeat_marker else page[-1]["id"]
                href = f"http://nova/v2.1/servers/detail?all_tenants=True&marker={marker}"
                body["servers_links"] = [{"rel": "next", "href": href}]
            return Reply(200, body)
        if url.endswith("/os-volume_attachments"):
            return Reply(200, {"volumeAttachments": self.attachments[url.split("/")[2]]})
        if url.endswith("/action") and method == "POST":
            return Reply(self.action_status, {"conflictingRequest": {"message": "busy"}})
        raise AssertionError(f"unexpected call {method} {url}")

    def add_server(self, image_id: str = "", *, worker: bool = True, **fields) -> dict:
        server = {
            "id": str(uuid.uuid4()),
            "name": "wn",
            "tenant_id": "vo-project",
            "status": "ACTIVE",
            "OS-EXT-STS:vm_state": "active",
            "OS-EXT-SRV-ATTR:host": "wn01",
            "OS-EXT-SRV-ATTR:root_device_name": "/dev/vda",
            "OS-SRV-USG:launched_at": "2026-11-30T10:00:00.000000",
            "created": "2026-11-30T09:59:58Z",
            "updated": "2026-11-30T10:00:01Z",
            "image": {"id": image_id} if image_id else "",
            "flavor": {"extra_specs": {"vmtrust:trusted_only": "true"} if worker else {}},
            "os-extended-volumes:volumes_attached": [],
            "locked": False,
            **fields,
        }
        self.servers.append(server)
        return server


class _Service:
    def __init__(self, cloud: Cloud, name: str) -> None:
        self.cloud, self.name = cloud, name

    def request(self, url: str, method: str, raise_exc: bool = True, **kw) -> Reply:
        assert raise_exc is False  # the audit checks every status itself
        return self.cloud.answer(self.name, method, url, kw)


@pytest.fixture
def cloud() -> Cloud:
    return Cloud()


def audited(cloud: Cloud, key, **kw) -> audit.Report:
    return audit.audit(cloud, [key.public_key()], [OWNER], **kw)


def test_trusted_worker_servers_and_plain_servers_give_no_findings(cloud, key):
    image = trusted_image(key)
    cloud.images[image["id"]] = image
    for _ in range(3):
        cloud.add_server(image["id"])
    cloud.add_server(str(uuid.uuid4()), worker=False)  # not a worker: its image is not asked for
    report = audited(cloud, key)
    assert (report.findings, report.servers, report.worker_servers, report.images) == ([], 4, 3, 1)


def test_one_glance_look_up_per_image_and_pages_followed(cloud, key):
    images = [trusted_image(key) for _ in range(3)]
    for image in images:
        cloud.images[image["id"]] = image
    for n in range(10):
        cloud.add_server(images[n % 3]["id"])
    report = audited(cloud, key, page_size=3)
    assert report.servers == 10 and report.findings == []
    pages = [c for c in cloud.calls if c[2] == "/servers/detail"]
    glance = [c for c in cloud.calls if c[0] == "image"]
    assert len(pages) == 4 and len(glance) == 3  # ceil(10/3) pages, one look-up per image
    assert len(cloud.calls) == 4 + 3 + 1  # and the aggregates


def test_paging_that_does_not_advance_stops_the_audit(cloud, key):
    image = trusted_image(key)
    cloud.images[image["id"]] = image
    for _ in range(4):
        cloud.add_server(image["id"])
    cloud.repeat_marker = True
    with pytest.raises(audit.AuditError, match="paging does not advance"):
        audited(cloud, key, page_size=2)


def test_every_reason_from_glance(cloud, key):
    retired = {**trusted_image(key), "vmtrust_state": "retired",
               "vmtrust_retired_at": "2026-12-01T08:00:00Z"}  # fmt: skip
    deactivated = {**retired, "id": str(uuid.uuid4()), "status": "deactivated"}
    expired = trusted_image(key, expires="2026-01-01T00:00:00Z")
    tampered = {
        **trusted_image(key),
        "vmtrust_vo": "vo.evil.org",
        "updated_at": "2026-12-01T07:00:00Z",
    }
    user = user_image_dict()
    uploading = {
        **trusted_image(key),
        "vmtrust_state": "uploading",
        "updated_at": "2026-12-01T06:00:00Z",
    }
    for image in (retired, deactivated, expired, tampered, user, uploading):
        cloud.images[image["id"]] = image
    servers = {
        name: cloud.add_server(image["id"])
        for name, image in [("retired", retired), ("deactivated", deactivated),
                            ("expired", expired), ("seal", tampered), ("user", user),
                            ("uploading", uploading)]
    }  # fmt: skip
    servers["deleted"] = cloud.add_server(str(uuid.uuid4()))
    found = {f.server: f for f in audited(cloud, key).findings}
    got = {name: (found[s["id"]].reason, found[s["id"]].since) for name, s in servers.items()}
    assert got == {
        "retired": ("retired", "2026-12-01T08:00:00Z"),
        "deactivated": ("retired", "2026-12-01T08:00:00Z"),  # retired by deactivation
        "expired": ("expired", "2026-01-01T00:00:00Z"),
        "seal": ("seal", "2026-12-01T07:00:00Z"),
        "user": ("not-vmtrust", "2026-11-30T10:00:00Z"),  # since the server was launched
        "uploading": ("inactive", "2026-12-01T06:00:00Z"),
        "deleted": ("deleted", "2026-11-30T10:00:00Z"),
    }
    assert found[servers["seal"]["id"]].detail.startswith("seal invalid")


def test_volume_backed_and_rescued_worker_servers(cloud, key):
    image = trusted_image(key)
    cloud.images[image["id"]] = image
    no_image = cloud.add_server("", **{"os-extended-volumes:volumes_attached": [{"id": "v1"}]})
    attached = "os-extended-volumes:volumes_attached"
    root_volume = cloud.add_server(image["id"], **{attached: [{"id": "v2"}]})
    cloud.attachments[root_volume["id"]] = [{"device": "/dev/vda", "volumeId": "v2"}]
    data_volume = cloud.add_server(image["id"], **{attached: [{"id": "v3"}]})
    cloud.attachments[data_volume["id"]] = [{"device": "/dev/vdb", "volumeId": "v3"}]
    unknown_root = cloud.add_server(image["id"], **{
        "os-extended-volumes:volumes_attached": [{"id": "v4"}],
        "OS-EXT-SRV-ATTR:root_device_name": None})  # fmt: skip
    cloud.attachments[unknown_root["id"]] = [{"device": "/dev/vdb", "volumeId": "v4"}]
    rescued = cloud.add_server(image["id"], status="RESCUE", **{"OS-EXT-STS:vm_state": "rescued"})
    found = {(f.server, f.reason): f for f in audited(cloud, key).findings}
    assert set(found) == {
        (no_image["id"], "volume"),
        (root_volume["id"], "volume"),
        (unknown_root["id"], "volume"),  # nova does not say which is the root: fail closed
        (rescued["id"], "rescue"),
    }
    assert found[(root_volume["id"], "volume")].detail == "boots from volume v2"
    assert found[(rescued["id"], "rescue")].since == "2026-11-30T10:00:01Z"


def test_marked_aggregates_and_servers_that_never_ran(cloud, key):
    user = user_image_dict()
    cloud.images[user["id"]] = user
    cloud.aggregates = [
        {"hosts": ["wn01"], "metadata": {"vmtrust_trusted_only": "enabled"}},  # enforces
        {"hosts": ["wn02"], "metadata": {"vmtrust_trusted_only": "false"}},
        {"hosts": ["wn03"], "metadata": {}},
    ]
    marked = cloud.add_server(user["id"], worker=False)
    cloud.add_server(user["id"], worker=False, **{"OS-EXT-SRV-ATTR:host": "wn02"})
    cloud.add_server(user["id"], worker=False, **{"OS-EXT-SRV-ATTR:host": "wn03"})
    cloud.add_server(user["id"], status="ERROR", **{"OS-EXT-SRV-ATTR:host": None})  # refused
    shelved = cloud.add_server(user["id"], status="SHELVED_OFFLOADED",
                               **{"OS-EXT-SRV-ATTR:host": None})  # fmt: skip
    odd_flavour = cloud.add_server(
        user["id"], flavor={"extra_specs": {"vmtrust:trusted_only": "on"}}
    )
    report = audited(cloud, key)
    assert {f.server for f in report.findings} == {marked["id"], shelved["id"], odd_flavour["id"]}
    assert report.worker_servers == 3 and report.servers == 6


def test_flavour_extra_specs_hidden_by_policy_stop_the_audit(cloud, key):
    cloud.add_server(str(uuid.uuid4()), flavor={"original_name": "wn.large"})
    with pytest.raises(audit.AuditError, match="did not show its flavour's extra specs"):
        audited(cloud, key)


def test_hidden_hosts_stop_the_audit(cloud, key):
    """Without admin rights nova hides the host: every server would look never-run."""
    server = cloud.add_server(str(uuid.uuid4()))
    del server["OS-EXT-SRV-ATTR:host"]
    with pytest.raises(audit.AuditError, match="did not show its host"):
        audited(cloud, key)


def test_glance_errors_stop_the_audit(cloud, key):
    cloud.add_server(str(uuid.uuid4()))
    cloud.image_status = 503
    with pytest.raises(audit.AuditError, match=r"image GET /images/\S+: HTTP 503"):
        audited(cloud, key)


def test_no_keys_or_owners_is_refused(cloud, key):
    with pytest.raises(audit.AuditError, match="no seal keys or trusted owners"):
        audit.audit(cloud, [], [OWNER])
    with pytest.raises(audit.AuditError, match="no seal keys or trusted owners"):
        audit.audit(cloud, [key.public_key()], [])


def test_actions_once_per_server_skip_what_is_done_and_report_failures(cloud, key, caplog):
    user = user_image_dict()
    cloud.images[user["id"]] = user
    running = cloud.add_server(user["id"], status="RESCUE", **{"OS-EXT-STS:vm_state": "rescued"})
    stopped = cloud.add_server(user["id"], status="SHUTOFF")
    report = audited(cloud, key)
    assert len(report.findings) == 3  # rescue and not-vmtrust for the first server
    assert audit.act(cloud, report.findings, "stop")
    actions = [c for c in cloud.calls if c[2].endswith("/action")]
    assert actions == [("compute", "POST", f"/servers/{running['id']}/action")]
    assert {(f.server, f.action) for f in report.findings} == {
        (running["id"], "stopped"), (stopped["id"], "already stopped")}  # fmt: skip
    assert f"audit: stopped server {running['id']}" in caplog.text

    cloud.action_status = 409
    report = audited(cloud, key)
    assert not audit.act(cloud, report.findings, "shelve")
    assert all(f.action.startswith("failed: compute POST") and "HTTP 409" in f.action
               for f in report.findings)  # fmt: skip
    before = len(cloud.calls)
    assert audit.act(cloud, report.findings, "lock", dry_run=True)
    assert len(cloud.calls) == before and {f.action for f in report.findings} == {"would lock"}
    with pytest.raises(audit.AuditError, match="action 'reboot'"):
        audit.act(cloud, report.findings, "reboot")


# --- the command ----------------------------------------------------------------------------


@pytest.fixture
def cli_cloud(cloud, monkeypatch):
    monkeypatch.setattr("vmtrust.cli.auditcmd.connect", lambda cloud_name, clouds_file: cloud)
    return cloud


def audit_args(key_file: Path, *extra: str) -> list:
    return ["audit", "--cloud", "admin", "--seal-key", f"{key_file}.pub", "--owner", OWNER, *extra]


def test_command_exit_status_table_and_json(cli_cloud, key, key_file, capsys, caplog):
    image = trusted_image(key)
    cli_cloud.images[image["id"]] = image
    cli_cloud.add_server(image["id"])
    rc, out, err = run(capsys, *audit_args(key_file))
    assert (rc, err) == (0, "")
    assert out == "no findings: 1 worker server(s) of 1 checked, 1 image(s) looked up\n"

    bad = cli_cloud.add_server("", name="bfv\x1b[2J")  # volume-backed, hostile name
    rc, out, err = run(capsys, *audit_args(key_file))
    assert rc == 60 and err == ""
    assert out.splitlines()[0].split() == ["SERVER", "PROJECT", "HOST", "IMAGE", "REASON",
                                           "SINCE", "DETAIL"]  # fmt: skip
    assert bad["id"] in out and "volume" in out and "\x1b" not in out

    rc, out, _ = run(capsys, *audit_args(key_file, "--json", "--action", "lock", "--dry-run"))
    data = json.loads(out)
    assert rc == 60 and data["servers"] == 2 and data["worker_servers"] == 2
    (finding,) = data["findings"]
    assert (finding["server"], finding["reason"], finding["action"]) == (bad["id"], "volume",
                                                                         "would lock")  # fmt: skip

    cli_cloud.action_status = 409
    rc, out, err = run(capsys, *audit_args(key_file, "--action", "stop"))
    assert rc == 62 and "failed: compute POST" in out
    assert f"audit: failed: compute POST /servers/{bad['id']}/action: HTTP 409" in caplog.text


def test_command_errors_are_one_line(cli_cloud, key_file, capsys, tmp_path):
    cli_cloud.add_server(str(uuid.uuid4()))
    cli_cloud.image_status = 500
    line = fails(capsys, 61, *audit_args(key_file, "--action", "stop"))
    assert "image GET /images/" in line and "HTTP 500" in line
    assert [c for c in cli_cloud.calls if c[2].endswith("/action")] == []  # nothing changed
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, *audit_args(key_file, "--action", "reboot"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert "must be at least 1" in fails(capsys, 4, *audit_args(key_file, "--page-size", "0"))
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(f"[trust]\nseal_key = {key_file}\n")
    line = fails(capsys, 4, "--config-file", conf, "audit", "--cloud", "admin")
    assert "--owner or [store_glance] project_id" in line
    fails(capsys, 3, "audit", "--cloud", "admin", "--owner", OWNER,
          "--seal-key", tmp_path / "missing.pub")  # fmt: skip


def test_unknown_cloud_is_one_line(key_file, capsys, tmp_path):
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  other:\n    auth_type: none\n")
    line = fails(capsys, 4, *audit_args(key_file, "--clouds-file", clouds))
    assert line.startswith("vmtrust: audit: cloud admin in ") and "admin" in line


def test_the_trust_core_does_not_import_the_sync_service():
    """vmtrust.audit and its command stand alone: no glance_sync, not even lazily."""
    for path in (ROOT / "vmtrust/audit.py", ROOT / "vmtrust/cli/auditcmd.py",
                 ROOT / "vmtrust/enforcement.py"):  # fmt: skip
        tree = ast.parse(path.read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not [m for m in imported if m.split(".")[0] == "glance_sync"], path
    code = (
        "import sys; from vmtrust.cli import main; "
        "main.main(['audit', '--cloud', 'x', '--owner', 'p', '--seal-key', '/nonexistent']); "
        "print(sorted(m for m in sys.modules if m.startswith('glance_sync')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)  # fmt: skip
    # nothing of the sync side: a built-in command does not even read its entry points
    assert done.stdout.strip() == "[]", done.stderr
