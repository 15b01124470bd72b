"""TrustedImageFilter in nova's in-process stack, against a real Glance the sync wrote.

nova's functional base (``_IntegratedTestBase``) runs the API, conductor,
scheduler with the filter enabled, fake-driver computes and a real Placement
in this process.  Its Glance fixture is replaced by the session's real Glance
33 (``tests/glance_server.py``): nova's own image client talks to it with an
admin token, and the filter looks images up there with its ``[vmtrust]``
keystoneauth options.  The trusted images are written by vmtrust's Glance store
in a real sync pass over signed lists published on a loopback web server; the
untrusted ones are plain Glance uploads, property copies and nova snapshots.

Adjustments (reference §5.3): the API paste file from the venv, filters
configured before the services start, ``_clear_attrs`` disabled for pytest,
flavours always passed explicitly.  nova's image client authenticates with
keystoneauth's ``token_endpoint`` plugin: ``NoAuth`` plus a session header does
not work, NoAuth sends its own ``X-Auth-Token: notused``.  ``cache_ttl = 0`` so
a retirement is seen by the next request (the cache has unit tests).  Under
``CastAsCallFixture`` a NoValidHost of a cast (rebuild, migrate, resize)
surfaces as HTTP 500; a real API answers 202 and the operation fails later.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fixtures
import pytest
from conftest import image_entry, list_document, sync_settings, write_clouds_yaml
from glance_server import ADMIN_ROLES, MEMBER_ROLES, SERVICE_ROLES, token
from keystoneauth1 import loading as ks_loading
from keystoneauth1 import session as ks_session
from keystoneauth1 import token_endpoint
from nova import conf as nova_conf
from nova.tests.functional import integrated_helpers
from nova.tests.functional.api import client as api_client
from oslo_config import cfg

from nova_filter import filter as trust_filter
from vmtrust import glanceprops, imagelist, smime
from vmtrust.imagelist import format_date

CONF = nova_conf.CONF
ROOT = Path(__file__).resolve().parents[2]
NOVA_TOKEN = token("nova-admin", ADMIN_ROLES)
FILTER_TOKEN = token("nova-filter", ADMIN_ROLES, user="nova-filter")
WORKER_SPEC = {"vmtrust:trusted_only": "true"}
NO_VALID_HOST = "No valid host was found"
FILTER_EMPTIED = "Filter TrustedImageFilter returned 0 hosts"
IMAGE_A = b"A" * 70_000
IMAGE_B = b"B" * 50_000
IMAGE_C = b"C" * 30_000


class SiteSync:
    """vmtrust-sync into the real Glance, set up as the ``glance_sync`` fixture does.

    Retired images are hidden (``retire = hide``), not deactivated: they stay
    bootable by id as far as nova's API is concerned, so the filter is what refuses them.
    """

    def __init__(self, glance, site, pki, ca_dir: Path, tmp_path: Path) -> None:
        from glance_sync.cloud import connect_cloud
        from glance_sync.service import SyncService
        from glance_sync.stores.glance import GlanceStore
        from vmtrust.imagelist import Endorser
        from vmtrust.policy import Subscription
        from vmtrust.record import generate_key_pair, load_private_key

        self.site, self.pki = site, pki
        self.project = "svc" + uuid.uuid4().hex[:12]
        clouds = write_clouds_yaml(
            tmp_path / "clouds.yaml", glance.url, {"sync": (self.project, SERVICE_ROLES)}
        )
        self.public_key_file = generate_key_pair(tmp_path / "seal.key")
        key = load_private_key(tmp_path / "seal.key")
        settings = sync_settings(tmp_path, ca_dir, key, retire_mode="hide")
        self.store = GlanceStore(
            connect_cloud("sync", str(clouds)),
            project_id=self.project,
            seal_keys=[key.public_key()],
        )
        self.service = SyncService(settings, self.store)
        self.subs = (
            Subscription(
                name="example",
                url=site.url("/site.list"),
                endorsers=(Endorser(dn=pki.endorser.dn, ca=pki.endorser.ca_dn),),
                approve_all=True,
            ),
        )

    def entry(self, identifier: str, data: bytes, **overrides) -> dict:
        path = f"/img/{identifier}.img"
        self.site.files[path] = data
        fields = {
            "hv:uri": self.site.url(path),
            "hv:size": len(data),
            "sl:checksum:sha512": hashlib.sha512(data).hexdigest(),
            "hv:format": "RAW",
            # the fake compute driver is no KVM: a hypervisor nova has no hypervisor_type
            # for leaves the property out, so ImagePropertiesFilter lets the fake hosts pass
            "hv:hypervisor": "VirtualBox",
            "hv:ram_minimum": None,
        }
        fields.update(overrides)
        return image_entry(identifier, **fields)

    def publish_and_sync(self, entries: list[dict], version: str, now: datetime | None = None):
        """Sign and publish a list of ``entries``, run one sync pass; it must succeed."""
        document = list_document(self.pki.endorser, version=version, images=entries)
        document["hv:imagelist"]["hv:uri"] = self.site.url("/site.list")
        self.site.files["/site.list"] = smime.sign(
            imagelist.dumps(document), self.pki.endorser.cert, self.pki.endorser.key
        )
        report = self.service.run(self.subs, now=now)
        assert report.exit_code == 0, report.failures

    def image_id(self, identifier: str) -> str:
        """The Glance id of the trusted image the sync holds for a list identifier."""
        ids = [
            held.store_id
            for held in self.store.held()
            if held.record is not None
            and held.record.image_identifier == identifier
            and not held.retired
        ]
        assert len(ids) == 1, (identifier, ids)
        return ids[0]

    def retired(self) -> set[str]:
        """Glance ids of the images the sync has retired."""
        return {held.store_id for held in self.store.held() if held.retired}

    def close(self) -> None:
        self.service.close()


class NoGlanceFixture(fixtures.Fixture):
    """Stands in for nova's GlanceFixture: the real Glance serves instead."""

    def __init__(self, test) -> None:
        super().__init__()


