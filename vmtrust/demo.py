"""``make demo``: the endorser's side of vmtrust, end to end, with real commands.

A demo CA and endorser are made (never use them for anything real), then the
endorser creates a list, describes an image, adds it, signs the list, and a
site verifies it against the demo trust directory — including a tampered copy
that must fail.  Every step is printed as the ``vmtrust`` command a person
would type, so the output doubles as a tutorial.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from vmtrust import devpki

OUT = Path("demo-out")


def run(*args: str, expect_failure: bool = False) -> subprocess.CompletedProcess[str]:
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    print(f"\n$ vmtrust {shown}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "vmtrust", *args], capture_output=True, text=True, check=False
    )
    sys.stdout.write(result.stdout)
    sys.stdout.write(result.stderr)
    if (result.returncode != 0) != expect_failure:
        print(f"demo: unexpected exit status {result.returncode}", file=sys.stderr)
        raise SystemExit(1)
    if expect_failure:
        print(f"(exit status {result.returncode}, as expected)")
    return result


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    print("== A demo CA and endorser (for this demo only) ==")
    pki = devpki.DevPKI(OUT)
    ca_dir = pki.install()
    cert, key = pki.endorser.write(OUT / "endorser", "usercert")
    print(f"CA directory  {ca_dir} (CA certificate, CRL, namespaces)")
    print(f"endorser      {pki.endorser.dn}")

    images = OUT / "images"
    images.mkdir()
    image = images / "demo-wn-1.0.img"
    image.write_bytes(b"vmtrust demo worker node image\n" * 32768)  # 1 MiB

    print("\n== The endorser publishes a list ==")
    listing = OUT / "demo.json"
    run(
        "list",
        "new",
        "--cert",
        str(cert),
        "--title",
        "Demo site images",
        "--description",
        "Images endorsed for the demo VO",
        "--source",
        "https://demo.invalid/",
        "--uri",
        "http://127.0.0.1:8080/demo.list",
        "--creator",
        "Jane Endorser",
        "--email",
        "jane@example.org",
        "--vo",
        "vo.demo.example.org",
        "--out",
        str(listing),
    )
    entry = OUT / "demo-wn.json"
    run(
        "image",
        "describe",
        str(image),
        "--uri",
        "http://127.0.0.1:8080/demo-wn-1.0.img",
        "--title",
        "Demo worker node",
        "--osname",
        "AlmaLinux",
        "--osversion",
        "9",
        "--format",
        "RAW",
        "--image-version",
        "1.0",
        "--out",
        str(entry),
    )
    run("list", "add-image", str(listing), str(entry))
    signed = OUT / "demo.list"
    run("list", "sign", str(listing), "--cert", str(cert), "--key", str(key), "--out", str(signed))

    print("\n== A site verifies it ==")
    run(
        "list",
        "verify",
        str(signed),
        "--ca-dir",
        str(ca_dir),
        "--endorser-dn",
        pki.endorser.dn,
        "--endorser-ca",
        pki.endorser.ca_dn,
    )
    run("list", "show", str(signed))
    if shutil.which("openssl"):
        print(
            f"\n$ openssl smime -verify -in {signed} -CApath {ca_dir} -crl_check_all -out /dev/null"
        )
        check = subprocess.run(
            [
                "openssl",
                "smime",
                "-verify",
                "-in",
                str(signed),
                "-CApath",
                str(ca_dir),
                "-crl_check_all",
                "-out",
                "/dev/null",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        print(check.stderr.strip())

    print("\n== A tampered copy is refused ==")
    tampered = OUT / "tampered.list"
    tampered.write_bytes(signed.read_bytes().replace(b"Demo worker node", b"Evil worker node"))
    run("list", "verify", str(tampered), "--ca-dir", str(ca_dir), expect_failure=True)
    print(f"\nDemo files are in {OUT}/.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
