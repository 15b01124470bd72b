"""``vmtrust audit`` against nova's in-process stack and the real Glance the sync wrote.

openstacksdk reaches nova's API through nova's wsgi-intercept fixture as the
administrator (its context stub reads X-Auth-User, X-Auth-Project-Id and
X-Roles) and Glance with an admin token of the test pipeline, in one
keystoneauth session — the code path ``vmtrust audit --cloud`` takes with a
clouds.yaml.  The command itself runs in-process through ``vmtrust.cli.main``
with that connection (``auditcmd.connect`` is the only thing replaced: nova's
in-process API is not reachable through a clouds.yaml).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import fixtures
import openstack
from glance_server import ADMIN_ROLES, MEMBER_ROLES, SERVICE_ROLES, token
from keystoneauth1 import session as ks_session
from keystoneauth1 import token_endpoint
from nova.tests.functional.api import client as api_client
from tcpproxy import Rule, TcpProxy

from vmtrust import audit, glanceprops
from vmtrust.cli import main
from vmtrust.imagelist import format_date
from vmtrust.record import load_public_key
from with_nova.test_filter_functional import IMAGE_A, IMAGE_B, IMAGE_C, WorkerCloudBase


class AuditBase(WorkerCloudBase):
    def setUp(self) -> None:
        super().setUp()
        self.conn = self._connection(self._glance_server.url)
        self.keys = [load_public_key(self._sync.public_key_file)]
        self.owners = [self._sync.project]

    def _connection(self, image_url: str):
        session = ks_session.Session(
            auth=token_endpoint.Token(image_url, token("cloud-admin", ADMIN_ROLES)),
            additional_headers={
                "X-Auth-User": "admin",
                "X-User-Id": "admin",
                "X-Auth-Project-Id": self.api.project_id,
                "X-Roles": "reader,member,admin",
            },
        )
        return openstack.connection.Connection(
            session=session,
            compute_endpoint_override=self.api_fixture.base_url,
            image_endpoint_override=image_url,
        )

    def _audit(self, **kw) -> audit.Report:
        return audit.audit(self.conn, self.keys, self.owners, **kw)

    def _cli(self, *args: str, conn=None) -> tuple[int, str, str]:
        """``vmtrust audit ARGS`` in-process with the test's connection."""
        self.useFixture(
            fixtures.MonkeyPatch(
                "vmtrust.cli.auditcmd.connect", lambda cloud, clouds_file: conn or self.conn
            )
        )
        out, err = io.StringIO(), io.StringIO()
        handler = logging.StreamHandler(err)  # where main()'s logging.basicConfig would print
        logging.getLogger("vmtrust.audit").addHandler(handler)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main.main(
                    ["audit", "--cloud", "unused", "--seal-key", str(self._sync.public_key_file),
                     "--owner", self._sync.project, *args]
                )  # fmt: skip
        finally:
            logging.getLogger("vmtrust.audit").removeHandler(handler)
        return rc, out.getvalue(), err.getvalue()

    def _user_image(self, data: bytes = IMAGE_B) -> str:
        return self._upload("user" + uuid.uuid4().hex[:8], MEMBER_ROLES, data)

    def _status(self, server: dict) -> str:
        return self.admin_api.get_server(server["id"])["status"]


