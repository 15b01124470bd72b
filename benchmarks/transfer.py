"""Benchmark: an image through the whole sync into the local store, against curl | sha512sum.

Both sides fetch the same file from the same loopback web server (a separate
``python -m http.server`` process) in the same run:

* baseline: ``curl -s URL | sha512sum`` (download and hash, nothing stored);
* vmtrust: one ``vmtrust-sync`` pass as a process — fetch and verify the signed
  list, download the image, check size and SHA-512, inspect the disk as it
  streams (oslo.utils' format inspector, see docs/images.md), write it to the
  local store with fsync, seal its trust record.

Each side runs three times, interleaved, into a fresh store each time; medians are
reported (the first round pays cold caches on both sides).

Reported: wall time and the ratio (target ≤ 1.0 at 1 GiB on the VM's disk), and
the peak resident memory of each ``vmtrust-sync`` process (target under 150 MiB
whatever the image size).  Then the hostile cases of issue 10, each one pass that
must refuse the image in one line, quickly and under the same memory target:

* a gzip bomb: 1 GiB of zeros published as ``raw.gz`` (about 1 MB downloaded);
* a header bomb: an ``.ova.gz`` of about 1.2 MB whose first tar entry is one
  1.2 GB pax header (tarfile alone would read it into memory at once).

Usage: ``python benchmarks/transfer.py [--sizes 1,4] [--dir DIR] [--rounds N]
[--no-bombs]`` (sizes in GiB; needs twice the largest size in free disk space under
DIR).  ``--dir /dev/shm`` puts the served file and the store on tmpfs, which takes
the VM's disk out of the comparison: what is left is vmtrust's own cost over
download-and-hash.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from vmtrust import authoring, devpki, imagelist, smime

BIN = Path(sys.executable).parent
CHUNK = 16 * 1024 * 1024
ROUNDS = 3  # default; --rounds changes it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def web_server(directory: Path) -> Iterator[str]:
    """``python -m http.server`` on a free loopback port, in its own process; yields its URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


def entry(identifier: str, uri: str, size: int, sha: str, title: str = "") -> dict:
    """An hv:image entry for a RAW image of random bytes."""
    return {
        "hv:image": {
            "dc:identifier": identifier,
            "dc:title": title or identifier,
            "dc:description": "",
            "hv:uri": uri,
            "hv:size": size,
            "sl:checksum:sha512": sha,
            "sl:arch": "x86_64",
            "sl:os": "Linux",
            "sl:osversion": "9",
            "sl:comments": "",
            "hv:hypervisor": "KVM",
            "hv:version": "1",
            "hv:format": "RAW",
        }
    }


def publish(pki: devpki.DevPKI, www: Path, base: str, name: str, entries: list[dict]) -> None:
    """Sign a list of ``entries`` and serve it as ``<base>/<name>.list``."""
    doc = authoring.new_list(
        title=name,
        description="",
        source="",
        uri=f"{base}/{name}.list",
        endorser_dn=pki.endorser.dn,
        endorser_ca=pki.endorser.ca_dn,
    )
    for item in entries:
        doc, _ = authoring.add_image(doc, item)
    body = smime.sign(imagelist.dumps(doc), pki.endorser.cert, pki.endorser.key)
    (www / f"{name}.list").write_bytes(body)


def site_files(site: Path, ca_dir: Path, list_url: str, pki: devpki.DevPKI, store: str) -> Path:
    """A site's subscriptions file (the list at ``list_url``, every image approved) and its
    vmtrust.conf, ending with ``store`` (the ``[sync] store`` line and the store's section);
    returns the configuration's path."""
    (site / "subs.yaml").write_text(
        f"subscriptions:\n  - name: bench\n    url: {list_url}\n    endorsers:\n"
        f"      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n    approve: all\n"
    )
    conf = site / "vmtrust.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {site}/state\n[trust]\nca_dir = {ca_dir}\n"
        # 10,000 entries sign to about 11 MB (a site with such a list raises the limit too)
        f"max_list_bytes = {64 * 1024 * 1024}\n"
        f"seal_key = {site}/seal.key\n[sync]\nsubscriptions_file = {site}/subs.yaml\n"
        f"parallel_downloads = 1\n{store}"
    )
    return conf


def make_image(path: Path, size: int) -> str:
    """Write ``size`` pseudo-random bytes (not compressible); return their SHA-512."""
    digest = hashlib.sha512()
    block = os.urandom(CHUNK)
    with open(path, "wb") as out:
        written = 0
        while written < size:
            chunk = block[: min(CHUNK, size - written)]
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    return digest.hexdigest()


