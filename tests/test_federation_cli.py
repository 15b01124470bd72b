"""``[sync] targets`` from vmtrust.conf: the commands as processes, and every bad configuration.

Every mistake in the targets' configuration is one line and exit 4 before
anything is touched; a good one syncs every target with one download and the
site commands show each target (``--target``, ``--json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import image_entry, list_document
from httpserve import Server, Site

from glance_sync.stores.registry import StoreContext
from glance_sync.targets import build_targets, named
from vmtrust import imagelist, smime
from vmtrust.conf import make_conf
from vmtrust.errors import ConfigError

BIN = Path(sys.executable).parent
IMAGE = os.urandom(1024 * 1024)


@pytest.fixture
def site():
    with Server(Site()) as running:
        yield running


def write_conf(tmp_path: Path, ca_dir: Path, extra: str, subs_extra: str = "") -> Path:
    path = tmp_path / "vmtrust.conf"
    path.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
        f"[trust]\nca_dir = {ca_dir}\nseal_key = {tmp_path}/seal.key\n"
        f"[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\nhttp_retries = 1\n"
        "http_backoff = 0.01\n" + extra
    )
    return path


@pytest.fixture
def fed(tmp_path: Path, ca_dir: Path, site: Site, pki):
    """A list with one image, and a configuration of targets the test completes."""
    image = image_entry(
        "wn",
        **{
            "hv:uri": site.url("/wn.img"),
            "hv:size": len(IMAGE),
            "sl:checksum:sha512": hashlib.sha512(IMAGE).hexdigest(),
            "hv:format": "RAW",
        },
    )
    site.files["/wn.img"] = IMAGE
    document = list_document(pki.endorser, images=[image])
    site.files["/site.list"] = smime.sign(
        imagelist.dumps(document), pki.endorser.cert, pki.endorser.key
    )
    subprocess.run(
        [BIN / "vmtrust", "keygen", "--out", tmp_path / "seal.key"], check=True, capture_output=True
    )

    def make(extra: str, targets_key: str = "") -> Path:
        (tmp_path / "subs.yaml").write_text(
            "subscriptions:\n  - name: example\n"
            f"    url: {site.url('/site.list')}\n"
            f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
            "    vo: vo.example.org\n    approve: all\n" + targets_key
        )
        return write_conf(tmp_path, ca_dir, extra)

    return make


TWO = """targets = north, south
[store_local]
path = {tmp}/unused
[target:north]
store = local
path = {tmp}/north
groups = uk
[target:south]
store = local
path = {tmp}/south
retire = delete
"""


def run(*argv: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)


def test_a_sync_of_two_targets_and_the_site_commands_per_target(fed, tmp_path, site):
    conf = fed(TWO.format(tmp=tmp_path))
    done = run(BIN / "vmtrust-sync", "--config-file", conf)
    assert done.returncode == 0, done.stderr
    assert [p for p, _ in site.requests if p == "/wn.img"] == ["/wn.img"]  # one download
    for name in ("north", "south"):
        (image,) = json.loads(
            run(BIN / "vmtrust", "--config-file", conf, "images", "--json", "--target", name).stdout
        )
        assert image["target"] == name and image["state"] == "trusted"
        assert image["location"].startswith(str(tmp_path / name))
    table = run(BIN / "vmtrust", "--config-file", conf, "images").stdout
    assert table.splitlines()[0].split()[0] == "TARGET" and "north" in table and "south" in table
    status = json.loads(
        run(BIN / "vmtrust", "--config-file", conf, "status", "--json", "--target", "south").stdout
    )
    assert status["target"] == "south" and status["last_error"] is None
    assert status["last_success"] and [s["name"] for s in status["subscriptions"]] == ["example"]
    text = run(BIN / "vmtrust", "--config-file", conf, "status").stdout
    assert "TARGET" in text and "north" in text and "south" in text
    wrong = run(BIN / "vmtrust", "--config-file", conf, "status", "--target", "west")
    assert wrong.returncode == 4
    assert wrong.stderr.strip().endswith("--target west: no such target (configured: north, south)")


def test_a_target_that_is_down_fails_alone_and_shows_in_its_status(fed, tmp_path):
    from conftest import write_clouds_yaml
    from glance_server import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the cloud is down
    clouds = write_clouds_yaml(tmp_path / "clouds.yaml", dead, {"dead": ("svc", "member")})
    extra = TWO.format(tmp=tmp_path).replace(
        f"[target:south]\nstore = local\npath = {tmp_path}/south\n",
        f"[target:south]\nstore = glance\ncloud = dead\nclouds_file = {clouds}\n"
        "project_id = svc\napi_timeout = 5\n",
    )
    conf = fed(extra)
    done = run(BIN / "vmtrust-sync", "--config-file", conf)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmtrust-sync: target south: glance GET")
    assert "cannot connect" in lines[0]
    south = json.loads(
        run(BIN / "vmtrust", "--config-file", conf, "status", "--json", "--target", "south").stdout
    )
    north = json.loads(
        run(BIN / "vmtrust", "--config-file", conf, "status", "--json", "--target", "north").stdout
    )
    assert south["last_error"].startswith("target south: glance GET")
    assert south["last_success"] is None and south["subscriptions"][0]["last_error"]
    assert north["last_error"] is None and north["last_success"]
    (image,) = json.loads(
        run(BIN / "vmtrust", "--config-file", conf, "images", "--json", "--target", "north").stdout
    )
    assert image["state"] == "trusted"


def test_a_subscription_naming_an_unknown_target_stops_the_sync_in_one_line(fed, tmp_path, site):
    conf = fed(TWO.format(tmp=tmp_path), "    targets: [north, west]\n")
    done = run(BIN / "vmtrust-sync", "--config-file", conf)
    assert done.returncode == 4 and site.requests == []
    assert done.stderr.strip() == (
        "vmtrust-sync: subscription example: targets: no target or group named 'west' "
        "(configured: north, south, uk)"
    )


def test_a_subscription_can_name_a_group(fed, tmp_path, site):
    conf = fed(TWO.format(tmp=tmp_path), "    targets: [uk]\n")
    assert run(BIN / "vmtrust-sync", "--config-file", conf).returncode == 0
    north = run(BIN / "vmtrust", "--config-file", conf, "images", "--json", "--target", "north")
    south = run(BIN / "vmtrust", "--config-file", conf, "images", "--json", "--target", "south")
    assert len(json.loads(north.stdout)) == 1 and json.loads(south.stdout) == []


BAD = [
    ("targets = a/b\n", r"\[sync\] targets: 'a/b' is not a name"),
    ("targets = ../etc\n", r"\[sync\] targets: '../etc' is not a name"),
    ("targets = a, a\n[target:a]\nstore = local\n", r"\[sync\] targets: a is named twice"),
    ("targets = a\n", r"\[sync\] targets names a, but there is no \[target:a\] section"),
    ("targets = a\n[target:a]\npath = /x\n", r"\[target:a\] store is not set"),
    (
        "targets = a\n[target:a]\nstore = local\n[target:b]\nstore = local\n",
        r"\[target:b\]: \[sync\] targets does not name b",
    ),
    (
        "targets = a, b\n[target:a]\nstore = local\ngroups = b\n[target:b]\nstore = local\n",
        r"\[target:a\] groups: b is a target's name, not a group's",
    ),
    (
        "targets = a, b\n[target:a]\nstore = local\npath = /srv/x\n"
        "[target:b]\nstore = local\npath = /srv/x/\n",
        r"\[target:b\]: writes where target a writes \(local /srv/x\)",
    ),
    ("targets = a\n[target:a]\nstore = nowhere\n", r"\[sync\] store = nowhere: no such store"),
    ("targets = a\n[target:a]\nstore = local\nretire = shred\n", r"retire"),
    ("targets = a\n[target:a]\nstore = local\ngroups = x y\n", r"\[target:a\] groups: 'x y'"),
]


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_targets_are_one_config_line(tmp_path, ca_dir, extra, message):
    conf = make_conf([str(write_conf(tmp_path, ca_dir, extra))])
    context = StoreContext(seal_keys=[], state_dir=tmp_path / "state", syncing=False)
    with pytest.raises(ConfigError, match=message) as caught:
        build_targets(conf, context)
    assert "\n" not in str(caught.value)


def test_a_target_section_takes_its_store_options_and_defaults_to_the_stores_section(
    tmp_path, ca_dir
):
    extra = (
        "targets = a, b\n[store_local]\npath = /srv/base\ndisk_format = qcow2\n"
        "[target:a]\nstore = local\npath = /srv/a\n"
        "[target:b]\nstore = local\npath = /srv/b\ndisk_format = raw\nretire = hide\n"
    )
    conf = make_conf([str(write_conf(tmp_path, ca_dir, extra))])
    context = StoreContext(seal_keys=[], state_dir=tmp_path / "state", syncing=False)
    a, b = build_targets(conf, context)
    assert (str(a.store.root), a.store.disk_format("raw"), a.retire_mode) == (
        "/srv/a",
        "qcow2",
        "deactivate",
    )
    assert (str(b.store.root), b.store.disk_format("qcow2"), b.retire_mode) == (
        "/srv/b",
        "raw",
        "hide",
    )
    assert [spec.name for spec in named(conf)] == ["a", "b"]


def test_check_looks_at_every_target_and_at_the_subscriptions_routes(fed, tmp_path):
    conf = fed(TWO.format(tmp=tmp_path))
    done = run(BIN / "vmtrust-sync", "--config-file", conf, "--check")
    assert done.returncode == 0, done.stderr
    assert "target north: store local" in done.stdout and "target south: store local" in done.stdout
    conf = fed(TWO.format(tmp=tmp_path), "    targets: [east]\n")
    done = run(BIN / "vmtrust-sync", "--config-file", conf, "--check")
    assert done.returncode == 1
    assert "check: subscription example: targets: no target or group named 'east'" in done.stderr


def test_the_dry_run_prints_each_targets_plan_and_changes_nothing(fed, tmp_path, site):
    conf = fed(TWO.format(tmp=tmp_path))
    done = run(BIN / "vmtrust-sync", "--config-file", conf, "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["target north", "target south"]
    assert all("wn" in line for line in lines)
    assert "/wn.img" not in [p for p, _ in site.requests]
    assert not list((tmp_path / "north").glob("images/*"))


def _two_clouds(tmp_path: Path, first: str, second: str) -> Path:
    path = tmp_path / "clouds.yaml"
    path.write_text(f"clouds:\n  one:\n{first}  two:\n{second}")
    return path


PASSWORD_CLOUD = (
    "    auth:\n      auth_url: https://keystone.example:5000/v3{slash}\n"
    "      username: {user}\n      password: pw\n      project_name: images\n"
    "      project_domain_name: Default\n      user_domain_name: Default\n"
    "    region_name: RegionOne\n"
)


@pytest.mark.parametrize(
    ("first", "second", "shown"),
    [
        (  # two users, one project: two clouds.yaml names for one place
            PASSWORD_CLOUD.format(slash="", user="sync-a"),
            PASSWORD_CLOUD.format(slash="/", user="sync-b"),
            "glance project Default/images at https://keystone.example:5000/v3",
        ),
        (  # one token (one principal in one project) under two names
            "    auth_type: admin_token\n    auth:\n      endpoint: http://g.example:9292\n"
            "      token: t0k3n\n",
            "    auth_type: admin_token\n    auth:\n      endpoint: http://g.example:9292/\n"
            "      token: t0k3n\n",
            "glance project token:",
        ),
    ],
    ids=["password", "token"],
)
def test_two_clouds_yaml_names_for_one_glance_project_are_refused(
    tmp_path, ca_dir, first, second, shown
):
    clouds = _two_clouds(tmp_path, first, second)
    extra = (
        f"targets = a, b\n[target:a]\nstore = glance\ncloud = one\nclouds_file = {clouds}\n"
        f"[target:b]\nstore = glance\ncloud = two\nclouds_file = {clouds}\n"
    )
    conf = make_conf([str(write_conf(tmp_path, ca_dir, extra))])
    context = StoreContext(seal_keys=[], state_dir=tmp_path / "state", syncing=False)
    with pytest.raises(ConfigError) as caught:
        build_targets(conf, context)
    line = str(caught.value)
    assert line.startswith(f"[target:b]: writes where target a writes ({shown}")
    assert "t0k3n" not in line and "pw" not in line.replace("two", "") and "\n" not in line


def test_two_glance_projects_of_one_cloud_are_two_places(tmp_path, ca_dir):
    cloud = PASSWORD_CLOUD.format(slash="", user="sync-a")
    clouds = _two_clouds(tmp_path, cloud, cloud)
    extra = (
        f"targets = a, b\n[target:a]\nstore = glance\ncloud = one\nclouds_file = {clouds}\n"
        "project_id = p1\n"
        f"[target:b]\nstore = glance\ncloud = two\nclouds_file = {clouds}\nproject_id = p2\n"
    )
    conf = make_conf([str(write_conf(tmp_path, ca_dir, extra))])
    context = StoreContext(seal_keys=[], state_dir=tmp_path / "state", syncing=False)
    assert [t.name for t in build_targets(conf, context)] == ["a", "b"]


def test_one_local_folder_under_two_paths_is_refused(tmp_path, ca_dir):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    extra = (
        f"targets = a, b\n[target:a]\nstore = local\npath = {tmp_path}/real\n"
        f"[target:b]\nstore = local\npath = {tmp_path}/alias/../alias/\n"
    )
    conf = make_conf([str(write_conf(tmp_path, ca_dir, extra))])
    context = StoreContext(seal_keys=[], state_dir=tmp_path / "state", syncing=False)
    with pytest.raises(ConfigError, match=r"\[target:b\]: writes where target a writes"):
        build_targets(conf, context)


def _south_down(fed, tmp_path) -> Path:
    from conftest import write_clouds_yaml
    from glance_server import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    clouds = write_clouds_yaml(tmp_path / "clouds.yaml", dead, {"dead": ("svc", "member")})
    extra = TWO.format(tmp=tmp_path).replace(
        f"[target:south]\nstore = local\npath = {tmp_path}/south\n",
        f"[target:south]\nstore = glance\ncloud = dead\nclouds_file = {clouds}\n"
        "project_id = svc\napi_timeout = 5\n",
    )
    return fed(extra)


def test_status_without_target_shows_each_targets_own_outcome(fed, tmp_path):
    """Before: one row per subscription, the list phase's outcome (a success) next to
    every target's failures; south's outage showed nowhere in the default view."""
    conf = _south_down(fed, tmp_path)
    assert run(BIN / "vmtrust-sync", "--config-file", conf).returncode == 1
    text = run(BIN / "vmtrust", "--config-file", conf, "status").stdout
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("SUBSCRIPTION"))
    assert lines[header].split()[:2] == ["SUBSCRIPTION", "TARGET"]
    north, south = (lines[header + 1].split(), lines[header + 2].split())
    assert north[:2] == ["example", "north"] and north[-1] == "-"  # no error
    assert south[:2] == ["example", "south"] and "never" in south
    assert "target south: glance GET" in lines[header + 2]
    (row,) = json.loads(run(BIN / "vmtrust", "--config-file", conf, "status", "--json").stdout)
    by_target = {t["target"]: t for t in row["targets"]}
    assert sorted(by_target) == ["north", "south"]
    assert by_target["north"]["last_error"] is None and by_target["north"]["last_success"]
    assert by_target["south"]["last_error"].startswith("target south: glance GET")
    assert by_target["south"]["last_success"] is None


def test_nagios_goes_critical_on_any_targets_failure(fed, tmp_path):
    conf = _south_down(fed, tmp_path)
    assert run(BIN / "vmtrust-sync", "--config-file", conf).returncode == 1
    done = run(BIN / "vmtrust", "--config-file", conf, "status", "--nagios")
    assert done.returncode == 2, done.stdout
    assert done.stdout.startswith("VMTRUST CRITICAL - south/example: never synced")
    assert "north/example" not in done.stdout.split("|")[0]  # north is fine: not a problem


def test_nagios_is_ok_when_every_target_is(fed, tmp_path):
    conf = fed(TWO.format(tmp=tmp_path))
    assert run(BIN / "vmtrust-sync", "--config-file", conf).returncode == 0
    done = run(BIN / "vmtrust", "--config-file", conf, "status", "--nagios")
    assert done.returncode == 0, done.stdout
    assert "north/example_age" in done.stdout and "south/example_age" in done.stdout
