"""What the sync remembers between runs: per subscription, what rollback protection needs.

One SQLite database in the state directory.  Per subscription: the last
accepted list (identifier, version, creation and expiry date, SHA-512 of the
raw signed bytes), the image identifiers seen when the subscription was first
accepted (for ``new_images: refuse``), the outcome of the last attempt, and
the images that failed in the last pass that reached them (``vmtrust
status``).  Every update is one transaction, so a killed run leaves the
previous state.

Every SQLite failure — ``database or disk is full`` included — is a
:class:`StateError` naming the database: one line in the pass, never a crash;
the next pass writes again once there is room.  The directory is private to
the sync (0700) and the database 0600; looser modes found on start are
tightened, with a warning.  Texts are stored redacted (no password of a URL).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from glance_sync.report import ImageFailure
from vmtrust.errors import StateError
from vmtrust.imagelist import format_date, parse_date
from vmtrust.safetext import redact

LOG = logging.getLogger("vmtrust.sync")

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscription_state (
    name            TEXT PRIMARY KEY,
    list_identifier TEXT,
    list_version    TEXT,
    list_created    TEXT,
    list_expires    TEXT,
    list_sha512     TEXT,
    known_images    TEXT,
    last_attempt    TEXT,
    last_success    TEXT,
    last_error      TEXT
);
CREATE TABLE IF NOT EXISTS image_failure (
    subscription    TEXT NOT NULL,
    identifier      TEXT NOT NULL,
    version         TEXT NOT NULL,
    title           TEXT NOT NULL,
    reason          TEXT NOT NULL,
    failed_at       TEXT NOT NULL
);
"""

DIR_MODE = 0o700
FILE_MODE = 0o600
_SIDE = ("-wal", "-shm")  #: SQLite's files beside the database (it gives them its mode)


@dataclass(frozen=True)
class SubscriptionState:
    name: str
    list_identifier: str | None = None
    list_version: str | None = None
    list_created: datetime | None = None
    list_expires: datetime | None = None
    list_sha512: str | None = None
    known_images: frozenset[str] | None = None
    last_attempt: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class FailedImage:
    """An image that failed in the last pass that reached it."""

    identifier: str
    version: str
    title: str
    reason: str
    failed_at: datetime


def _date(value: str | None) -> datetime | None:
    return parse_date(value) if value else None


def _text(value: datetime | None) -> str | None:
    return format_date(value) if value else None


def _private(path: Path, mode: int) -> None:
    """Tighten ``path`` to ``mode`` when group or others have any access to it."""
    st = path.stat()
    current = stat.S_IMODE(st.st_mode)
    if not current & 0o077:
        return
    if st.st_uid != os.geteuid():
        LOG.warning("%s is mode %o and owned by another user: make it %o", path, current, mode)
        return
    os.chmod(path, mode)
    LOG.warning("%s was mode %o; set to %o", path, current, mode)


class StateDB:
    """The sync's persistent memory (``<state_dir>/vmtrust.sqlite``).

    ``readonly`` (for ``vmtrust status``) creates and changes nothing, and reads
    an absent database as empty.
    """

    def __init__(self, state_dir: Path, *, readonly: bool = False) -> None:
        self.path = Path(state_dir) / "vmtrust.sqlite"
        self._db: sqlite3.Connection | None = None
        try:
            if readonly:
                if self.path.exists():
                    # SQLite gives a read-only reader of a WAL database a -wal and -shm
                    # file when there are none; a database the sync closed has none, and
                    # is read as it is (immutable), so nothing is created.  While a sync
                    # runs, its -wal is there and shared the ordinary way.
                    wal = self.path.with_name(self.path.name + "-wal").exists()
                    query = "mode=ro" if wal else "mode=ro&immutable=1"
                    uri = f"{self.path.resolve().as_uri()}?{query}"
                    self._db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
                return
            Path(state_dir).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            _private(Path(state_dir), DIR_MODE)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
            for path in (self.path, *(self.path.with_name(self.path.name + s) for s in _SIDE)):
                if path.exists():
                    _private(path, FILE_MODE)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"state database {self.path}: {exc}") from None

    def _error(self, exc: Exception) -> StateError:
        return StateError(f"state database {self.path}: {exc}")

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self._db is None:  # read-only, and no pass has run yet
            return []
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _transaction(self, *steps: tuple[str, list[tuple]]) -> None:
        """Run each statement for each of its parameter rows, all or nothing."""
        if self._db is None:
            raise self._error(RuntimeError("opened read-only"))
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for sql, rows in steps:
                    self._db.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def get(self, name: str) -> SubscriptionState:
        rows = self._rows(
            "SELECT name, list_identifier, list_version, list_created, list_expires, "
            "list_sha512, known_images, last_attempt, last_success, last_error "
            "FROM subscription_state WHERE name = ?",
            (name,),
        )
        if not rows:
            return SubscriptionState(name=name)
        row = rows[0]
        known = frozenset(json.loads(row[6])) if row[6] is not None else None
        return SubscriptionState(
            name=row[0],
            list_identifier=row[1],
            list_version=row[2],
            list_created=_date(row[3]),
            list_expires=_date(row[4]),
            list_sha512=row[5],
            known_images=known,
            last_attempt=_date(row[7]),
            last_success=_date(row[8]),
            last_error=row[9],
        )

    def all(self) -> list[SubscriptionState]:
        names = self._rows("SELECT name FROM subscription_state ORDER BY name")
        return [self.get(n) for (n,) in names]

    def _upsert(self, name: str, **values: object) -> None:
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values)
        self._transaction(
            (
                f"INSERT INTO subscription_state (name, {columns}) VALUES (?, {marks}) "
                f"ON CONFLICT(name) DO UPDATE SET {updates}",
                [(name, *values.values())],
            )
        )

    def record_success(
        self,
        name: str,
        *,
        identifier: str,
        version: str,
        created: datetime,
        expires: datetime,
        sha512: str,
        known_images: frozenset[str],
        now: datetime | None = None,
    ) -> None:
        now = now or datetime.now(UTC)
        self._upsert(
            name,
            list_identifier=identifier,
            list_version=version,
            list_created=_text(created),
            list_expires=_text(expires),
            list_sha512=sha512,
            known_images=json.dumps(sorted(known_images)),
            last_attempt=_text(now),
            last_success=_text(now),
            last_error=None,
        )

    def record_failure(self, name: str, error: str, now: datetime | None = None) -> None:
        self._upsert(name, last_attempt=_text(now or datetime.now(UTC)), last_error=redact(error))

    def record_images(
        self, name: str, failures: Iterable[ImageFailure], now: datetime | None = None
    ) -> None:
        """Replace the subscription's failing images by those of this pass (maybe none)."""
        at = _text(now or datetime.now(UTC))
        rows = [(name, f.identifier, f.version, f.title, redact(f.reason), at) for f in failures]
        self._transaction(
            ("DELETE FROM image_failure WHERE subscription = ?", [(name,)]),
            ("INSERT INTO image_failure VALUES (?, ?, ?, ?, ?, ?)", rows),
        )

    def failing_images(self, name: str) -> list[FailedImage]:
        rows = self._rows(
            "SELECT identifier, version, title, reason, failed_at FROM image_failure "
            "WHERE subscription = ? ORDER BY identifier, version",
            (name,),
        )
        return [FailedImage(r[0], r[1], r[2], r[3], parse_date(r[4])) for r in rows]

    def forget(self, name: str) -> None:
        self._transaction(
            ("DELETE FROM subscription_state WHERE name = ?", [(name,)]),
            ("DELETE FROM image_failure WHERE subscription = ?", [(name,)]),
        )
