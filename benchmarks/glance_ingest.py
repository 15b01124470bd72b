"""Benchmark: images into a real Glance 33 — the whole sync against a plain openstacksdk upload.

Starts the same real Glance the tests use (``tests/glance_server.py``: uWSGI,
sqlite, file store, loopback; needs ``make venv-glance``) and, in one run:

1. **Ingest.** A 1 GiB image (random bytes) is served by a separate
   ``python -m http.server`` process.  Baseline: ``conn.image.create_image(…,
   filename=…)`` of the same local file with openstacksdk (no local hashing).
   vmtrust: one ``vmtrust-sync`` pass as a process — fetch and verify the signed
   list, download the image, hash it, stream it into Glance, check Glance's
   ``os_hash_value``, seal and commit.  Interleaved rounds, medians; target ratio
   ≤ 1.0.  Beside it, the same openstacksdk upload as a process of its own (a
   script that imports openstacksdk, reads ``clouds.yaml`` and uploads: what a
   command pays before its first byte, as ``vmtrust-sync`` does), and Glance's
   own share: the upload request (``PUT …/file``) of the in-process baseline,
   which no client can go below.
   Then atrope 2.0.0 (``.venv-atrope``, ``make venv-atrope``; the Keystone stand-in
   of the tests in front of the same Glance) syncs the same image from an AppDB-style
   list: ``atrope dispatch`` downloads it into its cache, checks it, uploads it.
   Target: vmtrust-sync at least 2.3 times faster.
2. **No-op re-sync.** 500 and 10,000 trusted images already in Glance (tiny ones:
   all but three written into the test Glance's database as the sync's create leaves
   them, ``benchmarks/fill.py``, the last three stored by the sync itself and
   compared with them); ``vmtrust-sync`` passes that have nothing to do, listing
   only what changed (decision 0010).  Reported: wall time, CPU time and peak
   memory of the process, Glance API requests (Glance's access log; a small
   constant plus paging, not one per image), and beside them the time Glance itself
   takes to list every managed image (targets: under 1 s with 500 images, at most
   1.2 times Glance's listing with 10,000), and a pass that lists everything (the
   full reconcile, every ``reconcile_passes`` passes).
3. **No-op re-sync, shared with a VO project.** The first size's images shared with a
   VO project whose cloud lets the sync accept (``vo_project = VO:PROJECT:CLOUD``):
   every pass also asks Glance which images that project accepted — one more
   request per VO project, still not one per image.

Usage: ``python benchmarks/glance_ingest.py [--gib 1] [--rounds 3] [--images 500,10000]
[--no-atrope] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fill  # noqa: E402
from atrope_run import Source as AtropeSource  # noqa: E402
from atrope_run import run_atrope  # noqa: E402
from glance_server import (  # noqa: E402
    MEMBER_ROLES,
    SERVICE_ROLES,
    GlanceServer,
    available,
    token,
)
from openstack_standin import Cloud, StandIn  # noqa: E402
from transfer import (  # noqa: E402
    entry,
    make_image,
    publish,
    run_sync,
    site_files,
    web_server,
)

from vmtrust import devpki  # noqa: E402

BIN = Path(sys.executable).parent
ATROPE_VERSION = "2.0.0"  # the Makefile's, in .venv-atrope


def _cloud(name: str, glance: GlanceServer, project: str, roles: str) -> str:
    return (
        f"  {name}:\n    auth_type: admin_token\n    auth:\n"
        f"      endpoint: {glance.url}\n      token: '{token(project, roles)}'\n"
        f"    image_endpoint_override: {glance.url}\n    region_name: RegionOne\n"
    )


def site_config(work: Path, name: str, glance: GlanceServer, ca_dir: Path, list_url: str, pki):
    """A vmtrust.conf storing into ``glance`` in project ``name``; returns its path."""
    site = work / name
    site.mkdir()
    (site / "clouds.yaml").write_text(
        "clouds:\n"
        + _cloud("sync", glance, name, SERVICE_ROLES)
        + _cloud("vo", glance, f"{name}-vo", MEMBER_ROLES)
    )
    conf = site_files(
        site,
        ca_dir,
        list_url,
        pki,
        f"store = glance\n[store_glance]\ncloud = sync\n"
        f"clouds_file = {site}/clouds.yaml\nproject_id = {name}\n",
    )
    subprocess.run(
        [BIN / "vmtrust", "keygen", "--out", site / "seal.key"], check=True, capture_output=True
    )
    return conf


USAGE: list[tuple[float, float]] = []  #: (CPU seconds, peak MiB) of measure()'s runs
RUSAGE: list[float] = []  #: CPU seconds of each measured vmtrust-sync process


def sync(conf: Path) -> float:
    start = time.perf_counter()
    subprocess.run([BIN / "vmtrust-sync", "--config-file", conf], check=True)
    return time.perf_counter() - start


def atrope_list(pki, www: Path, base: str, size: int, sha: str) -> str:
    """The big image in a list atrope accepts (AppDB's keys); its URL."""
    item = entry("big", f"{base}/big.img", size, sha)
    item["hv:image"].update({
        "sl:osname": "AlmaLinux",
        "hv:core_minimum": 1,
        "hv:ram_minimum": 2048,
        "ad:group": "EGI",
        "ad:mpuri": "https://appdb.example.org/store/vm/image/big:1/",
        "ad:user:fullname": "Jane Endorser",
        "ad:user:guid": "0123-4567",
        "ad:user:uri": "https://appdb.example.org/store/person/jane",
    })  # fmt: skip
    publish(pki, www, base, "atrope", [item])
    return f"{base}/atrope.list"


def atrope_pass(work: Path, keystone, glance, pki, ca_dir: Path, url: str, n: int, sha: str):
    """One ``atrope dispatch`` (fetch, verify, download into its cache, check, upload)."""
    project = f"atrope{n}"
    start = time.perf_counter()
    sources = {"bench": AtropeSource(url, pki.endorser.dn, pki.endorser.ca_dn)}
    done = run_atrope(work / project, keystone.auth_url, project, ca_dir, sources)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and " ERROR " not in done.stderr, done.stderr[-6000:]
    (stored,) = glance_get(glance, project, f"/v2/images?owner={project}")["images"]
    assert stored["os_hash_value"] == sha, stored
    glance_delete(glance, project, stored["id"])
    shutil.rmtree(work / project)
    return elapsed


#: the baseline as a command: openstacksdk imported, ``clouds.yaml`` read, the file uploaded
UPLOAD = """
import sys, openstack
clouds, name, path = sys.argv[1:4]
config = openstack.config.OpenStackConfig(config_files=[clouds]).get_one(cloud="sync")
conn = openstack.connection.Connection(config=config)
image = conn.image.create_image(name=name, filename=path, disk_format="raw",
                                container_format="bare", wait=True)
print(image.id)
"""


def upload_process(clouds: Path, name: str, image: Path) -> tuple[float, str]:
    """The openstacksdk upload as a process: (seconds, the new image's id)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", UPLOAD, str(clouds), name, str(image)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return time.perf_counter() - start, done.stdout.strip()


def put_seconds(glance: GlanceServer, image_id: str) -> float:
    """How long Glance took to take an image's bytes: its ``PUT …/file`` in the access log
    (uWSGI writes the line just after its answer: waited for, a moment)."""
    for _ in range(50):
        for line in reversed(glance.access_log.read_text().splitlines()):
            took = re.search(r"bytes in (\d+) msecs", line)  # uWSGI's request log
            if f"PUT /v2/images/{image_id}/file" in line and took:
                return int(took.group(1)) / 1000
        time.sleep(0.1)
    return float("nan")


def ingest(work, glance, pki, ca_dir, www, base, gib: float, rounds: int, atrope: bool) -> None:
    import openstack

    size = int(gib * 1024**3)
    image = www / "big.img"
    sha = make_image(image, size)
    os.sync()
    publish(pki, www, base, "big", [entry("big", f"{base}/big.img", size, sha)])
    atrope_url = atrope_list(pki, www, base, size, sha)
    clouds = site_config(work, "plain", glance, ca_dir, "", pki).parent / "clouds.yaml"
    region = openstack.config.OpenStackConfig(config_files=[str(clouds)]).get_one(cloud="sync")
    conn = openstack.connection.Connection(config=region)
    plain, ours, theirs, command, puts, our_puts = [], [], [], [], [], []
    with StandIn(Cloud(glance.url, {"atrope": "secret"})) as keystone:
        for n in range(rounds):
            start = time.perf_counter()
            created = conn.image.create_image(
                name=f"plain-{n}",
                filename=str(image),
                disk_format="raw",
                container_format="bare",
                wait=True,
            )
            plain.append(time.perf_counter() - start)
            puts.append(put_seconds(glance, created.id))
            conn.image.delete_image(created.id)
            os.sync()
            seconds, image_id = upload_process(clouds, f"command-{n}", image)
            command.append(seconds)
            conn.image.delete_image(image_id)
            os.sync()
            conf = site_config(work, f"ingest{n}", glance, ca_dir, f"{base}/big.list", pki)
            ours.append(sync(conf))
            reply = glance_get(glance, f"ingest{n}", "/v2/images?vmtrust_state=trusted")
            stored = reply["images"]
            assert len(stored) == 1 and stored[0]["os_hash_value"] == sha, stored
            our_puts.append(put_seconds(glance, stored[0]["id"]))
            glance_delete(glance, f"ingest{n}", stored[0]["id"])
            os.sync()
            if atrope:
                theirs.append(atrope_pass(work, keystone, glance, pki, ca_dir, atrope_url, n, sha))
                os.sync()
    print(
        f"  samples: openstacksdk {', '.join(f'{t:.2f}' for t in plain)}; as a process "
        f"{', '.join(f'{t:.2f}' for t in command)}; vmtrust-sync "
        f"{', '.join(f'{t:.2f}' for t in ours)}"
        + (f"; atrope {', '.join(f'{t:.2f}' for t in theirs)}" if theirs else "")
    )
    a, b = statistics.median(plain), statistics.median(ours)
    c, g = statistics.median(command), statistics.median(puts)
    print(
        f"1. {gib:g} GiB into Glance: openstacksdk create_image {a:6.2f} s, whole vmtrust-sync "
        f"{b:6.2f} s (medians of {rounds}), ratio {b / a:.2f} (target <= 1.0)\n"
        f"   the same upload as a process of its own {c:6.2f} s: vmtrust-sync/that {b / c:.2f}; "
        f"Glance's PUT alone {g:6.2f} s (no client goes below it: vmtrust-sync {b - g:.2f} s "
        f"above it, openstacksdk in-process {a - g:.2f} s, as a process {c - g:.2f} s); "
        f"vmtrust-sync's own PUT {statistics.median(our_puts):6.2f} s"
    )
    if theirs:
        t = statistics.median(theirs)
        print(
            f"   atrope {ATROPE_VERSION} dispatch (download to its cache, check, upload): "
            f"{t:6.2f} s; vmtrust-sync is {t / b:.2f}x faster (target >= 2.3; a sync that "
            f"cost only Glance's PUT would be {t / g:.2f}x)"
        )
    image.unlink()


def glance_get(glance: GlanceServer, project: str, path: str) -> dict:
    reply = glance.api(project).get(glance.url + path, timeout=60)
    reply.raise_for_status()
    return reply.json()


def glance_delete(glance: GlanceServer, project: str, image_id: str) -> None:
    glance.api(project).delete(f"{glance.url}/v2/images/{image_id}", timeout=60).raise_for_status()


def glance_listing(glance: GlanceServer, project: str) -> float:
    """Seconds Glance takes to list every managed image of ``project`` (visible and hidden,
    1,000 a page): the baseline of the no-op pass at scale."""
    api = glance.api(project)
    start = time.perf_counter()
    count = 0
    for hidden in ("false", "true"):
        url = f"{glance.url}/v2/images"
        params: dict | None = {"owner": project, "vmtrust_managed": "true",
                               "os_hidden": hidden, "limit": 1000}  # fmt: skip
        while url:
            reply = api.get(url, params=params, timeout=600)
            reply.raise_for_status()
            body = reply.json()
            count += len(body["images"])
            url = glance.url + body["next"] if body.get("next") else ""
            params = None
    assert count > 0
    return time.perf_counter() - start


def noop(work, glance, pki, ca_dir, www, base, count: int, shared: bool) -> None:
    """2. (and 3.) The no-op re-sync with ``count`` images in Glance."""
    name = f"noop{count}"
    entries = fill.write_images(www, base, count, prefix=name)
    fill.publish_many(pki, www, base, name, entries)
    conf = site_config(work, name, glance, ca_dir, f"{base}/{name}.list", pki)
    settings, wanted = fill.desired(conf)
    real = 3  # stored by the sync itself, beside the filled ones: the shape is compared
    start = time.perf_counter()
    ids = fill.fill_glance(glance, name, sorted(wanted.values(), key=_order)[:-real],
                           settings.seal_key)  # fmt: skip
    filled_in = time.perf_counter() - start
    start = time.perf_counter()
    sync(conf)
    stored_in = time.perf_counter() - start
    last = f"/v2/images?vmtrust_image_identifier={name}-{count - 1}&vmtrust_state=trusted"
    stored = glance_get(glance, name, last)["images"]
    assert len(stored) == 1, stored
    fill.same_shape(stored[0], glance_get(glance, name, f"/v2/images/{ids[0]}"))
    listing = [glance_listing(glance, name) for _ in range(3)]
    times, calls = measure(glance, conf)
    noop_usage = usage()
    full_conf = conf.with_name("full.conf")
    full_conf.write_text(
        conf.read_text().replace("[store_glance]\n", "[store_glance]\nreconcile_passes = 1\n")
    )
    full_times, full_calls = measure(glance, full_conf)
    full_usage = usage()
    in_process = []
    for _ in range(3):  # the pass itself, without the interpreter's start and imports
        from glance_sync import settings as settings_mod
        from glance_sync.service import SyncService
        from vmtrust.conf import make_conf
        from vmtrust.policy import load_subscriptions

        conf_obj = make_conf([str(conf)])
        settings = settings_mod.from_conf(conf_obj)
        service = SyncService(settings, settings_mod.make_store(conf_obj, settings))
        start = time.perf_counter()
        report = service.run(load_subscriptions(settings.subscriptions_file))
        in_process.append(time.perf_counter() - start)
        service.close()
        assert report.done == [] and report.failures == [], report
    median, base_time = statistics.median(times), statistics.median(listing)
    print(
        f"2. no-op re-sync with {count} trusted images in Glance ({count - real} written "
        f"into Glance's database in {filled_in:.1f} s, {real} stored by the sync in "
        f"{stored_in:.1f} s): {median:.2f} s (median of 3 whole vmtrust-sync runs: "
        f"{', '.join(f'{t:.2f}' for t in times)}; {noop_usage}), {calls[-1]} Glance API "
        f"requests (runs: {calls})"
    )
    print(
        f"   Glance itself lists the {count} images in {base_time:.2f} s (median of 3: "
        f"{', '.join(f'{t:.2f}' for t in listing)}): ratio {median / base_time:.2f} "
        f"(target <= 1.2 at 10,000; under 1 s at 500)"
    )
    print(
        f"   a full reconcile (every pass with reconcile_passes = 1): "
        f"{statistics.median(full_times):.2f} s ({', '.join(f'{t:.2f}' for t in full_times)}; "
        f"{full_usage}), {full_calls[-1]} requests"
    )
    print(
        f"   the pass in-process (Connection made, interpreter started): median "
        f"{statistics.median(in_process):.2f} s ({', '.join(f'{t:.2f}' for t in in_process)})"
    )
    if shared:
        share(glance, conf, count)


def _order(want) -> int:
    return int(want.identifier.rsplit("-", 1)[1])


def share(glance: GlanceServer, conf: Path, count: int) -> None:
    """3. Shared with a VO project the sync accepts for: one pass re-seals the records
    with the VO and shares and accepts every image; then no-op passes."""
    name = conf.parent.name
    subs = conf.parent / "subs.yaml"
    subs.write_text(subs.read_text() + "    vo: vo.example.org\n")
    conf.write_text(
        conf.read_text().replace(
            "[store_glance]\n", f"[store_glance]\nvo_project = vo.example.org:{name}-vo:vo\n"
        )
    )
    shared_in = sync(conf)
    shared = glance.api(f"{name}-vo", MEMBER_ROLES).get(
        f"{glance.url}/v2/images?limit={count + 10}", timeout=600
    )
    assert len(shared.json()["images"]) == count, "not every image accepted by the VO project"
    times, calls = measure(glance, conf)
    print(
        f"3. the same, shared with a VO project (vo_project with a cloud; first pass shared "
        f"and accepted all in {shared_in:.1f} s): {calls[-1]} Glance API requests (runs: "
        f"{calls}), {statistics.median(times):.2f} s (median of 3)"
    )


def measure(glance: GlanceServer, conf: Path) -> tuple[list[float], list[int]]:
    """Three whole vmtrust-sync runs: their times and Glance requests (access log lines).

    Also kept (:data:`USAGE`): the CPU seconds and peak memory of each run's process,
    which the machine's load does not stretch as it does wall time.
    """
    times, calls = [], []
    USAGE.clear()
    for _ in range(3):
        before = glance.access_log.read_text().count("\n")
        seconds, mib, status, stderr = run_sync(conf, RUSAGE)
        assert status == 0, stderr[-2000:]
        times.append(seconds)
        calls.append(glance.access_log.read_text().count("\n") - before)
        USAGE.append((RUSAGE[-1], mib))
    return times, calls


def usage() -> str:
    """The last :func:`measure`'s CPU seconds and peak memory, as text."""
    cpu = statistics.median(u[0] for u in USAGE)
    mib = max(u[1] for u in USAGE)
    return f"CPU {cpu:.2f} s (user+system, median), peak {mib:.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="ingest image size (GiB)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved ingest rounds")
    parser.add_argument(
        "--images",
        default="500,10000",
        help="comma-separated image counts for the no-op re-sync (0: none)",
    )
    parser.add_argument("--no-atrope", action="store_true", help="leave atrope out")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    why_not = available()
    if why_not:
        print(f"benchmark needs a Glance: {why_not}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vmtrust-glance-", dir=args.dir) as tmp:
        work = Path(tmp)
        pki = devpki.DevPKI(work)
        ca_dir = pki.install()
        www = work / "www"
        www.mkdir()
        glance = GlanceServer(work / "glance").start()
        try:
            with web_server(www) as base:
                print(
                    f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
                    f"{platform.python_version()}; Glance 33 under {glance.server}, sqlite, "
                    "file store"
                )
                if args.gib > 0:
                    ingest(work, glance, pki, ca_dir, www, base, args.gib, max(1, args.rounds),
                           atrope=not args.no_atrope)  # fmt: skip
                counts = [int(n) for n in args.images.split(",") if int(n) > 0]
                for n, count in enumerate(counts):
                    noop(work, glance, pki, ca_dir, www, base, count, shared=n == 0)
        finally:
            glance.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
