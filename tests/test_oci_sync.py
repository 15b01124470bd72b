"""OCI registry sources through whole sync passes, against a real registry on loopback.

The registry is Debian's docker-registry (CNCF distribution 2.8), started by the
tests (tests/oci_registry.py); artefacts are pushed through the distribution API
in EGI's layout; cosign signatures are made the way cosign stores them, with
keys made here.  Every attack below is performed against the real registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from oci_registry import LocalRegistry, Pusher, p256_key, write_public_key
from oci_support import make_service, oci_subscription, qcow2_disk, require_registry, trusted
from tcpproxy import Rule, TcpProxy

REPO = "egi_vm_images/ubuntu"


@pytest.fixture
def registry(tmp_path):
    require_registry()
    with LocalRegistry(tmp_path / "registry") as running:
        yield running


@pytest.fixture
def pusher(registry):
    return Pusher(registry)


@pytest.fixture
def service(tmp_path, ca_dir):
    service = make_service(tmp_path, ca_dir)
    yield service
    service.close()


@pytest.fixture
def disk(tmp_path):
    return qcow2_disk(tmp_path, "one", fill=b"version one")


@pytest.fixture
def disk2(tmp_path):
    return qcow2_disk(tmp_path, "two", fill=b"version two")


@pytest.fixture
def signer(tmp_path):
    key = p256_key()
    return key, write_public_key(key, tmp_path / "cosign.pub")


def cosign_sub(registry, pub, extra=""):
    return oci_subscription(registry, trust="cosign", extra=f"keys: [{pub}]\n{extra}")


def held_versions(service):
    """identifier → sorted list of (version, retired) of everything the store holds."""
    result: dict[str, list] = {}
    for h in service.store.held():
        if h.record:
            result.setdefault(h.record.image_identifier, []).append(
                (h.record.image_version, h.retired)
            )
    return {k: sorted(v) for k, v in result.items()}


def manifest_of(pusher, digest, *, raw=False):
    response = pusher.session.get(
        f"{pusher.registry.url}/v2/{REPO}/manifests/{digest}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=30,
    )
    return response.content if raw else response.json()


def failing(service, name="egi"):
    return [f.reason for f in service.state.failing_images(name)]


# --- trust: registry ---------------------------------------------------------------------


def test_registry_trust_stores_the_tagged_image_with_basis_registry(
    registry, pusher, service, disk
):
    digest = pusher.vm_image(REPO, ["22.04", "22.04-2026-11-20"], disk)
    sub = oci_subscription(registry, trust="registry", extra="tag_pattern: '[^-]*'")
    report = service.run((sub,))
    assert report.exit_code == 0, report.failures
    identifier = f"{registry.host}/{REPO}:22.04"
    assert trusted(service) == {identifier: (digest, "registry")}
    (held,) = service.store.held()
    record = held.record
    # the layer went straight into the store: the stored bytes are the layer's
    assert record.sha512 == record.source_sha512 == hashlib.sha512(disk).hexdigest()
    assert record.size == len(disk) and record.disk_format == "qcow2"
    assert record.endorser_dn == f"registry:{registry.host}"
    assert record.list_identifier == f"oci:{registry.host}/{REPO}"
    assert record.vo == "ops" and record.subscription == "egi"
    # a second pass changes nothing and downloads nothing
    before = service.lists.registries["egi"].requests
    again = service.run((sub,))
    assert again.exit_code == 0 and again.done == []
    assert trusted(service) == {identifier: (digest, "registry")}
    assert service.lists.registries["egi"].requests < before + 5


def test_the_next_day_records_are_resealed_with_a_new_expiry_without_a_download(
    registry, pusher, service, disk
):
    pusher.vm_image(REPO, "22.04", disk)
    sub = oci_subscription(registry, trust="registry", extra="valid_days: 3")
    day1 = datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert service.run((sub,), now=day1).exit_code == 0
    (first,) = service.store.held()
    assert first.record.expires == "2026-12-04T00:00:00Z"
    report = service.run((sub,), now=day1 + timedelta(days=1))
    assert report.exit_code == 0, report.failures
    assert [line for line in report.done if line.startswith("stored")] == []
    (second,) = service.store.held()
    assert second.record.expires == "2026-12-05T00:00:00Z"
    assert second.record.sha512 == first.record.sha512


def test_tags_that_are_not_vm_images_are_passed_over(registry, pusher, service, disk):
    pusher.vm_image(REPO, "22.04", disk)
    pusher.vm_image(REPO, "container", b"not an image", egi_tag=None)  # no eu.egi.cloud.tag
    sub = oci_subscription(registry, trust="registry")
    report = service.run((sub,))
    assert report.exit_code == 0, report.failures
    assert list(trusted(service)) == [f"{registry.host}/{REPO}:22.04"]


def test_a_manifest_with_several_layers_is_refused(registry, pusher, service, disk):
    pusher.vm_image(REPO, "22.04", disk, extra_layers=1)
    report = service.run((oci_subscription(registry, trust="registry"),))
    assert report.exit_code == 1
    assert "2 layers; a VM image is a manifest whose disk is its one layer" in report.failures[0]
    assert trusted(service) == {}


def test_a_subscribed_digest_is_its_own_identity(registry, pusher, service, disk, disk2):
    first = pusher.vm_image(REPO, "22.04", disk)
    pusher.vm_image(REPO, "22.04", disk2)  # the tag moves on; the digest stays pinned
    sub = oci_subscription(registry, trust="registry", extra=f"tags: ['{first}']")
    assert service.run((sub,)).exit_code == 0
    assert trusted(service) == {f"{registry.host}/{REPO}@{first}": (first, "registry")}


# --- trust: cosign -----------------------------------------------------------------------


def test_cosign_signed_image_is_stored_with_basis_cosign(registry, pusher, service, disk, signer):
    key, pub = signer
    digest = pusher.vm_image(REPO, "22.04", disk)
    pusher.cosign_sign(REPO, digest, key)
    report = service.run((cosign_sub(registry, pub),))
    assert report.exit_code == 0, report.failures
    identifier = f"{registry.host}/{REPO}:22.04"
    assert trusted(service) == {identifier: (digest, "cosign")}
    (held,) = service.store.held()
    assert held.record.endorser_dn.startswith("cosign:")


def test_cosign_ed25519_key(registry, pusher, service, disk, tmp_path):
    key = Ed25519PrivateKey.generate()
    pub = write_public_key(key, tmp_path / "ed.pub")
    digest = pusher.vm_image(REPO, "22.04", disk)
    pusher.cosign_sign(REPO, digest, key)
    report = service.run((cosign_sub(registry, pub),))
    assert report.exit_code == 0, report.failures
    assert trusted(service) == {f"{registry.host}/{REPO}:22.04": (digest, "cosign")}


def test_cosign_signature_found_through_the_referrers_fallback_tag(
    registry, pusher, service, disk, signer
):
    key, pub = signer
    digest = pusher.vm_image(REPO, "22.04", disk)
    size = len(manifest_of(pusher, digest, raw=True))
    pusher.cosign_referrer(REPO, digest, key, size=size)
    report = service.run((cosign_sub(registry, pub),))
    assert report.exit_code == 0, report.failures
    assert trusted(service) == {f"{registry.host}/{REPO}:22.04": (digest, "cosign")}


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("unsigned", "no cosign signature (no tag sha256-"),
        ("other key", "signature made by none of the site's keys"),
        ("other digest", "signed for manifest sha256:"),
        ("other repository", "signed for '127.0.0.1"),
    ],
)
def test_cosign_refuses_what_the_site_keys_did_not_sign_for_this_digest_and_repository(
    registry, pusher, service, disk, disk2, signer, attack, reason
):
    key, pub = signer
    digest = pusher.vm_image(REPO, "22.04", disk)
    if attack == "other key":
        pusher.cosign_sign(REPO, digest, p256_key())
    elif attack == "other digest":
        other = pusher.vm_image("egi_vm_images/other", "1", disk2)
        pusher.cosign_sign(REPO, digest, key, for_digest=other)
    elif attack == "other repository":
        pusher.cosign_sign(REPO, digest, key, identity=f"{registry.host}/egi_vm_images/test")
    report = service.run((cosign_sub(registry, pub),))
    assert report.exit_code == 1
    (line,) = report.failures
    assert line.startswith(f"image {registry.host}/{REPO}:22.04: ") and reason in line, line
    assert "not trusted" in line
    assert trusted(service) == {}
    assert failing(service) == [line]


def test_cosign_signed_under_another_registry_name_with_signed_registry(
    registry, pusher, service, disk, signer
):
    """A mirror: images signed as registry.egi.eu/…, synced from the local copy."""
    key, pub = signer
    digest = pusher.vm_image(REPO, "22.04", disk)
    pusher.cosign_sign(REPO, digest, key, identity=f"registry.egi.eu/{REPO}")
    plain = service.run((cosign_sub(registry, pub),))
    assert plain.exit_code == 1 and "signed for 'registry.egi.eu/" in plain.failures[0]
    sub = cosign_sub(registry, pub, "signed_registry: registry.egi.eu")
    assert service.run((sub,)).exit_code == 0
    assert trusted(service) == {f"{registry.host}/{REPO}:22.04": (digest, "cosign")}


# --- versions: a replaced tag, a deleted tag -------------------------------------------------


def test_a_replaced_tag_is_a_new_version_stored_before_the_old_is_retired(
    registry, pusher, service, disk, disk2, signer
):
    key, pub = signer
    sub = cosign_sub(registry, pub)
    old = pusher.vm_image(REPO, "22.04", disk)
    pusher.cosign_sign(REPO, old, key)
    assert service.run((sub,)).exit_code == 0
    new = pusher.vm_image(REPO, "22.04", disk2)
    pusher.cosign_sign(REPO, new, key)
    report = service.run((sub,))
    assert report.exit_code == 0, report.failures
    identifier = f"{registry.host}/{REPO}:22.04"
    assert trusted(service) == {identifier: (new, "cosign")}
    assert held_versions(service)[identifier] == sorted([(new, False), (old, True)])
    stored = next(i for i, line in enumerate(report.done) if line.startswith("stored"))
    retired = next(i for i, line in enumerate(report.done) if line.startswith("retired"))
    assert stored < retired


def test_a_tag_replaced_by_an_unsigned_manifest_keeps_the_signed_version(
    registry, pusher, service, disk, disk2, signer
):
    key, pub = signer
    sub = cosign_sub(registry, pub)
    old = pusher.vm_image(REPO, "22.04", disk)
    pusher.cosign_sign(REPO, old, key)
    assert service.run((sub,)).exit_code == 0
    pusher.vm_image(REPO, "22.04", disk2)  # someone with push rights, without the key
    report = service.run((sub,))
    assert report.exit_code == 1
    assert "no cosign signature" in report.failures[0]
    assert trusted(service) == {f"{registry.host}/{REPO}:22.04": (old, "cosign")}
    lines = []
    service.run((sub,), dry_run=True, out=lines.append)
    assert lines == [
        f"keep    {registry.host}/{REPO}:22.04 (its new version was refused; kept as it is)"
    ]


def test_a_deleted_tag_retires_its_image(registry, pusher, service, disk, disk2):
    pusher.vm_image(REPO, "24.04", disk2)
    doomed = pusher.vm_image(REPO, "22.04", disk)
    sub = oci_subscription(registry, trust="registry")
    assert service.run((sub,)).exit_code == 0
    assert len(trusted(service)) == 2
    pusher.delete(REPO, doomed)
    report = service.run((sub,))
    assert report.exit_code == 0, report.failures
    assert list(trusted(service)) == [f"{registry.host}/{REPO}:24.04"]
    assert any(line.startswith(f"retired {registry.host}/{REPO}:22.04") for line in report.done)


# --- the registry fails: nothing is retired by accident ----------------------------------------


def _stored(service, registry, pusher, disk, **kw):
    sub = oci_subscription(registry, trust="registry", **kw)
    pusher.vm_image(REPO, "22.04", disk)
    assert service.run((sub,)).exit_code == 0
    return sub, trusted(service)


def test_registry_down_keeps_everything(registry, pusher, service, disk):
    sub, before = _stored(service, registry, pusher, disk)
    registry.stop()
    report = service.run((sub,))
    assert report.exit_code == 1
    assert report.failures[0].startswith(f"subscription egi: registry {registry.url}: unreachable")
    assert trusted(service) == before
    assert service.state.get("egi").last_error.startswith(f"registry {registry.url}")


def test_a_repository_that_does_not_exist_is_a_failure_not_an_empty_list(
    registry, pusher, service, disk
):
    sub, before = _stored(service, registry, pusher, disk)
    gone = oci_subscription(registry, trust="registry", repository="egi_vm_images/ubuntu-typo")
    report = service.run((sub, gone))
    assert report.exit_code == 1
    assert (
        report.failures
        == [
            f"subscription egi-typo: registry {registry.url}: repository "
            "egi_vm_images/ubuntu-typo not found"
        ]
        or "not found" in report.failures[0]
    )
    assert trusted(service) == before


def test_http_5xx_from_the_registry_keeps_everything(registry, pusher, service, disk):
    _, before = _stored(service, registry, pusher, disk)
    with TcpProxy(registry.port) as proxy:
        proxy.rules.append(Rule(path="/tags/list", status=503, times=None))
        through = oci_subscription(LocalRegistry(registry.root, port=proxy.port), trust="registry")
        report = service.run((through,))
    assert report.exit_code == 1
    assert "HTTP 503" in report.failures[0] and "unreachable after 3 attempts" in report.failures[0]
    assert trusted(service) == before


def test_a_registry_that_never_answers_fails_within_the_deadline(registry, pusher, service, disk):
    from httpserve import BlackHole

    _, before = _stored(service, registry, pusher, disk)
    service.s.http = dataclasses.replace(service.s.http, timeout=1, list_retries=0)
    service.s.registry_deadline = 2
    with BlackHole() as hole:
        port = urlsplit(hole.url("/")).port
        dead = oci_subscription(LocalRegistry(registry.root, port=port), trust="registry")
        started = time.monotonic()
        report = service.run((dead,))
    assert time.monotonic() - started < 10
    assert report.exit_code == 1 and "subscription egi: registry" in report.failures[0]
    assert trusted(service) == before


# --- the bytes: a layer that does not match its digest -------------------------------------------


def test_a_layer_whose_bytes_do_not_match_its_digest_is_refused(registry, pusher, service, disk):
    digest = pusher.vm_image(REPO, "22.04", disk)
    layer = manifest_of(pusher, digest)["layers"][0]["digest"]
    blob = registry.blob_file(layer)
    tampered = bytearray(blob.read_bytes())
    tampered[-1] ^= 0xFF  # the registry's storage altered behind its back
    blob.write_bytes(bytes(tampered))
    report = service.run((oci_subscription(registry, trust="registry"),))
    assert report.exit_code == 1
    (line,) = report.failures
    assert "the bytes served hash to sha256:" in line and "refused" in line
    assert trusted(service) == {}
    assert not list((service.store.root / ".partial").iterdir())


def test_a_replacement_whose_layer_is_tampered_keeps_the_old_version(
    registry, pusher, service, disk, disk2
):
    sub, before = _stored(service, registry, pusher, disk)
    digest = pusher.vm_image(REPO, "22.04", disk2)
    layer = manifest_of(pusher, digest)["layers"][0]["digest"]
    blob = registry.blob_file(layer)
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    report = service.run((sub,))
    assert report.exit_code == 1 and "hash to sha256:" in report.failures[0]
    assert trusted(service) == before


# --- records and what the site sees ----------------------------------------------------------


def test_vmtrust_images_shows_the_basis(registry, pusher, service, disk, tmp_path, capsys):
    from vmtrust.cli.main import main

    pusher.vm_image(REPO, "22.04", disk)
    assert service.run((oci_subscription(registry, trust="registry"),)).exit_code == 0
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(
        f"[trust]\nseal_key = {tmp_path / 'seal.key'}\n[sync]\nstore = local\n"
        f"[store_local]\npath = {service.store.root}\n"
    )
    assert main(["--config-file", str(conf), "images"]) == 0
    out = capsys.readouterr().out
    assert "BASIS" in out.splitlines()[0] and " registry " in out.splitlines()[1]
    assert main(["--config-file", str(conf), "images", "--json"]) == 0
    assert '"basis": "registry"' in capsys.readouterr().out


def test_a_referrer_index_naming_a_missing_signature_keeps_the_stored_version(
    registry, pusher, service, disk, disk2, signer
):
    """A dangling referrer must not make the image look gone (that would retire it)."""
    key, pub = signer
    sub = cosign_sub(registry, pub)
    old = pusher.vm_image(REPO, "22.04", disk)
    pusher.cosign_sign(REPO, old, key)
    assert service.run((sub,)).exit_code == 0
    new = pusher.vm_image(REPO, "22.04", disk2)
    signature = pusher.cosign_referrer(REPO, new, key, size=len(manifest_of(pusher, new, raw=True)))
    pusher.delete(REPO, signature)  # the fallback tag's index now names nothing
    report = service.run((sub,))
    assert report.exit_code == 1 and "not found" in report.failures[0]
    assert trusted(service) == {f"{registry.host}/{REPO}:22.04": (old, "cosign")}


def test_tags_a_registry_sends_are_checked_before_use():
    from glance_sync.oci.source import _selected
    from vmtrust.policy_oci import OciSource

    class Sub:
        oci = OciSource(registry="https://r.example.org", repository="a/b")

    sent = ["22.04", "../../v2/_catalog", "a?b", "sha256-" + "a" * 64 + ".sig", "x" * 200]
    assert _selected(Sub(), sent) == ["22.04"]