def snapshot_conf_properties() -> list[str]:
    """``non_inheritable_image_properties`` as the shipped nova.conf snippet sets it."""
    conf = cfg.ConfigOpts()
    conf.register_opt(cfg.ListOpt("non_inheritable_image_properties", default=[]))
    conf(args=[], default_config_files=[str(ROOT / "etc/nova/nova-vmtrust-snapshots.conf")])
    return list(conf.non_inheritable_image_properties)


class WorkerCloudBase(integrated_helpers._IntegratedTestBase):
    """nova's stack with the filter, the real Glance and a sync; no tests of its own."""

    ADMIN_API = True
    microversion = "latest"
    compute_driver = "fake.MediumFakeDriver"

    @pytest.fixture(autouse=True)
    def _vmtrust_services(self, glance, site, pki, ca_dir, tmp_path):
        """pytest fixtures for a unittest-style nova test: Glance, the list site, a sync."""
        self._glance_server = glance
        self._glance_tmp = tmp_path
        self._sync = SiteSync(glance, site, pki, ca_dir, tmp_path)
        yield
        self._sync.close()

    def _clear_attrs(self) -> None:
        """nova deletes instance attributes after a test; pytest still needs them."""

    def setUp(self) -> None:
        glance, sync = self._glance_server, self._sync
        self.flags(compute_driver=self.compute_driver)
        self.flags(api_paste_config=os.path.join(sys.prefix, "etc/nova/api-paste.ini"),
                   group="wsgi")  # fmt: skip
        self.flags(
            available_filters=[
                "nova.scheduler.filters.all_filters",
                "nova_filter.TrustedImageFilter",
            ],
            enabled_filters=[*CONF.filter_scheduler.enabled_filters, "TrustedImageFilter"],
            group="filter_scheduler",
        )
        # nova's own image client: the real Glance, as an admin (sees every image)
        self.flags(endpoint_override=glance.url, group="glance")
        # (keystoneauth's NoAuth would send "X-Auth-Token: notused" over a session header)
        nova_session = ks_session.Session()
        nova_auth = token_endpoint.Token(glance.url, NOVA_TOKEN)
        self.useFixture(
            fixtures.MonkeyPatch(
                "nova.image.glance._session_and_auth", lambda context: (nova_session, nova_auth)
            )
        )
        self.useFixture(fixtures.MonkeyPatch("nova.tests.fixtures.GlanceFixture", NoGlanceFixture))
        # the filter's own credentials, as a site writes them into [vmtrust]
        CONF.register_opts(ks_loading.get_auth_plugin_conf_options("admin_token"), group="vmtrust")
        self.flags(
            trusted_owners=[sync.project],
            seal_public_keys=[str(sync.public_key_file)],
            cache_ttl=0,
            auth_type="admin_token",
            endpoint=glance.url,
            token=FILTER_TOKEN,
            endpoint_override=glance.url,
            group="vmtrust",
        )
        trust_filter.reset()
        self.addCleanup(trust_filter.reset)
        super().setUp()
        self.worker_flavor = self._create_flavor(
            name="vmtrust.worker",
            memory_mb=512,
            vcpu=1,
            disk=1,
            ephemeral=0,
            extra_spec=WORKER_SPEC,
        )
        self.plain_flavor = self._create_flavor(
            name="vmtrust.plain", memory_mb=512, vcpu=1, disk=1, ephemeral=0
        )

    # --- helpers ---------------------------------------------------------------------------

    def _boot(self, image_id: str, flavor_id: str, expected_state: str = "ACTIVE") -> dict:
        return self._create_server(
            image_uuid=image_id,
            flavor_id=flavor_id,
            networks="none",
            expected_state=expected_state,
        )

    def _refused(self, image_id: str, reason: str | None = None, flavor_id: str = "") -> dict:
        """Boot ``image_id`` on the worker flavour: the server must end in ERROR, NoValidHost."""
        server = self._boot(image_id, flavor_id or self.worker_flavor, expected_state="ERROR")
        self.assertIn(NO_VALID_HOST, server["fault"]["message"])
        log = self.stdlog.logger.output
        self.assertIn(FILTER_EMPTIED, log)
        refusal = f"refusing image {image_id} for instance {server['id']}"
        lines = [line for line in log.splitlines() if refusal in line]
        self.assertEqual(1, len(lines), lines)  # once per request
        if reason:
            self.assertIn(reason, lines[0])
        return server

    def _glance_api(self, project: str, roles: str):
        return self._glance_server.api(project, roles)

    def _upload(self, project: str, roles: str, data: bytes, **properties) -> str:
        """A plain Glance upload, not through vmtrust."""
        api, url = self._glance_api(project, roles), self._glance_server.url
        body = {"name": "upload", "disk_format": "raw", "container_format": "bare"}
        reply = api.post(f"{url}/v2/images", json={**body, **properties})
        self.assertEqual(201, reply.status_code, reply.text)
        image_id = reply.json()["id"]
        self._put_file(api, image_id, data)
        return image_id

    def _put_file(self, api, image_id: str, data: bytes) -> None:
        reply = api.put(
            f"{self._glance_server.url}/v2/images/{image_id}/file",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        self.assertEqual(204, reply.status_code, reply.text)

    def _get_image(self, image_id: str) -> dict:
        reply = self._glance_api("nova-admin", ADMIN_ROLES).get(
            f"{self._glance_server.url}/v2/images/{image_id}"
        )
        self.assertEqual(200, reply.status_code, reply.text)
        return reply.json()


class TrustedImageFilterFunctionalTest(WorkerCloudBase):
    def test_trusted_image_boots_on_worker_flavour_and_others_do_not(self):
        self._sync.publish_and_sync([self._sync.entry("a", IMAGE_A)], "1")
        trusted = self._sync.image_id("a")
        server = self._boot(trusted, self.worker_flavor)
        self.assertEqual(trusted, server["image"]["id"])

        # a user's own upload, even of the same bytes
        user_image = self._upload("user" + uuid.uuid4().hex[:8], MEMBER_ROLES, IMAGE_A)
        self._refused(user_image, "no vmtrust trust record")

        # non-worker flavours boot anything
        self._boot(user_image, self.plain_flavor)
        self._boot(trusted, self.plain_flavor)

    def test_trust_properties_copied_by_an_admin_are_refused(self):
        self._sync.publish_and_sync([self._sync.entry("a", IMAGE_A)], "1")
        source = self._get_image(self._sync.image_id("a"))
        props = {k: v for k, v in source.items() if k.startswith(glanceprops.PREFIX)}
        self.assertIn(glanceprops.SEAL, props)
        # an admin of the sync's own project, holding the sync's role, copies every
        # vmtrust_* property onto an upload of the very same bytes: owner, hash, size,
        # state and seal all match; only the image id the seal is bound to does not
        roles = f"admin,{SERVICE_ROLES}"
        copy = self._upload(self._sync.project, roles, IMAGE_A, **props)
        copied = self._get_image(copy)
        self.assertEqual(source["os_hash_value"], copied["os_hash_value"])
        self.assertEqual(source["owner"], copied["owner"])
        self.assertEqual(props, {k: v for k, v in copied.items() if k in props})
        self._refused(copy, f"seal is bound to image {source['id']}, not this one")
        # and in another project the owner alone refuses it
        elsewhere = self._upload("admin" + uuid.uuid4().hex[:8], roles, IMAGE_A, **props)
        self._refused(elsewhere, "is not a trusted project")

    def test_rebuild_onto_an_untrusted_image_is_refused(self):
        sync = self._sync
        sync.publish_and_sync([sync.entry("a", IMAGE_A), sync.entry("b", IMAGE_B)], "1")
        trusted, other_trusted = sync.image_id("a"), sync.image_id("b")
        server = self._boot(trusted, self.worker_flavor)

        # rebuild onto another trusted image works
        server = self._rebuild_server(server, other_trusted)
        self.assertEqual(other_trusted, server["image"]["id"])

        untrusted = self._upload("user" + uuid.uuid4().hex[:8], MEMBER_ROLES, IMAGE_A)
        try:
            self.api.post_server_action(server["id"], {"rebuild": {"imageRef": untrusted}})
        except api_client.OpenStackApiException as exc:  # CastAsCallFixture: the error surfaces
            self.assertEqual(500, exc.response.status_code)
        server = self._wait_for_state_change(server, "ERROR")
        self.assertNotEqual(untrusted, server["image"]["id"])
        self.assertEqual(other_trusted, server["image"]["id"])
        self.assertIn(f"TrustedImageFilter: refusing image {untrusted}", self.stdlog.logger.output)

    def test_retired_and_expired_images_are_refused_for_new_servers(self):
        sync = self._sync
        now = datetime.now(UTC)
        # synced ten minutes ago from an entry that expired a minute ago
        expired_at = format_date(now - timedelta(minutes=1))
        sync.publish_and_sync(
            [
                sync.entry("a", IMAGE_A),
                sync.entry("b", IMAGE_B),
                sync.entry("c", IMAGE_C, **{"dc:date:expires": expired_at}),
            ],
            "1",
            now=now - timedelta(minutes=10),
        )
        keep, retire, expired = sync.image_id("a"), sync.image_id("b"), sync.image_id("c")
        self.assertEqual(expired_at, self._get_image(expired)["vmtrust_expires"])
        self._refused(expired, f"expired at {expired_at}")
        self._boot(retire, self.worker_flavor)

        sync.publish_and_sync([sync.entry("a", IMAGE_A)], "2")  # b is no longer listed
        self.assertIn(retire, sync.retired())  # (and c, expired meanwhile)
        retired = self._get_image(retire)
        self.assertEqual(("active", "retired"), (retired["status"], retired["vmtrust_state"]))
        self._refused(retire, "trust state is retired")
        self._boot(keep, self.worker_flavor)

    def test_cold_migrate_of_a_server_whose_image_was_retired(self):
        self._start_compute("host2")
        sync = self._sync
        sync.publish_and_sync([sync.entry("a", IMAGE_A), sync.entry("b", IMAGE_B)], "1")
        image = sync.image_id("b")
        server = self._boot(image, self.worker_flavor)
        source = server["OS-EXT-SRV-ATTR:host"]
        sync.publish_and_sync([sync.entry("a", IMAGE_A)], "2")
        self.assertEqual({image}, sync.retired())

        self.flags(moves="enforce", group="vmtrust")
        exc = self.assertRaises(
            api_client.OpenStackApiException,
            self.api.post_server_action,
            server["id"],
            {"migrate": None},
        )
        # nova casts migrate_server to the conductor; CastAsCallFixture makes its
        # NoValidHost surface as a 500 (a real API answers 202 and the move fails later)
        self.assertEqual(500, exc.response.status_code)
        self.assertIn(
            f"Failed to compute_task_migrate_server: {NO_VALID_HOST}", self.stdlog.logger.output
        )
        server = self._wait_for_state_change(server, "ACTIVE")
        self.assertEqual(source, server["OS-EXT-SRV-ATTR:host"])

        self.flags(moves="allow", group="vmtrust")
        server = self._migrate_server(server)
        self.assertNotEqual(source, server["OS-EXT-SRV-ATTR:host"])
        self.assertIn(
            f"allowing a move of instance {server['id']} although its image {image} "
            "is not trusted (trust state is retired)",
            self.stdlog.logger.output,
        )
        self._confirm_resize(server)
        self._refused(image)  # still no new servers

    def test_snapshot_of_a_trusted_server_is_not_trusted(self):
        self._sync.publish_and_sync([self._sync.entry("a", IMAGE_A)], "1")
        trusted = self._sync.image_id("a")
        server = self._boot(trusted, self.worker_flavor)

        # nova copies every image property into the snapshot, vmtrust_* too: Glance's
        # property protections refuse that, so snapshots break until nova is configured
        exc = self.assertRaises(
            api_client.OpenStackApiException,
            self.api.post_server_action,
            server["id"],
            {"createImage": {"name": "snap-unconfigured"}},
        )
        self.assertEqual(403, exc.response.status_code)
        self.assertIn("vmtrust_", exc.response.text)  # "Attribute 'vmtrust_…' is reserved."

        # with the shipped nova.conf snippet the snapshot works and carries no trust record
        self.flags(non_inheritable_image_properties=snapshot_conf_properties())
        reply = self.api.post_server_action(server["id"], {"createImage": {"name": "snap"}})
        snapshot_id = reply["image_id"]
        # the fake virt driver uploads nothing: do what a real one does, set the formats
        # and put the server's disk (here: the image's bytes) there
        nova_glance = self._glance_api("nova-admin", ADMIN_ROLES)
        reply = nova_glance.patch(
            f"{self._glance_server.url}/v2/images/{snapshot_id}",
            json=[
                {"op": "add", "path": "/disk_format", "value": "raw"},
                {"op": "add", "path": "/container_format", "value": "bare"},
            ],
            headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
        )
        self.assertEqual(200, reply.status_code, reply.text)
        self._put_file(nova_glance, snapshot_id, IMAGE_A)
        snapshot = self._get_image(snapshot_id)
        self.assertEqual("active", snapshot["status"])
        self.assertEqual(trusted, snapshot.get("base_image_ref"))
        self.assertEqual([], [k for k in snapshot if k.startswith(glanceprops.PREFIX)])

        self._refused(snapshot_id, "no vmtrust trust record")
        self._boot(snapshot_id, self.plain_flavor)

    def test_resize_into_a_worker_flavour_is_filtered_like_a_new_server(self):
        # moves = allow forgives a revoked image on a server that already was a worker
        # server; resizing a plain server onto the worker flavour makes a new one
        self.flags(allow_resize_to_same_host=True)
        self._sync.publish_and_sync([self._sync.entry("a", IMAGE_A)], "1")
        trusted = self._sync.image_id("a")
        user_image = self._upload("user" + uuid.uuid4().hex[:8], MEMBER_ROLES, IMAGE_B)
        server = self._boot(user_image, self.plain_flavor)
        exc = self.assertRaises(
            api_client.OpenStackApiException,
            self.api.post_server_action,
            server["id"],
            {"resize": {"flavorRef": self.worker_flavor}},
        )
        self.assertEqual(500, exc.response.status_code)  # NoValidHost, via CastAsCallFixture
        self.assertIn(f"TrustedImageFilter: refusing image {user_image}", self.stdlog.logger.output)
        self.assertIn(FILTER_EMPTIED, self.stdlog.logger.output)
        server = self._wait_for_state_change(server, "ACTIVE")
        self.assertEqual("vmtrust.plain", server["flavor"]["original_name"])

        # a plain server of a trusted image may become a worker server
        server = self._boot(trusted, self.plain_flavor)
        server = self._resize_server(server, self.worker_flavor)
        self._confirm_resize(server)

    def test_glance_unreachable_for_the_filter_fails_closed(self):
        from glance_server import free_port

        self._sync.publish_and_sync([self._sync.entry("a", IMAGE_A)], "1")
        trusted = self._sync.image_id("a")
        # nova's API still reaches Glance; the filter's own endpoint is down
        self.flags(endpoint_override=f"http://127.0.0.1:{free_port()}", group="vmtrust")
        trust_filter.reset()
        self._refused(trusted, "Glance look-up failed")
        # and a token that cannot see the image (a stranger project) gets no trust either
        stranger = token("stranger", MEMBER_ROLES)
        self.flags(endpoint_override=self._glance_server.url, token=stranger, group="vmtrust")
        trust_filter.reset()
        self._refused(trusted, "not in Glance")
        self._boot(trusted, self.plain_flavor)

    def test_aggregate_mode_keeps_untrusted_images_off_marked_hosts(self):
        self.flags(aggregate_trusted_only=True, group="vmtrust")
        self._sync.publish_and_sync([self._sync.entry("a", IMAGE_A)], "1")
        trusted = self._sync.image_id("a")
        user_image = self._upload("user" + uuid.uuid4().hex[:8], MEMBER_ROLES, IMAGE_B)
        aggregate = self._create_aggregate("worker-nodes")
        self.admin_api.add_host_to_aggregate(aggregate, "compute")
        self.admin_api.post_aggregate_action(
            aggregate, {"set_metadata": {"metadata": {"vmtrust_trusted_only": "true"}}}
        )
        # the only host is a marked one: a user's image finds none, even on a plain flavour
        self._refused(user_image, "no vmtrust trust record", flavor_id=self.plain_flavor)
        self.assertEqual("compute", self._boot(trusted, self.plain_flavor)["OS-EXT-SRV-ATTR:host"])
        # an unmarked host takes it
        self._start_compute("host2")
        server = self._boot(user_image, self.plain_flavor)
        self.assertEqual("host2", server["OS-EXT-SRV-ATTR:host"])
