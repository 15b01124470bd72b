"""A real OCI registry for the tests, and a client that pushes what EGI pushes.

:class:`LocalRegistry` runs Debian's ``docker-registry`` (the CNCF distribution
registry 2.8; ``apt-get install docker-registry``, which ``.ci/run`` does) as
``/usr/bin/docker-registry serve CONFIG`` with a generated configuration: a
free port on 127.0.0.1, filesystem storage under the test's tmp folder,
deletion enabled, optionally Basic authentication (an htpasswd file with bcrypt,
made by ``htpasswd`` of apache2-utils) and TLS (a certificate of the test CA).
It is stopped by its process id.  Its package's systemd service is never used.

:class:`Pusher` talks the distribution API (blob uploads, manifest PUTs) to
push artefacts in the layout EGI's image pipeline (``fedcloud-vmi-templates``,
``oras push --annotation-file``) gives them: an empty config, the disk as the
one layer with the image metadata as its annotations (``eu.egi.cloud.tag``,
``org.openstack.glance.*``, ``eu.egi.cloud.description``), the source and
revision on the manifest.  It also signs the way cosign does — a
simple-signing payload blob, the signature in the layer annotation, under the
``sha256-<hex>.sig`` tag or as an OCI 1.1 referrer with its fallback tag —
with keys the tests make.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

BINARY = Path("/usr/bin/docker-registry")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"


def available() -> str | None:
    """Why the registry cannot run here, or None."""
    if not BINARY.exists():
        return f"{BINARY} missing (apt-get install docker-registry)"
    if shutil.which("htpasswd") is None:
        return "htpasswd missing (apt-get install apache2-utils)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class LocalRegistry:
    """``docker-registry serve`` on a free loopback port; ``with`` starts and stops it."""

    root: Path
    user: str | None = None  #: with a password: Basic authentication through htpasswd
    password: str | None = None
    tls: tuple[Path, Path] | None = None  #: (certificate, key) for https
    #: bearer tokens instead: {realm, service, issuer, rootcertbundle} of a token service
    token: dict[str, str] | None = None
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.root / "data"

    def _config(self) -> Path:
        lines = [
            "version: 0.1",
            "log:",
            "  level: error",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            f"  secret: {secrets.token_hex(16)}",
        ]
        if self.tls:
            lines += ["  tls:", f"    certificate: {self.tls[0]}", f"    key: {self.tls[1]}"]
        if self.user:
            htpasswd = self.root / "htpasswd"
            out = subprocess.run(
                ["htpasswd", "-Bbn", self.user, self.password or ""],
                capture_output=True, text=True, check=True, timeout=60,
            ).stdout  # fmt: skip
            htpasswd.write_text(out)
            lines += ["auth:", "  htpasswd:", "    realm: vmtrust-test", f"    path: {htpasswd}"]
        if self.token:
            lines += ["auth:", "  token:"] + [f"    {k}: {v}" for k, v in self.token.items()]
        path = self.root / "config.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> LocalRegistry:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        config = self._config()
        log = open(self.root / "registry.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            [str(BINARY), "serve", str(config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"docker-registry exited: {(self.root / 'registry.log').read_text()[-2000:]}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("docker-registry did not start within 30 s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what the filesystem storage holds (to tamper with it, as an attacker would) ---

    def blob_file(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / f"docker/registry/v2/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data"


class Pusher:
    """Pushes blobs and manifests through the distribution API, as oras and cosign do."""

    def __init__(self, registry: LocalRegistry, ca_file: Path | None = None) -> None:
        self.registry = registry
        self.session = requests.Session()
        if registry.user:
            self.session.auth = (registry.user, registry.password or "")
        self.session.verify = str(ca_file) if ca_file else True

    def blob(self, repository: str, data: bytes | Path) -> tuple[str, int]:
        """Upload a blob (monolithic); return (digest, size)."""
        if isinstance(data, Path):
            digest = hashlib.sha256()
            with data.open("rb") as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
            name, size = "sha256:" + digest.hexdigest(), data.stat().st_size
        else:
            name, size = digest_of(data), len(data)
        start = self.session.post(f"{self.registry.url}/v2/{repository}/blobs/uploads/", timeout=60)
        assert start.status_code == 202, start.text
        location = requests.compat.urljoin(self.registry.url, start.headers["Location"])
        sep = "&" if "?" in location else "?"
        with contextlib.ExitStack() as stack:
            body = stack.enter_context(data.open("rb")) if isinstance(data, Path) else data
            put = self.session.put(
                f"{location}{sep}digest={name}", data=body, timeout=600,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )  # fmt: skip
        assert put.status_code == 201, put.text
        return name, size

    def manifest(
        self, repository: str, reference: str, manifest: dict[str, Any] | bytes, media_type: str
    ) -> str:
        body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        response = self.session.put(
            f"{self.registry.url}/v2/{repository}/manifests/{reference}",
            data=body, headers={"Content-Type": media_type}, timeout=60,
        )  # fmt: skip
        assert response.status_code == 201, response.text
        return digest_of(body)

    def delete(self, repository: str, digest: str) -> None:
        """Delete a manifest by digest (and with it every tag on it)."""
        response = self.session.delete(
            f"{self.registry.url}/v2/{repository}/manifests/{digest}", timeout=60
        )
        assert response.status_code == 202, response.text

    def vm_image(
        self,
        repository: str,
        tags: list[str] | str,
        disk: bytes | Path,
        *,
        egi_tag: str | None = "2026-11-20-4d7122d6",
        disk_format: str = "qcow2",
        extra_layers: int = 0,
        annotations: dict[str, str] | None = None,
    ) -> str:
        """Push a VM image in EGI's layout under ``tags``; return its manifest digest."""
        config, config_size = self.blob(repository, b"{}")
        layer, size = self.blob(repository, disk)
        name = repository.rsplit("/", 1)[-1]
        layer_annotations = {
            "org.opencontainers.image.title": f"{name}.{disk_format}",
            "org.openstack.glance.disk_format": disk_format,
            "org.openstack.glance.container_format": "bare",
            "org.openstack.glance.architecture": "x86_64",
            "org.openstack.glance.os_distro": "ubuntu",
            "org.openstack.glance.os_type": "linux",
            "org.openstack.glance.os_version": "22.04",
            "eu.egi.cloud.description": f"EGI {name} image",
        }
        if egi_tag is not None:
            layer_annotations["eu.egi.cloud.tag"] = egi_tag
        layer_annotations.update(annotations or {})
        layers = [
            {"mediaType": LAYER, "digest": layer, "size": size, "annotations": layer_annotations}
        ]
        for index in range(extra_layers):
            extra, extra_size = self.blob(repository, f"extra {index}".encode())
            layers.append({"mediaType": LAYER, "digest": extra, "size": extra_size})
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.unknown.artifact.v1",
            "config": {"mediaType": EMPTY, "digest": config, "size": config_size},
            "layers": layers,
            "annotations": {
                "org.opencontainers.image.created": "2026-11-20T10:00:00Z",
                "org.opencontainers.image.revision": "4d7122d6",
                "org.opencontainers.image.source": "https://github.com/EGI-Federation/fedcloud-vmi-templates",
            },
        }
        body = json.dumps(manifest).encode()
        for tag in [tags] if isinstance(tags, str) else tags:
            self.manifest(repository, tag, body, OCI_MANIFEST)
        return digest_of(body)

    # --- cosign ----------------------------------------------------------------------

    def _signature_layer(
        self, repository: str, key: Any, digest: str, identity: str, payload: bytes | None
    ) -> dict[str, Any]:
        payload = payload or cosign_payload(digest, identity)
        blob, size = self.blob(repository, payload)
        return {
            "mediaType": SIMPLE_SIGNING,
            "digest": blob,
            "size": size,
            "annotations": {"dev.cosignproject.cosign/signature": sign_payload(key, payload)},
        }

    def cosign_sign(
        self,
        repository: str,
        digest: str,
        key: Any,
        *,
        identity: str | None = None,
        payload: bytes | None = None,
        for_digest: str | None = None,
    ) -> str:
        """Sign manifest ``digest`` as ``cosign sign --key`` does: the ``.sig`` tag.

        ``identity`` and ``for_digest`` make payloads that name another repository or
        another manifest (the attacks); ``payload`` replaces it outright.
        """
        identity = identity or f"{self.registry.host}/{repository}"
        layer = self._signature_layer(repository, key, for_digest or digest, identity, payload)
        config, config_size = self.blob(repository, b'{"architecture":"","os":""}')
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": config_size,
            },
            "layers": [layer],
        }
        return self.manifest(repository, digest.replace(":", "-") + ".sig", manifest, OCI_MANIFEST)

    def cosign_referrer(
        self, repository: str, digest: str, key: Any, *, size: int, fallback_tag: bool = True
    ) -> str:
        """Sign as ``cosign sign --registry-referrers-mode=oci-1-1``: a manifest whose
        subject is the image, found through the referrers fallback tag (this registry
        has no referrers API; without ``fallback_tag`` only a referrers API finds it)."""
        identity = f"{self.registry.host}/{repository}"
        layer = self._signature_layer(repository, key, digest, identity, None)
        config, config_size = self.blob(repository, b"{}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": COSIGN_ARTIFACT,
            "config": {"mediaType": COSIGN_ARTIFACT, "digest": config, "size": config_size},
            "layers": [layer],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": size},
        }
        body = json.dumps(manifest).encode()
        signature = self.manifest(repository, digest_of(body), body, OCI_MANIFEST)
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": signature,
                    "size": len(body),
                    "artifactType": COSIGN_ARTIFACT,
                }
            ],
        }
        if fallback_tag:
            self.manifest(repository, digest.replace(":", "-"), index, OCI_INDEX)
        self.referrers_index = index  #: what a registry with the referrers API would answer
        return signature


def cosign_payload(digest: str, identity: str) -> bytes:
    """A simple-signing payload as cosign writes it (compact JSON, ``optional: null``)."""
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": identity},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        },
        separators=(",", ":"),
    ).encode()


def sign_payload(key: Any, payload: bytes) -> str:
    if isinstance(key, Ed25519PrivateKey):
        return base64.b64encode(key.sign(payload)).decode()
    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def write_public_key(key: Any, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())
