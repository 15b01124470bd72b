"""Benchmark: verifying signed lists of 1,000 and 10,000 images, against ``openssl smime -verify``.

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

Each size is its own file in the same run, measured interleaved (openssl,
library, cli, openssl, ...) so that load from other processes hits every side
alike.  Beside the wall-clock medians it prints CPU-time medians (the
library's ``time.process_time``, the children's rusage for the processes),
which a shared machine disturbs much less; the load average is printed with
them.  A 10,000-image list (15.5 MB) is larger than the default
``[trust] max_list_bytes`` (8 MiB): the benchmark raises the limit, as a site
with such a list must.

Usage: ``python benchmarks/verify.py [--images 1000,10000] [--repeat 30]``
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
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
            "dc:description": f"{count:,} images",
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


#: Largest list the benchmark verifies (the library's and the command's limit).
MAX_BYTES = 64 * 1024 * 1024


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(fn, repeat: int, wall: list[float], cpu: list[float], *, child: bool) -> None:
    """Run ``fn`` ``repeat`` times; append wall and CPU seconds (own or the child's)."""
    for _ in range(repeat):
        cpu_start = _children_cpu() if child else time.process_time()
        start = time.perf_counter()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append((_children_cpu() if child else time.process_time()) - cpu_start)


def measure(
    openssl: str, count: int, repeat: int, tmp: Path
) -> tuple[int, dict[str, tuple[float, float]]]:
    """The signed list's size, and the medians (wall, cpu) of openssl, the library and the
    command on a ``count``-image list."""
    pki = devpki.DevPKI(tmp)
    ca_dir = pki.install()
    signed_path = tmp / "bench.list"
    content = imagelist.dumps(make_list(pki, count))
    signed_path.write_bytes(smime.sign(content, pki.endorser.cert, pki.endorser.key))
    conf_path = tmp / "vmtrust.conf"
    conf_path.write_text(f"[trust]\nca_dir = {ca_dir}\nmax_list_bytes = {MAX_BYTES}\n")
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
    trust = TrustStore(ca_dir)
    cli_cmd = [
        sys.executable,
        "-m",
        "vmtrust",
        "list",
        "verify",
        str(signed_path),
        "--config-file",
        str(conf_path),
    ]

    def run_openssl() -> None:
        subprocess.run(openssl_cmd, check=True, capture_output=True)

    def run_library() -> None:
        verified = verify_signed_list(
            signed_path.read_bytes(), Policy(trust=trust, max_bytes=MAX_BYTES)
        )
        assert len(verified.imagelist.images) == count

    # Bytecode cached, as after pip install (see benchmarks/startup.py).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")

    def run_cli() -> None:
        subprocess.run(cli_cmd, check=True, capture_output=True, env=env)

    for fn in (run_openssl, run_library, run_cli):  # warm the page cache and the trust store
        fn()
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for _round in range(3):
        for name, fn in (("openssl", run_openssl), ("library", run_library), ("cli", run_cli)):
            timed(
                fn,
                max(repeat // 3, 1),
                wall.setdefault(name, []),
                cpu.setdefault(name, []),
                child=name != "library",
            )
    medians = {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in wall}
    return signed_path.stat().st_size, medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", default="1000,10000", help="list sizes, comma-separated (default 1000,10000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=30, help="runs of each side for 1,000 images (fewer above)"
    )
    args = parser.parse_args()
    openssl = shutil.which("openssl")
    if not openssl:
        print("benchmark needs the openssl command line", file=sys.stderr)
        return 2
    sizes = [int(text) for text in args.images.split(",")]
    version = subprocess.run([openssl, "version"], capture_output=True, text=True).stdout.strip()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {version}"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    met = True
    for count in sizes:
        repeat = max(args.repeat * 1000 // max(count, 1000), 6)
        with tempfile.TemporaryDirectory(prefix="vmtrust-bench-") as tmp:
            size, result = measure(openssl, count, repeat, Path(tmp))
        base_wall, base_cpu = result["openssl"]
        print(
            f"\nsigned list: {count:,} images, {size / 1e6:.2f} MB; "
            f"{repeat} runs each, interleaved, medians"
        )
        print(f"  {'':<26} {'wall':>9} {'ratio':>6} {'cpu':>9} {'ratio':>6}")
        for name, label in (
            ("openssl", "openssl smime -verify"),
            ("library", "vmtrust (library)"),
            ("cli", "vmtrust list verify"),
        ):
            wall, cpu = result[name]
            print(
                f"  {label:<26} {wall * 1e3:6.1f} ms {wall / base_wall:6.2f} "
                f"{cpu * 1e3:6.1f} ms {cpu / base_cpu:6.2f}"
            )
        ratio = result["library"][0] / base_wall
        met = met and ratio <= 1.0
        print(
            f"  target library/openssl <= 1.00 (wall): {'met' if ratio <= 1.0 else 'NOT met'} "
            f"({ratio:.2f}; cpu {result['library'][1] / base_cpu:.2f})"
        )
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"all targets met: {'yes' if met else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
