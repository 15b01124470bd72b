"""Benchmark: an image through the whole sync into EBS (moto) against boto3's managed S3 upload.

moto's server (``python -m moto.server``) runs on loopback in its own process and
a 1 GiB image of random bytes is served by a separate ``python -m http.server``.
In one run, interleaved, medians of ``--rounds``:

* baseline: boto3's managed S3 upload (``upload_file``: multipart, threaded, its
  defaults) of the same bytes from the local file into moto, in a process;
* vmtrust: one whole sync pass in a process, configured by a vmtrust.conf with
  ``[sync] store = ec2`` — fetch and verify the signed list, download the image,
  check size and SHA-512, stream it into an EBS snapshot with the EBS direct APIs
  (512 KiB blocks with their checksums, zero blocks skipped, parallel puts),
  register the AMI, deprecate it at its expiry, seal and tag it, publish the
  record to S3, share it.  moto does not implement EnableImageDeprecation and
  misreports the EBS block size: the test stubs of tests/moto_ec2.py answer
  those two calls at the botocore boundary, as in the tests.

Reported: both times and their ratio (target ≤ 1.2), the sync process's peak
resident memory (target under 150 MiB), and the same sync for the image as
qcow2 (streamed as raw through qemu-nbd and nbdcopy from the verified work file).

Usage: ``python benchmarks/ec2_ingest.py [--gib 1] [--rounds 3] [--dir DIR] [--no-qcow2]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
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

from moto_ec2 import CREDENTIALS, REGION, MotoGaps, MotoServer  # noqa: E402
from transfer import entry, make_image, publish, site_files, web_server  # noqa: E402

from vmtrust import devpki  # noqa: E402

BUCKET = "bench-baseline"
RECORDS = "bench-records"


def environment(work: Path) -> dict[str, str]:
    """What the child processes run with: test credentials, nothing of the host's AWS setup."""
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=CREDENTIALS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=CREDENTIALS["aws_secret_access_key"],
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(work / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(work / "no-aws-credentials"),
        PYTHONPATH=str(ROOT),
    )
    return env


def site_config(work: Path, name: str, moto: str, ca_dir: Path, list_url: str, pki) -> Path:
    site = work / name
    site.mkdir()
    conf = site_files(
        site,
        ca_dir,
        list_url,
        pki,
        f"store = ec2\n[store_ec2]\nregion = {REGION}\nendpoint_url = {moto}\n"
        f"record_bucket = {RECORDS}\nvo_account = vo.example.org:111111111111\n",
    )
    subprocess.run(
        [sys.executable, "-m", "vmtrust", "keygen", "--out", site / "seal.key"],
        check=True,
        capture_output=True,
        env=environment(work),
    )
    return conf


def child(kind: str, args: list[str], work: Path) -> dict:
    """Run one side in its own process; its report (and the wall time seen from here)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, *args],
        check=True,
        capture_output=True,
        text=True,
        env=environment(work),
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["wall"] = time.perf_counter() - start
    return report


# --- the two sides, each in its own process --------------------------------------------------


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the
    parent across fork and exec)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def run_sync(conf: str, moto: str, gaps_state: str) -> dict:
    """One sync pass as vmtrust-sync runs it, with the moto gap stubs on boto3's session."""
    from glance_sync import settings as settings_mod
    from glance_sync.service import SyncService
    from vmtrust import ec2client
    from vmtrust.conf import make_conf
    from vmtrust.policy import load_subscriptions

    made = ec2client.session

    def with_gaps(profile: str = "", region: str = ""):
        boto = made(profile, region)
        MotoGaps(moto, Path(gaps_state)).attach(boto)
        return boto

    ec2client.session = with_gaps
    conf_obj = make_conf([conf])
    settings = settings_mod.from_conf(conf_obj)
    service = SyncService(settings, settings_mod.make_store(conf_obj, settings))
    start = time.perf_counter()
    report = service.run(load_subscriptions(settings.subscriptions_file))
    seconds = time.perf_counter() - start
    service.close()
    if report.failures or not report.done:
        raise SystemExit(f"sync failed: {report.failures}")
    return {
        "seconds": seconds,
        "rss_mib": peak_rss_mib(),
    }


