"""The store registry: one way to pick and build a store, built-ins and plug-ins, and the hook.

``vmtrust-sync`` and ``vmtrust images``/``status`` run as processes on real
configuration files; a fourth store comes from a package installed for the
test (``tests/plugin_dist.py``) and syncs real images from the loopback site.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import plugin_dist
import pytest
from test_sync_local import IMAGE_A, entry, publish

from glance_sync import settings as settings_mod
from glance_sync.stores.base import StoreContext
from glance_sync.stores.local import LocalStore
from glance_sync.stores.registry import available, store_from_conf
from vmtrust.conf import make_conf
from vmtrust.record import generate_key_pair, load_private_key

BIN = Path(sys.executable).parent

PLUG_STORE = '''
from pathlib import Path

from oslo_config import cfg

from glance_sync.stores.local import LocalStore


class PlugStore(LocalStore):
    """A store from another package: the local layout, configured in its own section."""

    name = "plugdir"

    @classmethod
    def from_conf(cls, conf, context):
        conf.register_opts([cfg.StrOpt("path", default="")], group="store_plugdir")
        return cls(Path(conf.store_plugdir.path), context.seal_keys)


NOT_A_STORE = object()
'''


def write_conf(
    tmp_path: Path, ca_dir: Path, sync: str = "", extra: str = "", subs: str = ""
) -> Path:
    if not (tmp_path / "seal.key").exists():
        generate_key_pair(tmp_path / "seal.key")
    (tmp_path / "subs.yaml").write_text(subs or "subscriptions: []\n")
    path = tmp_path / "vmtrust.conf"
    path.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
        f"[trust]\nca_dir = {ca_dir}\nseal_key = {tmp_path}/seal.key\n"
        f"[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\nhttp_retries = 0\n{sync}"
        f"[store_local]\npath = {tmp_path}/store\n{extra}"
    )
    return path


def subscription(site, pki) -> str:
    return (
        f"subscriptions:\n  - name: example\n    url: {site.url('/site.list')}\n"
        f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
        "    approve: all\n"
    )


def run(program: str, *args, env=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / program, *map(str, args)], capture_output=True, text=True, timeout=120, env=env
    )


def one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def context(tmp_path: Path, syncing: bool = True) -> StoreContext:
    key = load_private_key(tmp_path / "seal.key")
    return StoreContext([key.public_key()], tmp_path / "state", syncing=syncing)


# --- built-in stores and names ------------------------------------------------------------


def test_the_built_in_stores_are_always_there():
    assert {"local", "glance", "ec2"} <= set(available())


def test_an_unknown_store_is_one_line_naming_the_available_ones(tmp_path, ca_dir):
    conf = write_conf(tmp_path, ca_dir, sync="store = s3\n")
    for done in (run("vmtrust-sync", "--config-file", conf),
                 run("vmtrust", "--config-file", conf, "images")):  # fmt: skip
        line = one_line(done, 4)
        assert "[sync] store = s3: no such store (available: ec2, glance, local" in line


def test_sync_and_site_commands_build_the_same_store(tmp_path, ca_dir):
    conf = make_conf([str(write_conf(tmp_path, ca_dir, extra="disk_format = QCOW2 \n"))])
    settings = settings_mod.from_conf(conf)
    synced = settings_mod.make_store(conf, settings)
    read = store_from_conf(conf, context(tmp_path, syncing=False))
    assert type(synced) is type(read) is LocalStore
    assert synced.root == read.root == tmp_path / "store"
    assert synced.target_format == read.target_format == "qcow2"
    assert synced.seal_keys[0].public_bytes_raw() == read.seal_keys[0].public_bytes_raw()


# --- the hook: the local store's, checked at start, not armed for readers -----------------


@pytest.mark.parametrize(
    ("hook", "problem"),
    [
        ("hook.sh", "not an absolute path"),
        ("{tmp}/missing.sh", "no such program"),
        ("{tmp}/plain.sh", "not executable"),
        ("{tmp}", "no such program"),  # a directory
    ],
)
def test_a_bad_hook_stops_the_sync_before_anything_is_touched(tmp_path, ca_dir, hook, problem):
    (tmp_path / "plain.sh").write_text("#!/bin/sh\n")
    conf = write_conf(tmp_path, ca_dir, extra=f"hook = {hook.format(tmp=tmp_path)}\n")
    line = one_line(run("vmtrust-sync", "--config-file", conf), 4)
    assert "[store_local] hook" in line and line.endswith(problem), line
    assert not (tmp_path / "store").exists()


def test_readers_do_not_arm_or_check_the_hook(tmp_path, ca_dir):
    """``vmtrust images`` runs as other users than the sync: the sync's hook is not theirs."""
    conf = write_conf(tmp_path, ca_dir, extra=f"hook = {tmp_path}/missing.sh\n")
    assert store_from_conf(make_conf([str(conf)]), context(tmp_path, syncing=False)).hook is None
    done = run("vmtrust", "--config-file", conf, "images", "--json")
    assert done.returncode == 0 and json.loads(done.stdout) == [], done.stderr


