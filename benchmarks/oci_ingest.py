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

Usage: ``python benchmarks/oci_ingest.py [--gib 1] [--rounds 3] [--baseline-python PATH]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def measured(command: list) -> tuple[float, float, str]:
    """Run ``command``; (wall seconds, peak resident MiB of the process, its output)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} failed with status {process.returncode}")
    return elapsed, usage.ru_maxrss / 1024, output


def trusted_in(glance: GlanceServer, project: str) -> list[dict]:
    reply = glance.api(project).get(f"{glance.url}/v2/images?vmtrust_state=trusted", timeout=60)
    reply.raise_for_status()
    return reply.json()["images"]


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
            ours, theirs, memory, pulls, uploads = [], [], [], [], []
            for n in range(max(1, args.rounds)):
                os.sync()
                seconds, _, phases = measured(
                    [args.baseline_python, "-c", BASELINE, registry.host,
                     f"{registry.host}/{REPO}:{TAG}", str(baseline_clouds), f"baseline-{n}",
                     str(work)]
                )  # fmt: skip
                theirs.append(seconds)
                pull, upload = map(float, phases.split())
                pulls.append(pull)
                uploads.append(upload)
                os.sync()
                conf = site_config(work, f"vmtrust{n}", glance, registry)
                seconds, rss, _ = measured([str(BIN / "vmtrust-sync"), "--config-file", str(conf)])
                ours.append(seconds)
                memory.append(rss)
                (stored,) = trusted_in(glance, f"vmtrust{n}")
                assert stored["os_hash_value"] == sha, stored
                glance.api(f"vmtrust{n}").delete(
                    f"{glance.url}/v2/images/{stored['id']}", timeout=60
                ).raise_for_status()
        finally:
            registry.stop()
            glance.stop()
    load_after = os.getloadavg()
    a, b = statistics.median(theirs), statistics.median(ours)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average before {load_before[0]:.1f} "
        f"{load_before[1]:.1f} {load_before[2]:.1f}, after {load_after[0]:.1f} "
        f"{load_after[1]:.1f} {load_after[2]:.1f}"
    )
    print(f"  samples: oras pull + openstacksdk {', '.join(f'{t:.2f}' for t in theirs)}; "
          f"vmtrust-sync {', '.join(f'{t:.2f}' for t in ours)}")  # fmt: skip
    print(
        f"  baseline phases (medians): oras pull {statistics.median(pulls):.2f} s, openstacksdk "
        f"create_image {statistics.median(uploads):.2f} s; the upload alone bounds any pipeline "
        f"into this Glance: at best {a / statistics.median(uploads):.2f}x"
    )
    print(
        f"{args.gib:g} GiB from the registry into Glance: oras pull + openstacksdk upload "
        f"{a:.2f} s, whole vmtrust-sync {b:.2f} s (medians of {len(ours)}): vmtrust "
        f"{a / b:.2f}x faster (target >= 1.8); vmtrust-sync peak memory "
        f"{max(memory):.0f} MiB (target < 150)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