class AuditFunctionalTest(AuditBase):
    def test_a_retired_image_is_reported_and_its_server_stopped(self):
        sync = self._sync
        sync.publish_and_sync([sync.entry("a", IMAGE_A), sync.entry("b", IMAGE_B)], "1")
        image_a, image_b = sync.image_id("a"), sync.image_id("b")
        keep = self._boot(image_a, self.worker_flavor)
        doomed = self._boot(image_b, self.worker_flavor)
        self._boot(self._user_image(), self.plain_flavor)  # not a worker server: not audited
        # a worker server of another project (created by an administrator of that project:
        # this stack's API stub gives members no token, and nova then fails on v2 images)
        other = api_client.TestOpenStackClient(
            "admin", self.api_fixture.base_url, project_id="other" + uuid.uuid4().hex[:8],
            roles=["reader", "member", "admin"],
        )  # fmt: skip
        other.microversion = "latest"
        body = self._build_server(image_uuid=image_b, flavor_id=self.worker_flavor,
                                  networks="none")  # fmt: skip
        foreign = self._wait_for_state_change(other.post_server({"server": body}), "ACTIVE")

        rc, out, _ = self._cli()
        self.assertEqual(0, rc, out)
        self.assertIn("no findings: 3 worker server(s) of 4 checked, 2 image(s)", out)

        sync.publish_and_sync([sync.entry("a", IMAGE_A)], "2")  # b revoked: the sync retires it
        retired_at = self._get_image(image_b)[glanceprops.RETIRED_AT]
        report = self._audit(page_size=1)  # one server per page: nova's paging, followed
        self.assertEqual((4, 3, 2), (report.servers, report.worker_servers, report.images))
        found = {f.server: f for f in report.findings}
        self.assertEqual({doomed["id"], foreign["id"]}, set(found))
        finding = found[doomed["id"]]
        self.assertEqual(
            (self.api.project_id, "compute", image_b, "retired", retired_at, "ACTIVE"),
            (finding.project, finding.host, finding.image, finding.reason, finding.since,
             finding.status),
        )  # fmt: skip
        self.assertEqual("trust state is retired", finding.detail)
        self.assertEqual(foreign["tenant_id"], found[foreign["id"]].project)

        rc, out, err = self._cli("--action", "stop", "--dry-run")
        self.assertEqual(60, rc)
        self.assertIn("would stop", out)
        self.assertEqual("ACTIVE", self._status(doomed))

        rc, out, err = self._cli("--action", "stop", "--json")
        self.assertEqual(60, rc, err)
        data = json.loads(out)
        self.assertEqual(
            {(doomed["id"], "retired", "stopped"), (foreign["id"], "retired", "stopped")},
            {(f["server"], f["reason"], f["action"]) for f in data["findings"]},
        )
        self.assertIn(f"audit: stopped server {doomed['id']}", err)  # each action logged
        self.assertEqual("SHUTOFF", self._wait_for_state_change(doomed, "SHUTOFF")["status"])
        self.assertEqual("ACTIVE", self._status(keep))

        rc, out, err = self._cli("--action", "stop")
        self.assertEqual(60, rc)  # still running what is not trusted, if only stopped
        self.assertIn("already stopped", out)
        self.assertIn("retired", out)
        self.assertIn(retired_at, out)

    def test_rebuild_onto_the_same_retired_image_is_not_scheduled_but_found(self):
        sync = self._sync
        sync.publish_and_sync([sync.entry("a", IMAGE_A), sync.entry("b", IMAGE_B)], "1")
        image_b = sync.image_id("b")
        server = self._boot(image_b, self.worker_flavor)
        sync.publish_and_sync([sync.entry("a", IMAGE_A)], "2")
        self._refused(image_b)  # new servers: refused
        server = self._rebuild_server(server, image_b)  # the same image: nova never asks
        self.assertEqual(image_b, server["image"]["id"])
        self.assertNotIn(f"for instance {server['id']} on a worker-node", self.stdlog.logger.output)
        (finding,) = self._audit().findings
        self.assertEqual((server["id"], "retired"), (finding.server, finding.reason))

        rc, out, err = self._cli("--action", "lock")
        self.assertEqual(60, rc, err)
        self.assertTrue(self.admin_api.get_server(server["id"])["locked"])
        self.assertEqual(
            "vmtrust audit: retired", self.admin_api.get_server(server["id"])["locked_reason"]
        )
        rc, out, _ = self._cli("--action", "lock")
        self.assertIn("already locked", out)

    def test_every_reason_on_a_host_marked_after_servers_ran_there(self):
        """An aggregate marked now: what already runs on its hosts is audited by the same rule."""
        sync = self._sync
        soon = format_date(datetime.now(UTC) + timedelta(days=1))
        sync.publish_and_sync(
            [sync.entry("a", IMAGE_A), sync.entry("c", IMAGE_C),
             sync.entry("d", IMAGE_B, **{"dc:date:expires": soon})],
            "1",
        )  # fmt: skip
        image_a, image_c, image_d = sync.image_id("a"), sync.image_id("c"), sync.image_id("d")
        fine = self._boot(image_a, self.plain_flavor)
        user = self._boot(self._user_image(), self.plain_flavor)
        gone_image = self._user_image(IMAGE_C)
        gone = self._boot(gone_image, self.plain_flavor)
        tampered = self._boot(image_c, self.plain_flavor)
        expiring = self._boot(image_d, self.plain_flavor)
        volume_id = str(uuid.uuid4())
        self.cinder.volumes[volume_id] = {"id": volume_id, "display_name": "mine", "size": 1,
                                          "availability_zone": "nova", "multiattach": False,
                                          "bootable": True}  # fmt: skip
        body = self._build_server(image_uuid=image_a, flavor_id=self.plain_flavor,
                                  networks="none")  # fmt: skip
        body["block_device_mapping_v2"] = [{"boot_index": 0, "uuid": volume_id,
                                            "source_type": "volume",
                                            "destination_type": "volume"}]  # fmt: skip
        volume = self._wait_for_state_change(self.api.post_server({"server": body}), "ACTIVE")
        rescued = self._boot(image_a, self.plain_flavor)
        self._start_compute("host2")  # an unmarked host
        elsewhere = self._create_server(image_uuid=self._user_image(), flavor_id=self.plain_flavor,
                                        networks="none", host="host2")  # fmt: skip
        self.assertEqual("host2", elsewhere["OS-EXT-SRV-ATTR:host"])

        # the image of one server is deleted, another's record edited (seal broken), one
        # server rescued with an image of the user's
        reply = self._glance_api("cloud-admin", ADMIN_ROLES).delete(
            f"{self._glance_server.url}/v2/images/{gone_image}"
        )
        self.assertEqual(204, reply.status_code, reply.text)
        reply = self._glance_api(sync.project, SERVICE_ROLES).patch(
            f"{self._glance_server.url}/v2/images/{image_c}",
            json=[{"op": "replace", "path": "/vmtrust_vo", "value": "vo.other.org"}],
            headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
        )
        self.assertEqual(200, reply.status_code, reply.text)
        self.admin_api.post_server_action(rescued["id"], {"rescue": {"rescue_image_ref": image_a}})
        self._wait_for_state_change(rescued, "RESCUE")

        self.assertEqual([], self._audit().findings)  # nothing is a worker server yet
        aggregate = self._create_aggregate("worker-nodes")
        self.admin_api.add_host_to_aggregate(aggregate, "compute")
        self.admin_api.post_aggregate_action(
            aggregate, {"set_metadata": {"metadata": {"vmtrust_trusted_only": "yes please"}}}
        )  # not a recognised false: the aggregate is marked
        report = self._audit(now=datetime.now(UTC) + timedelta(days=2), page_size=3)
        reasons = {(f.server, f.reason) for f in report.findings}
        self.assertEqual(
            {
                (user["id"], "not-vmtrust"),
                (gone["id"], "deleted"),
                (tampered["id"], "seal"),
                (expiring["id"], "expired"),
                (volume["id"], "volume"),
                (rescued["id"], "rescue"),
            },
            reasons,
        )
        self.assertNotIn(fine["id"], {f.server for f in report.findings})
        self.assertEqual(8, report.servers)
        self.assertEqual(7, report.worker_servers)  # all on "compute"; not the one on host2
        by_reason = {f.reason: f for f in report.findings}
        self.assertEqual(soon, by_reason["expired"].since)
        self.assertIn(f"boots from volume {volume_id}", by_reason["volume"].detail)
        self.assertIn("seal invalid", by_reason["seal"].detail)
        self.assertTrue(all(f.host == "compute" for f in report.findings))

    def test_an_error_stops_the_audit_before_any_action(self):
        sync = self._sync
        sync.publish_and_sync([sync.entry("a", IMAGE_A), sync.entry("b", IMAGE_B)], "1")
        server = self._boot(sync.image_id("b"), self.worker_flavor)
        sync.publish_and_sync([sync.entry("a", IMAGE_A)], "2")
        proxy = TcpProxy(
            self._glance_server.port, rules=[Rule(path="/v2/images/", status=503, times=None)]
        ).start()
        self.addCleanup(proxy.stop)
        rc, out, err = self._cli("--action", "stop", conn=self._connection(proxy.url))
        self.assertEqual(61, rc)
        self.assertEqual("", out)
        self.assertRegex(err, r"^vmtrust: image GET /images/\S+: HTTP 503 .*\n$")
        self.assertEqual("ACTIVE", self._status(server))
