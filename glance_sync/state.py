"""What the sync remembers between runs: per subscription, what rollback protection needs.

Per subscription, shared by every target: the last accepted list (identifier,
version, creation and expiry date, SHA-512 of the raw signed bytes) and the
image identifiers seen when the subscription was first accepted (for
``new_images: refuse``).  Per (target, subscription): the outcome of the last
attempt and the images that failed in the last pass that reached them
(``vmtrust status``).  Every update is one transaction, so a killed run leaves
the previous state.

The database is SQLite in the state directory (the embedded default) or, for
several sync hosts, PostgreSQL (``[sync] state_connection``), both through
SQLAlchemy; the schema is Alembic's (:mod:`glance_sync.migrations`) and a
writer upgrades it in place when it opens it
(:func:`~glance_sync.state_schema.upgrade_schema`).  Every
database failure — ``database or disk is full``, a server that went away — is
a :class:`StateError` naming the database (its URL without password): one line
in the pass, never a crash; the next pass writes again once it can.  The SQLite
directory is private to the sync (0700) and the database 0600; looser modes
found on start are tightened, with a warning.  Texts are stored redacted (no
password of a URL).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from glance_sync.report import ImageFailure
from glance_sync.state_schema import (
    EMPTY,
    HEAD,
    image_failure,
    open_engine,
    schema_check,
    sqlite_reader,
    sqlite_writer,
    subscription_state,
    target_outcome,
    target_pass,
    upgrade_schema,
    vacuum,
)
from vmtrust.errors import StateError
from vmtrust.imagelist import format_date, parse_date
from vmtrust.safetext import redact
from vmtrust.version import compare as compare_versions

__all__ = ["FailedImage", "StateDB", "SubscriptionState", "TargetOutcome", "TargetPass"]

LOG = logging.getLogger("vmtrust.sync")

DEFAULT_TARGET = "default"

#: one step of a transaction: (statement, parameter rows or None), or a function of it
Step = tuple[sa.Executable, list[dict[str, Any]] | None] | Callable[[sa.Connection], None]


@dataclass(frozen=True)
class SubscriptionState:
    """A subscription's accepted list, with one target's last outcome."""

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
class TargetOutcome:
    """The last attempt at one subscription for one target."""

    target: str
    subscription: str
    last_attempt: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class TargetPass:
    """How one target's last pass as a whole ended."""

    name: str
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


def _reason(exc: BaseException) -> str:
    """One redacted line of what the driver said (not SQLAlchemy's SQL and links)."""
    inner = getattr(exc, "orig", None) or exc
    text = " ".join(str(inner).split()) or type(inner).__name__
    return redact(text)


