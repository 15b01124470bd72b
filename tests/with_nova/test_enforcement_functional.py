"""Side doors around TrustedImageFilter, tried in nova's in-process stack with the real Glance.

Each test performs what an ordinary project member (or a careless operator)
can do with nova's default policies, and shows where it ends: boot from volume
in every shape nova accepts, a Glance that accepts connections and never
answers, flavour values that are not a clean ``true``, and rescue, which
never reaches the scheduler.  The stack is ``WorkerCloudBase`` of
``test_filter_functional`` (nova's API, conductor, scheduler with the filter,
fake computes, Placement, nova's CinderFixture, and the real Glance 33 the
sync wrote the trusted images into).
"""

from __future__ import annotations

import sys
import threading
import time
import tomllib
import uuid
from importlib import metadata

import fixtures
from glance_server import ADMIN_ROLES, MEMBER_ROLES
from nova.tests import fixtures as nova_fixtures
from nova.tests.functional.api import client as api_client
from stevedore import extension
from tcpproxy import Rule, TcpProxy

from nova_filter import filter as trust_filter
from with_nova.test_filter_functional import (
    CONF,
    FILTER_EMPTIED,
    IMAGE_A,
    IMAGE_B,
    NO_VALID_HOST,
    ROOT,
    WorkerCloudBase,
)

VALIDATOR_GROUP = "nova.api.extra_spec_validators"


class ShippedPolicy(nova_fixtures.RealPolicyFixture):
    """nova's real policy with ``etc/nova/policy-vmtrust.yaml`` as the policy file."""

    def _prepare_policy(self) -> None:
        self.policy_file = str(ROOT / "etc/nova/policy-vmtrust.yaml")


