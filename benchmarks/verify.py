"""Benchmark: verifying a signed list of 1,000 images, against ``openssl smime -verify``.

Both sides do the whole job on the same file in the same run: read the file,
parse S/MIME, check the signature, build and validate the chain against the
same CA directory with CRLs (``-crl_check_all``).  vmtrust additionally parses
and validates the JSON of all 1,000 images and applies the list rules, which
OpenSSL does not.

Reported:

* ``library``: ``vmtrust.verify.verify_signed_list`` in process, as the sync
  service and the nova filter call it — the figure the target (ratio ≤ 1.0)
  applies to;
* ``cli``: the ``vmtrust list verify`` command as a new process, for
  information (it pays Python's start-up and imports).

Usage: ``python benchmarks/verify.py [--images 1000] [--repeat 30]``
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from vmtrust import devpki, imagelist, smime
from vmtrust.truststore import TrustStore
from vmtrust.verify import Policy, verify_signed_list


def make_list(pki: devpki.DevPKI, count: int) -> dict:
    """An AppDB-like list: every value a string, ad:* fields, per-image expiry."""
    now = datetime.now(UTC)
    images = []
    for index in range(count):
        ident = str(uuid.uuid4())
        images.append(
            {
                "hv:image": {
                    "ad:appid": str(1000 + index),
                    "ad:group": "General group",
                    "ad:mpuri": f"https://appdb.example.org/store/vo/image/{ident}:{index}/",
                    "ad:user:fullname": "Jane Endorser",
                    "ad:user:guid": str(uuid.uuid4()),
                    "ad:user:uri": "https://appdb.example.org/store/person/jane",
                    "dc:date:expires": imagelist.format_date(now + timedelta(days=365)),
                    "dc:description": f"Worker node image number {index} for the benchmark VO",
                    "dc:identifier": ident,
                    "dc:title": f"Benchmark worker node {index}",
                    "hv:core_minimum": "1",
                    "hv:format": "QCOW2",
                    "hv:hypervisor": "QEMU,KVM",
                    "hv:ram_minimum": "2048",
                    "hv:size": str(1_000_000_000 + index),
                    "hv:uri": f"https://images.example.org/img/wn-{index}.qcow2",
                    "hv:version": f"2026.{index % 12 + 1}.{index}",
                    "sl:arch": "x86_64",
                    "sl:checksum:sha512": f"{index:0128x}",
                    "sl:comments": "",
                    "sl:os": "Linux",
                    "sl:osname": "AlmaLinux",
                    "sl:osversion": "9.4",
                }
            }
        )
    return {
        "hv:imagelist": {
            "dc:identifier": str(uuid.uuid4()),
            "dc:title": "Benchmark list",
            "dc:description": "1,000 images",
            "dc:source": "https://appdb.example.org/",
            "dc:date:created": imagelist.format_date(now - timedelta(minutes=5)),
            "dc:date:expires": imagelist.format_date(now + timedelta(days=28)),
            "hv:version": "20261125120000",
            "hv:uri": "https://appdb.example.org/bench.list",
            "ad:vo": "vo.example.org",
            "hv:endorser": {
                "hv:x509": {
                    "dc:creator": "Jane Endorser",
                    "hv:email": "jane@x",
                    "hv:dn": pki.endorser.dn,
                    "hv:ca": pki.endorser.ca_dn,
                }
            },
            "hv:images": images,
        }
    }


def timed(fn, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    openssl = shutil.which("openssl")
    if not openssl:
        print("benchmark needs the openssl command line", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="vmtrust-bench-") as tmp:
        pki = devpki.DevPKI(Path(tmp))
        ca_dir = pki.install()
        signed_path = Path(tmp) / "bench.list"
        content = imagelist.dumps(make_list(pki, args.images))
        signed_path.write_bytes(smime.sign(content, pki.endorser.cert, pki.endorser.key))
        size = signed_path.stat().st_size

        openssl_cmd = [
            openssl,
            "smime",
            "-verify",
            "-in",
            str(signed_path),
            "-CApath",
            str(ca_dir),
            "-crl_check_all",
            "-out",
            "/dev/null",
        ]
        subprocess.run(openssl_cmd, check=True, capture_output=True)  # warm the page cache

        def run_openssl() -> None:
            subprocess.run(openssl_cmd, check=True, capture_output=True)

        trust = TrustStore(ca_dir)

        def run_library() -> None:
            verified = verify_signed_list(signed_path.read_bytes(), Policy(trust=trust))
            assert len(verified.imagelist.images) == args.images

        cli_cmd = [
            sys.executable,
            "-m",
            "vmtrust",
            "list",
            "verify",
            str(signed_path),
            "--ca-dir",
            str(ca_dir),
        ]

        def run_cli() -> None:
            subprocess.run(cli_cmd, check=True, capture_output=True)

        run_library()
        results = {}
        # Interleave the measurements so that machine noise hits both sides alike.
        for _round in range(3):
            for name, fn in (("openssl", run_openssl), ("library", run_library), ("cli", run_cli)):
                results.setdefault(name, []).extend(timed(fn, max(args.repeat // 3, 1)))

    base = statistics.median(results["openssl"])
    version = subprocess.run([openssl, "version"], capture_output=True, text=True).stdout.strip()
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()}, {version}"
    )
    print(
        f"signed list: {args.images} images, {size / 1e6:.2f} MB; {args.repeat} runs each, medians"
    )
    print(f"  openssl smime -verify      {base * 1e3:8.1f} ms   1.00")
    for name, label in (("library", "vmtrust (library)"), ("cli", "vmtrust list verify")):
        median = statistics.median(results[name])
        print(f"  {label:<26} {median * 1e3:8.1f} ms   {median / base:.2f}")
    ratio = statistics.median(results["library"]) / base
    print(f"target library/openssl <= 1.00: {'met' if ratio <= 1.0 else 'NOT met'} ({ratio:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
