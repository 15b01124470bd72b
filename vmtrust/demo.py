"""``make demo``: an endorser publishes a signed list on loopback, a site mirrors it.

A demo CA and endorser are made (never use them for anything real).  The
endorser creates a list, describes a small image, signs the list, and
publishes both on an HTTP server on 127.0.0.1.  The site makes its seal key,
subscribes to the list, and ``vmtrust-sync`` mirrors the approved image into
the local store under ``demo-out/``; ``vmtrust images`` and ``vmtrust status``
show the result.  Finally a tampered list is refused.  Every step is printed
as the command a person would type, so the output doubles as a tutorial.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from vmtrust import devpki

__all__ = ["OUT", "main", "run"]

OUT = Path("demo-out")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def run(program: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    print(f"\n$ {program} {shown}", flush=True)
    module = "vmtrust" if program == "vmtrust" else "glance_sync"
    command = [sys.executable, "-m", module, *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    sys.stdout.write(result.stdout)
    sys.stdout.write(result.stderr)
    if result.returncode != expect:
        print(
            f"demo: {program} exited with {result.returncode}, expected {expect}", file=sys.stderr
        )
        raise SystemExit(1)
    if expect:
        print(f"(exit status {result.returncode}, as expected)")
    return result


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    www = OUT / "www"
    www.mkdir(parents=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return _demo(www, base)
    finally:
        server.shutdown()
        server.server_close()


def _demo(www: Path, base: str) -> int:
    print("== A demo CA and endorser (for this demo only) ==")
    pki = devpki.DevPKI(OUT)
    ca_dir = pki.install()
    cert, key = pki.endorser.write(OUT / "endorser", "usercert")
    print(f"CA directory  {ca_dir} (CA certificate, CRL, namespaces)")
    print(f"endorser      {pki.endorser.dn}")
    print(f"web server    {base}/ serving {www}/")
    image = www / "demo-wn-1.0.img"
    image.write_bytes(b"vmtrust demo worker node image\n" * 32768)  # about 1 MB

    print("\n== The endorser creates, signs and publishes a list ==")
    listing = OUT / "demo.json"
    run(
        "vmtrust",
        "list",
        "new",
        "--cert",
        str(cert),
        "--title",
        "Demo site images",
        "--description",
        "Images endorsed for the demo VO",
        "--source",
        base,
        "--uri",
        f"{base}/demo.list",
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
        "vmtrust",
        "image",
        "describe",
        str(image),
        "--uri",
        f"{base}/{image.name}",
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
    run("vmtrust", "list", "add-image", str(listing), str(entry))
    signed = www / "demo.list"
    run(
        "vmtrust",
        "list",
        "sign",
        str(listing),
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--out",
        str(signed),
    )
    run("vmtrust", "list", "verify", f"{signed}", "--ca-dir", str(ca_dir))

    print("\n== The site subscribes and syncs ==")
    site = OUT / "site"
    site.mkdir()
    (site / "subscriptions.yaml").write_text(
        "subscriptions:\n"
        "  - name: demo\n"
        f"    url: {base}/demo.list\n"
        "    endorsers:\n"
        f"      - dn: {pki.endorser.dn}\n"
        f"        ca: {pki.endorser.ca_dn}\n"
        "    vo: vo.demo.example.org\n"
        "    approve: all\n"
    )
    conf = site / "vmtrust.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {site}/state\n\n"
        f"[trust]\nca_dir = {ca_dir}\nseal_key = {site}/seal.key\n\n"
        f"[sync]\nsubscriptions_file = {site}/subscriptions.yaml\n\n"
        f"[store_local]\npath = {site}/store\n"
    )
    print(f"(configuration {conf} and {site}/subscriptions.yaml written)")
    run("vmtrust", "keygen", "--out", str(site / "seal.key"))
    run("vmtrust-sync", "--config-file", str(conf), "--dry-run")
    run("vmtrust-sync", "--config-file", str(conf), "-v")
    run("vmtrust", "--config-file", str(conf), "images")
    run("vmtrust", "--config-file", str(conf), "status")
    print("\nA second pass changes nothing:")
    run("vmtrust-sync", "--config-file", str(conf), "-v")

    print("\n== A tampered list is refused; the store keeps its images ==")
    signed.write_bytes(signed.read_bytes().replace(b"Demo worker node", b"Evil worker node"))
    run("vmtrust-sync", "--config-file", str(conf), expect=1)
    run("vmtrust", "--config-file", str(conf), "images")
    print(f"\nDemo files are in {OUT}/.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