def run_sync(conf: Path, cpu: list[float] | None = None) -> tuple[float, float, int, str]:
    """One ``vmtrust-sync`` pass: (seconds, peak RSS in MiB of that process, status, stderr);
    the process's CPU seconds (user and system) appended to ``cpu`` when given."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [BIN / "vmtrust-sync", "--config-file", conf],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)  # this process's own peak, not all children's
    process.returncode = os.waitstatus_to_exitcode(status)
    if cpu is not None:
        cpu.append(usage.ru_utime + usage.ru_stime)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, process.returncode, stderr


def make_site(
    work: Path, site_name: str, name: str, pki: devpki.DevPKI, ca_dir: Path, base: str
) -> Path:
    """A site (subscriptions, vmtrust.conf, seal key) subscribed to ``<base>/<name>.list``."""
    site = work / f"site-{site_name}"
    site.mkdir()
    (site / "subs.yaml").write_text(
        f"subscriptions:\n  - name: bench\n    url: {base}/{name}.list\n    endorsers:\n"
        f"      - dn: {pki.endorser.dn}\n        ca: {pki.endorser.ca_dn}\n    approve: all\n"
    )
    conf = site / "vmtrust.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {site}/state\n[trust]\nca_dir = {ca_dir}\n"
        f"max_list_bytes = {64 * 1024 * 1024}\n"  # scale.py's 10,000 entries: ~11 MB
        f"seal_key = {site}/seal.key\n[sync]\nsubscriptions_file = {site}/subs.yaml\n"
        f"[store_local]\npath = {site}/store\n"
    )
    subprocess.run(
        [BIN / "vmtrust", "keygen", "--out", site / "seal.key"], check=True, capture_output=True
    )
    return conf


def run_size(
    work: Path, gib: float, pki: devpki.DevPKI, ca_dir: Path, base: str, www: Path, rounds: int
) -> tuple[float, float, float]:
    size = int(gib * 1024**3)
    image = www / f"wn-{gib}.img"
    sha = make_image(image, size)
    os.sync()  # flush the new file now, so its write-back does not land inside a measurement
    publish(
        pki, www, base, "b", [entry(f"bench-{gib}", f"{base}/{image.name}", size, sha, "bench")]
    )
    conf = make_site(work, f"{gib}", "b", pki, ca_dir, base)
    site = conf.parent

    curl_times, sync_times, peaks = [], [], []
    for _round in range(rounds):  # interleaved; medians; the first round also warms up
        start = time.perf_counter()
        baseline = subprocess.run(
            f"curl -s {base}/{image.name} | sha512sum",
            shell=True,
            check=True,
            capture_output=True,
            text=True,
        )
        curl_times.append(time.perf_counter() - start)
        assert baseline.stdout.split()[0] == sha
        for leftover in ("store", "state"):
            shutil.rmtree(site / leftover, ignore_errors=True)
        seconds, peak, status, stderr = run_sync(conf)
        assert status == 0, stderr
        sync_times.append(seconds)
        peaks.append(peak)
        stored = list((site / "store" / "images").glob("*/*.img"))
        assert len(stored) == 1 and stored[0].stat().st_size == size
    print(
        f"  samples: curl {', '.join(f'{t:.2f}' for t in curl_times)}; "
        f"sync {', '.join(f'{t:.2f}' for t in sync_times)}"
    )
    curl_time, sync_time = statistics.median(curl_times), statistics.median(sync_times)
    shutil.rmtree(site)
    image.unlink()
    return curl_time, sync_time, max(peaks)


def gzip_stream(chunks: Iterator[bytes]) -> bytes:
    """gzip of the chunks, compressed as they come (the uncompressed bytes are never held)."""
    engine = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join([*(engine.compress(chunk) for chunk in chunks), engine.flush()])


def zeros(size: int) -> Iterator[bytes]:
    block = bytes(CHUNK)
    for offset in range(0, size, CHUNK):
        yield block[: min(CHUNK, size - offset)]


def pax_header_bomb(size: int) -> bytes:
    """An .ova.gz whose first tar entry is one pax header of ``size`` bytes."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, size
    return gzip_stream(iter([header.tobuf(tarfile.USTAR_FORMAT), *zeros(size)]))


BOMBS = {
    "gzip bomb: 1 GiB of zeros as raw.gz": (
        "raw.gz",
        lambda: gzip_stream(zeros(1024**3)),
        "max_expansion_ratio",
    ),
    "header bomb: .ova.gz, one 1.2 GB pax header": (
        "ova.gz",
        lambda: pax_header_bomb(1_200_000_000),
        "extended (pax or long-name) header",
    ),
}


def run_bombs(work: Path, pki: devpki.DevPKI, ca_dir: Path, base: str, www: Path) -> None:
    for number, (title, (fmt, make, words)) in enumerate(BOMBS.items()):
        data = make()
        name = f"bomb{number}"
        (www / f"{name}.bin").write_bytes(data)
        item = entry(name, f"{base}/{name}.bin", len(data), hashlib.sha512(data).hexdigest())
        item["hv:image"]["hv:format"] = fmt
        publish(pki, www, base, name, [item])
        conf = make_site(work, name, name, pki, ca_dir, base)
        seconds, peak, status, stderr = run_sync(conf)
        lines = stderr.strip().splitlines()
        assert status == 1 and len(lines) == 1 and words in lines[0], stderr
        assert not list((conf.parent / "store" / "images").glob("*/*"))
        print(f"{title}: {len(data)} bytes downloaded, refused in {seconds:.2f} s, "
              f"peak RSS {peak:.0f} MiB")  # fmt: skip
        print(f"  {lines[0]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4", help="GiB, comma-separated (default 1,4)")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help=f"interleaved rounds per size (default {ROUNDS})"
    )
    parser.add_argument("--no-bombs", action="store_true", help="skip the hostile cases")
    args = parser.parse_args()
    rounds = max(1, args.rounds)
    if not shutil.which("curl"):
        print("benchmark needs curl", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vmtrust-transfer-", dir=args.dir) as tmp:
        work = Path(tmp)
        pki = devpki.DevPKI(work)
        ca_dir = pki.install()
        www = work / "www"
        www.mkdir()
        with web_server(www) as base:
            print(
                f"machine: {platform.machine()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}"
            )
            for gib in (float(s) for s in args.sizes.split(",")):
                curl_time, sync_time, peak = run_size(work, gib, pki, ca_dir, base, www, rounds)
                print(
                    f"{gib:g} GiB: curl|sha512sum {curl_time:6.2f} s, vmtrust-sync "
                    f"{sync_time:6.2f} s (medians of {rounds}), ratio {sync_time / curl_time:.2f}; "
                    f"peak RSS of vmtrust-sync {peak:.0f} MiB"
                )
            if not args.no_bombs:
                run_bombs(work, pki, ca_dir, base, www)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
