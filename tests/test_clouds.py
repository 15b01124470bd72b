"""``vmtrust.clouds``: the one clouds.yaml connection of the sync, ``launch`` and ``audit``.

Each caller names its cloud in its own words; nothing is contacted while connecting.
"""

from __future__ import annotations

import sys

import pytest
from cli_support import fails

from glance_sync.cloud import connect_cloud as store_connect
from vmtrust import clouds
from vmtrust.errors import ConfigError
from vmtrust.record import generate_key_pair


@pytest.fixture
def clouds_file(tmp_path):
    path = tmp_path / "clouds.yaml"
    path.write_text(
        "clouds:\n  here:\n    auth_type: admin_token\n    auth:\n"
        "      endpoint: http://127.0.0.1:9\n      token: t\n"
    )
    return path


def test_launch_and_audit_name_their_cloud_in_one_line(tmp_path, clouds_file, capsys):
    generate_key_pair(tmp_path / "seal.key")
    common = ["--cloud", "nowhere", "--clouds-file", clouds_file, "--owner", "p",
              "--seal-key", tmp_path / "seal.key.pub"]  # fmt: skip
    line = fails(capsys, 4, "launch", "--vo", "vo.example.org", "--find-only", *common)
    assert line.startswith(f"vmtrust: launch: cloud nowhere in {clouds_file}: ")
    line = fails(capsys, 4, "audit", *common)
    assert line.startswith(f"vmtrust: audit: cloud nowhere in {clouds_file}: ")


def test_a_known_cloud_connects_without_contacting_it(clouds_file):
    conn = store_connect("here", str(clouds_file), 7.0)
    assert float(conn.config.config["api_timeout"]) == 7.0
    assert conn.config.get_auth_args()["endpoint"] == "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match=r"^\[store_glance\] cloud gone in "):
        store_connect("gone", str(clouds_file))


def test_without_openstacksdk_the_line_says_what_to_install(monkeypatch, clouds_file):
    monkeypatch.setitem(sys.modules, "openstack", None)  # as if not installed
    with pytest.raises(ConfigError) as refused:
        clouds.connect_cloud("here", str(clouds_file), label="audit: cloud", app_name="t")
    assert str(refused.value) == (
        "audit: cloud here needs openstacksdk: pip install 'vmtrust[glance]'"
    )
