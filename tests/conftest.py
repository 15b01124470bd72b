"""Shared fixtures: a test PKI made by the tests, and list documents to sign.

Key generation is the slow part, so the PKI is built once per session; every
test that needs a trust directory gets its own copy to break.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

# nova's own code runs in .venv-nova (make test runs tests/with_nova there); elsewhere skip it.
try:
    import nova  # noqa: F401
except ImportError:
    collect_ignore = ["with_nova"]

from vmtrust import devpki, imagelist, smime
from vmtrust.devpki import Credential
from vmtrust.truststore import TrustStore

try:  # .venv-nova runs no property tests and has no hypothesis
    from hypothesis import HealthCheck, settings
except ImportError:
    pass
else:
    # CI runs on two shared cores: how fast hypothesis generates inputs says nothing about
    # the code under test, so its timing checks must not fail a run (the properties still do).
    settings.register_profile(
        "shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile("shared-machine")

IMAGE_BYTES = b"example image bytes\n"
IMAGE_SHA512 = hashlib.sha512(IMAGE_BYTES).hexdigest()


@dataclass
class TestPKI:
    """The cast of certificates every signature test draws from."""

    ca: Credential
    endorser: Credential
    revoked: Credential  #: revoked by the CA's CRL
    expired: Credential  #: validity ended yesterday
    outside: Credential  #: subject outside the CA's namespace
    no_sign: Credential  #: key usage without digitalSignature
    non_repudiation: Credential  #: key usage nonRepudiation, not digitalSignature
    no_key_usage: Credential  #: no keyUsage extension at all (any use allowed)
    rogue_ca: Credential  #: same DN as ``ca``, different key, not trusted
    rogue: Credential  #: endorser DN, issued by the rogue CA
    sub_ca: Credential  #: intermediate CA under ``ca``
    sub_endorser: Credential  #: issued by ``sub_ca``
    other_ca: Credential  #: a second trusted CA with its own namespace
    other_endorser: Credential  #: issued by ``other_ca``

    def write_trust_dir(
        self, directory: Path, *, crls: bool = True, namespaces: bool = True
    ) -> Path:
        """Install ``ca``, ``sub_ca`` and ``other_ca`` (with CRLs and namespaces)."""
        ns = devpki.NAMESPACE if namespaces else None
        devpki.write_ca(
            directory,
            self.ca,
            crl=devpki.make_crl(self.ca, [self.revoked.cert]) if crls else None,
            namespace=ns,
        )
        devpki.write_ca(
            directory, self.sub_ca, crl=devpki.make_crl(self.sub_ca) if crls else None, namespace=ns
        )
        devpki.write_ca(
            directory,
            self.other_ca,
            crl=devpki.make_crl(self.other_ca) if crls else None,
            namespace="/DC=org/DC=other/*" if namespaces else None,
            style="signing_policy",
        )
        return directory


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    now = datetime.now(UTC)
    ca = devpki.make_ca()
    sub_ca = devpki.make_ca("/DC=org/DC=example/CN=Example Sub CA", issuer=ca)
    other_ca = devpki.make_ca("/DC=org/DC=other/CN=Other CA")
    rogue_ca = devpki.make_ca()
    return TestPKI(
        ca=ca,
        endorser=devpki.make_endorser(ca),
        revoked=devpki.make_endorser(ca, "/DC=org/DC=example/O=People/CN=Revoked Endorser"),
        expired=devpki.make_endorser(
            ca,
            "/DC=org/DC=example/O=People/CN=Expired Endorser",
            not_before=now - timedelta(days=30),
            days=29,
        ),
        outside=devpki.make_endorser(ca, "/DC=org/DC=elsewhere/CN=Outside Endorser"),
        no_sign=devpki.make_endorser(
            ca, "/DC=org/DC=example/O=People/CN=No Sign", digital_signature=False
        ),
        non_repudiation=devpki.make_endorser(
            ca,
            "/DC=org/DC=example/O=People/CN=Non Repudiation",
            digital_signature=False,
            non_repudiation=True,
        ),
        no_key_usage=devpki.make_endorser(
            ca, "/DC=org/DC=example/O=People/CN=No Key Usage", key_usage=False
        ),
        rogue_ca=rogue_ca,
        rogue=devpki.make_endorser(rogue_ca),
        sub_ca=sub_ca,
        sub_endorser=devpki.make_endorser(sub_ca, "/DC=org/DC=example/O=Sub/CN=Sub Endorser"),
        other_ca=other_ca,
        other_endorser=devpki.make_endorser(other_ca, "/DC=org/DC=other/CN=Other Endorser"),
    )


@pytest.fixture(scope="session")
def _trust_dir_template(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pki.write_trust_dir(tmp_path_factory.mktemp("template") / "certificates")


@pytest.fixture
def ca_dir(_trust_dir_template: Path, tmp_path: Path) -> Path:
    """A private copy of the standard trust directory, free to modify."""
    target = tmp_path / "certificates"
    shutil.copytree(_trust_dir_template, target)
    return target


@pytest.fixture
def trust(ca_dir: Path) -> TrustStore:
    return TrustStore(ca_dir)


def image_entry(
    identifier: str = "85bfb313-a852-444b-89e7-9cdf8c23dc91", **overrides: Any
) -> dict[str, Any]:
    image = {
        "dc:identifier": identifier,
        "dc:title": "Example worker node",
        "dc:description": "Minimal worker node image",
        "hv:uri": "https://images.example.org/img/wn-3.qcow2",
        "hv:size": len(IMAGE_BYTES),
        "sl:checksum:sha512": IMAGE_SHA512,
        "hv:format": "QCOW2",
        "hv:hypervisor": "KVM",
        "hv:version": "1.2",
        "sl:arch": "x86_64",
        "sl:os": "Linux",
        "sl:osname": "AlmaLinux",
        "sl:osversion": "9",
        "sl:comments": "",
        "hv:core_minimum": 1,
        "hv:ram_minimum": 2048,
    }
    image.update(overrides)
    return {"hv:image": {k: v for k, v in image.items() if v is not None}}


def served_entry(
    site: Any, identifier: str, data: bytes, *, path: str = "", version: str = "1", **fields: Any
) -> dict[str, Any]:
    """A RAW image entry whose URI, size and SHA-512 are those of ``data`` served by ``site``.

    ``data`` is published at ``path`` (default ``/img/<identifier>-<version>.img``);
    ``fields`` add to or override the entry's.
    """
    path = path or f"/img/{identifier}-{version}.img"
    site.files[path] = data
    served = {
        "hv:uri": site.url(path),
        "hv:size": len(data),
        "sl:checksum:sha512": hashlib.sha512(data).hexdigest(),
        "hv:version": version,
        "hv:format": "RAW",
    }
    return image_entry(identifier, **{**served, **fields})


def local_site(tmp_path: Path, ca_dir: Path, subscriptions: str, *, sync: str = "") -> Path:
    """A site of the local store in ``tmp_path``, as an admin sets one up; vmtrust.conf's path.

    ``subscriptions`` is the items of the subscriptions file's list; ``sync`` adds lines to
    ``[sync]`` (the default is no retries, short backoff).  The seal key is made with
    ``vmtrust keygen``, as the README says.
    """
    (tmp_path / "subs.yaml").write_text("subscriptions:\n" + subscriptions)
    sync = sync or "http_retries = 0\n"
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n"
        f"[trust]\nca_dir = {ca_dir}\nseal_key = {tmp_path}/seal.key\n"
        f"[sync]\nsubscriptions_file = {tmp_path}/subs.yaml\nhttp_backoff = 0.01\n"
        f"{sync}"
        f"[store_local]\npath = {tmp_path}/store\n"
    )
    vmtrust_command = Path(sys.executable).parent / "vmtrust"
    subprocess.run(
        [vmtrust_command, "keygen", "--out", tmp_path / "seal.key"], check=True, capture_output=True
    )
    return conf


def list_document(
    endorser: Credential | None = None,
    *,
    version: str = "3",
    created: datetime | None = None,
    expires: datetime | None = None,
    images: list[dict[str, Any]] | None = None,
    identifier: str = "65ef8feb-86d4-42ea-9960-f79bcc5a11b4",
    dn: str | None = None,
    ca: str | None = None,
) -> dict[str, Any]:
    """A valid list document; ``endorser`` fills hv:dn/hv:ca unless given explicitly."""
    now = datetime.now(UTC)
    created = created or now - timedelta(hours=1)
    expires = expires or now + timedelta(days=28)
    return {
        "hv:imagelist": {
            "dc:identifier": identifier,
            "dc:title": "Example site images",
            "dc:description": "Images endorsed for vo.example.org",
            "dc:source": "https://images.example.org/",
            "dc:date:created": imagelist.format_date(created),
            "dc:date:expires": imagelist.format_date(expires),
            "hv:version": version,
            "hv:uri": "https://images.example.org/lists/site.list",
            "ad:vo": "vo.example.org",
            "hv:endorser": {
                "hv:x509": {
                    "dc:creator": "Jane Endorser",
                    "hv:email": "jane@example.org",
                    "hv:dn": dn or (endorser.dn if endorser else devpki.ENDORSER_DN),
                    "hv:ca": ca or (endorser.ca_dn if endorser else devpki.CA_DN),
                }
            },
            "hv:images": images if images is not None else [image_entry()],
        }
    }


SignFn = Callable[..., bytes]


@pytest.fixture
def sign(pki: TestPKI) -> SignFn:
    """``sign(document=None, signer=pki.endorser, digest="sha256")`` → S/MIME bytes.

    The document defaults to a valid list naming the signer as endorser.
    """

    def _sign(
        document: dict[str, Any] | None = None,
        signer: Credential | None = None,
        digest: str = "sha256",
        extra: list | None = None,
    ) -> bytes:
        signer = signer or pki.endorser
        document = document if document is not None else list_document(signer)
        return smime.sign(
            imagelist.dumps(document),
            signer.cert,
            signer.key,
            digest=digest,
            extra_certificates=extra,
        )

    return _sign


# --- the sync service against a loopback web server ----------------------------


@pytest.fixture
def site():
    """A real web server on a free loopback port, stopped after the test."""
    from httpserve import Server, Site

    with Server(Site()) as running:
        yield running


def sync_settings(
    tmp_path: Path, ca_dir: Path, key: Any, *, retire_mode: str = "deactivate"
) -> Any:
    """SyncSettings for tests: fast HTTP retries, the test CA directory, state under tmp_path."""
    from glance_sync.download import HttpSettings
    from glance_sync.settings import SyncSettings

    return SyncSettings(
        state_dir=tmp_path / "state",
        subscriptions_file=tmp_path / "unused.yaml",
        trust=TrustStore(ca_dir),
        seal_key=key,
        retire_mode=retire_mode,
        retire_grace=timedelta(days=7),
        parallel_downloads=2,
        http=HttpSettings(timeout=5, retries=2, backoff=0.01),
        allow_sha1=False,
        clock_skew=timedelta(minutes=5),
        max_list_bytes=1 << 20,
    )


@pytest.fixture
def sync(tmp_path: Path, ca_dir: Path, site, pki):
    """A sync service with a fresh seal key and local store, subscribed to ``site``."""
    from glance_sync.service import SyncService
    from glance_sync.stores.local import LocalStore
    from vmtrust.imagelist import Endorser
    from vmtrust.policy import Subscription
    from vmtrust.record import generate_key_pair, load_private_key

    generate_key_pair(tmp_path / "seal.key")
    key = load_private_key(tmp_path / "seal.key")
    settings = sync_settings(tmp_path, ca_dir, key)
    store = LocalStore(tmp_path / "store", [key.public_key()])
    service = SyncService(settings, store)
    subs = (
        Subscription(
            name="example",
            url=site.url("/site.list"),
            endorsers=(Endorser(dn=pki.endorser.dn, ca=pki.endorser.ca_dn),),
            approve_all=True,
        ),
    )
    service.subs = subs  # type: ignore[attr-defined]  # for the test
    yield service
    service.close()


# --- a real Glance (tests/glance_server.py) ------------------------------------------------


def require_glance() -> None:
    """Skip without a Glance environment, or fail where services are required (make test)."""
    from glance_server import available

    why_not = available()
    if why_not:
        if os.environ.get("VMTRUST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"Glance is required here: {why_not}")
        pytest.skip(why_not)


@pytest.fixture(scope="session")
def glance(tmp_path_factory: pytest.TempPathFactory):
    """One real Glance 33 for the session; each test works in a project of its own."""
    from glance_server import GlanceServer

    require_glance()
    server = GlanceServer(tmp_path_factory.mktemp("glance")).start()
    yield server
    server.stop()


def write_clouds_yaml(path: Path, url: str, clouds: dict[str, tuple[str, str]]) -> Path:
    """clouds.yaml with one admin_token cloud per name: name → (project, roles)."""
    from glance_server import token

    lines = ["clouds:"]
    for name, (project, roles) in clouds.items():
        lines += [
            f"  {name}:",
            "    auth_type: admin_token",
            "    auth:",
            f"      endpoint: {url}",
            f"      token: '{token(project, roles)}'",
            f"    image_endpoint_override: {url}",
            "    region_name: RegionOne",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def glance_sync(tmp_path: Path, ca_dir: Path, site, pki, glance):
    """Like ``sync``, storing into the real Glance, in a fresh service project."""
    import uuid

    from glance_server import SERVICE_ROLES

    from glance_sync.cloud import connect_cloud
    from glance_sync.service import SyncService
    from glance_sync.stores.glance import GlanceStore
    from vmtrust.imagelist import Endorser
    from vmtrust.policy import Subscription
    from vmtrust.record import generate_key_pair, load_private_key

    project = "svc" + uuid.uuid4().hex[:12]
    clouds = write_clouds_yaml(
        tmp_path / "clouds.yaml", glance.url, {"sync": (project, SERVICE_ROLES)}
    )
    generate_key_pair(tmp_path / "seal.key")
    key = load_private_key(tmp_path / "seal.key")
    settings = sync_settings(tmp_path, ca_dir, key)
    store = GlanceStore(
        connect_cloud("sync", str(clouds)), project_id=project, seal_keys=[key.public_key()]
    )
    service = SyncService(settings, store)
    service.subs = (  # type: ignore[attr-defined]  # for the test
        Subscription(
            name="example",
            url=site.url("/site.list"),
            endorsers=(Endorser(dn=pki.endorser.dn, ca=pki.endorser.ca_dn),),
            approve_all=True,
        ),
    )
    service.project = project  # type: ignore[attr-defined]  # for the test
    service.clouds = clouds  # type: ignore[attr-defined]  # for the test
    yield service
    service.close()


# --- moto in server mode for EC2 (tests/moto_ec2.py) -----------------------------------------


@pytest.fixture(scope="session")
def moto_server():
    """One moto server for the session on a loopback port; each test resets it."""
    try:
        from moto_ec2 import MotoServer
    except ImportError as exc:  # boto3 or moto[server] missing: the [ec2] and [test] extras
        if os.environ.get("VMTRUST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"moto is required here: {exc}")
        pytest.skip(f"moto not installed: {exc}")
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def ec2_cloud(moto_server, tmp_path: Path):
    """A fresh emulated account: clients with the moto gap stubs, and the site's record bucket."""
    from moto_ec2 import REGION, Cloud, MotoGaps, session

    from vmtrust import ec2client

    moto_server.reset()
    gaps = MotoGaps(moto_server.url, tmp_path / "moto-gaps.json")
    clients = ec2client.clients(session(gaps), endpoint_url=moto_server.url, attempts=3, timeout=20)
    clients.s3.create_bucket(
        Bucket="site-records", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    return Cloud(clients, gaps, moto_server.url)


VO = "vo.example.org"
VO_ACCOUNT = "111111111111"
BUCKET = "site-records"


def make_store(cloud, key, tmp_path: Path, **kw):
    """An EC2 store in the moto account of ``cloud``: VO shares, the record bucket."""
    from glance_sync.stores.ec2 import EC2Store

    options = dict(
        seal_keys=[key.public_key()],
        workdir=tmp_path / "state" / "work",
        vo_accounts={VO: [VO_ACCOUNT]},
        record_bucket=BUCKET,
        not_found_wait=5.0,
    )
    options.update(kw)
    return EC2Store(cloud.clients, **options)


@pytest.fixture
def ec2_sync(tmp_path: Path, ca_dir: Path, site, pki, ec2_cloud):
    """A sync service storing into the moto account, subscribed to ``site``."""
    from glance_sync.service import SyncService
    from vmtrust.imagelist import Endorser
    from vmtrust.policy import Subscription
    from vmtrust.record import generate_key_pair, load_private_key

    generate_key_pair(tmp_path / "seal.key")
    key = load_private_key(tmp_path / "seal.key")
    settings = sync_settings(tmp_path, ca_dir, key)
    service = SyncService(settings, make_store(ec2_cloud, key, tmp_path))
    service.subs = (  # type: ignore[attr-defined]  # for the test
        Subscription(
            name="example",
            url=site.url("/site.list"),
            endorsers=(Endorser(dn=pki.endorser.dn, ca=pki.endorser.ca_dn),),
            approve_all=True,
        ),
    )
    service.cloud = ec2_cloud  # type: ignore[attr-defined]  # for the test
    yield service
    service.close()
