"""Benchmark: an image from an OCI registry into Glance — vmtrust-sync against oras + openstacksdk.

Starts, on loopback, the real registry the tests use (``tests/oci_registry.py``:
Debian's docker-registry) and the real Glance 33 (``tests/glance_server.py``),
pushes a 1 GiB disk (random bytes, raw) as an EGI-layout artefact, and in one
run, interleaved round by round:

* **vmtrust**: one ``vmtrust-sync`` pass as a process, ``type: oci`` subscription
  with ``trust: registry``: list the repository, read the manifest, stream the
  layer by digest (sha256 checked on the way, SHA-512 of the stored bytes
  computed, the disk inspected) straight into Glance, check Glance's hash, seal.
* **baseline**: what atrope's Harbor source does (``oras pull`` into a cache
  folder, then upload the file): oras-py (PyPI ``oras``) ``OrasClient.pull`` and
  openstacksdk's ``create_image(filename=…)``, in their own environment
  (atrope 2.0.0, the version in ``.venv-atrope``, has no Harbor source; atrope
  2.1's needs the ``oras`` CLI, which is not packaged for Debian or PyPI).
  ``--baseline-python`` names that environment's interpreter (``make venv-oras``
  builds ``.venv-oras``).

Reported: medians of the wall times, their ratio (target: vmtrust ≥ 1.8× faster),
the peak resident memory of each ``vmtrust-sync`` process (target < 150 MiB),
and the machine's load average before and after (the machine is shared).

And the bound both sides are up against, measured in the same rounds: Glance's
ingest of the same bytes from a local file with the baseline's client (the
baseline's upload phase: openstacksdk's ``create_image`` of the pulled file).  No
pipeline into this Glance can be faster than Glance taking the bytes, so the best
ratio any sync could reach here is *baseline total / Glance's ingest alone*; with
vmtrust's fixed cost of a pass (a second ``vmtrust-sync`` pass with nothing to do:
start-up, listing, the Glance survey) it is *baseline total / (ingest + fixed)*.
Beside them, the CPU time Glance spends on each upload (its WSGI processes, read
from ``/proc`` by psutil): the same for both clients means that vmtrust's upload
costs Glance nothing more than a plain file upload does.

Usage: ``python benchmarks/oci_ingest.py [--gib 1] [--rounds 3] [--baseline-python PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from glance_server import SERVICE_ROLES, GlanceServer, token  # noqa: E402
from glance_server import available as glance_available  # noqa: E402
from oci_registry import LocalRegistry, Pusher  # noqa: E402
from oci_registry import available as registry_available  # noqa: E402
from transfer import make_image  # noqa: E402

BIN = Path(sys.executable).parent
REPO = "egi_vm_images/bench"
TAG = "1"

#: The baseline, run by the oras environment's interpreter: pull to a cache, then upload.
BASELINE = """
import sys, tempfile, pathlib, time, oras.client, openstack
host, target, clouds, name, work = sys.argv[1:6]
with tempfile.TemporaryDirectory(dir=work) as cache:
    start = time.perf_counter()
    files = oras.client.OrasClient(hostname=host, insecure=True).pull(target=target, outdir=cache)
    pulled = time.perf_counter()
    disk = max(files, key=lambda f: pathlib.Path(f).stat().st_size)
    config = openstack.config.OpenStackConfig(config_files=[clouds]).get_one(cloud="sync")
    conn = openstack.connection.Connection(config=config)
    image = conn.image.create_image(name=name, filename=disk, disk_format="raw",
                                    container_format="bare", wait=True)
    print(pulled - start, time.perf_counter() - pulled)
    conn.image.delete_image(image.id)