class VmtrustValidators(fixtures.Fixture):
    """nova-api's extra-spec validators, loaded through nova's own entry-point path.

    nova's ``validators.load_validators()`` asks stevedore for the entry point
    group ``nova.api.extra_spec_validators``.  The shared ``.venv-nova`` has
    vmtrust installed (editable) from another checkout, whose metadata may not
    declare this checkout's entry point yet; then this checkout's declaration
    in ``pyproject.toml`` is published as a distribution on ``sys.path``, as pip
    would, and nova loads the validators from there.
    """

    def __init__(self, base) -> None:
        super().__init__()
        self.base = base

    def _setUp(self) -> None:
        from nova.api.validation.extra_specs import validators

        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
        declared = pyproject["project"]["entry-points"][VALIDATOR_GROUP]
        installed = {ep.value for ep in metadata.entry_points(group=VALIDATOR_GROUP)}
        if not set(declared.values()) <= installed:
            site = self.base / "entry-points"
            dist = site / "vmtrust_checkout-0.dist-info"
            dist.mkdir(parents=True)
            (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vmtrust-checkout\n"
                                           "Version: 0\n")  # fmt: skip
            lines = [f"[{VALIDATOR_GROUP}]"] + [f"{k} = {v}" for k, v in declared.items()]
            (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
            sys.path.insert(0, str(site))
            self.addCleanup(sys.path.remove, str(site))
        saved = dict(validators.VALIDATORS), set(validators.NAMESPACES)
        self.addCleanup(self._restore, validators, *saved)
        # nova loaded the group when it was imported; stevedore memoises entry points per
        # process, so forget them: this is what a freshly started nova-api does
        extension.ExtensionManager.ENTRY_POINT_CACHE.pop(VALIDATOR_GROUP, None)
        validators.load_validators()

    @staticmethod
    def _restore(validators, saved_validators, saved_namespaces) -> None:
        extension.ExtensionManager.ENTRY_POINT_CACHE.pop(VALIDATOR_GROUP, None)
        validators.VALIDATORS.clear()
        validators.VALIDATORS.update(saved_validators)
        validators.NAMESPACES.clear()
        validators.NAMESPACES.update(saved_namespaces)


class BootFromVolumeTest(WorkerCloudBase):
    """Every volume-backed request on a worker flavour is refused, whatever imageRef says."""

    def setUp(self) -> None:
        super().setUp()
        self._sync.publish_and_sync([self._sync.entry("a", IMAGE_A)], "1")
        self.trusted = self._sync.image_id("a")
        self.untrusted = self._upload("user" + uuid.uuid4().hex[:8], MEMBER_ROLES, IMAGE_B)

    def _user_volume(self, **image_metadata) -> str:
        """A bootable volume of the user's (CinderFixture), optionally claiming an image."""
        volume_id = str(uuid.uuid4())
        self.cinder.volumes[volume_id] = {
            "id": volume_id,
            "display_name": "mine",
            "size": 1,
            "multiattach": False,
            "availability_zone": "nova",
            "bootable": True,
            **({"volume_image_metadata": image_metadata} if image_metadata else {}),
        }
        return volume_id

    def _boot_shape(self, flavor: str, image_ref: str | None, expected: str, **mappings) -> dict:
        body = self._build_server(image_uuid=image_ref or "", flavor_id=flavor, networks="none")
        if image_ref is None:
            body.pop("imageRef")
        body.update(mappings)
        server = self.api.post_server({"server": body})
        return self._wait_for_state_change(server, expected)

    def _shapes(self) -> dict[str, tuple[str | None, dict]]:
        """The shapes of the issue, and two more; each yields a volume as the root disk."""
        return {
            "trusted imageRef, the user's volume as boot_index 0": (
                self.trusted,
                {"block_device_mapping_v2": [
                    {"boot_index": 0, "uuid": self._user_volume(), "source_type": "volume",
                     "destination_type": "volume"}]},
            ),
            "trusted imageRef, root volume made from an untrusted image": (
                self.trusted,
                {"block_device_mapping_v2": [
                    {"boot_index": 0, "uuid": self.untrusted, "source_type": "image",
                     "destination_type": "volume", "volume_size": 1}]},
            ),
            "trusted imageRef, legacy block_device_mapping vda = the user's volume": (
                self.trusted,
                {"block_device_mapping": [
                    {"device_name": "vda", "volume_id": self._user_volume()}]},
            ),
            "new volume made from the trusted image": (
                None,
                {"block_device_mapping_v2": [
                    {"boot_index": 0, "uuid": self.trusted, "source_type": "image",
                     "destination_type": "volume", "volume_size": 1}]},
            ),
            "the user's volume claiming the trusted image in its image metadata": (
                None,
                {"block_device_mapping_v2": [
                    {"boot_index": 0, "uuid": self._user_volume(image_id=self.trusted),
                     "source_type": "volume", "destination_type": "volume"}]},
            ),
        }  # fmt: skip

    def test_every_volume_backed_shape_is_refused_on_worker_flavours(self):
        for shape, (image_ref, mappings) in self._shapes().items():
            with self.subTest(shape=shape):
                server = self._boot_shape(self.worker_flavor, image_ref, "ERROR", **mappings)
                self.assertIn(NO_VALID_HOST, server["fault"]["message"])
                refusal = [
                    line
                    for line in self.stdlog.logger.output.splitlines()
                    if f"for instance {server['id']}" in line and "refusing image" in line
                ]
                self.assertEqual(1, len(refusal), (shape, refusal))
                self.assertIn("volume-backed request (boot from volume)", refusal[0])

    def test_the_same_shapes_boot_on_plain_flavours(self):
        """Proof that each shape works in this stack: the refusal above is the filter's."""
        for shape, (image_ref, mappings) in self._shapes().items():
            with self.subTest(shape=shape):
                self._boot_shape(self.plain_flavor, image_ref, "ACTIVE", **mappings)

    def test_image_backed_trusted_boot_with_a_data_volume_still_boots(self):
        server = self._boot_shape(
            self.worker_flavor,
            self.trusted,
            "ACTIVE",
            block_device_mapping_v2=[
                {"boot_index": 0, "uuid": self.trusted, "source_type": "image",
                 "destination_type": "local"},
                {"boot_index": -1, "uuid": self._user_volume(), "source_type": "volume",
                 "destination_type": "volume"},
            ],
        )  # fmt: skip
        self.assertEqual(self.trusted, server["image"]["id"])

    def test_marked_aggregate_refuses_volume_backed_requests_too(self):
        self.flags(aggregate_trusted_only=True, group="vmtrust")
        aggregate = self._create_aggregate("worker-nodes")
        self.admin_api.add_host_to_aggregate(aggregate, "compute")
        self.admin_api.post_aggregate_action(
            aggregate, {"set_metadata": {"metadata": {"vmtrust_trusted_only": "true"}}}
        )
        image_ref, mappings = self._shapes()["new volume made from the trusted image"]
        self._boot_shape(self.plain_flavor, image_ref, "ERROR", **mappings)
        self.assertIn("volume-backed request", self.stdlog.logger.output)


class HangingGlanceTest(WorkerCloudBase):
    """The filter's Glance accepts the connection and never answers."""

    def test_boot_is_refused_within_the_deadline(self):
        self._sync.publish_and_sync([self._sync.entry("a", IMAGE_A)], "1")
        trusted = self._sync.image_id("a")
        proxy = TcpProxy(self._glance_server.port, rules=[Rule(stall=True, times=None)]).start()
        self.addCleanup(proxy.stop)
        # Without a deadline the boot would wait for ever; the watchdog turns that into a
        # slow failure of this test instead of a hung suite.
        watchdog = threading.Timer(40, proxy.stop)
        watchdog.start()
        self.addCleanup(watchdog.cancel)
        # [vmtrust] timeout is left at its default (keystoneauth's own would be: none)
        self.flags(endpoint_override=proxy.url, group="vmtrust")
        trust_filter.reset()
        start = time.monotonic()
        # 5 s is both the per-request timeout and the decision's deadline: either ends it
        # (tests/test_filter_decision.py shows the deadline alone, with no socket timeout)
        self._refused(trusted, "Glance look-up failed")
        took = time.monotonic() - start
        self.assertLess(took, 15, "the boot must end soon after the 5 s deadline")
        self.assertEqual(5, CONF.vmtrust.timeout)
        self.assertTrue(any("/v2/images/" + trusted in seen for seen in proxy.seen))
        # refusals of failures are not cached: Glance answers again, the image boots
        self.flags(endpoint_override=self._glance_server.url, group="vmtrust")
        trust_filter.reset()
        self._boot(trusted, self.worker_flavor)


class FlavourValuesTest(WorkerCloudBase):
    """Values of vmtrust:trusted_only: nova's API refuses odd ones, the filter enforces them."""

    def setUp(self) -> None:
        super().setUp()
        self.validators = self.useFixture(VmtrustValidators(self._glance_tmp))
        self.user_image = self._upload("user" + uuid.uuid4().hex[:8], MEMBER_ROLES, IMAGE_B)

    def _set(self, flavor: str, value: str, microversion: str = "latest") -> None:
        self.admin_api.microversion = microversion
        try:
            self.admin_api.post_extra_spec(flavor, {"extra_specs": {"vmtrust:trusted_only": value}})
        finally:
            self.admin_api.microversion = "latest"

    def test_nova_api_refuses_values_other_than_true_and_false(self):
        from nova.api.validation.extra_specs import validators

        self.assertTrue("vmtrust:trusted_only" in validators.VALIDATORS)  # loaded by stevedore
        self.assertIn("vmtrust", validators.NAMESPACES)
        flavor = self._create_flavor(name="wn.new", memory_mb=512, vcpu=1, disk=1, ephemeral=0)
        for value in ("on", "enabled", "True", "yes", "1", ""):
            with self.subTest(value=value):
                exc = self.assertRaises(api_client.OpenStackApiException, self._set, flavor, value)
                self.assertEqual(400, exc.response.status_code)
                self.assertIn(f"'{value}' is not one of: true, false", exc.response.text)
        exc = self.assertRaises(
            api_client.OpenStackApiException,
            self.admin_api.post_extra_spec,
            flavor,
            {"extra_specs": {"vmtrust:trusted-only": "true"}},
        )
        self.assertEqual(400, exc.response.status_code)
        self.assertIn("'vmtrust:trusted-only' does not appear to be a valid extra spec",
                      exc.response.text)  # fmt: skip
        for value in ("true", "false"):
            self._set(flavor, value)
        self.assertEqual({"vmtrust:trusted_only": "false"}, self.admin_api.get_extra_specs(flavor))

    def test_values_nova_did_not_validate_enforce_and_are_logged(self):
        # before microversion 2.86 nova validates nothing: whatever was stored reaches the filter
        for value in ("on", "enabled", "ture", ""):
            with self.subTest(value=value):
                flavor = self._create_flavor(
                    name=f"wn.{value or 'empty'}", memory_mb=512, vcpu=1, disk=1, ephemeral=0
                )
                self._set(flavor, value, microversion="2.85")
                self._refused(self.user_image, "no vmtrust trust record", flavor_id=flavor)
        log = self.stdlog.logger.output
        self.assertIn("vmtrust:trusted_only='enabled' is not a recognised true or false: "
                      "enforcing (fail closed)", log)  # fmt: skip
        flavor = self._create_flavor(name="wn.off", memory_mb=512, vcpu=1, disk=1, ephemeral=0)
        self._set(flavor, "False", microversion="2.85")
        self._boot(self.user_image, flavor)


class RescueTest(WorkerCloudBase):
    """Rescue boots any image on the worker host without asking the scheduler."""

    def setUp(self) -> None:
        super().setUp()
        self._sync.publish_and_sync([self._sync.entry("a", IMAGE_A)], "1")
        self.server = self._boot(self._sync.image_id("a"), self.worker_flavor)
        # any image will do: here a public one of the cloud's catalogue, not trusted. (A
        # user's private upload works as well in a real cloud; this stack's API stub gives
        # members no token, and nova then checks v2 images the v1 way, which fails.)
        self.rescue_image = self._upload(
            "catalogue" + uuid.uuid4().hex[:8], ADMIN_ROLES, IMAGE_B, visibility="public"
        )
        self.member = self.api_fixture.api  # roles reader, member: an ordinary project member
        self.member.microversion = "latest"

    def _rescue(self, api) -> None:
        api.post_server_action(
            self.server["id"], {"rescue": {"rescue_image_ref": self.rescue_image}}
        )

    def test_without_the_snippet_a_member_rescues_a_worker_server(self):
        self._rescue(self.member)
        self._wait_for_state_change(self.server, "RESCUE")
        self.assertNotIn(FILTER_EMPTIED, self.stdlog.logger.output)  # never scheduled
        self.member.post_server_action(self.server["id"], {"unrescue": None})
        self._wait_for_state_change(self.server, "ACTIVE")

    def test_with_the_snippet_rescue_is_for_administrators(self):
        self.useFixture(ShippedPolicy())
        exc = self.assertRaises(api_client.OpenStackApiException, self._rescue, self.member)
        self.assertEqual(403, exc.response.status_code)
        self.assertIn("os_compute_api:os-rescue", exc.response.text)
        self.assertEqual("ACTIVE", self.api.get_server(self.server["id"])["status"])
        # an administrator still can, and only an administrator ends it
        self._rescue(self.admin_api)
        self._wait_for_state_change(self.server, "RESCUE")
        exc = self.assertRaises(
            api_client.OpenStackApiException,
            self.member.post_server_action,
            self.server["id"],
            {"unrescue": None},
        )
        self.assertEqual(403, exc.response.status_code)
        self.admin_api.post_server_action(self.server["id"], {"unrescue": None})
        self._wait_for_state_change(self.server, "ACTIVE")