def run_upload(path: str, moto: str) -> dict:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto, region_name=REGION)
    start = time.perf_counter()
    s3.upload_file(path, BUCKET, "image")
    seconds = time.perf_counter() - start
    size = s3.head_object(Bucket=BUCKET, Key="image")["ContentLength"]
    if size != Path(path).stat().st_size:
        raise SystemExit(f"upload stored {size} bytes")
    return {
        "seconds": seconds,
        "rss_mib": peak_rss_mib(),
    }


# --- the run ----------------------------------------------------------------------------------


def prepare(moto: MotoServer) -> None:
    """A fresh account: nothing of the previous round is kept (moto holds blocks in memory)."""
    import boto3

    moto.reset()
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name=REGION, **CREDENTIALS)
    for bucket in (BUCKET, RECORDS):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})


def trusted_amis(moto: MotoServer) -> int:
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=moto.url, region_name=REGION, **CREDENTIALS)
    found = ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "tag:vmtrust:state", "Values": ["trusted"]}]
    )
    return len(found["Images"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="image size in GiB (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    parser.add_argument("--no-qcow2", action="store_true", help="skip the qcow2 path")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = run_sync(*rest) if kind == "sync" else run_upload(*rest)
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="vmtrust-ec2-", dir=args.dir) as tmp:
        work = Path(tmp)
        pki = devpki.DevPKI(work)
        ca_dir = pki.install()
        www = work / "www"
        www.mkdir()
        size = int(args.gib * 1024**3)
        image = www / "big.img"
        sha = make_image(image, size)
        os.sync()
        moto = MotoServer().start()
        try:
            with web_server(www) as base:
                publish(pki, www, base, "raw", [entry("big", f"{base}/big.img", size, sha)])
                print(
                    f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
                    f"{platform.python_version()}; load {os.getloadavg()[0]:.2f}; moto server"
                )
                upload, sync, rss = [], [], []
                for n in range(max(1, args.rounds)):
                    prepare(moto)
                    upload.append(child("s3", [str(image), moto.url], work)["wall"])
                    prepare(moto)
                    conf = site_config(work, f"raw{n}", moto.url, ca_dir, f"{base}/raw.list", pki)
                    report = child("sync", [str(conf), moto.url, str(work / f"gaps{n}")], work)
                    assert trusted_amis(moto) == 1
                    sync.append(report["wall"])
                    rss.append(report["rss_mib"])
                a, b = statistics.median(upload), statistics.median(sync)
                print(
                    f"  samples: upload_file {', '.join(f'{t:.2f}' for t in upload)}; "
                    f"vmtrust sync {', '.join(f'{t:.2f}' for t in sync)}"
                )
                print(
                    f"1. {args.gib:g} GiB raw: boto3 upload_file to S3 {a:.2f} s, whole vmtrust "
                    f"sync into EBS {b:.2f} s (medians of {len(sync)}), ratio {b / a:.2f} "
                    f"(target <= 1.2); sync peak RSS {max(rss):.0f} MiB (target < 150)"
                )
                if not args.no_qcow2 and shutil.which("nbdcopy"):
                    qcow2 = www / "big.qcow2"
                    subprocess.run(
                        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", image, qcow2],
                        check=True,
                    )
                    with open(qcow2, "rb") as stream:
                        digest = hashlib.file_digest(stream, "sha512").hexdigest()
                    item = entry("bigq", f"{base}/big.qcow2", qcow2.stat().st_size, digest)
                    item["hv:image"]["hv:format"] = "QCOW2"
                    publish(pki, www, base, "qcow2", [item])
                    prepare(moto)
                    conf = site_config(work, "qcow2", moto.url, ca_dir, f"{base}/qcow2.list", pki)
                    report = child("sync", [str(conf), moto.url, str(work / "gapsq")], work)
                    assert trusted_amis(moto) == 1
                    print(
                        f"2. the same image as qcow2 ({qcow2.stat().st_size / 1024**3:.2f} GiB): "
                        f"whole sync {report['wall']:.2f} s (download, verify, work file, "
                        f"qemu-nbd + nbdcopy to raw, EBS); peak RSS {report['rss_mib']:.0f} MiB"
                    )
                print(f"   load at the end: {os.getloadavg()[0]:.2f}")
        finally:
            moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
