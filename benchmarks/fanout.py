"""Benchmark: one image to 4 Glance clouds — vmtrust's fan-out against EGI's loop of atrope runs.

Starts ``--clouds`` real Glance 33 processes (``tests/glance_server.py``: uWSGI, one
process each, as Glance is deployed — ``VMTRUST_GLANCE_SERVER=gunicorn`` for gunicorn —
sqlite, file store, loopback; ``make venv-glance``) and serves one image of
``--mib`` MiB of random bytes and its signed EGI list from a separate
``python -m http.server`` process.  Then, in the same run, each in fresh projects:

1. **vmtrust single target**: one ``vmtrust-sync`` pass into one cloud;
2. **vmtrust fan-out**: one ``vmtrust-sync`` pass with ``[sync] targets`` naming
   every cloud — one download, streamed to all of them at once;
3. **the loop**: one ``atrope dispatch`` per cloud, one after the other, each with
   its own cache (atrope 2.0.0 from ``.venv-atrope``, authenticating through the
   Keystone stand-in the tests use) — what EGI's central sync runs today.

Each run's images are checked, then deleted (and atrope's cached copies), so that no
run pays for the files of the runs before it.

Printed: the wall times, the ratios (targets: fan-out at least 3 times faster than
the loop, at most 1.6 times the single target) and the peak resident memory of
the fan-out's ``vmtrust-sync`` process (target under 200 MiB), with the machine
and its load average.  The CPU time of each ``vmtrust-sync`` process is printed too, and
that of the Glance processes during it:
here every Glance runs on the same machine, so on few cores the clouds' own work
(Glance hashes and writes every upload) bounds the fan-out, which in a federation
runs on as many hosts as there are clouds.

Usage: ``python benchmarks/fanout.py [--mib 1024] [--clouds 4] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from glance_server import (  # noqa: E402
    SERVICE_ROLES,
    GlanceServer,
    available,
    token,
)
from openstack_standin import Cloud, StandIn  # noqa: E402
from transfer import entry, make_image, web_server  # noqa: E402

from vmtrust import authoring, devpki, imagelist, smime  # noqa: E402

BIN = Path(sys.executable).parent
ATROPE = Path(os.environ.get("VMTRUST_ATROPE_VENV", ROOT / ".venv-atrope")) / "bin" / "atrope"


def publish(pki: devpki.DevPKI, www: Path, base: str, size: int, sha: str) -> str:
    """An EGI list (the AppDB keys atrope requires) with the one image; its URL."""
    doc = authoring.new_list(
        title="fan-out",
        description="",
        source="",
        uri=f"{base}/fanout.list",
        endorser_dn=pki.endorser.dn,
        endorser_ca=pki.endorser.ca_dn,
        vo="vo.example.org",
    )
    item = entry("big", f"{base}/big.img", size, sha, "big worker node")
    item["hv:image"].update(
        {
            "hv:format": "raw",
            "sl:osname": "AlmaLinux",
            "ad:group": "EGI",
            "ad:mpuri": "https://appdb.example.org/store/vm/image/big:1/",
            "ad:user:fullname": "Jane Endorser",
            "ad:user:guid": "0123-4567",
            "ad:user:uri": "https://appdb.example.org/store/person/jane",
        }
    )
    doc, _ = authoring.add_image(doc, item)
    body = smime.sign(imagelist.dumps(doc), pki.endorser.cert, pki.endorser.key)
    (www / "fanout.list").write_bytes(body)
    return f"{base}/fanout.list"


def _cloud(name: str, glance: GlanceServer, project: str) -> str:
    return (
        f"  {name}:\n    auth_type: admin_token\n    auth:\n"
        f"      endpoint: {glance.url}\n      token: '{token(project, SERVICE_ROLES)}'\n"
        f"    image_endpoint_override: {glance.url}\n    region_name: RegionOne\n"
    )


def vmtrust_conf(site: Path, clouds: list[tuple[GlanceServer, str]], ca_dir: Path, url, pki):
    """A vmtrust.conf with one Glance target per (cloud, project); its path."""
    site.mkdir()
    (site / "clouds.yaml").write_text(
        "clouds:\n" + "".join(_cloud(f"c{n}", g, p) for n, (g, p) in enumerate(clouds))
    )
    (site / "subs.yaml").write_text(
        f"subscriptions:\n  - name: bench\n    url: {url}\n    endorsers:\n"
        f"      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n    approve: all\n"
    )
    names = [f"c{n}" for n in range(len(clouds))]
    text = (
        f"[DEFAULT]\nstate_dir = {site}/state\n[trust]\nca_dir = {ca_dir}\n"
        f"seal_key = {site}/seal.key\n[sync]\nsubscriptions_file = {site}/subs.yaml\n"
        f"store = glance\n[store_glance]\nclouds_file = {site}/clouds.yaml\n"
    )
    if len(clouds) == 1:
        text += f"cloud = c0\nproject_id = {clouds[0][1]}\n"
    else:
        text = text.replace("store = glance\n", f"store = glance\ntargets = {', '.join(names)}\n")
        for name, (_, project) in zip(names, clouds, strict=True):
            text += f"[target:{name}]\nstore = glance\ncloud = {name}\nproject_id = {project}\n"
    (site / "vmtrust.conf").write_text(text)
    subprocess.run(
        [BIN / "vmtrust", "keygen", "--out", site / "seal.key"], check=True, capture_output=True
    )
    return site / "vmtrust.conf"


def timed(argv: list, env: dict | None = None) -> tuple[float, int, str, float]:
    """Run ``argv``; its wall time, peak resident memory (KiB), standard error and CPU time."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [str(a) for a in argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    err = process.stderr.read().decode(errors="replace") if process.stderr else ""
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed: {err[-3000:]}")
    return elapsed, usage.ru_maxrss, err, usage.ru_utime + usage.ru_stime


