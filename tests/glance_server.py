"""A real Glance 33 for the tests and benchmarks: uWSGI, sqlite, file store, loopback.

Started from ``.venv-glance`` (``make venv-glance``), configured as in
``docs/testing.md``: the header-trusting test pipeline with
:mod:`glance_testauth` in front, the property protections vmtrust ships
(``etc/glance/property-protections-vmtrust.conf``), the metadefs namespace it
ships loaded with ``glance-manage db_load_metadefs``, sha512 multihash.  The
server listens on 127.0.0.1 on a free port and is stopped by process id.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("VMTRUST_GLANCE_VENV", ROOT / ".venv-glance"))
SERVICE_ROLES = "member,reader,vmtrust_service"
MEMBER_ROLES = "member,reader"
ADMIN_ROLES = "admin,member,reader"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def token(project: str, roles: str = SERVICE_ROLES, user: str | None = None) -> str:
    """The X-Auth-Token the test pipeline maps to this identity."""
    return f"test:{user or project + '-user'}:{project}:{roles}"


def available() -> str | None:
    """None when a test Glance can start here, else why not."""
    if not (VENV / "bin" / os.environ.get("VMTRUST_GLANCE_SERVER", "uwsgi")).exists():
        return f"no Glance environment at {VENV} (run 'make venv-glance')"
    return None


_PASTE = """\
[pipeline:glance-api-testauth]
pipeline = versionnegotiation testauth context rootapp
[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app
[app:apiversions]
paste.app_factory = glance.api.versions:create_resource
[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory
[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory
[filter:testauth]
paste.filter_factory = glance_testauth:filter_factory
[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory
"""


class GlanceServer:
    def __init__(
        self,
        base: Path,
        *,
        protections: bool = True,
        server: str | None = None,
        body_timeout: int | None = None,
    ) -> None:
        self.base = base
        self.etc = base / "etc"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.protections = protections
        #: the WSGI server: uwsgi (as Glance is deployed), or gunicorn
        self.server = server or os.environ.get("VMTRUST_GLANCE_SERVER", "uwsgi")
        #: seconds uWSGI waits for more of a request body before it drops the request
        #: (``--socket-timeout``; None: uWSGI's default, 4).  Its one process is then free
        #: again: a test whose client stops mid-upload (SIGSTOP) relies on it.
        self.body_timeout = body_timeout
        self.process: subprocess.Popen | None = None
        self.log = base / "glance-api.log"
        self.access_log = base / "access.log"  #: one line per API request (benchmarks count them)

    def _configure(self) -> None:
        for sub in ("etc", "images", "staging", "tasks", "locks"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        protection = ""
        if self.protections:
            shutil.copy(
                ROOT / "etc/glance/property-protections-vmtrust.conf",
                self.etc / "property-protections.conf",
            )
            protection = (
                f"property_protection_file = {self.etc}/property-protections.conf\n"
                "property_protection_rule_format = roles\n"
            )
        (self.etc / "glance-api-paste.ini").write_text(_PASTE)
        (self.etc / "glance-api.conf").write_text(
            "[DEFAULT]\n"
            "enabled_backends = fs:file\n"
            "enabled_import_methods = [glance-direct,copy-image]\n"
            f"{protection}"
            f"worker_self_reference_url = {self.url}\n"
            "hashing_algorithm = sha512\n"
            f"log_file = {self.log}\n"
            "[glance_store]\ndefault_backend = fs\n"
            f"[fs]\nfilesystem_store_datadir = {self.base}/images/\n"
            f"[os_glance_staging_store]\nfilesystem_store_datadir = {self.base}/staging/\n"
            f"[os_glance_tasks_store]\nfilesystem_store_datadir = {self.base}/tasks/\n"
            f"[database]\nconnection = sqlite:///{self.base}/glance.sqlite\n"
            f"[paste_deploy]\nconfig_file = {self.etc}/glance-api-paste.ini\n"
            "flavor = testauth\n"
            f"[oslo_concurrency]\nlock_path = {self.base}/locks\n"
        )

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["OS_GLANCE_CONFIG_DIR"] = str(self.etc)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent)
        env.pop("VIRTUAL_ENV", None)
        return env

    def start(self) -> GlanceServer:
        self._configure()
        manage = [
            str(VENV / "bin/glance-manage"),
            "--config-file",
            str(self.etc / "glance-api.conf"),
        ]
        for args in (["db_sync"], ["db_load_metadefs", str(ROOT / "etc/glance/metadefs")]):
            done = subprocess.run(
                [*manage, *args], env=self._env(), capture_output=True, text=True, timeout=300
            )
            if done.returncode != 0:
                raise RuntimeError(f"glance-manage {args[0]} failed: {done.stderr[-2000:]}")
        self.process = subprocess.Popen(
            self._command(),
            env=self._env(),
            stdout=open(self.base / "server.out", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Glance exited: {self.tail()}")
            try:
                reply = requests.get(
                    f"{self.url}/v2/images",
                    headers={"X-Auth-Token": token("probe", MEMBER_ROLES)},
                    timeout=5,
                )
                if reply.status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Glance did not answer within 120 s: {self.tail()}")

    def _command(self) -> list[str]:
        """The WSGI server's command line: one process serving one request at a time.

        One at a time because sqlite under concurrent writers fails with "database is
        locked" (a site's Glance runs on MySQL).  uWSGI is how Glance is deployed
        (devstack, the distributions' packages); it reads the request body in C, where
        gunicorn's sync worker reassembles it in Python 8 KiB at a time, which costs
        Glance about as much CPU again as its own hashing of the image.
        """
        if self.server == "gunicorn":
            return [
                str(VENV / "bin/gunicorn"),
                "-b",
                f"127.0.0.1:{self.port}",
                "-w",
                "1",
                "--threads",
                "1",
                "--timeout",
                "600",
                "--access-logfile",
                str(self.access_log),
                "glance.wsgi.api:application",
            ]
        return [
            str(VENV / "bin/uwsgi"),
            "--http-socket",
            f"127.0.0.1:{self.port}",
            "--master",
            "--processes",
            "1",
            "--die-on-term",
            "--need-app",
            "--lazy-apps",
            "--enable-threads",
            "--buffer-size",
            "65535",
            # Glance takes chunked uploads (a body of unknown length) and reads it raw.
            "--http-chunked-input",
            "--http-raw-body",
            # As deployments raise it: uWSGI's default 1 MiB chunk buffer refuses the 1 MiB
            # chunks glanceclient sends (atrope's uploads): HTTP 500, "unable to receive
            # chunked part".  vmtrust's own chunks are smaller (glance_sync.transfer).
            "--chunked-input-limit",
            str(16 * 1024 * 1024),
            # One request a connection, as gunicorn's sync worker does (tests/tcpproxy.py).
            "--add-header",
            "Connection: close",
            *(["--socket-timeout", str(self.body_timeout)] if self.body_timeout else []),
            "--http-timeout",
            "600",
            "--harakiri",
            "600",
            "--module",
            "glance.wsgi.api:application",
            "--req-logger",
            f"file:{self.access_log}",
            "--logger",
            f"file:{self.base / 'uwsgi.log'}",
        ]

    def tail(self) -> str:
        text = ""
        for name in ("server.out", "uwsgi.log", "glance-api.log"):
            path = self.base / name
            if path.exists():
                text += path.read_text(errors="replace")[-3000:]
        return text

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    # --- direct API access for tests (not through vmtrust) ------------------------------

    def api(self, project: str, roles: str = SERVICE_ROLES) -> requests.Session:
        session = requests.Session()
        session.headers["X-Auth-Token"] = token(project, roles)
        return session
