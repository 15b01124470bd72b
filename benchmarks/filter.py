"""Benchmark: TrustedImageFilter against nova's ImagePropertiesFilter, and its cold path.

Runs with nova's own scheduler code (``.venv-nova``: ``make bench-filter``):

1. **Warm.** 10,000 hosts (nova's ``FakeHostState``), one worker-flavour
   request for a trusted image.  nova's ``HostFilterHandler`` runs
   ``ImagePropertiesFilter`` (in-tree; the image asks for an architecture,
   hypervisor type and VM mode, so it checks every host), then
   ``TrustedImageFilter`` with its decision cached, on the same hosts and
   request, interleaved, in the same process.  Reported: medians and the ratio
   (target ≤ 1.5).
2. **Cold.** The same decision with nothing cached: one Glance look-up by id
   against a real Glance 33 (``tests/glance_server.py``), in which vmtrust-sync
   stored the image, plus the seal check.  Reported in milliseconds.

Usage: ``python benchmarks/filter.py [--hosts 10000] [--repeat 30]``.
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

from nova import monkey_patch  # noqa: E402

monkey_patch.patch()

from nova import objects  # noqa: E402

objects.register_all()

from glance_ingest import site_config  # noqa: E402
from glance_server import GlanceServer, available, token  # noqa: E402
from keystoneauth1 import adapter as ks_adapter  # noqa: E402
from keystoneauth1 import session as ks_session  # noqa: E402
from nova.scheduler import filters as nova_filters  # noqa: E402
from nova.scheduler.filters.image_props_filter import ImagePropertiesFilter  # noqa: E402
from nova.tests.unit.scheduler import fakes  # noqa: E402
from transfer import entry, publish, web_server  # noqa: E402

from nova_filter import filter as trusted_filter  # noqa: E402
from nova_filter.decision import ImageTrust, glance_fetch  # noqa: E402
from vmtrust import devpki  # noqa: E402
from vmtrust.record import load_private_key  # noqa: E402

BIN = Path(sys.executable).parent


def trusted_image(work: Path, glance: GlanceServer) -> tuple[str, str, object]:
    """Sync one small image into Glance; return (image id, owner project, public key)."""
    import hashlib

    pki = devpki.DevPKI(work)
    ca_dir = pki.install()
    www = work / "www"
    www.mkdir()
    data = b"worker node\n" * 1000
    (www / "wn.img").write_bytes(data)
    with web_server(www) as base:
        entries = [entry("wn", f"{base}/wn.img", len(data), hashlib.sha512(data).hexdigest())]
        publish(pki, www, base, "wn", entries)
        conf = site_config(work, "filterbench", glance, ca_dir, f"{base}/wn.list", pki)
        subprocess.run([BIN / "vmtrust-sync", "--config-file", conf], check=True)
    reply = glance.api("filterbench").get(f"{glance.url}/v2/images?vmtrust_state=trusted")
    (image,) = reply.json()["images"]
    key = load_private_key(conf.parent / "seal.key").public_key()
    return image["id"], "filterbench", key


def request(image_id: str) -> objects.RequestSpec:
    return objects.RequestSpec(
        instance_uuid="3f1c2b8e-9d4a-4c7e-8f00-0123456789ab",
        project_id="p",
        image=objects.ImageMeta.from_dict(
            {
                "id": image_id,
                "properties": {
                    "hw_architecture": "x86_64",
                    "img_hv_type": "kvm",
                    "hw_vm_mode": "hvm",
                },
            }
        ),
        flavor=objects.Flavor(extra_specs={"vmtrust:trusted_only": "true"}),
        is_bfv=False,  # nova's API sets it on every boot; the filter refuses a spec without it
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    why_not = available()
    if why_not:
        print(f"benchmark needs a Glance: {why_not}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vmtrust-filter-") as tmp:
        glance = GlanceServer(Path(tmp) / "glance").start()
        try:
            image_id, owner, key = trusted_image(Path(tmp), glance)
            session = ks_session.Session(
                additional_headers={"X-Auth-Token": token("nova-filter", "admin,member,reader")}
            )
            adapter = ks_adapter.Adapter(session, endpoint_override=glance.url)
            fetch = glance_fetch(adapter)
            warm = ImageTrust(fetch, [key], [owner], ttl=3600)
            cold = ImageTrust(fetch, [key], [owner], ttl=0)
            trusted_filter.image_trust = lambda: warm  # the process-wide cache, pre-built
            spec = request(image_id)
            hosts = [
                fakes.FakeHostState(
                    f"host{n}", f"node{n}", {"supported_instances": [("x86_64", "kvm", "hvm")]}
                )
                for n in range(args.hosts)
            ]
            handler = nova_filters.HostFilterHandler()
            props_filter, our_filter = ImagePropertiesFilter(), trusted_filter.TrustedImageFilter()
            assert warm.decide(image_id).trusted, warm.decide(image_id)
            theirs, ours = [], []
            for _ in range(args.repeat):
                for chosen, times in ((props_filter, theirs), (our_filter, ours)):
                    start = time.perf_counter()
                    passed = list(handler.get_filtered_objects([chosen], hosts, spec))
                    times.append(time.perf_counter() - start)
                    assert len(passed) == args.hosts
            cold_ms = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                assert cold.decide(image_id).trusted
                cold_ms.append((time.perf_counter() - start) * 1000)
        finally:
            glance.stop()
    a, b = statistics.median(theirs), statistics.median(ours)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; nova 34 scheduler code, Glance 33"
    )
    print(
        f"1. {args.hosts} hosts, worker flavour, decision cached: ImagePropertiesFilter "
        f"{a * 1000:.1f} ms, TrustedImageFilter {b * 1000:.1f} ms (medians of {args.repeat}), "
        f"ratio {b / a:.2f} (target <= 1.5)"
    )
    print(
        f"2. cold path (one Glance look-up by id + seal check, nothing cached): median "
        f"{statistics.median(cold_ms):.1f} ms, max {max(cold_ms):.1f} ms over {args.repeat}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
