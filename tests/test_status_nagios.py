"""``vmtrust status --nagios``: the Nagios/ARGO plugin convention, thresholds, real state."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import list_document
from cryptography.hazmat.primitives import serialization
from ops_support import WN, image, make_site, publish, run, subscription
from test_sync_check import snapshot

from vmtrust import devpki, imagelist, smime
from vmtrust.anchors import CrlState
from vmtrust.errors import ConfigError
from vmtrust.nagios import CRITICAL, OK, UNKNOWN, WARNING, Subscription, Thresholds, evaluate
from vmtrust.truststore import subject_hash

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
#: 'label'=value[UOM];[warn];[crit];[min];[max], as the plugin guidelines define it
PERF = re.compile(r"^'[^'=]+'=-?\d+(s|)?;[\d:]*;[\d:]*;0$")
LINE = re.compile(r"^VMTRUST (OK|WARNING|CRITICAL|UNKNOWN) - [^|\n]+ \| (.*)$")


def sub(name="cms", age_h=1.0, expires_d=20.0, failing=0, error=None) -> Subscription:
    last = None if age_h is None else NOW - timedelta(hours=age_h)
    return Subscription(name, last, NOW + timedelta(days=expires_d), failing, error)


def crl(hours: float) -> CrlState:
    return CrlState("/DC=org/CN=CA", next_update=NOW + timedelta(hours=hours))


def verdict(subs, crls=(), **limits):
    result = evaluate(subs, crls, NOW, Thresholds(**limits))
    match = LINE.match(result.line)
    assert match, result.line
    for item in match.group(2).split():
        assert PERF.match(item), item
    return result.code, result.line


@pytest.mark.parametrize(
    ("subs", "crls", "code", "text"),
    [
        ([sub()], [crl(100)], OK, "1 subscription in sync, 1 CRL valid"),
        ([sub(age_h=7)], [], WARNING, "cms: last success 7.0 h ago"),
        ([sub(age_h=30, error="HTTP 404")], [], CRITICAL,
         "cms: last success 30.0 h ago (HTTP 404)"),
        ([sub(age_h=None, error="HTTP 404")], [], CRITICAL, "cms: never synced: HTTP 404"),
        ([sub(failing=1)], [], WARNING, "cms: 1 failing image"),
        ([sub(expires_d=5)], [], WARNING, "cms: list expires in 5.0 d"),
        ([sub(expires_d=1)], [], CRITICAL, "cms: list expires in 1.0 d"),
        ([sub(expires_d=-1)], [], CRITICAL, "cms: list expired"),
        ([sub()], [crl(20)], WARNING, "CRL of /DC=org/CN=CA: next update in 20.0 h"),
        ([sub()], [crl(3)], CRITICAL, "CRL of /DC=org/CN=CA: next update in 3.0 h"),
        ([sub()], [CrlState("/CN=x", problem="no valid CRL for CA /CN=x")], CRITICAL,
         "no valid CRL for CA /CN=x"),
    ],
)  # fmt: skip
def test_each_threshold(subs, crls, code, text):
    got, line = verdict(subs, crls)
    assert got == code and text in line


def test_the_worst_wins_and_every_problem_is_named():
    code, line = verdict([sub("a", failing=2), sub("b", age_h=None)], [crl(10)])
    assert code == CRITICAL
    assert "a: 2 failing images; b: never synced; CRL of /DC=org/CN=CA" in line


def test_thresholds_are_options():
    assert verdict([sub(failing=3)], failing_critical=3)[0] == CRITICAL
    assert verdict([sub(failing=3)], failing_warning=0)[0] == OK
    assert verdict([sub(age_h=30)], stale_critical=0)[0] == WARNING  # critical off


def test_performance_data_carries_values_and_levels():
    _, line = verdict([sub(age_h=2, expires_d=10, failing=1)], [crl(48)])
    perf = line.split(" | ")[1].split()
    assert perf == [
        "'cms_age'=7200s;21600;86400;0",
        "'cms_failing'=1;1;;0",
        "'cms_expiry'=864000s;604800:;172800:;0",
        "'crl_next_update'=172800s;86400:;21600:;0",
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stale_warning": "x"}, "--stale-warning 'x': not a number"),
        ({"crl_critical": "-1"}, "--crl-critical '-1': must be 0 or more"),
        ({"failing_warning": "1.5"}, "--failing-warning '1.5': not a number"),
        ({"stale_warning": "30"}, "--stale-critical must be more than --stale-warning"),
        ({"expiry_critical": "9"}, "--expiry-critical must be less than --expiry-warning"),
        ({"crl_warning": "nan"}, "--crl-warning 'nan': must be 0 or more"),
    ],
)
def test_bad_thresholds(options, message):
    with pytest.raises(ConfigError) as caught:
        Thresholds.parse(**options)
    assert str(caught.value) == message


# --- the command, on a real site ---------------------------------------------------------


def probe(conf: Path, *args: str):
    result = run("vmtrust", conf, "status", "--nagios", *args)
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and result.stderr == "", (result.stdout, result.stderr)
    assert LINE.match(lines[0]) or lines[0].startswith("VMTRUST UNKNOWN - "), lines[0]
    return result.returncode, lines[0]


@pytest.fixture
def good(tmp_path, ca_dir, site, pki) -> Path:
    conf = make_site(tmp_path, ca_dir, site, pki)
    publish(site, "/example.list", pki.endorser, [image(site, "wn", WN)])
    (tmp_path / "subs.yaml").write_text(
        "subscriptions:\n" + subscription("example", site.url("/example.list"), pki.endorser)
    )
    return conf


def test_a_site_in_sync_is_ok_and_reading_changes_nothing(good, tmp_path):
    assert run("vmtrust-sync", good).returncode == 0
    before = snapshot(tmp_path / "state")
    code, line = probe(good)
    assert code == OK and line.startswith("VMTRUST OK - 1 subscription in sync, 1 CRL valid |")
    assert snapshot(tmp_path / "state") == before  # no -wal or -shm made by reading
    assert run("vmtrust", good, "status", "--json").returncode == 0
    assert snapshot(tmp_path / "state") == before


def test_failures_of_a_real_pass(tmp_path, ca_dir, site, pki):
    conf = make_site(tmp_path, ca_dir, site, pki)
    run("vmtrust-sync", conf)
    code, line = probe(conf)
    assert code == CRITICAL
    assert "example: 1 failing image" in line and "broken: never synced: " in line
    assert "revoked: never synced: " in line and "HTTP 404" in line


def test_stale_by_option(good):
    run("vmtrust-sync", good)
    time.sleep(0.5)  # older than 0.0001 h (0.36 s), however fast the sync and the probe start
    code, line = probe(good, "--stale-warning", "0.0001")
    assert code == WARNING and "example: last success 0.0 h ago" in line


def test_a_list_close_to_expiry(good, site, pki):
    document = list_document(pki.endorser, expires=datetime.now(UTC) + timedelta(days=3))
    document["hv:imagelist"]["hv:images"] = [image(site, "wn", WN)]
    site.files["/example.list"] = smime.sign(
        imagelist.dumps(document), pki.endorser.cert, pki.endorser.key
    )
    assert run("vmtrust-sync", good).returncode == 0
    code, line = probe(good)
    assert code == WARNING and "example: list expires in 3.0 d" in line
    assert probe(good, "--expiry-critical", "4", "--expiry-warning", "5")[0] == CRITICAL


def test_a_crl_close_to_its_next_update(good, ca_dir, pki):
    assert run("vmtrust-sync", good).returncode == 0
    now = datetime.now(UTC)
    crl_ = devpki.make_crl(
        pki.ca, [pki.revoked.cert], last_update=now - timedelta(days=2),
        next_update=now + timedelta(hours=10),
    )  # fmt: skip
    path = ca_dir / f"{subject_hash(pki.ca.cert)}.r0"
    path.write_bytes(crl_.public_bytes(serialization.Encoding.PEM))
    code, line = probe(good)
    assert code == WARNING and f"CRL of {pki.ca.dn}: next update in 10.0 h" in line
    path.unlink()
    code, line = probe(good)
    assert code == CRITICAL and f"no valid CRL for CA {pki.ca.dn}" in line


def test_unknown_is_one_line_and_exit_3(good, tmp_path):
    code, line = probe(good, "--stale-warning", "soon")
    assert (code, line) == (UNKNOWN, "VMTRUST UNKNOWN - --stale-warning 'soon': not a number")
    (tmp_path / "subs.yaml").write_text("subscriptions: [")
    code, line = probe(good)
    assert code == UNKNOWN and "subs.yaml" in line
    code, line = probe(tmp_path / "missing.conf")
    assert code == UNKNOWN and "configuration file not found" in line


def test_a_hostile_reason_cannot_forge_performance_data_or_lines():
    error = "HTTP 500 x | 'evil'=1;;;0\nVMTRUST OK - fine"
    code, line = verdict([sub(age_h=None, error=error)])
    assert code == CRITICAL and line.count("|") == 1 and "\n" not in line
    assert "evil" not in line.split(" | ")[1]  # the perfdata holds only what the probe wrote