"""


def clouds_yaml(path: Path, glance: GlanceServer, project: str) -> Path:
    path.write_text(
        "clouds:\n  sync:\n    auth_type: admin_token\n    auth:\n"
        f"      endpoint: {glance.url}\n      token: '{token(project, SERVICE_ROLES)}'\n"
        f"    image_endpoint_override: {glance.url}\n    region_name: RegionOne\n"
    )
    return path


def site_config(work: Path, name: str, glance: GlanceServer, registry: LocalRegistry) -> Path:
    """A vmtrust.conf storing into ``glance`` (project ``name``) from ``registry``."""
    site = work / name
    site.mkdir()
    clouds_yaml(site / "clouds.yaml", glance, name)
    (site / "subs.yaml").write_text(
        "subscriptions:\n  - name: bench\n    type: oci\n"
        f"    registry: {registry.url}\n    repository: {REPO}\n    trust: registry\n"
    )
    conf = site / "vmtrust.conf"
    (site / "ca").mkdir()  # no HEPiX list: the CA directory stays empty
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {site}/state\n[trust]\nca_dir = {site}/ca\n"
        f"seal_key = {site}/seal.key\n"
        f"[sync]\nsubscriptions_file = {site}/subs.yaml\nstore = glance\n"
        f"[store_glance]\ncloud = sync\nclouds_file = {site}/clouds.yaml\nproject_id = {name}\n"
    )
    subprocess.run(
        [BIN / "vmtrust", "keygen", "--out", site / "seal.key"], check=True, capture_output=True
    )
    return conf


@dataclass
class Run:
    """One measured process: its wall time, its own CPU and peak memory, Glance's CPU."""

    seconds: float
    cpu: float  #: user + system seconds of the process (and any it waited for)
    rss: float  #: peak resident MiB
    glance_cpu: float  #: CPU seconds Glance's WSGI processes spent meanwhile
    output: str
    #: seconds Glance took to answer the upload (PUT …/file), and the run's other requests
    #: but DELETE (from uWSGI's request log; NaN under gunicorn, whose log has no times)
    glance_put: float = math.nan
    glance_other: float = math.nan


def glance_cpu(glance: GlanceServer) -> float:
    """User + system CPU seconds of Glance's WSGI server so far (master and workers)."""
    assert glance.process is not None
    root = psutil.Process(glance.process.pid)
    total = 0.0
    for process in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


#: a uWSGI request-log line: method, path, and how long the answer took
_REQUEST = re.compile(r"\] (\w+) (\S+) => generated .* in (\d+) msecs")


def glance_requests(glance: GlanceServer, offset: int) -> tuple[float, float]:
    """Seconds Glance spent answering uploads, and other requests but DELETE, since ``offset``
    of its request log; NaN when the log does not give times (gunicorn's)."""
    with open(glance.access_log, "rb") as log:
        log.seek(offset)
        found = [_REQUEST.search(line.decode(errors="replace")) for line in log]
    times = [(m[1], m[2], int(m[3]) / 1000) for m in found if m]
    if not times:
        return math.nan, math.nan
    put = sum(t for method, path, t in times if method == "PUT" and path.endswith("/file"))
    other = sum(t for method, path, t in times if method not in ("PUT", "DELETE"))
    return put, other


def measured(command: list, glance: GlanceServer) -> Run:
    """Run ``command`` to its end, measured; SystemExit if it fails."""
    before = glance_cpu(glance)
    offset = glance.access_log.stat().st_size if glance.access_log.exists() else 0
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} failed with status {process.returncode}")
    return Run(
        elapsed,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        glance_cpu(glance) - before,
        output,
        *glance_requests(glance, offset),
    )


def trusted_in(glance: GlanceServer, project: str) -> list[dict]:
    reply = glance.api(project).get(f"{glance.url}/v2/images?vmtrust_state=trusted", timeout=60)
    reply.raise_for_status()
    return reply.json()["images"]


def median(runs: list[Run], field: str) -> float:
    return statistics.median(getattr(run, field) for run in runs)