def glance_cpu(glances: list[GlanceServer]) -> float:
    """CPU seconds the Glance processes (uWSGI's master and its workers) used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for glance in glances:
        assert glance.process is not None
        pid = glance.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for one in [str(pid), *children]:
            fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def trusted_in(glance: GlanceServer, project: str, sha: str) -> None:
    """Check that ``project`` holds the image, then remove it: each run starts with the
    clouds' disks and the page cache as the first found them (1 GiB files left behind
    by the runs before would make the kernel reclaim memory inside the next run's Glance)."""
    api = glance.api(project)
    reply = api.get(f"{glance.url}/v2/images", timeout=60).json()["images"]
    assert [i["os_hash_value"] for i in reply] == [sha], reply
    for image in reply:
        api.delete(f"{glance.url}/v2/images/{image['id']}", timeout=60).raise_for_status()
    os.sync()


def atrope_run(work: Path, keystone: Cloud, project: str, ca_dir: Path, url: str, pki) -> float:
    """One ``atrope dispatch`` into ``project`` with its own cache; its wall time."""
    work.mkdir()
    (work / "sources.yaml").write_text(
        f"bench:\n  url: {url}\n  enabled: true\n"
        f"  endorser: {{dn: '{pki.endorser.dn}', ca: '{pki.endorser.ca_dn}'}}\n"
        "  token: 'list-token'\n  prefix: ''\n  project: ''\n"
    )
    (work / "state").mkdir()
    conf = work / "atrope.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_path = {work}/state\nca_path = {ca_dir}\n"
        f"[sources]\nhepix_sources = {work}/sources.yaml\n[cache]\npath = {work}/cache\n"
        "[dispatchers]\ndispatcher = glance\n"
        f"[glance]\nauth_type = v3password\nauth_url = {keystone.auth_url}\nusername = atrope\n"
        f"password = secret\nuser_domain_name = Default\nproject_id = {project}\n"
    )
    elapsed, _, err, _ = timed(
        [ATROPE, "--config-file", conf, "dispatch"], env={**os.environ, "NO_PROXY": "*"}
    )
    if " ERROR " in err:
        raise SystemExit(f"atrope reported an error: {err[-3000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="image size (MiB)")
    parser.add_argument("--clouds", type=int, default=4, help="Glance clouds (targets)")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    why_not = available() or (None if ATROPE.exists() else f"no atrope at {ATROPE}")
    if why_not:
        print(f"benchmark needs Glance and atrope: {why_not}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vmtrust-fanout-", dir=args.dir) as tmp:
        work = Path(tmp)
        pki = devpki.DevPKI(work)
        ca_dir = pki.install()
        www = work / "www"
        www.mkdir()
        size = args.mib * 1024 * 1024
        sha = make_image(www / "big.img", size)
        glances = [GlanceServer(work / f"glance{n}").start() for n in range(args.clouds)]
        try:
            with web_server(www) as base:
                url = publish(pki, www, base, size, sha)
                print(
                    f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
                    f"{platform.python_version()}; load average before "
                    f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.clouds} Glance 33 "
                    f"processes ({glances[0].server}, one worker each, sqlite, file store); "
                    f"{args.mib} MiB image"
                )
                os.sync()
                # 1. single target (first: no run before it to clean up after)
                one = [(glances[0], "single")]
                conf = vmtrust_conf(work / "single", one, ca_dir, url, pki)
                before = glance_cpu(glances)
                t_one, rss_one, _, cpu_one = timed([BIN / "vmtrust-sync", "--config-file", conf])
                clouds_one = glance_cpu(glances) - before
                trusted_in(glances[0], "single", sha)
                # 2. fan-out
                fan = [(g, f"fan{n}") for n, g in enumerate(glances)]
                conf = vmtrust_conf(work / "fan", fan, ca_dir, url, pki)
                before = glance_cpu(glances)
                t_fan, rss_fan, _, cpu_fan = timed([BIN / "vmtrust-sync", "--config-file", conf])
                clouds_fan = glance_cpu(glances) - before
                for g, project in fan:
                    trusted_in(g, project, sha)
                # 3. the loop of atrope runs
                t_loop = 0.0
                for n, g in enumerate(glances):
                    with StandIn(Cloud(g.url, {"atrope": "secret"})) as keystone:
                        t_loop += atrope_run(work / f"atrope{n}", keystone, f"loop{n}", ca_dir,
                                             url, pki)  # fmt: skip
                    shutil.rmtree(work / f"atrope{n}" / "cache")  # its copy, as vmtrust keeps none
                    trusted_in(g, f"loop{n}", sha)
        finally:
            for g in glances:
                g.stop()
    print(
        f"vmtrust fan-out to {args.clouds} clouds: {t_fan:7.2f} s, peak RSS "
        f"{rss_fan / 1024:.0f} MiB (target < 200), CPU {cpu_fan:.2f} s; the Glance "
        f"processes' CPU meanwhile {clouds_fan:.2f} s\n"
        f"atrope loop, one run per cloud:  {t_loop:7.2f} s\n"
        f"vmtrust single target:           {t_one:7.2f} s, peak RSS {rss_one / 1024:.0f} MiB, "
        f"CPU {cpu_one:.2f} s; Glance's CPU {clouds_one:.2f} s\n"
        f"loop / fan-out = {t_loop / t_fan:.2f} (target >= 3); fan-out / single = "
        f"{t_fan / t_one:.2f} (target <= 1.6); load average after "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
