"""A real etcd 3.4 for the coordination tests: Debian's etcd-server, loopback, a temp dir.

One member, client and peer ports free on 127.0.0.1, its data in a temp
directory; stopped by process id.  tooz reaches it through etcd's gRPC
gateway (``etcd3+http://127.0.0.1:PORT``), as a production deployment does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

ETCD = Path(os.environ.get("VMTRUST_ETCD", "/usr/bin/etcd"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def available() -> str | None:
    if not ETCD.exists():
        return f"no etcd at {ETCD} (apt-get install etcd-server)"
    return None


class EtcdServer:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.peer = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tooz_url(self) -> str:
        return f"etcd3+http://127.0.0.1:{self.port}"

    def start(self) -> EtcdServer:
        self.base.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer}"
        self.process = subprocess.Popen(
            [
                str(ETCD),
                "--name",
                "vmtrust-test",
                "--data-dir",
                str(self.base / "data"),
                "--listen-client-urls",
                self.client_url,
                "--advertise-client-urls",
                self.client_url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"vmtrust-test={peer}",
                "--unsafe-no-fsync",
            ],
            stdout=open(self.base / "etcd.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited: {self.tail()}")
            try:
                if requests.get(f"{self.client_url}/health", timeout=2).json().get("health"):
                    return self
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"etcd did not answer within 60 s: {self.tail()}")

    def tail(self) -> str:
        log = self.base / "etcd.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        shutil.rmtree(self.base / "data", ignore_errors=True)


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the session (tests keep apart by their targets' and members' names)."""
    why_not = available()
    if why_not:
        if os.environ.get("VMTRUST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"etcd is required here: {why_not}")
        pytest.skip(why_not)
    server = EtcdServer(tmp_path_factory.mktemp("etcd")).start()
    yield server
    server.stop()
