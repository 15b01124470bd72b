"""Per-target Prometheus metrics (issue 16): a sync over several targets, one-shot and
``--worker``, read with prometheus_client's own parser.

With one target the label sets are those of tests/test_sync_metrics.py (unchanged);
with several, what a target holds and remembers has a ``target`` label, and each
target's last pass has its own series.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import requests
from glance_server import free_port
from ops_support import BIN, make_site, run, wait_for
from test_sync_metrics import samples

from glance_sync.coordination import LocalCoordination

P = "vmtrust_sync_"


def two_targets(tmp_path: Path, ca_dir, site, pki, sync: str) -> Path:
    conf = make_site(tmp_path, ca_dir, site, pki, sync=f"{sync}targets = north, south\n")
    with conf.open("a") as out:
        out.write(
            f"[target:north]\nstore = local\npath = {tmp_path}/north\n"
            f"[target:south]\nstore = local\npath = {tmp_path}/south\n"
        )
    return conf


def value(found: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted({"store": "local", **labels}.items())))
    assert key in found, f"{key} not among {sorted(k for k in found if k[0] == name)}"
    return found[key]


def targets_of(found: dict, name: str) -> set[str]:
    return {dict(labels).get("target", "") for (n, labels) in found if n == name}


def test_each_target_has_its_own_images_and_last_pass(tmp_path, ca_dir, site, pki):
    textfile = tmp_path / "vmtrust.prom"
    conf = two_targets(tmp_path, ca_dir, site, pki, f"metrics_textfile = {textfile}\n")
    assert run("vmtrust-sync", conf).returncode == 1  # the bad image and two lists fail
    found = samples(textfile.read_text())
    for target in ("north", "south"):  # one image each: not the sum of both stores (was 2)
        mine = {"subscription": "example", "target": target}
        assert value(found, P + "images", **mine, state="trusted") == 1
        assert value(found, P + "images", **mine, state="failing") == 1  # the bad checksum
        assert value(found, P + "images", **mine, state="retired") == 0
        assert value(found, P + "last_success_timestamp_seconds", **mine) > 1e9
        assert value(found, P + "list_expiry_timestamp_seconds", **mine) > 1e9
        assert value(found, P + "last_pass_duration_seconds", **mine) > 0
        broken = {"subscription": "broken", "target": target}
        assert value(found, P + "last_success_timestamp_seconds", **broken) == 0
        assert value(found, P + "target_last_pass_timestamp_seconds", target=target) > 1e9
        assert value(found, P + "target_pass_failed", target=target) == 1
        assert value(found, P + "target_last_success_timestamp_seconds", target=target) == 0
    assert targets_of(found, P + "images") == {"north", "south"}
    # downloads and refusals happen once for every target: no target label
    assert value(found, P + "transferred_bytes_total", subscription="example") > 0
    assert targets_of(found, P + "transferred_bytes_total") == {""}
    assert targets_of(found, P + "verification_failures_total") == {""}
    assert value(found, P + "pass_failures") == 4  # two lists, the bad image in each target


def test_a_worker_serves_the_metrics_of_the_targets_it_holds(tmp_path, ca_dir, site, pki):
    port = free_port()
    conf = two_targets(tmp_path, ca_dir, site, pki, f"metrics_address = 127.0.0.1:{port}\n")
    url = f"http://127.0.0.1:{port}/metrics"
    other = LocalCoordination(tmp_path / "state")  # another process holds south's lock
    other.start()

    def scrape() -> dict:
        try:
            return samples(requests.get(url, timeout=5).text)
        except requests.ConnectionError:
            return {}

    with other.locked("south") as held:
        assert held
        worker = subprocess.Popen(
            [BIN / "vmtrust-sync", "--config-file", conf, "--worker", "--interval", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for(lambda: (P + "target_pass_failed", (("store", "local"), ("target", "north")))
                     in scrape(), what="the worker's first round")  # fmt: skip
            found = scrape()
            assert value(found, P + "images", subscription="example", target="north",
                         state="trusted") == 1  # fmt: skip
            assert targets_of(found, P + "images") == {"north"}  # south is not this worker's
            assert targets_of(found, P + "target_last_pass_timestamp_seconds") == {"north"}
            assert value(found, P + "pass_end_timestamp_seconds") > 1e9
        except BaseException:
            worker.kill()
            raise
    # south's lock is free: the worker's next rounds hold both
    try:
        wait_for(lambda: "south" in targets_of(scrape(), P + "images"), what="south's round")
        found = scrape()
        assert value(found, P + "images", subscription="example", target="south",
                     state="trusted") == 1  # fmt: skip
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    time.sleep(0.1)
    assert scrape() == {}  # the server went with the worker
