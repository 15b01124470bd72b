"""A real PostgreSQL 15 for the state tests: Debian's server binaries, loopback, a temp dir.

``initdb`` makes a cluster whose superuser ``vmtrust`` logs in with a password
(scram-sha-256, so a URL's password is really used and really redacted); the
server listens on 127.0.0.1 on a free port with fsync off (the tests lose
nothing they need), and is stopped by process id.  PostgreSQL refuses to run
as root: as root, the cluster belongs to the ``postgres`` user the package made.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _newest_bin() -> Path:
    """Debian's newest installed PostgreSQL server (postgresql-15 on bookworm)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


BIN = Path(os.environ.get("VMTRUST_PG_BIN") or _newest_bin())
USER = "vmtrust"
PASSWORD = "pg-s3cret-word"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def available() -> str | None:
    """None when a test PostgreSQL can start here, else why not."""
    if not (BIN / "postgres").exists():
        return f"no PostgreSQL server at {BIN} (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run PostgreSQL as"
    return None


class PgServer:
    def __init__(self) -> None:
        # not under pytest's tmp_path: its 0700 parents keep the postgres user out
        self.base = Path(tempfile.mkdtemp(prefix="vmtrust-pg-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._run_as: dict = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.base, account.pw_uid, account.pw_gid)
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=120, cwd=self.base, **self._run_as
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr[-2000:]}")

    def start(self) -> PgServer:
        pwfile = self.base / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._run_as:
            os.chown(pwfile, self._run_as["user"], self._run_as["group"])
        self._run(
            str(BIN / "initdb"),
            "-D",
            str(self.base / "data"),
            "-U",
            USER,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
        )
        self.process = subprocess.Popen(
            [
                str(BIN / "postgres"),
                "-D",
                str(self.base / "data"),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.base}",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=open(self.base / "postgres.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            cwd=self.base,
            **self._run_as,
        )
        import psycopg

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited: {self.tail()}")
            try:
                psycopg.connect(self.url()).close()
                return self
            except psycopg.OperationalError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"PostgreSQL did not answer within 60 s: {self.tail()}")

    def create_database(self, name: str) -> str:
        """A new empty database; its URL (with the password)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def tail(self) -> str:
        log = self.base / "postgres.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """One PostgreSQL for the session; each test gets a database of its own (pg_url)."""
    why_not = available()
    if why_not:
        if os.environ.get("VMTRUST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"PostgreSQL is required here: {why_not}")
        pytest.skip(why_not)
    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres: PgServer, request: pytest.FixtureRequest) -> str:
    """The URL of a new empty database for this test."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50]
    name = f"{name}_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    return postgres.create_database(name.lower())