def report(
    gib: float,
    server: str,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
    theirs: list[Run],
    ours: list[Run],
    idle: list[Run],
    pulls: list[float],
    uploads: list[float],
) -> None:
    """Print the figures: samples, phases, the bound, then the result line."""
    a, b = median(theirs, "seconds"), median(ours, "seconds")
    ingest, fixed = statistics.median(uploads), median(idle, "seconds")
    rest = statistics.median(
        r.seconds - p - u for r, p, u in zip(theirs, pulls, uploads, strict=True)
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, Glance 33 under {server}; load average before "
        f"{' '.join(f'{x:.1f}' for x in load_before)}, after "
        f"{' '.join(f'{x:.1f}' for x in load_after)}"
    )
    print(f"  samples: oras pull + openstacksdk {', '.join(f'{r.seconds:.2f}' for r in theirs)}; "
          f"vmtrust-sync {', '.join(f'{r.seconds:.2f}' for r in ours)}")  # fmt: skip
    print(
        f"  baseline phases (medians): oras pull {statistics.median(pulls):.2f} s, openstacksdk "
        f"create_image of the pulled file {ingest:.2f} s, the rest (interpreter, imports) "
        f"{rest:.2f} s"
    )
    print(
        f"  CPU (medians): Glance per upload {median(theirs, 'glance_cpu'):.2f} s from "
        f"openstacksdk, {median(ours, 'glance_cpu'):.2f} s from vmtrust-sync; the "
        f"vmtrust-sync process {median(ours, 'cpu'):.2f} s (a pass with nothing to do: "
        f"{median(idle, 'cpu'):.2f} s), the baseline process {median(theirs, 'cpu'):.2f} s"
    )
    print(
        f"  Glance's answers (medians): the upload {median(theirs, 'glance_put'):.2f} s from "
        f"openstacksdk, {median(ours, 'glance_put'):.2f} s from vmtrust-sync; the other "
        f"requests but DELETE {median(theirs, 'glance_other'):.2f} s and "
        f"{median(ours, 'glance_other'):.2f} s (a pass with nothing to do: "
        f"{median(idle, 'glance_other'):.2f} s)"
    )
    print(
        f"  bound: Glance's ingest of the local file alone {ingest:.2f} s, so at best "
        f"{a / ingest:.2f}x for any pipeline into this Glance; vmtrust-sync's fixed cost (a "
        f"pass with nothing to do) {fixed:.2f} s, so at best {a / (ingest + fixed):.2f}x for "
        f"vmtrust-sync; it spends {b - fixed:.2f} s beyond that fixed cost, Glance's ingest "
        f"alone {ingest:.2f} s"
    )
    print(
        f"{gib:g} GiB from the registry into Glance: oras pull + openstacksdk upload "
        f"{a:.2f} s, whole vmtrust-sync {b:.2f} s (medians of {len(ours)}): vmtrust "
        f"{a / b:.2f}x faster (target >= 1.8); vmtrust-sync peak memory "
        f"{max(r.rss for r in ours):.0f} MiB (target < 150)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="image size (GiB)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--baseline-python",
        default=str(ROOT / ".venv-oras" / "bin" / "python"),
        help="interpreter of an environment with oras and openstacksdk (make venv-oras)",
    )
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    why_not = glance_available() or registry_available()
    if not why_not and not Path(args.baseline_python).exists():
        why_not = f"{args.baseline_python} missing (make venv-oras)"
    if why_not:
        print(f"benchmark cannot run: {why_not}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vmtrust-oci-", dir=args.dir) as tmp:
        work = Path(tmp)
        glance = GlanceServer(work / "glance").start()
        registry = LocalRegistry(work / "registry").start()
        try:
            disk = work / "bench.raw"
            sha = make_image(disk, int(args.gib * 1024**3))
            Pusher(registry).vm_image(REPO, TAG, disk, disk_format="raw")
            disk.unlink()  # only the registry holds it now
            baseline_clouds = clouds_yaml(work / "baseline-clouds.yaml", glance, "baseline")
            theirs: list[Run] = []
            ours: list[Run] = []
            idle: list[Run] = []
            pulls: list[float] = []
            uploads: list[float] = []
            for n in range(max(1, args.rounds)):
                os.sync()
                run = measured(
                    [args.baseline_python, "-c", BASELINE, registry.host,
                     f"{registry.host}/{REPO}:{TAG}", str(baseline_clouds), f"baseline-{n}",
                     str(work)],
                    glance,
                )  # fmt: skip
                theirs.append(run)
                pull, upload = map(float, run.output.split())
                pulls.append(pull)
                uploads.append(upload)
                os.sync()
                conf = site_config(work, f"vmtrust{n}", glance, registry)
                sync = [str(BIN / "vmtrust-sync"), "--config-file", str(conf)]
                ours.append(measured(sync, glance))
                (stored,) = trusted_in(glance, f"vmtrust{n}")
                assert stored["os_hash_value"] == sha, stored
                idle.append(measured(sync, glance))  # nothing to do: the pass's fixed cost
                glance.api(f"vmtrust{n}").delete(
                    f"{glance.url}/v2/images/{stored['id']}", timeout=60
                ).raise_for_status()
        finally:
            registry.stop()
            glance.stop()
    load_after = os.getloadavg()
    report(args.gib, glance.server, load_before, load_after, theirs, ours, idle, pulls, uploads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
