"""[store_glance] configuration: both ways to give credentials, and one-line errors.

The sync reaches Glance either through a clouds.yaml cloud or through
keystoneauth options in [store_glance] (as nova reads [glance]); both are
exercised against the real Glance of the test session.  Bad settings are
reported before anything is contacted, naming the option.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import write_clouds_yaml
from glance_server import SERVICE_ROLES, token
from test_sync_local import IMAGE_A, entry, publish

from glance_sync import settings as settings_mod
from glance_sync.service import SyncService
from glance_sync.stores.glance import GlanceStore, parse_vo_projects
from vmtrust.conf import make_conf
from vmtrust.errors import ConfigError
from vmtrust.policy import load_subscriptions
from vmtrust.record import generate_key_pair

BIN = Path(sys.executable).parent


def write_conf(tmp_path: Path, ca_dir: Path, glance_section: str, subs: str = "") -> Path:
    generate_key_pair(tmp_path / "seal.key")
    (tmp_path / "subs.yaml").write_text(subs or "subscriptions: []\n")
    path = tmp_path / "vmtrust.conf"
    path.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n[trust]\nca_dir = {ca_dir}\n"
        f"seal_key = {tmp_path}/seal.key\n[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\n"
        f"store = glance\n[store_glance]\n{glance_section}"
    )
    return path


def subscription(site, pki) -> str:
    return (
        f"subscriptions:\n  - name: example\n    url: {site.url('/site.list')}\n"
        f"    endorsers:\n      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n"
        "    vo: vo.example.org\n    approve: all\n"
    )


def test_keystoneauth_options_in_store_glance(tmp_path, ca_dir, glance, site, pki):
    project = "ks" + uuid.uuid4().hex[:12]
    conf_path = write_conf(
        tmp_path,
        ca_dir,
        "auth_type = admin_token\n"
        f"endpoint = {glance.url}\n"
        f"token = {token(project, SERVICE_ROLES)}\n"
        f"endpoint_override = {glance.url}\n"
        f"project_id = {project}\n",
        subscription(site, pki),
    )
    publish(site, pki, [entry("wn", IMAGE_A, site)], "1")
    conf = make_conf([str(conf_path)])
    settings = settings_mod.from_conf(conf)
    store = settings_mod.make_store(conf, settings)
    assert isinstance(store, GlanceStore) and store.project_id == project
    service = SyncService(settings, store)
    try:
        report = service.run(load_subscriptions(settings.subscriptions_file))
    finally:
        service.close()
    assert report.failures == [], report.failures
    (held,) = store.held()
    assert held.seal_ok and held.record.vo == "vo.example.org"
    assert held.record.store_id == held.store_id


def test_clouds_yaml_cloud_via_the_command_line(tmp_path, ca_dir, glance, site, pki):
    project = "cy" + uuid.uuid4().hex[:12]
    clouds = write_clouds_yaml(
        tmp_path / "clouds.yaml", glance.url, {"s": (project, SERVICE_ROLES)}
    )
    conf_path = write_conf(
        tmp_path,
        ca_dir,
        f"cloud = s\nclouds_file = {clouds}\nproject_id = {project}\n",
        subscription(site, pki),
    )
    publish(site, pki, [entry("wn", IMAGE_A, site)], "1")
    done = subprocess.run(
        [BIN / "vmtrust-sync", "--config-file", conf_path], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    again = subprocess.run(
        [BIN / "vmtrust-sync", "--config-file", conf_path, "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and again.stdout.strip() == "nothing to do", again.stdout


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("", r"\[store_glance\] neither cloud nor auth_type is set"),
        ("cloud = nowhere\nclouds_file = {clouds}\n", r"\[store_glance\] cloud nowhere"),
        ("cloud = s\nclouds_file = {clouds}\nvo_project = justone\n",
         r"\[store_glance\] vo_project 'justone': expected VO:PROJECT_ID"),
        ("cloud = s\nclouds_file = {clouds}\n", r"\[store_glance\] project_id: not set"),
        ("cloud = s\nclouds_file = {clouds}\nvisibility = everyone\n", r"visibility"),
        ("cloud = s\nclouds_file = {clouds}\nproject_id = p\nreconcile_passes = 0\n",
         r"reconcile_passes"),
        ("cloud = s\nclouds_file = {clouds}\nproject_id = p\nreconcile_hours = -1\n",
         r"reconcile_hours"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line_naming_the_option(tmp_path, ca_dir, section, message):
    clouds = write_clouds_yaml(tmp_path / "clouds.yaml", "http://127.0.0.1:9", {"s": ("p", "r")})
    conf_path = write_conf(tmp_path, ca_dir, section.format(clouds=clouds))
    done = subprocess.run(
        [BIN / "vmtrust-sync", "--config-file", conf_path], capture_output=True, text=True
    )
    assert done.returncode == 4, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert re.search(message, lines[0]), lines[0]


def test_vo_project_entries():
    assert parse_vo_projects(["cms:p1", "cms:p2:cloud2", "atlas:p3"]) == {
        "cms": [("p1", ""), ("p2", "cloud2")],
        "atlas": [("p3", "")],
    }
    for bad in ("cms", "cms:", ":p", "a:b:c:d"):
        with pytest.raises(ConfigError, match="vo_project"):
            parse_vo_projects([bad])


def test_the_sync_keeps_a_survey_of_its_images_and_readers_list_everything(tmp_path, ca_dir):
    """The incremental listing's options reach the store; readers never use a survey."""
    from datetime import timedelta

    from glance_sync.stores.base import StoreContext
    from glance_sync.stores.registry import store_from_conf

    clouds = write_clouds_yaml(tmp_path / "clouds.yaml", "http://127.0.0.1:9", {"s": ("p", "r")})
    conf_path = write_conf(
        tmp_path,
        ca_dir,
        f"cloud = s\nclouds_file = {clouds}\nproject_id = p\nreconcile_passes = 4\n"
        "reconcile_hours = 2.5\nchanges_margin = 30\n",
    )
    conf = make_conf([str(conf_path)])
    settings = settings_mod.from_conf(conf)
    survey = settings_mod.make_store(conf, settings).surveyor.file
    assert survey is not None
    assert (survey.reconcile_passes, survey.reconcile_hours) == (4, 2.5)
    assert survey.margin == timedelta(seconds=30) and survey.project == "p"
    assert survey.state_dir == settings.state_dir
    reader = StoreContext([settings.seal_key.public_key()], settings.state_dir, syncing=False)
    assert store_from_conf(conf, reader).surveyor.file is None
