"""A minimal Keystone and Nova at the HTTP boundary, for clients that need them around Glance.

cloud-info-provider (EGI's publisher) asks Keystone for a token scoped to each
VO project and reads flavours, quotas and servers from Nova before it lists the
project's images from Glance.  This stand-in answers exactly those requests and
nothing else (an unknown path is a 404, an unknown token a 401, so a client
that strays shows up as an error):

* ``POST /identity/v3/auth/tokens`` (password method, project scope): a token
  in the test Glance's format (``tests/glance_testauth.py``), so the **real**
  Glance of the session sees the VO project with member and reader roles, and
  a catalogue naming that Glance (``image``) and this Nova (``compute``);
* ``GET /compute/v2.1`` (version), ``…/flavors/detail``,
  ``…/flavors/{id}/os-extra_specs``, ``…/os-quota-sets/{project}``,
  ``…/servers/detail`` (no servers).

Loopback only, a free port, stopped by the context manager that started it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from glance_server import MEMBER_ROLES, token

FLAVORS = [
    {"id": "1", "name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
    {"id": "2", "name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80},
]


@dataclass
class Cloud:
    glance_url: str
    users: dict[str, str]  #: user name → password
    roles: dict[str, str] = field(default_factory=dict)  #: user name → roles (default member)
    port: int = 0
    issued: dict[str, str] = field(default_factory=dict)  #: token → project
    requests: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity/v3"

    def catalog(self) -> list[dict[str, Any]]:
        def service(kind: str, name: str, url: str) -> dict[str, Any]:
            return {
                "type": kind,
                "name": name,
                "id": name,
                "endpoints": [
                    {
                        "id": f"{name}-public",
                        "interface": "public",
                        "region": "RegionOne",
                        "region_id": "RegionOne",
                        "url": url,
                    }
                ],
            }

        return [
            service("image", "glance", self.glance_url),
            service("compute", "nova", f"{self.url}/compute/v2.1"),
            service("identity", "keystone", self.auth_url),
        ]


def _handler(cloud: Cloud) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            cloud.requests.append(f"POST {self.path}")
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if self.path != "/identity/v3/auth/tokens":
                self._send(404, {"error": {"message": f"no {self.path} here"}})
                return
            auth = body["auth"]
            user = auth["identity"]["password"]["user"]
            project = auth.get("scope", {}).get("project", {}).get("id")
            if cloud.users.get(user.get("name")) != user.get("password") or not project:
                self._send(401, {"error": {"code": 401, "message": "wrong user or no project"}})
                return
            roles = cloud.roles.get(user["name"], MEMBER_ROLES)
            issued = token(project, roles, user["name"])
            cloud.issued[issued] = project
            now = datetime.now(UTC)
            domain = {"id": "default", "name": "Default"}
            self._send(
                201,
                {
                    "token": {
                        "methods": ["password"],
                        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                        "expires_at": (now + timedelta(hours=1)).strftime(
                            "%Y-%m-%dT%H:%M:%S.000000Z"
                        ),
                        "user": {"id": user["name"], "name": user["name"], "domain": domain},
                        "project": {"id": project, "name": f"{project}-name", "domain": domain},
                        "roles": [{"id": r, "name": r} for r in roles.split(",")],
                        "catalog": cloud.catalog(),
                    }
                },
                {"X-Subject-Token": issued},
            )

        def do_GET(self) -> None:
            cloud.requests.append(f"GET {self.path}")
            path = self.path.split("?", 1)[0].rstrip("/")
            if not path.startswith("/compute/v2.1"):
                self._send(404, {"error": {"message": f"no {path} here"}})
                return
            project = cloud.issued.get(self.headers.get("X-Auth-Token", ""))
            if project is None:
                self._send(401, {"error": {"code": 401, "message": "unknown token"}})
                return
            rest = path.removeprefix("/compute/v2.1")
            if rest == "":
                self._send(200, {"version": {"id": "v2.1", "status": "CURRENT",
                                             "version": "2.96", "min_version": "2.1",
                                             "links": []}})  # fmt: skip
            elif rest == "/flavors/detail":
                flavors = [{**f, "os-flavor-access:is_public": True, "links": []} for f in FLAVORS]
                self._send(200, {"flavors": flavors})
            elif rest.startswith("/flavors/") and rest.endswith("/os-extra_specs"):
                self._send(200, {"extra_specs": {}})
            elif rest == f"/os-quota-sets/{project}":
                self._send(200, {"quota_set": {"id": project, "instances": 10, "cores": 20,
                                               "ram": 51200}})  # fmt: skip
            elif rest == "/servers/detail":
                self._send(200, {"servers": []})
            else:
                self._send(404, {"itemNotFound": {"code": 404, "message": f"no {rest} here"}})

    return Handler


class StandIn:
    """Context manager: a Keystone and Nova stand-in on a free loopback port."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(cloud))
        self.httpd.daemon_threads = True
        cloud.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Cloud:
        self.thread.start()
        return self.cloud

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
