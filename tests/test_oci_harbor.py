"""The Harbor adapter: a project's repositories and tags through Harbor's API.

Harbor itself does not run here.  Its API is replayed **at the HTTP boundary**
from ``tests/data/harbor/egi_vm_images.json`` — responses in the shape of
Harbor 2.x's API (that file says where the shape comes from; they are not
captured from a live Harbor) — by a small server that forwards everything else
(``/v2/…``: manifests, blobs, signatures) to the real docker-registry the test
runs.  So the listing is Harbor's, the bytes and their checks are a real
registry's, and the whole sync pass runs.  Without Harbor (the plain registry)
a project is listed through ``/v2/_catalog``.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from oci_registry import LocalRegistry, Pusher
from oci_support import make_service, oci_subscription, qcow2_disk, require_registry, trusted

RECORDED = json.loads(
    (Path(__file__).parent / "data" / "harbor" / "egi_vm_images.json").read_text()
)["responses"]


class HarborFront:
    """Harbor's API replayed from recorded responses; /v2/ forwarded to a real registry."""

    def __init__(self, registry: LocalRegistry, *, password: str | None = None) -> None:
        self.api: list[tuple[str, str | None]] = []  #: (path, Authorization) of API requests
        self.responses = dict(RECORDED)
        #: /v2/ paths answered here instead of by the registry (a referrers API, say)
        self.v2: dict[str, tuple[str, bytes]] = {}
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, headers: dict, body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path in front.v2:
                    content_type, body = front.v2[self.path]
                    self._send(200, {"Content-Type": content_type}, body)
                    return
                if self.path.startswith("/v2/"):
                    upstream = requests.get(
                        registry.url + self.path, timeout=30, allow_redirects=False,
                        headers={k: v for k, v in self.headers.items() if k.lower() == "accept"},
                    )  # fmt: skip
                    self._send(upstream.status_code, dict(upstream.headers), upstream.content)
                    return
                auth = self.headers.get("Authorization")
                front.api.append((self.path, auth))
                wanted = "Basic " + base64.b64encode(f"robot$sync:{password}".encode()).decode()
                if password is not None and auth != wanted:
                    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"unauthorized"}]}'
                    self._send(401, {"Content-Type": "application/json"}, body)
                    return
                answer = front.responses.get(self.path)
                if answer is None:
                    body = b'{"errors":[{"code":"NOT_FOUND","message":"not found"}]}'
                    self._send(404, {"Content-Type": "application/json"}, body)
                    return
                self._send(answer["status"], answer["headers"], json.dumps(answer["body"]).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HarborFront:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def registry(tmp_path):
    require_registry()
    with LocalRegistry(tmp_path / "registry") as running:
        yield running


@pytest.fixture
def service(tmp_path, ca_dir):
    service = make_service(tmp_path, ca_dir)
    yield service
    service.close()


def push_project(registry, tmp_path):
    pusher = Pusher(registry)
    ubuntu = pusher.vm_image(
        "egi_vm_images/ubuntu", ["22.04", "22.04-2026-11-20-4d7122d6"], qcow2_disk(tmp_path, "u")
    )
    alma = pusher.vm_image(
        "egi_vm_images/base/almalinux", "9", qcow2_disk(tmp_path, "a", fill=b"a")
    )
    pusher.vm_image("egi_vm_images/docs", "latest", b"documentation", egi_tag=None)
    pusher.vm_image("other_project/ubuntu", "22.04", qcow2_disk(tmp_path, "o", fill=b"o"))
    return ubuntu, alma


def harbor_sub(front, extra=""):
    return oci_subscription(
        LocalRegistry(Path("/nonexistent"), port=front.port), trust="registry",
        repository=None, project="egi_vm_images", extra=f"tag_pattern: '[^-]*'\n{extra}",
    )  # fmt: skip


def test_a_harbor_project_is_listed_through_harbor_s_api(registry, service, tmp_path):
    ubuntu, alma = push_project(registry, tmp_path)
    (tmp_path / "robot").write_text("t0ken\n")
    with HarborFront(registry, password="t0ken") as front:
        sub = harbor_sub(
            front, f"credentials: {{username: 'robot$sync', password_file: {tmp_path / 'robot'}}}"
        )
        report = service.run((sub,))
    assert report.exit_code == 0, report.failures
    host = f"127.0.0.1:{front.port}"
    assert trusted(service) == {
        f"{host}/egi_vm_images/ubuntu:22.04": (ubuntu, "registry"),
        f"{host}/egi_vm_images/base/almalinux:9": (alma, "registry"),
    }
    paths = [path for path, _ in front.api]
    assert paths[0] == "/api/v2.0/systeminfo"
    assert "/api/v2.0/projects/egi_vm_images/repositories?page=2&page_size=100" in paths
    # a repository name with '/' goes into the path encoded twice, as Harbor wants it
    assert any("/repositories/base%252Falmalinux/artifacts" in path for path in paths)
    assert all(auth and auth.startswith("Basic ") for _, auth in front.api)


def test_harbor_s_api_refusing_the_credentials_keeps_everything(registry, service, tmp_path):
    push_project(registry, tmp_path)
    (tmp_path / "robot").write_text("t0ken\n")
    with HarborFront(registry, password="t0ken") as front:
        good = harbor_sub(
            front, f"credentials: {{username: 'robot$sync', password_file: {tmp_path / 'robot'}}}"
        )
        assert service.run((good,)).exit_code == 0
        before = trusted(service)
        report = service.run((harbor_sub(front),))  # no credentials this time
    assert report.exit_code == 1 and "HTTP 401" in report.failures[0]
    assert trusted(service) == before


def test_a_harbor_answer_naming_a_repository_outside_the_project_is_refused(
    registry, service, tmp_path
):
    push_project(registry, tmp_path)
    with HarborFront(registry) as front:
        page = front.responses["/api/v2.0/projects/egi_vm_images/repositories?page=1&page_size=100"]
        page = json.loads(json.dumps(page))
        page["body"][0]["name"] = "other_project/ubuntu"
        front.responses["/api/v2.0/projects/egi_vm_images/repositories?page=1&page_size=100"] = page
        report = service.run((harbor_sub(front),))
    assert report.exit_code == 1
    assert (
        "Harbor listed 'other_project/ubuntu' in project egi_vm_images; refused"
        in (report.failures[0])
    )
    assert trusted(service) == {}


def test_without_harbor_a_project_is_listed_through_the_catalog(registry, service, tmp_path):
    ubuntu, alma = push_project(registry, tmp_path)
    sub = oci_subscription(
        registry, trust="registry", repository=None, project="egi_vm_images",
        extra="tag_pattern: '[^-]*'",
    )  # fmt: skip
    report = service.run((sub,))
    assert report.exit_code == 0, report.failures
    assert trusted(service) == {
        f"{registry.host}/egi_vm_images/ubuntu:22.04": (ubuntu, "registry"),
        f"{registry.host}/egi_vm_images/base/almalinux:9": (alma, "registry"),
    }


# --- OCI 1.1 referrers API (docker-registry 2.8 has none: answered at the boundary) --------


def test_a_cosign_signature_found_only_through_the_referrers_api(registry, service, tmp_path):
    from oci_registry import OCI_INDEX, p256_key, write_public_key

    key = p256_key()
    pub = write_public_key(key, tmp_path / "cosign.pub")
    pusher = Pusher(registry)
    digest = pusher.vm_image("egi_vm_images/ubuntu", "22.04", qcow2_disk(tmp_path))
    size = len(
        requests.get(
            f"{registry.url}/v2/egi_vm_images/ubuntu/manifests/{digest}", timeout=30,
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ).content
    )  # fmt: skip
    pusher.cosign_referrer("egi_vm_images/ubuntu", digest, key, size=size, fallback_tag=False)
    with HarborFront(registry) as front:  # signed as the registry, read through the front
        sub = oci_subscription(
            LocalRegistry(Path("/nonexistent"), port=front.port), trust="cosign",
            extra=f"keys: [{pub}]\nsigned_registry: '{registry.host}'",
        )  # fmt: skip
        report = service.run((sub,))
        assert report.exit_code == 1 and "no cosign signature" in report.failures[0]
        front.v2[f"/v2/egi_vm_images/ubuntu/referrers/{digest}"] = (
            OCI_INDEX, json.dumps(pusher.referrers_index).encode()
        )  # fmt: skip
        report = service.run((sub,))
    assert report.exit_code == 0, report.failures
    assert trusted(service) == {
        f"127.0.0.1:{front.port}/egi_vm_images/ubuntu:22.04": (digest, "cosign")
    }


def test_a_sigstore_bundle_referrer_is_refused_with_its_reason(registry, service, tmp_path):
    from oci_registry import OCI_INDEX, OCI_MANIFEST, p256_key, write_public_key

    pub = write_public_key(p256_key(), tmp_path / "cosign.pub")
    digest = Pusher(registry).vm_image("egi_vm_images/ubuntu", "22.04", qcow2_disk(tmp_path))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": "sha256:" + "e" * 64, "size": 700,
            "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        }],
    }  # fmt: skip
    with HarborFront(registry) as front:
        front.v2[f"/v2/egi_vm_images/ubuntu/referrers/{digest}"] = (
            OCI_INDEX, json.dumps(index).encode()
        )  # fmt: skip
        sub = oci_subscription(
            LocalRegistry(Path("/nonexistent"), port=front.port), trust="cosign",
            extra=f"keys: [{pub}]",
        )  # fmt: skip
        report = service.run((sub,))
    assert report.exit_code == 1
    assert (
        "a Sigstore bundle (cosign --new-bundle-format) names no repository" in (report.failures[0])
    )
    assert trusted(service) == {}
