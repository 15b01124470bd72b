"""What the sync remembers between runs: per subscription, what rollback protection needs.

One SQLite database in the state directory.  Per subscription: the last
accepted list (identifier, version, creation and expiry date, SHA-512 of the
raw signed bytes), the image identifiers seen when the subscription was first
accepted (for ``new_images: refuse``), and the outcome of the last attempt.
Every update is one transaction, so a killed run leaves the previous state.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vmtrust.errors import ConfigError
from vmtrust.imagelist import format_date, parse_date

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
"""


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


def _date(value: str | None) -> datetime | None:
    return parse_date(value) if value else None


def _text(value: datetime | None) -> str | None:
    return format_date(value) if value else None


class StateDB:
    """The sync's persistent memory (``<state_dir>/vmtrust.sqlite``)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "vmtrust.sqlite"
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"state database {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def get(self, name: str) -> SubscriptionState:
        row = self._db.execute(
            "SELECT name, list_identifier, list_version, list_created, list_expires, "
            "list_sha512, known_images, last_attempt, last_success, last_error "
            "FROM subscription_state WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return SubscriptionState(name=name)
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
        names = [
            r[0] for r in self._db.execute("SELECT name FROM subscription_state ORDER BY name")
        ]
        return [self.get(n) for n in names]

    def _upsert(self, name: str, **values: object) -> None:
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                f"INSERT INTO subscription_state (name, {columns}) VALUES (?, {marks}) "
                f"ON CONFLICT(name) DO UPDATE SET {updates}",
                (name, *values.values()),
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
        self._upsert(name, last_attempt=_text(now or datetime.now(UTC)), last_error=error)

    def forget(self, name: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM subscription_state WHERE name = ?", (name,))
