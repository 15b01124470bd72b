"""One sync, several targets (issue 16, fan-out): local directories and real Glance projects.

Each image version is downloaded once per pass whatever the number of targets
(counted at the loopback list server); a target that fails fails alone and is
retried alone; a slow target does not hold the others back; subscriptions go
to the targets they name.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

import pytest
from conftest import sync_settings, write_clouds_yaml
from tcpproxy import Rule, TcpProxy
from test_sync_local import entry, publish

from glance_sync.service import SyncService
from glance_sync.stores.local import LocalStore
from glance_sync.targets import Target
from vmtrust.errors import ConfigError
from vmtrust.imagelist import Endorser
from vmtrust.policy import Subscription
from vmtrust.record import check_seal, generate_key_pair, load_private_key

IMAGE_A = bytes(range(256)) * 4096  # 1 MiB
IMAGE_B = b"B" * 700_000


def subscription(site, pki, name: str = "example", targets=None) -> Subscription:
    return Subscription(
        name=name,
        url=site.url("/site.list"),
        endorsers=(Endorser(dn=pki.endorser.dn, ca=pki.endorser.ca_dn),),
        approve_all=True,
        targets=targets,
    )


@pytest.fixture
def key(tmp_path: Path):
    generate_key_pair(tmp_path / "seal.key")
    return load_private_key(tmp_path / "seal.key")


def local_targets(tmp_path: Path, key, names=("a", "b", "c"), groups=None) -> list[Target]:
    groups = groups or {}
    return [
        Target(
            n,
            LocalStore(tmp_path / f"store-{n}", [key.public_key()]),
            "",
            frozenset(groups.get(n, ())),
        )
        for n in names
    ]


def service(tmp_path: Path, ca_dir: Path, key, targets: list[Target]) -> SyncService:
    settings = sync_settings(tmp_path, ca_dir, key)
    settings.fanout_buffer = 2 * 1024 * 1024
    return SyncService(settings, targets=targets)


def image_requests(site) -> list[str]:
    return [path for path, _ in site.requests if path.startswith("/img/")]


def holdings(svc: SyncService, skip: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """target → identifier → version of its trusted images, every seal and hash checked."""
    result = {}
    for target in svc.targets:
        if target.name in skip:
            continue
        mine = {}
        for held in target.store.held():
            if held.retired:
                continue
            assert held.seal_ok, held.problem
            if held.location.startswith("/"):
                data = Path(held.location).read_bytes()
                assert hashlib.sha512(data).hexdigest() == held.record.sha512
            mine[held.record.image_identifier] = held.record.image_version
        result[target.name] = mine
    return result


def test_one_download_feeds_every_target_and_the_next_pass_is_a_no_op(
    tmp_path, ca_dir, site, pki, key
):
    publish(site, pki, [entry("a", IMAGE_A, site), entry("b", IMAGE_B, site)], "1")
    svc = service(tmp_path, ca_dir, key, local_targets(tmp_path, key))
    report = svc.run((subscription(site, pki),))
    assert report.failures == []
    assert holdings(svc) == {t: {"a": "1", "b": "1"} for t in "abc"}
    assert sorted(image_requests(site)) == ["/img/a-1.img", "/img/b-1.img"]  # once each
    assert sorted((s.identifier, s.readers) for s in svc.fanout_stats) == [("a", 3), ("b", 3)]
    assert all(s.peak <= 3 * 1024 * 1024 for s in svc.fanout_stats)
    assert report.transferred["example"] == len(IMAGE_A) + len(IMAGE_B)
    # each target's record is bound to its own store id and seal
    for target in svc.targets:
        for held in target.store.held():
            assert held.location.startswith(str(tmp_path / f"store-{target.name}"))
    before = len(site.requests)
    again = svc.run((subscription(site, pki),))
    assert again.done == [] and again.failures == []
    assert image_requests(site)[before:] == []
    svc.close()


def test_a_new_version_replaces_the_old_one_in_every_target(tmp_path, ca_dir, site, pki, key):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    svc = service(tmp_path, ca_dir, key, local_targets(tmp_path, key, ("a", "b")))
    assert svc.run((subscription(site, pki),)).failures == []
    publish(site, pki, [entry("a", IMAGE_B, site, version="2")], "2")
    report = svc.run((subscription(site, pki),))
    assert report.failures == []
    assert holdings(svc) == {"a": {"a": "2"}, "b": {"a": "2"}}
    assert image_requests(site).count("/img/a-2.img") == 1
    assert sum("retired a" in line for line in report.done) == 2
    svc.close()


def test_subscriptions_go_to_the_targets_and_groups_they_name(tmp_path, ca_dir, site, pki, key):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    targets = local_targets(tmp_path, key, groups={"b": ["uk"], "c": ["uk"]})
    svc = service(tmp_path, ca_dir, key, targets)
    assert svc.run((subscription(site, pki, targets=("uk",)),)).failures == []
    assert holdings(svc) == {"a": {}, "b": {"a": "1"}, "c": {"a": "1"}}
    # routed elsewhere: the images leave the target they no longer go to
    report = svc.run((subscription(site, pki, targets=("a", "b")),))
    assert report.failures == []
    assert holdings(svc) == {"a": {"a": "1"}, "b": {"a": "1"}, "c": {}}
    assert image_requests(site) == ["/img/a-1.img", "/img/a-1.img"]  # a: one more download
    svc.close()


def test_a_subscription_naming_an_unknown_target_is_one_config_line(
    tmp_path, ca_dir, site, pki, key
):
    svc = service(tmp_path, ca_dir, key, local_targets(tmp_path, key))
    with pytest.raises(ConfigError, match=r"subscription example: targets: no target or group "):
        svc.run((subscription(site, pki, targets=("../etc",)),))
    assert site.requests == [] and not (tmp_path / "state" / "sync.lock").exists()
    svc.close()


def test_a_target_that_cannot_be_read_fails_alone_and_is_retried_alone(
    tmp_path, ca_dir, site, pki, key
):
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    targets = local_targets(tmp_path, key)
    images = tmp_path / "store-b" / "images"
    shutil.rmtree(images)
    images.write_text("not a directory")  # the store refuses itself as a whole
    svc = service(tmp_path, ca_dir, key, targets)
    report = svc.run((subscription(site, pki),))
    assert [line.split(":")[0] for line in report.failures] == ["target b"]
    assert holdings(svc, skip=("b",)) == {"a": {"a": "1"}, "c": {"a": "1"}}
    assert image_requests(site) == ["/img/a-1.img"]
    images.unlink()
    images.mkdir()
    again = svc.run((subscription(site, pki),))
    assert again.failures == []
    assert [line for line in again.done] == ["target b: stored a 1 (Example worker node)"]
    assert holdings(svc) == {t: {"a": "1"} for t in "abc"}
    assert image_requests(site) == ["/img/a-1.img"] * 2
    svc.close()


def test_a_download_that_does_not_verify_reaches_no_target(tmp_path, ca_dir, site, pki, key):
    good = entry("a", IMAGE_A, site)
    site.files["/img/a-1.img"] = IMAGE_A[:-1] + b"!"  # the bytes served are not the list's
    publish(site, pki, [good], "1")
    svc = service(tmp_path, ca_dir, key, local_targets(tmp_path, key))
    report = svc.run((subscription(site, pki),))
    assert len(report.failures) == 3
    assert all("SHA-512" in line and "differs" in line for line in report.failures)
    assert holdings(svc) == {t: {} for t in "abc"}
    for name in "abc":  # nothing half-written either
        assert list((tmp_path / f"store-{name}" / ".partial").iterdir()) == []
    assert list((tmp_path / "state").glob("work/*")) == []
    svc.close()


# --- real Glance projects ---------------------------------------------------------------------


def glance_target(name: str, clouds: Path, cloud: str, project: str, key) -> Target:
    from glance_sync.cloud import connect_cloud
    from glance_sync.stores.glance import GlanceStore

    store = GlanceStore(
        connect_cloud(cloud, str(clouds)), project_id=project, seal_keys=[key.public_key()]
    )
    return Target(name, store, "")


def test_glance_targets_one_down_one_slow_and_a_local_one(tmp_path, ca_dir, site, pki, key, glance):
    from glance_server import SERVICE_ROLES

    projects = {n: "svc" + uuid.uuid4().hex[:10] for n in ("fast", "down", "slow")}
    with (
        TcpProxy(glance.port, [Rule("PUT", "/file", status=503, times=None)]) as broken,
        TcpProxy(glance.port, [Rule("PUT", "/file", rate=1_000_000, times=None)]) as slow,
    ):
        clouds = tmp_path / "clouds.yaml"
        text = ["clouds:"]
        for name, url in (("fast", glance.url), ("down", broken.url), ("slow", slow.url)):
            one = write_clouds_yaml(
                tmp_path / f"{name}.yaml", url, {name: (projects[name], SERVICE_ROLES)}
            )
            text += one.read_text().splitlines()[1:]
        clouds.write_text("\n".join(text) + "\n")
        targets = [glance_target(n, clouds, n, projects[n], key) for n in projects]
        targets.append(local_targets(tmp_path, key, ("dir",))[0])
        publish(site, pki, [entry("a", IMAGE_A * 3, site)], "1")
        svc = service(tmp_path, ca_dir, key, targets)
        report = svc.run((subscription(site, pki),))
        assert len(report.failures) == 1 and report.failures[0].startswith("target down: ")
        assert "HTTP 503" in report.failures[0]
        got = holdings(svc)
        assert got == {"fast": {"a": "1"}, "down": {}, "slow": {"a": "1"}, "dir": {"a": "1"}}
        (stat,) = svc.fanout_stats
        assert stat.readers == 4 and stat.peak <= 3 * 1024 * 1024
        assert stat.spooled > 0  # the slow cloud fell behind and read the spool
        # the failed target's upload was removed, none of its images is left half-made
        session = glance.api(projects["down"])
        assert session.get(f"{glance.url}/v2/images").json()["images"] == []
        # the directory committed its image while the slow cloud still received its bytes
        # (the test Glance serves one request at a time: "fast" waits for "slow" there)
        assert stat.done["dir"] - stat.ended_at < 1.0 < stat.done["slow"] - stat.done["dir"]
        assert stat.done["down"] == 0
        # each Glance image's seal is bound to its own image id
        for target in targets[:3:2]:
            (held,) = target.store.held()
            assert held.record.store_id == held.store_id
            check_seal(held.record, target.store.seen[held.store_id]["vmtrust_seal"],
                       [key.public_key()])  # fmt: skip
        broken.rules.clear()
        again = svc.run((subscription(site, pki),))
        assert again.failures == []
        assert again.done == ["target down: stored a 1 (Example worker node)"]
        assert image_requests(site) == ["/img/a-1.img"] * 2  # the retry downloaded once, alone
        svc.close()


# --- an EC2 account (moto) beside directories that convert ----------------------------------


def test_ec2_and_converting_directories_share_one_download_and_one_conversion(
    ec2_sync, site, pki, tmp_path
):
    from test_ec2_store import trusted as ec2_trusted

    key = ec2_sync.s.seal_key
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    targets = [
        Target("aws", ec2_sync.store, ""),
        Target("raw", LocalStore(tmp_path / "raw", [key.public_key()]), ""),
        Target("q1", LocalStore(tmp_path / "q1", [key.public_key()], "qcow2"), ""),
        Target("q2", LocalStore(tmp_path / "q2", [key.public_key()], "qcow2"), ""),
    ]
    svc = SyncService(ec2_sync.s, targets=targets)
    report = svc.run((subscription(site, pki),))
    assert report.failures == []
    assert image_requests(site) == ["/img/a-1.img"]
    assert {k: v for k, (v, _) in ec2_trusted(ec2_sync).items()} == {"a": "1"}
    got = holdings(svc, skip=("aws",))
    assert got == {"raw": {"a": "1"}, "q1": {"a": "1"}, "q2": {"a": "1"}}
    formats = {t.name: [h.record.disk_format for h in t.store.held()] for t in targets[1:]}
    assert formats == {"raw": ["raw"], "q1": ["qcow2"], "q2": ["qcow2"]}
    # one download read by three (aws, raw, one conversion), the conversion read by two
    assert sorted(s.readers for s in svc.fanout_stats) == [2, 3]
    sources = {h.record.source_sha512 for t in targets[1:] for h in t.store.held()}
    assert sources == {hashlib.sha512(IMAGE_A).hexdigest()}
    assert list((ec2_sync.s.state_dir / "work").iterdir()) == []
    svc.close()
