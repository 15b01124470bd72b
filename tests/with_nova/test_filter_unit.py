"""TrustedImageFilter with nova's own objects and filter handler; Glance stubbed at ``fetch``.

The request spec, image meta, flavours, aggregates and host states are nova's
real objects, and the filter runs through ``HostFilterHandler`` as
nova-scheduler runs it.  Only the Glance look-up is replaced: ``fetch``
returns image dicts carrying real trust records sealed with a real Ed25519
key (:func:`vmtrust.glanceprops.record_properties`), so every reason the
filter gives comes from the same rule the sync and ``vmtrust launch`` use.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nova import objects
from nova.scheduler import filters
from nova.tests.unit.scheduler.fakes import FakeHostState
from sealed_images import OTHER, OWNER, VO, Clock, Glance, trusted_image, user_image_dict

from nova_filter import filter as trust_filter
from nova_filter.decision import ImageTrust
from vmtrust.imagelist import format_date
from vmtrust.record import generate_key_pair, load_private_key

WORKER = {"vmtrust:trusted_only": "true"}
LOGGER = "nova_filter.filter"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("seal") / "seal.key"
    generate_key_pair(path)
    return load_private_key(path)


@pytest.fixture
def flags():
    """``flags(name=value, ...)`` on ``[vmtrust]``; cleared after the test."""
    conf = trust_filter.CONF
    names: set[str] = set()

    def set_flags(**values):
        for name, value in values.items():
            conf.set_override(name, value, group="vmtrust")
            names.add(name)

    trust_filter.reset()
    yield set_flags
    for name in names:
        conf.clear_override(name, group="vmtrust")
    trust_filter.reset()


@pytest.fixture
def glance_stub(key, flags, monkeypatch):
    """A stub Glance whose ImageTrust the filter uses (clock injectable via ``.trust``)."""
    stub = Glance()
    stub.clock = Clock()
    stub.trust = ImageTrust(stub, [key.public_key()], [OWNER], ttl=60, clock=stub.clock)
    monkeypatch.setattr(trust_filter, "image_trust", lambda: stub.trust)
    return stub


def spec(image_id: str | None, extra_specs: dict | None = None, **fields) -> objects.RequestSpec:
    image = {"name": "img", "status": "active"}
    if image_id is not None:
        image["id"] = image_id
    values = {
        "instance_uuid": str(uuid.uuid4()),
        "project_id": OTHER,
        "image": objects.ImageMeta.from_dict(image),
        "flavor": objects.Flavor(
            name="wn.large" if extra_specs else "m1.small",
            memory_mb=2048,
            vcpus=2,
            root_gb=10,
            ephemeral_gb=0,
            swap=0,
            extra_specs=dict(extra_specs or {}),
        ),
        "scheduler_hints": {},
        "num_instances": 1,
        "is_bfv": False,  # nova's API sets it on every boot; moves heal old specs
    }
    values.update(fields)
    return objects.RequestSpec(**values)


def hosts(count: int = 3, aggregates: dict[int, list] | None = None) -> list[FakeHostState]:
    return [
        FakeHostState(f"host{i}", f"node{i}", {"aggregates": (aggregates or {}).get(i, [])})
        for i in range(count)
    ]


def run(host_list, request) -> list[str]:
    passed = filters.HostFilterHandler().get_filtered_objects(
        [trust_filter.TrustedImageFilter()], host_list, request
    )
    return [host.host for host in passed or []]


def reason(glance_stub, image_id: str) -> str:
    return glance_stub.trust.decide(image_id).reason


ALL = ["host0", "host1", "host2"]


# --- which requests are worker-node requests -------------------------------------------


def test_non_worker_flavour_passes_any_image_without_asking_glance(glance_stub):
    for image_id in (
        None,
        "3c7e1f4e-2b0e-4f0c-9a59-7d1f0e2c4b11",
        glance_stub.add({"id": "9b1c3c2a-55e4-4a43-8f0e-6c6f1b1f2d22", "owner": OTHER}),
    ):
        assert run(hosts(), spec(image_id)) == ALL
        assert run(hosts(), spec(image_id, {"vmtrust:trusted_only": "false"})) == ALL
    assert glance_stub.calls == []


def test_worker_flavour_and_trusted_image_pass_all_hosts(glance_stub, key):
    image_id = glance_stub.add(trusted_image(key))
    assert run(hosts(), spec(image_id, WORKER)) == ALL
    assert reason(glance_stub, image_id) == "trusted"
    assert run(hosts(), spec(image_id, {"vmtrust:trusted_only": "True"})) == ALL


# --- every reason an image is refused ----------------------------------------------------


def refused(glance_stub, image_id, caplog) -> str:
    """Run a worker request for image_id; assert every host refused; return the logged line."""
    return refused_request(spec(image_id, WORKER), caplog)


def refused_request(request, caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert run(hosts(), request) == []
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1, lines  # once per request, not per host
    assert "refusing image" in lines[0]
    return lines[0]


def test_boot_from_an_existing_volume_is_refused(glance_stub, caplog):
    line = refused_request(spec(None, WORKER, is_bfv=True), caplog)
    assert "volume-backed request (boot from volume)" in line
    assert glance_stub.calls == []
    # no image id, even without is_bfv: refused before Glance is asked
    assert "no image id" in refused(glance_stub, None, caplog)
    assert glance_stub.calls == []


def test_volume_backed_request_with_a_trusted_image_ref_is_refused(glance_stub, key, caplog):
    # imageRef names a trusted image, the root is a volume (the user's own, or one nova
    # makes from any image): nova passes the trusted image id with is_bfv = True
    good = glance_stub.add(trusted_image(key))
    line = refused_request(spec(good, WORKER, is_bfv=True), caplog)
    assert f"refusing image {good}" in line and "volume-backed request" in line
    assert glance_stub.calls == []  # the image is irrelevant: the root disk is not it
    assert run(hosts(), spec(good, is_bfv=True)) == ALL  # plain flavours: nova's business
    assert run(hosts(), spec(good, WORKER)) == ALL


def test_request_spec_without_is_bfv_is_refused(glance_stub, key, caplog):
    good = glance_stub.add(trusted_image(key))
    request = spec(good, WORKER)
    request.obj_reset_changes()
    del request.is_bfv  # a spec from before nova recorded it, not healed
    assert "is_bfv" not in request
    assert "possibly volume-backed request" in refused_request(request, caplog)


def test_volume_backed_in_a_marked_aggregate_is_refused(glance_stub, key, flags):
    flags(aggregate_trusted_only=True)
    marked = objects.Aggregate(
        id=1, name="wn", hosts=["host1"], metadata={"vmtrust_trusted_only": "true"}
    )
    good = glance_stub.add(trusted_image(key))
    host_list = hosts(3, {1: [marked]})
    assert run(host_list, spec(good, is_bfv=True)) == ["host0", "host2"]
    assert run(host_list, spec(good)) == ALL


# --- flavour and aggregate values ----------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["true", "True", " TRUE ", "1", "yes", "on", "enabled", "ture", "", "required"]
)
def test_any_flavour_value_but_a_recognised_false_enforces(glance_stub, value, caplog):
    user_image = glance_stub.add(user_image_dict())
    assert run(hosts(), spec(user_image, {"vmtrust:trusted_only": value})) == []


@pytest.mark.parametrize("value", ["false", "False", "0", "no", "off", "n", "f", " false "])
def test_recognised_false_values_switch_enforcement_off(glance_stub, value):
    user_image = glance_stub.add(user_image_dict())
    assert run(hosts(), spec(user_image, {"vmtrust:trusted_only": value})) == ALL
    assert glance_stub.calls == []


def test_unrecognised_values_are_logged_once(glance_stub, flags, caplog):
    flags(aggregate_trusted_only=True)
    user_image = glance_stub.add(user_image_dict())
    odd = objects.Aggregate(id=7, name="odd-wn", hosts=[], metadata={"vmtrust_trusted_only": "si"})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            assert run(hosts(), spec(user_image, {"vmtrust:trusted_only": "enabled"})) == []
            assert run(hosts(3, {1: [odd], 2: [odd]}), spec(user_image)) == ["host0"]
        assert run(hosts(), spec(user_image, {"vmtrust:trusted_only": "true"})) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one per distinct value, not per host or request
    assert "flavour wn.large vmtrust:trusted_only='enabled' is not a recognised" in warnings[0]
    assert "aggregate odd-wn vmtrust_trusted_only='si'" in warnings[1]
    assert "enforcing (fail closed)" in warnings[1]


def test_image_not_in_glance_is_refused(glance_stub, caplog):
    line = refused(glance_stub, "0e7b5b70-6f48-4b59-8c47-5a8d4a0b8e1e", caplog)
    assert "0e7b5b70-6f48-4b59-8c47-5a8d4a0b8e1e" in line and "not in Glance" in line


def test_glance_error_is_refused_and_not_cached(glance_stub, key, caplog):
    image_id = glance_stub.add(trusted_image(key))
    glance_stub.fail = "HTTP 503 for image x"
    line = refused(glance_stub, image_id, caplog)
    assert image_id in line and "Glance look-up failed: HTTP 503" in line
    refused(glance_stub, image_id, caplog)
    assert glance_stub.calls == [image_id, image_id]  # the failure was not cached
    glance_stub.fail = None
    assert run(hosts(), spec(image_id, WORKER)) == ALL
    assert glance_stub.calls == [image_id] * 3


def test_owner_not_trusted_is_refused(glance_stub, key, caplog):
    image_id = glance_stub.add({**trusted_image(key), "owner": OTHER})
    assert f"owner {OTHER} is not a trusted project" in refused(glance_stub, image_id, caplog)


def test_plain_user_image_is_refused(glance_stub, caplog):
    image_id = glance_stub.add(user_image_dict())
    assert "no vmtrust trust record" in refused(glance_stub, image_id, caplog)


def test_tampered_property_breaks_the_seal(glance_stub, key, caplog):
    image_id = glance_stub.add({**trusted_image(key), "vmtrust_vo": "vo.evil.org"})
    assert "seal invalid" in refused(glance_stub, image_id, caplog)


def test_seal_from_another_key_is_refused(glance_stub, tmp_path, caplog):
    generate_key_pair(tmp_path / "other.key")
    image_id = glance_stub.add(trusted_image(load_private_key(tmp_path / "other.key")))
    assert "seal invalid" in refused(glance_stub, image_id, caplog)
    assert "unknown key" in reason(glance_stub, image_id)


def test_properties_copied_onto_another_image_are_refused(glance_stub, key, caplog):
    source = trusted_image(key)
    copy_id = glance_stub.add({**source, "id": str(uuid.uuid4())})
    line = refused(glance_stub, copy_id, caplog)
    assert f"seal is bound to image {source['id']}, not this one" in line


def test_content_hash_differs_is_refused(glance_stub, key, caplog):
    image_id = glance_stub.add({**trusted_image(key), "os_hash_value": "0" * 128})
    assert "content hash differs" in refused(glance_stub, image_id, caplog)


def test_retired_image_is_refused(glance_stub, key, caplog):
    image_id = glance_stub.add({**trusted_image(key), "vmtrust_state": "retired"})
    assert "trust state is retired" in refused(glance_stub, image_id, caplog)


def test_deactivated_image_is_refused(glance_stub, key, caplog):
    image_id = glance_stub.add({**trusted_image(key), "status": "deactivated"})
    assert "status is deactivated" in refused(glance_stub, image_id, caplog)


def test_expired_image_is_refused(glance_stub, key, caplog):
    past = format_date(datetime.now(UTC) - timedelta(minutes=1))
    image_id = glance_stub.add(trusted_image(key, expires=past))
    assert f"expired at {past}" in refused(glance_stub, image_id, caplog)


def test_no_keys_or_owners_configured_refuses_everything(key, flags, monkeypatch, caplog):
    stub = Glance()
    image_id = stub.add(trusted_image(key))
    for keys, owners in (([], [OWNER]), ([key.public_key()], [])):
        trust = ImageTrust(stub, keys, owners)
        monkeypatch.setattr(trust_filter, "image_trust", lambda trust=trust: trust)
        assert run(hosts(), spec(image_id, WORKER)) == []
        assert "no seal keys or trusted owners" in trust.decide(image_id).reason


# --- VO match ------------------------------------------------------------------------------


def test_vo_match(glance_stub, key, flags):
    image_id = glance_stub.add(trusted_image(key, vo=VO))
    other_vo = glance_stub.add(trusted_image(key, vo="vo.other.org"))
    assert run(hosts(), spec(other_vo, WORKER)) == ALL  # off: any VO
    flags(require_vo_match=True, project_vo=[f"{OTHER}:{VO}", "p2:vo.other.org"])
    assert run(hosts(), spec(image_id, WORKER)) == ALL
    assert run(hosts(), spec(other_vo, WORKER)) == []
    assert run(hosts(), spec(other_vo, WORKER, project_id="p2")) == ALL
    assert run(hosts(), spec(image_id, WORKER, project_id="no-vo-project")) == []
    refusal = trust_filter.TrustedImageFilter().decide(spec(other_vo, WORKER))
    assert (
        refusal.reason == "image serves VO 'vo.other.org', the project works for 'vo.example.org'"
    )
    assert (
        "project has no VO"
        in trust_filter.TrustedImageFilter()
        .decide(spec(image_id, WORKER, project_id="no-vo-project"))
        .reason
    )
    assert run(hosts(), spec(other_vo)) == ALL  # non-worker flavour: VO irrelevant


# --- aggregates ----------------------------------------------------------------------------


def test_aggregate_mode_filters_only_hosts_in_the_marked_aggregate(glance_stub, key, flags):
    marked = objects.Aggregate(
        id=1, name="wn", hosts=["host1", "host2"], metadata={"vmtrust_trusted_only": "true"}
    )
    other = objects.Aggregate(id=2, name="az1", hosts=["host0"], metadata={"foo": "bar"})
    host_list = hosts(3, {0: [other], 1: [marked], 2: [marked, other]})
    user_image = glance_stub.add(user_image_dict())
    good = glance_stub.add(trusted_image(key))
    assert run(host_list, spec(user_image)) == ALL  # option off: aggregates ignored
    assert glance_stub.calls == []
    flags(aggregate_trusted_only=True)
    assert run(host_list, spec(user_image)) == ["host0"]
    assert run(host_list, spec(good)) == ALL
    assert run(host_list, spec(user_image, WORKER)) == []  # the flavour still counts
    assert run(hosts(3), spec(user_image)) == ALL  # no marked aggregate at all


# --- rebuilds and moves --------------------------------------------------------------------


def test_rebuild_is_filtered(glance_stub, key):
    user_image = glance_stub.add(user_image_dict())
    rebuild = {"_nova_check_type": ["rebuild"]}
    destination = objects.Destination(
        host="host0", node="node0", cell=objects.CellMapping(uuid=str(uuid.uuid4()))
    )
    request = spec(user_image, WORKER, scheduler_hints=rebuild, requested_destination=destination)
    assert trust_filter.TrustedImageFilter.RUN_ON_REBUILD is True
    assert not trust_filter.is_move(request)
    assert run(hosts(1), request) == []
    good = glance_stub.add(trusted_image(key))
    assert run(hosts(1), spec(good, WORKER, scheduler_hints=rebuild)) == ["host0"]


class Cell:
    """The cell database as the filter reads it for moves: instances and host aggregates."""

    def __init__(self, monkeypatch) -> None:
        from nova import context as nova_context
        from nova import exception

        self.instances: dict[str, objects.Instance] = {}
        self.host_aggregates: dict[str, list[objects.Aggregate]] = {}
        self.targeted: list = []

        @contextlib.contextmanager
        def target_cell(context, cell):
            self.targeted.append(cell)
            yield context

        def get_by_uuid(context, instance_uuid, expected_attrs=None):
            if instance_uuid not in self.instances:
                raise exception.InstanceNotFound(instance_id=instance_uuid)
            return self.instances[instance_uuid]

        def get_by_host(context, host, key=None):
            return self.host_aggregates.get(host, [])

        monkeypatch.setattr(nova_context, "target_cell", target_cell)
        monkeypatch.setattr(objects.Instance, "get_by_uuid", get_by_uuid)
        monkeypatch.setattr(objects.AggregateList, "get_by_host", get_by_host)

    def add(self, instance_uuid: str, extra_specs: dict, host: str = "host0") -> None:
        flavor = objects.Flavor(name="current", extra_specs=dict(extra_specs))
        self.instances[instance_uuid] = objects.Instance(
            uuid=instance_uuid, host=host, flavor=flavor
        )


@pytest.fixture
def cell(monkeypatch) -> Cell:
    return Cell(monkeypatch)


def move(image_id: str, cell: Cell, current: dict | None = WORKER, host: str = "host0"):
    """A move (migrate, resize, evacuate, unshelve) onto the worker flavour.

    ``current``: the instance's flavour extra specs before the move (None: unknown instance).
    """
    from nova import context as nova_context

    destination = objects.Destination(cell=objects.CellMapping(uuid=str(uuid.uuid4())))
    request = spec(image_id, WORKER, requested_destination=destination)
    request._context = nova_context.get_admin_context()
    if current is not None:
        cell.add(request.instance_uuid, current, host)
    return request


def test_moves_of_worker_servers_allowed_with_a_warning(glance_stub, key, cell, caplog):
    retired = glance_stub.add({**trusted_image(key), "vmtrust_state": "retired"})
    request = move(retired, cell)
    assert trust_filter.is_move(request)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert run(hosts(), request) == ALL
    lines = [r for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert request.instance_uuid in lines[0].getMessage()
    assert retired in lines[0].getMessage()
    assert "trust state is retired" in lines[0].getMessage()
    assert cell.targeted == [request.requested_destination.cell]
    # a new server is still refused, and a destination without a cell is not a move
    assert run(hosts(), spec(retired, WORKER)) == []
    pinned = spec(retired, WORKER, requested_destination=objects.Destination(host="host1"))
    assert not trust_filter.is_move(pinned)
    assert run(hosts(), pinned) == []


def test_resize_onto_a_worker_flavour_is_filtered_like_a_new_server(glance_stub, key, cell, caplog):
    user_image = glance_stub.add(user_image_dict())
    # the instance runs on a plain flavour: the request's worker flavour is a resize target
    line = refused_request(move(user_image, cell, current={}), caplog)
    assert "no vmtrust trust record" in line
    good = glance_stub.add(trusted_image(key))
    assert run(hosts(), move(good, cell, current={})) == ALL


def test_move_of_an_unknown_instance_is_filtered(glance_stub, key, cell, caplog):
    retired = glance_stub.add({**trusted_image(key), "vmtrust_state": "retired"})
    request = move(retired, cell, current=None)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert run(hosts(), request) == []
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 2
    assert "cannot tell whether instance" in messages[0] and "could not be found" in messages[0]
    assert "refusing image" in messages[1]


def test_aggregate_mode_moves_allowed_from_marked_hosts_only(glance_stub, key, flags, cell):
    flags(aggregate_trusted_only=True)
    marked = objects.Aggregate(
        id=1, name="wn", hosts=["host0", "host1"], metadata={"vmtrust_trusted_only": "true"}
    )
    host_list = hosts(3, {0: [marked], 1: [marked]})
    retired = glance_stub.add({**trusted_image(key), "vmtrust_state": "retired"})
    cell.host_aggregates["host0"] = [marked]
    from_marked = move(retired, cell, current={}, host="host0")
    from_marked.flavor.extra_specs = {}  # aggregate mode: hosts, not flavours, are marked
    assert run(host_list, from_marked) == ALL
    from_plain = move(retired, cell, current={}, host="host2")
    from_plain.flavor.extra_specs = {}
    assert run(host_list, from_plain) == ["host2"]


def test_moves_enforced(glance_stub, key, flags, cell, caplog):
    flags(moves="enforce")
    retired = glance_stub.add({**trusted_image(key), "vmtrust_state": "retired"})
    line = refused_request(move(retired, cell), caplog)
    assert "trust state is retired" in line
    assert cell.targeted == []  # enforce does not need to know what the instance was
    good = glance_stub.add(trusted_image(key))
    assert run(hosts(), move(good, cell)) == ALL


# --- cost and caching ----------------------------------------------------------------------


def test_one_lookup_per_request_for_ten_thousand_hosts(glance_stub, key, caplog):
    good = glance_stub.add(trusted_image(key))
    bad = glance_stub.add({**trusted_image(key), "status": "deactivated"})
    many = hosts(10_000)
    assert len(run(many, spec(good, WORKER))) == 10_000
    assert glance_stub.calls == [good]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert run(many, spec(bad, WORKER)) == []
    assert glance_stub.calls == [good, bad]
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1


def test_multi_create_runs_the_filter_once(glance_stub, key):
    good = glance_stub.add(trusted_image(key))
    handler = filters.HostFilterHandler()
    flt = trust_filter.TrustedImageFilter()
    request = spec(good, WORKER, num_instances=3)
    assert flt.run_filter_for_index(0) and not flt.run_filter_for_index(1)
    assert len(handler.get_filtered_objects([flt], hosts(), request, index=0)) == 3


def test_decisions_cached_until_ttl(glance_stub, key):
    image_id = glance_stub.add(trusted_image(key))
    for _ in range(5):
        assert run(hosts(), spec(image_id, WORKER)) == ALL
    assert glance_stub.calls == [image_id]
    # revoked in Glance: the cached verdict holds until the TTL passes, then it is refused
    glance_stub.images[image_id] = {**glance_stub.images[image_id], "vmtrust_state": "retired"}
    glance_stub.clock.now += 59
    assert run(hosts(), spec(image_id, WORKER)) == ALL
    assert glance_stub.calls == [image_id]
    glance_stub.clock.now += 2
    assert run(hosts(), spec(image_id, WORKER)) == []
    assert glance_stub.calls == [image_id, image_id]


def test_cache_never_outlives_the_record_expiry(key):
    stub = Glance()
    wall = datetime(2030, 1, 1, tzinfo=UTC)
    expires = format_date(wall + timedelta(seconds=30))
    image_id = stub.add(trusted_image(key, expires=expires))
    clock = Clock()
    trust = ImageTrust(stub, [key.public_key()], [OWNER], ttl=600, clock=clock, wall=lambda: wall)
    assert trust.decide(image_id).trusted
    clock.now += 29
    assert trust.decide(image_id).trusted
    assert stub.calls == [image_id]
    clock.now += 2  # past the expiry, well within the TTL: looked up again
    wall += timedelta(seconds=31)
    verdict = trust.decide(image_id)
    assert not verdict.trusted and verdict.reason == f"expired at {expires}"
    assert stub.calls == [image_id, image_id]


def test_ttl_zero_looks_up_every_request(key):
    stub = Glance()
    image_id = stub.add(trusted_image(key))
    trust = ImageTrust(stub, [key.public_key()], [OWNER], ttl=0)
    for _ in range(3):
        assert trust.decide(image_id).trusted
    assert len(stub.calls) == 3


def test_cache_is_bounded(key):
    stub = Glance()
    ids = [stub.add(trusted_image(key)) for _ in range(5)]
    trust = ImageTrust(stub, [key.public_key()], [OWNER], size=2, clock=Clock())
    for image_id in ids:
        trust.decide(image_id)
    assert list(trust._cache) == ids[-2:]
    trust.decide(ids[0])
    assert len(stub.calls) == 6


def test_concurrent_decisions_are_consistent(key):
    stub = Glance()
    good = [stub.add(trusted_image(key)) for _ in range(4)]
    bad = [stub.add({**trusted_image(key), "owner": OTHER}) for _ in range(4)]
    missing = [str(uuid.uuid4()) for _ in range(2)]
    expected = {i: True for i in good} | {i: False for i in bad + missing}

    def slow_fetch(image_id: str) -> dict | None:
        time.sleep(0.0002)  # let the other threads run while a look-up is under way
        return stub(image_id)

    trust = ImageTrust(slow_fetch, [key.public_key()], [OWNER], ttl=60, size=6)
    start = threading.Barrier(8)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            start.wait()
            ids = list(expected)
            for n in range(300):
                image_id = ids[(n + offset) % len(ids)]
                results.append((image_id, trust.decide(image_id).trusted))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert len(results) == 8 * 300
    assert all(trusted is expected[image_id] for image_id, trusted in results)
    assert len(trust._cache) <= 6


def test_concurrent_filter_runs_share_one_filter_instance(glance_stub, key):
    good = glance_stub.add(trusted_image(key))
    bad = glance_stub.add({**trusted_image(key), "vmtrust_state": "retired"})
    flt = trust_filter.TrustedImageFilter()  # nova keeps one filter per scheduler process
    handler = filters.HostFilterHandler()
    start = threading.Barrier(8)
    outcomes: list[tuple[bool, int]] = []

    def work(n: int) -> None:
        start.wait()
        for i in range(50):
            use_good = (n + i) % 2 == 0
            passed = handler.get_filtered_objects(
                [flt], hosts(20), spec(good if use_good else bad, WORKER)
            )
            outcomes.append((use_good, len(passed or [])))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(outcomes) == 400
    assert all(count == (20 if use_good else 0) for use_good, count in outcomes)


# --- building the decision cache from [vmtrust] ---------------------------------------------


def test_image_trust_is_built_from_the_options(key, flags, tmp_path: Path):
    from cryptography.hazmat.primitives import serialization
    from keystoneauth1 import loading as ks_loading

    pem = tmp_path / "seal.pub"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    # the admin_token plugin's own options, registered as keystoneauth does when it loads it
    trust_filter.CONF.register_opts(
        ks_loading.get_auth_plugin_conf_options("admin_token"), group="vmtrust"
    )
    flags(
        trusted_owners=[OWNER],
        seal_public_keys=[str(pem)],
        cache_ttl=5,
        auth_type="admin_token",
        endpoint="http://127.0.0.1:9",
        token="test:nova-filter:nova-filter:admin,member,reader",
        endpoint_override="http://127.0.0.1:9",
    )
    trust = trust_filter.image_trust()
    assert trust is trust_filter.image_trust()  # built once
    assert trust.owners == {OWNER} and trust.ttl == 5 and len(trust.keys) == 1
    # nothing listens on port 9: the look-up fails closed and is not cached
    verdict = trust.decide(str(uuid.uuid4()))
    assert not verdict.trusted and verdict.reason.startswith("Glance look-up failed")
    assert trust._cache == {}
    trust_filter.reset()
    assert trust_filter.image_trust() is not trust