class StateDB:
    """The sync's persistent memory: ``<state_dir>/vmtrust.sqlite`` or ``connection``.

    ``readonly`` (for ``vmtrust status``) creates and changes nothing, reads an
    absent SQLite database as empty, and refuses (StateError) a schema that is
    not this version's (the next sync, or ``vmtrust-sync --upgrade-state``,
    upgrades it).
    """

    def __init__(
        self, state_dir: Path, *, readonly: bool = False, connection: str | None = None
    ) -> None:
        self.path = Path(state_dir) / "vmtrust.sqlite"
        self.name = str(self.path)
        self._engine: sa.Engine | None = None
        self.readonly = readonly
        #: the schema revision a writer found and upgraded (None: it was current)
        self.upgraded_from: str | None = None
        try:
            if connection:
                self._engine, self.name = open_engine(connection)
            elif readonly:
                if not self.path.exists():
                    return
                self._engine = sqlite_reader(self.path)
            else:
                self._engine = sqlite_writer(Path(state_dir), self.path)
            if readonly:
                if not schema_check(self._engine):
                    self.close()  # nothing written yet: read as empty
            else:
                self.upgraded_from = upgrade_schema(self._engine)
                if self.upgraded_from not in (None, EMPTY):
                    LOG.info("state database %s: schema upgraded from %s to %s",
                             self.name, self.upgraded_from, HEAD)  # fmt: skip
                    if self._engine.dialect.name == "sqlite":
                        vacuum(self._engine)  # the tables the upgrade copied leave free pages
        except StateError as exc:
            self.close()
            raise StateError(f"state database {self.name}: {exc}") from None
        except (OSError, sqlite3.Error, sa.exc.SQLAlchemyError) as exc:
            self.close()
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> StateError:
        return StateError(f"state database {self.name}: {_reason(exc)}")

    def _rows(self, query: sa.Executable) -> list[sa.Row[Any]]:
        if self._engine is None:  # read-only, and no pass has run yet
            return []
        try:
            with self._engine.connect() as conn:
                return list(conn.execute(query))
        except (sqlite3.Error, sa.exc.SQLAlchemyError) as exc:
            raise self._error(exc) from None

    def _transaction(self, *steps: Step) -> None:
        """Run each step — a statement for each of its parameter rows, or a function of
        the connection — all or nothing."""
        if self._engine is None or self.readonly:
            raise self._error(RuntimeError("opened read-only"))
        try:
            with self._engine.begin() as conn:
                for step in steps:
                    if callable(step):
                        step(conn)
                        continue
                    statement, rows = step
                    if rows is None:
                        conn.execute(statement)
                    elif rows:
                        conn.execute(statement, rows)
        except (sqlite3.Error, sa.exc.SQLAlchemyError) as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # --- reading --------------------------------------------------------------------

    def get(self, name: str, *, target: str = DEFAULT_TARGET) -> SubscriptionState:
        """``name``'s accepted list, with ``target``'s last outcome."""
        t = subscription_state.c
        rows = self._rows(sa.select(subscription_state).where(t.name == name))
        outcome = self.outcome(name, target=target)
        if not rows:
            return SubscriptionState(
                name=name,
                last_attempt=outcome.last_attempt,
                last_success=outcome.last_success,
                last_error=outcome.last_error,
            )
        row = rows[0]
        known = frozenset(json.loads(row.known_images)) if row.known_images is not None else None
        return SubscriptionState(
            name=row.name,
            list_identifier=row.list_identifier,
            list_version=row.list_version,
            list_created=_date(row.list_created),
            list_expires=_date(row.list_expires),
            list_sha512=row.list_sha512,
            known_images=known,
            last_attempt=outcome.last_attempt,
            last_success=outcome.last_success,
            last_error=outcome.last_error,
        )

    def outcome(self, name: str, *, target: str = DEFAULT_TARGET) -> TargetOutcome:
        """The last attempt at ``name`` for ``target`` (all None: never tried)."""
        t = target_outcome.c
        rows = self._rows(
            sa.select(target_outcome).where(t.target == target, t.subscription == name)
        )
        return _outcome(rows[0]) if rows else TargetOutcome(target, name)

    def outcomes(self) -> list[TargetOutcome]:
        """Every (target, subscription) ever tried, by target then subscription."""
        t = target_outcome.c
        rows = self._rows(sa.select(target_outcome).order_by(t.target, t.subscription))
        return [_outcome(r) for r in rows]

    def target_outcome(self, target: str) -> TargetPass:
        """How ``target``'s last pass ended (all None: it never ran)."""
        rows = self._rows(sa.select(target_pass).where(target_pass.c.target == target))
        if not rows:
            return TargetPass(target)
        row = rows[0]
        return TargetPass(target, _date(row.last_attempt), _date(row.last_success), row.last_error)

    def failing_images(self, name: str, *, target: str = DEFAULT_TARGET) -> list[FailedImage]:
        t = image_failure.c
        rows = self._rows(
            sa.select(t.identifier, t.version, t.title, t.reason, t.failed_at)
            .where(t.target == target, t.subscription == name)
            .order_by(t.identifier, t.version)
        )
        return [FailedImage(r[0], r[1], r[2], r[3], parse_date(r[4])) for r in rows]

    # --- writing --------------------------------------------------------------------

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which has ``ON CONFLICT``."""
        assert self._engine is not None
        if self._engine.dialect.name == "postgresql":
            # imported here: with its async drivers it costs a SQLite site's every
            # pass 40 ms of start-up (issue 17)
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        return sqlite_dialect.insert(table)

    def _upsert(
        self, table: sa.Table, keys: dict[str, str], values: dict[str, Any]
    ) -> tuple[sa.Executable, None]:
        statement = self._insert(table).values(**keys, **values)
        return statement.on_conflict_do_update(index_elements=list(keys), set_=values), None

    def _outcome_step(
        self, name: str, target: str, now: datetime, error: str | None
    ) -> tuple[sa.Executable, None]:
        values: dict[str, Any] = {"last_attempt": _text(now), "last_error": error}
        if error is None:
            values["last_success"] = _text(now)
        return self._upsert(target_outcome, {"target": target, "subscription": name}, values)

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
        target: str = DEFAULT_TARGET,
    ) -> None:
        """``name``'s list was accepted (shared by every target) and ``target`` succeeded.

        The accepted list only moves forward: when another sync host has recorded a
        newer one meanwhile (version, or creation date), that one stays — else a
        host that fetched just before a publication would lower the rollback floor
        of every host.  Compared in the transaction, on the row locked.
        """
        now = now or datetime.now(UTC)
        if self._engine is None or self.readonly:
            raise self._error(RuntimeError("opened read-only"))
        values = {
            "list_identifier": identifier,
            "list_version": version,
            "list_created": _text(created),
            "list_expires": _text(expires),
            "list_sha512": sha512,
            "known_images": json.dumps(sorted(known_images)),
        }

        def forward(conn: sa.Connection) -> None:
            t = subscription_state.c
            conn.execute(
                self._insert(subscription_state).values(name=name).on_conflict_do_nothing()
            )
            query = sa.select(t.list_version, t.list_created).where(t.name == name)
            kept = conn.execute(query.with_for_update()).one()  # SQLite: BEGIN IMMEDIATE's lock
            if kept.list_version is not None and (
                compare_versions(version, kept.list_version) < 0
                or (kept.list_created is not None and created < parse_date(kept.list_created))
            ):
                LOG.warning(
                    "subscription %s: list version %s (created %s) accepted, but version %s "
                    "(created %s) is recorded already (another sync host); the state keeps it",
                    name, version, _text(created), kept.list_version, kept.list_created,
                )  # fmt: skip
                return
            conn.execute(sa.update(subscription_state).where(t.name == name).values(**values))

        self._transaction(forward, self._outcome_step(name, target, now, None))

    def record_outcome(
        self,
        name: str,
        *,
        target: str = DEFAULT_TARGET,
        error: str | None = None,
        now: datetime | None = None,
    ) -> None:
        """An attempt at ``name`` for ``target``: a success when ``error`` is None."""
        if self._engine is None or self.readonly:
            raise self._error(RuntimeError("opened read-only"))
        now = now or datetime.now(UTC)
        self._transaction(
            self._outcome_step(name, target, now, None if error is None else redact(error))
        )

    def record_target(self, target: str, error: str | None, now: datetime | None = None) -> None:
        """``target``'s pass ended: ``error`` is None when all of it succeeded."""
        now = now or datetime.now(UTC)
        values: dict[str, Any] = {
            "last_attempt": _text(now),
            "last_error": None if error is None else redact(error),
        }
        if error is None:
            values["last_success"] = _text(now)
        self._transaction(self._upsert(target_pass, {"target": target}, values))

    def record_failure(
        self,
        name: str,
        error: str,
        now: datetime | None = None,
        *,
        target: str = DEFAULT_TARGET,
    ) -> None:
        """The last attempt at ``name`` for ``target`` failed; its last success stays."""
        self.record_outcome(name, target=target, error=error, now=now)

    def record_images(
        self,
        name: str,
        failures: Iterable[ImageFailure],
        now: datetime | None = None,
        *,
        target: str = DEFAULT_TARGET,
    ) -> None:
        """Replace ``target``'s failing images of the subscription by this pass's (maybe none)."""
        at = _text(now or datetime.now(UTC))
        rows = [
            {
                "target": target,
                "subscription": name,
                "identifier": f.identifier,
                "version": f.version,
                "title": f.title,
                "reason": redact(f.reason),
                "failed_at": at,
            }
            for f in failures
        ]
        t = image_failure.c
        self._transaction(
            (sa.delete(image_failure).where(t.target == target, t.subscription == name), None),
            (sa.insert(image_failure), rows),
        )


def _outcome(row: sa.Row[Any]) -> TargetOutcome:
    return TargetOutcome(
        target=row.target,
        subscription=row.subscription,
        last_attempt=_date(row.last_attempt),
        last_success=_date(row.last_success),
        last_error=row.last_error,
    )
