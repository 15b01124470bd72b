"""A site as an admin runs it, for the operations tests: config files, three subscriptions.

``example`` lists a good image ``wn`` and an image ``bad`` whose bytes do not
match its checksum; ``broken`` points at a list that is not there (HTTP 404);
``revoked`` is signed by an endorser the CA revoked.  So one pass stores one
image and fails three ways, each under its own rule.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from conftest import list_document, local_site, served_entry
from httpserve import Site

from vmtrust import imagelist, smime

BIN = Path(sys.executable).parent
WN = b"worker node image bytes\n" * 4096
BAD = b"these are not the bytes the list describes\n"


def image(
    site: Site, identifier: str, data: bytes, *, sha512: str | None = None, path: str = ""
) -> dict:
    wrong = {"sl:checksum:sha512": sha512} if sha512 else {}
    return served_entry(
        site, identifier, data, path=path or f"/img/{identifier}.img", version="1.0", **wrong
    )


def publish(site: Site, path: str, signer, images: list[dict], version: str = "7") -> None:
    document = list_document(signer, version=version, images=images)
    site.files[path] = smime.sign(imagelist.dumps(document), signer.cert, signer.key)


def subscription(name: str, url: str, signer, extra: str = "") -> str:
    return (
        f"  - name: {name}\n    url: {url}\n"
        f"    endorsers:\n      - dn: {signer.dn}\n        ca: {signer.ca_dn}\n"
        f"    approve: all\n{extra}"
    )


def make_site(tmp_path: Path, ca_dir: Path, site: Site, pki, *, sync: str = "") -> Path:
    """vmtrust.conf for the three subscriptions, a seal key; return the config's path."""
    wrong = hashlib.sha512(b"something else").hexdigest()
    publish(
        site,
        "/example.list",
        pki.endorser,
        [image(site, "wn", WN), image(site, "bad", BAD, sha512=wrong)],
    )
    publish(site, "/revoked.list", pki.revoked, [image(site, "rv", WN)])
    return local_site(
        tmp_path,
        ca_dir,
        subscription("example", site.url("/example.list"), pki.endorser)
        + subscription("broken", site.url("/missing.list"), pki.endorser)
        + subscription("revoked", site.url("/revoked.list"), pki.revoked),
        sync=f"http_retries = 0\nlist_retries = 0\n{sync}",
    )


def run(command: str, conf: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / command, "--config-file", conf, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