def test_the_hook_runs_from_configuration_with_vmcatcher_events(tmp_path, ca_dir, site, pki):
    log = tmp_path / "events.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$VMCATCHER_EVENT_TYPE $VMCATCHER_EVENT_FILENAME" >> {log}\n')
    hook.chmod(0o755)
    conf = write_conf(tmp_path, ca_dir, extra=f"hook = {hook}\n", subs=subscription(site, pki))
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    done = run("vmtrust-sync", "--config-file", conf)
    assert done.returncode == 0, done.stderr
    (event,) = log.read_text().splitlines()
    kind, filename = event.split(" ", 1)
    assert kind == "AvailablePostfix" and Path(filename).read_bytes() == IMAGE_A


def test_the_hook_is_not_run_by_another_store_and_the_sync_says_so(
    tmp_path, ca_dir, site, pki, glance, caplog
):
    """Before the registry the [store_local] hook ran for Glance too (and a glancepush
    handler would upload every image a second time)."""
    import uuid

    from conftest import write_clouds_yaml
    from glance_server import SERVICE_ROLES

    from glance_sync.service import SyncService
    from vmtrust.policy import load_subscriptions

    log = tmp_path / "events.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\necho ran >> {log}\n")
    hook.chmod(0o755)
    project = "hk" + uuid.uuid4().hex[:12]
    clouds = write_clouds_yaml(
        tmp_path / "clouds.yaml", glance.url, {"s": (project, SERVICE_ROLES)}
    )
    conf_path = write_conf(
        tmp_path,
        ca_dir,
        sync="store = glance\n",
        extra=f"hook = {hook}\n[store_glance]\ncloud = s\nclouds_file = {clouds}\n"
        f"project_id = {project}\n",
        subs=subscription(site, pki),
    )
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    conf = make_conf([str(conf_path)])
    settings = settings_mod.from_conf(conf)
    with caplog.at_level(logging.WARNING):
        store = settings_mod.make_store(conf, settings)
    assert f"[store_local] hook {hook} is not run" in caplog.text
    service = SyncService(settings, store)
    try:
        report = service.run(load_subscriptions(settings.subscriptions_file))
    finally:
        service.close()
    assert report.exit_code == 0 and any("stored a" in line for line in report.done)
    assert not log.exists()


# --- a fourth store as a plug-in --------------------------------------------------------------


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    return plugin_dist.make(
        tmp_path / "plugin",
        {
            "vmtrust.stores": {
                "plugdir": "plugstore:PlugStore",
                "broken": "nosuchmodule:Store",
                "notastore": "plugstore:NOT_A_STORE",
            }
        },
        {"plugstore": PLUG_STORE},
    )


def test_a_plugin_store_syncs_and_the_site_commands_read_it(tmp_path, ca_dir, site, pki, plugin):
    conf = write_conf(
        tmp_path,
        ca_dir,
        sync="store = plugdir\n",
        extra=f"[store_plugdir]\npath = {tmp_path}/plugged\n",
        subs=subscription(site, pki),
    )
    publish(site, pki, [entry("a", IMAGE_A, site)], "1")
    env = plugin_dist.environment(plugin)
    done = run("vmtrust-sync", "--config-file", conf, env=env)
    assert done.returncode == 0, done.stderr
    (stored,) = (tmp_path / "plugged/images/a").glob("*.img")
    assert stored.read_bytes() == IMAGE_A and not (tmp_path / "store").exists()
    done = run("vmtrust", "--config-file", conf, "images", "--json", env=env)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert (row["identifier"], row["state"], row["location"]) == ("a", "trusted", str(stored))


def test_a_plugin_cannot_take_a_built_in_name(tmp_path, ca_dir, monkeypatch, caplog):
    shadow = plugin_dist.make(
        tmp_path / "shadow", {"vmtrust.stores": {"local": "plugstore:PlugStore"}},
        {"plugstore": PLUG_STORE},
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(shadow))
    with caplog.at_level(logging.WARNING):
        stores = available()
    assert stores["local"].value == "glance_sync.stores.local:LocalStore"
    assert "store plug-in local (plugstore:PlugStore) ignored: local is the built-in" in caplog.text
    conf = make_conf([str(write_conf(tmp_path, ca_dir))])
    assert type(store_from_conf(conf, context(tmp_path))) is LocalStore


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("broken", "nosuchmodule:Store cannot be loaded: ModuleNotFoundError"),
        ("notastore", "plugstore:NOT_A_STORE is not a store"),
    ],
)
def test_a_plugin_that_is_no_store_is_one_line(tmp_path, ca_dir, plugin, name, problem):
    conf = write_conf(tmp_path, ca_dir, sync=f"store = {name}\n")
    env = plugin_dist.environment(plugin)
    for done in (run("vmtrust-sync", "--config-file", conf, env=env),
                 run("vmtrust", "--config-file", conf, "images", env=env)):  # fmt: skip
        assert f"[sync] store = {name}: {problem}" in one_line(done, 4)
