"""Benchmark: the sync at scale — a 10,000-image signed list and 10,000 images in the store.

Not a unit test: the site's passes as ``vmtrust-sync`` processes, each with its wall
time and the peak resident memory of that process (``wait4``'s ``ru_maxrss``, the
interpreter and every import included), against the local store (``[store_local]``):

1. **First-pass planning.** ``vmtrust-sync --dry-run`` with the store empty: fetch and
   verify the N-image list, approve, plan N creates (printed).
2. **No-op pass.** N images in the store (stored through the local store's own
   ``create`` with records sealed by the site's key: ``benchmarks/fill.py``); a pass
   that has nothing to do (checked: the dry run after it plans nothing).
3. **One changed image.** A new list version in which one image has new bytes: the
   pass stores it, retires the old version and re-seals every other record (each
   record names the list version and expiry it was accepted from; see docs/sync.md).

Target: every pass under 300 MiB.  The Glance side at this size (10,000 images in
Glance, its own listing time beside the no-op pass) is ``benchmarks/glance_ingest.py
--images 10000``.

Usage: ``python benchmarks/scale.py [--images 10000] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import fill  # noqa: E402
from transfer import make_site, run_sync, web_server  # noqa: E402

from vmtrust import devpki  # noqa: E402

BIN = Path(sys.executable).parent
LIMIT_MIB = 300


def dry_run(conf: Path) -> tuple[float, float, list[str]]:
    """``vmtrust-sync --dry-run``: (seconds, peak RSS in MiB, the plan's lines)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [BIN / "vmtrust-sync", "--dry-run", "--config-file", conf],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    lines = process.stdout.read().splitlines()
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, lines[-5:]
    return time.perf_counter() - start, usage.ru_maxrss / 1024, lines


def line(what: str, seconds: float, mib: float, extra: str = "") -> None:
    verdict = "ok" if mib < LIMIT_MIB else f"OVER {LIMIT_MIB} MiB"
    print(f"{what}: {seconds:6.2f} s, peak {mib:6.1f} MiB ({verdict}){extra}")


def run(work: Path, count: int) -> None:
    pki = devpki.DevPKI(work)
    ca_dir = pki.install()
    www = work / "www"
    www.mkdir()
    with web_server(www) as base:
        entries = fill.write_images(www, base, count)
        start = time.perf_counter()
        fill.publish_many(pki, www, base, "many", entries)
        signed = time.perf_counter() - start
        size = (www / "many.list").stat().st_size
        print(f"list: {count} images, {size / 2**20:.1f} MiB signed, made in {signed:.1f} s")
        conf = make_site(work, "scale", "many", pki, ca_dir, base)

        seconds, mib, plan = dry_run(conf)
        creates = sum(1 for text in plan if text.startswith("create"))
        assert creates == count, (creates, plan[:3])
        line(f"1. first-pass planning ({creates} creates, --dry-run)", seconds, mib)

        from glance_sync import settings as settings_mod
        from vmtrust.conf import make_conf

        settings, wanted = fill.desired(conf)
        store = settings_mod.make_store(make_conf([str(conf)]), settings)
        start = time.perf_counter()
        fill.fill_local(store, list(wanted.values()), settings.seal_key)
        print(f"   (set-up: {count} images stored by the local store in "
              f"{time.perf_counter() - start:.1f} s)")  # fmt: skip

        seconds, mib, status, stderr = run_sync(conf)
        assert status == 0, stderr[-2000:]
        _, _, plan = dry_run(conf)
        assert plan == ["nothing to do"], plan[:5]
        line(f"2. no-op pass with {count} images held", seconds, mib)

        changed = dict(entries[0]["hv:image"])
        data = b"a new version of image 0\n" * 64
        (www / "img-0-v2.img").write_bytes(data)
        entries[0] = fill.entry("img-0", f"{base}/img-0-v2.img", data)
        entries[0]["hv:image"]["hv:version"] = "2"
        assert changed["hv:uri"] != entries[0]["hv:image"]["hv:uri"]
        time.sleep(1)  # a new list version needs a later dc:date:created (whole seconds)
        fill.publish_many(pki, www, base, "many", entries, version="2")
        seconds, mib, status, stderr = run_sync(conf)
        assert status == 0, stderr[-2000:]
        _, _, plan = dry_run(conf)
        assert plan == ["nothing to do"], plan[:5]
        line(
            "3. one changed image",
            seconds,
            mib,
            f" (stored 1, retired 1, re-sealed {count - 1} for the new list version)",
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="images in list and store")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {load[0]:.2f} at start; local store"
    )
    with tempfile.TemporaryDirectory(prefix="vmtrust-scale-", dir=args.dir) as tmp:
        run(Path(tmp), args.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
