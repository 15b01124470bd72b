"""Benchmark: adopting an atrope image in place against uploading it again.

Starts the real Glance the tests use (``tests/glance_server.py``; ``make
venv-glance``).  A site switching from atrope either adopts each image (``vmtrust-sync
--adopt atrope``: the bytes are read back from Glance, hashed and inspected, then one
PATCH commits record and seal; the id stays) or lets vmtrust upload it again (a plain
``vmtrust-sync`` pass into an empty project: download from the endorser's server,
hash, inspect, stream into Glance, check, commit).  Per round, a fresh project gets
an image as atrope 2.0.0 leaves it (tag ``atrope``, ``appdb_id``, ``sha512``; written
directly here, as only vmtrust's part is measured: ``tests/test_adopt_atrope.py`` runs
atrope itself), then both passes run as processes; interleaved rounds, medians.

Usage: ``python benchmarks/adopt.py [--gib 1] [--rounds 3] [--dir DIR]``.
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

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from glance_ingest import glance_get, site_config  # noqa: E402
from glance_server import SERVICE_ROLES, GlanceServer, available, token  # noqa: E402
from transfer import entry, make_image, publish, web_server  # noqa: E402

from vmtrust import devpki  # noqa: E402

BIN = Path(sys.executable).parent


def atrope_image(glance: GlanceServer, project: str, path: Path, sha: str) -> str:
    """Upload ``path`` as atrope 2.0.0 would have; return the image id."""
    api = requests.Session()
    api.headers["X-Auth-Token"] = token(project, SERVICE_ROLES)
    body = {
        "name": "EGI big", "disk_format": "raw", "container_format": "bare",
        "visibility": "private", "tags": ["atrope"], "appdb_id": "big", "sha512": sha,
        "image_list": "bench",
    }  # fmt: skip
    image_id = api.post(f"{glance.url}/v2/images", json=body, timeout=60).json()["id"]
    with open(path, "rb") as data:
        reply = api.put(
            f"{glance.url}/v2/images/{image_id}/file",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=600,
        )
    reply.raise_for_status()
    return image_id


def timed(conf: Path, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [BIN / "vmtrust-sync", "--config-file", conf, *args], check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="image size (GiB)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    why_not = available()
    if why_not:
        print(f"benchmark needs a Glance: {why_not}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vmtrust-adopt-", dir=args.dir) as tmp:
        work = Path(tmp)
        pki = devpki.DevPKI(work)
        ca_dir = pki.install()
        www = work / "www"
        www.mkdir()
        size = int(args.gib * 1024**3)
        sha = make_image(www / "big.img", size)
        glance = GlanceServer(work / "glance").start()
        try:
            with web_server(www) as base:
                publish(pki, www, base, "big", [entry("big", f"{base}/big.img", size, sha)])
                print(
                    f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
                    f"{platform.python_version()}; Glance 33 under gunicorn, sqlite, file store"
                )
                adopted, uploaded = [], []
                for n in range(max(1, args.rounds)):
                    conf = site_config(work, f"adopt{n}", glance, ca_dir, f"{base}/big.list", pki)
                    image_id = atrope_image(glance, f"adopt{n}", www / "big.img", sha)
                    os.sync()
                    adopted.append(timed(conf, "--adopt", "atrope"))
                    trusted = glance_get(glance, f"adopt{n}", "/v2/images?vmtrust_state=trusted")
                    assert [i["id"] for i in trusted["images"]] == [image_id], trusted
                    conf = site_config(work, f"fresh{n}", glance, ca_dir, f"{base}/big.list", pki)
                    uploaded.append(timed(conf))
                    os.sync()
        finally:
            glance.stop()
    a, b = statistics.median(adopted), statistics.median(uploaded)
    print(
        f"  samples: adopt {', '.join(f'{t:.2f}' for t in adopted)}; "
        f"upload again {', '.join(f'{t:.2f}' for t in uploaded)}"
    )
    print(
        f"{args.gib:g} GiB image: vmtrust-sync --adopt atrope (in place) {a:.2f} s, "
        f"vmtrust-sync uploading it again {b:.2f} s (medians of {len(adopted)}), "
        f"ratio {a / b:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
