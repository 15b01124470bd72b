"""vmtrust launch against nova's in-process stack and the real Glance the sync wrote.

openstacksdk reaches nova's API through nova's own wsgi-intercept fixture (its
context stub reads X-Auth-User, X-Auth-Project-Id and X-Roles) and Glance with
the test pipeline's token, in one keystoneauth session — the same code path a
pilot framework's ``openstack.connect()`` takes.  The filter is enabled, so the
servers vmtrust launches pass nova's scheduler only because their image is trusted.
"""

from __future__ import annotations

import base64
import dataclasses

import openstack
from keystoneauth1 import session as ks_session
from keystoneauth1 import token_endpoint

from vmtrust import context, launch
from vmtrust.record import load_public_key
from with_nova.test_filter_functional import IMAGE_A, IMAGE_B, WorkerCloudBase


class LaunchFunctionalTest(WorkerCloudBase):
    def setUp(self) -> None:
        super().setUp()
        sync = self._sync
        sync.subs = tuple(dataclasses.replace(s, vo="cms") for s in sync.subs)
        glance_token = "test:pilot:" + self.api.project_id + ":member,reader"
        session = ks_session.Session(
            auth=token_endpoint.Token(self._glance_server.url, glance_token),
            # nova's side: its test stub makes contexts without a token, and for a
            # non-admin such a context takes nova's legacy (v1) no-auth image check,
            # which fails on v2 images; so nova sees the admin user of the same project.
            # Glance sees the pilot project's member token above.
            additional_headers={
                "X-Auth-User": "admin",
                "X-User-Id": "admin",
                "X-Auth-Project-Id": self.api.project_id,
                "X-Roles": "reader,member,admin",
            },
        )
        self.conn = openstack.connection.Connection(
            session=session,
            compute_endpoint_override=self.api_fixture.base_url,
            image_endpoint_override=self._glance_server.url,
        )
        self.keys = [load_public_key(sync.public_key_file)]
        site_yaml = self._glance_tmp / "site.yaml"
        site_yaml.write_text(
            "site: TEST\ncvmfs:\n  proxy: 'http://squid.example.org:3128;DIRECT'\n"
            "lifetime: {max_seconds: 3600}\n"
        )
        vo_yaml = self._glance_tmp / "vo.yaml"
        vo_yaml.write_text(
            "vo: cms\ncvmfs: {repositories: [cms.cern.ch]}\n"
            "pilot: {command: /cvmfs/cms.cern.ch/pilot/start}\n"
        )
        site = context.load_site(site_yaml)
        self.user_data = context.build(site, context.load_vo(vo_yaml, site))

    def _share_with_pilots(self, image_id: str) -> None:
        """The sync shares with the VO's project; here the pilot's project is nova's test one."""
        api = self._glance_server.api(self._sync.project)
        url = f"{self._glance_server.url}/v2/images/{image_id}/members"
        reply = api.post(url, json={"member": self.api.project_id})
        self.assertEqual(200, reply.status_code, reply.text)
        pilots = self._glance_server.api(self.api.project_id, "member,reader")
        reply = pilots.put(f"{url}/{self.api.project_id}", json={"status": "accepted"})
        self.assertEqual(200, reply.status_code, reply.text)

    def test_launches_the_current_trusted_image_with_the_user_data(self):
        sync = self._sync
        sync.publish_and_sync([sync.entry("wn", IMAGE_A, **{"hv:version": "1"})], "1")
        sync.publish_and_sync([sync.entry("wn", IMAGE_B, **{"hv:version": "2"})], "2")
        current = sync.image_id("wn")
        self._share_with_pilots(current)
        image = launch.find_trusted_image(self.conn, "cms", self.keys, [sync.project])
        self.assertEqual((current, "wn", "2"), (image.id, image.identifier, image.version))
        servers = launch.launch(
            self.conn, image, flavor="vmtrust.worker", user_data=self.user_data, count=2,
            networks="none", poll=0.2, timeout=60,
        )  # fmt: skip
        self.assertEqual(["ACTIVE", "ACTIVE"], [s.status for s in servers])
        for server in servers:
            shown = self.admin_api.get_server(server.id)
            self.assertEqual(current, shown["image"]["id"])
            self.assertEqual(
                base64.b64encode(self.user_data).decode(), shown["OS-EXT-SRV-ATTR:user_data"]
            )

    def test_the_flavour_sizes_reach_the_machine_features(self):
        """What vmtrust launch builds the user-data with: nova's own flavour record."""
        flavor_id = self._create_flavor(name="wn.sized", memory_mb=2048, vcpu=4, disk=10,
                                        ephemeral=20, swap=512)  # fmt: skip
        self.assertEqual(
            (flavor_id, context.Flavour(vcpus=4, ram_mb=2048, swap_mb=512, scratch_gb=20)),
            launch.find_flavour(self.conn, "wn.sized"),
        )
        # no swap (nova says "") and no ephemeral disk: the root disk is the scratch space
        self.assertEqual(
            context.Flavour(vcpus=1, ram_mb=512, swap_mb=0, scratch_gb=1),
            launch.find_flavour(self.conn, self.worker_flavor)[1],
        )
        with self.assertRaisesRegex(launch.LaunchError, "flavour missing: not found"):
            launch.find_flavour(self.conn, "missing")

    def test_refuses_when_no_image_is_trusted(self):
        sync = self._sync
        sync.publish_and_sync([sync.entry("wn", IMAGE_A)], "1")
        with self.assertRaises(launch.NoTrustedImage):
            launch.find_trusted_image(self.conn, "atlas", self.keys, [sync.project])
        sync.publish_and_sync([], "2")  # the endorser withdrew it: retired
        with self.assertRaisesRegex(launch.NoTrustedImage, "no trusted image of VO cms"):
            launch.find_trusted_image(self.conn, "cms", self.keys, [sync.project])

    def test_reports_the_fault(self):
        sync = self._sync
        sync.publish_and_sync([sync.entry("wn", IMAGE_A)], "1")
        self._share_with_pilots(sync.image_id("wn"))
        image = launch.find_trusted_image(self.conn, "cms", self.keys, [sync.project])
        # within the project's quota, larger than any fake compute host: NoValidHost
        self._create_flavor(name="too.big", memory_mb=40_000, vcpu=1, disk=1, ephemeral=0,
                            extra_spec={"vmtrust:trusted_only": "true"})  # fmt: skip
        (server,) = launch.launch(
            self.conn, image, flavor="too.big", user_data=self.user_data, networks="none",
            poll=0.2, timeout=60,
        )  # fmt: skip
        self.assertEqual("ERROR", server.status)
        self.assertIn("No valid host", server.fault)
        with self.assertRaisesRegex(launch.LaunchError, "flavour missing: not found"):
            launch.launch(self.conn, image, flavor="missing", user_data=b"", networks="none")
        # refusals of the API itself are one clear line too
        self._create_flavor(name="over.quota", memory_mb=10**7, vcpu=1, disk=1, ephemeral=0)
        with self.assertRaisesRegex(launch.LaunchError, r"HTTP 403 .*Quota exceeded for ram"):
            launch.launch(self.conn, image, flavor="over.quota", user_data=b"", networks="none")
