"""The state database's tables, its engines, and the Alembic upgrade that keeps them current.

SQLite's engines keep the file private (0700 directory, 0600 files: looser
modes found are tightened, with a warning), in WAL mode with full syncs, on one
connection whose write transactions take the lock at their start.

:mod:`glance_sync.state` reads and writes through these tables; the revisions
in :mod:`glance_sync.migrations` make them, from nothing or from any earlier
version (a SQLite file written before the database had revisions is revision
``0001``'s tables and is upgraded from there).  One upgrade runs at a time: in
the writer's transaction, under SQLite's write lock or a PostgreSQL advisory
lock, so several sync hosts starting together upgrade once.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from vmtrust.errors import ConfigError, StateError
from vmtrust.safetext import redact

if TYPE_CHECKING:  # Alembic (and Mako) load only when a schema is changed or inspected
    from alembic.config import Config

__all__ = [
    "HEAD",
    "alembic_head",
    "current",
    "head",
    "open_engine",
    "schema_check",
    "sqlite_reader",
    "sqlite_writer",
    "upgrade_schema",
    "vacuum",
]

LOG = logging.getLogger("vmtrust.sync")

VERSION_TABLE = "vmtrust_schema_version"
DIR_MODE = 0o700
FILE_MODE = 0o600
_SIDE = ("-wal", "-shm")  #: SQLite's files beside the database (it gives them its mode)
#: pg_advisory_xact_lock key of the upgrade ("vmtrust" in ASCII)
_UPGRADE_LOCK = 0x766D7472757374
_MIGRATIONS = Path(__file__).with_name("migrations")

metadata = sa.MetaData()

#: per subscription, shared by every target: what rollback protection needs
subscription_state = sa.Table(
    "subscription_state",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("list_identifier", sa.Text),
    sa.Column("list_version", sa.Text),
    sa.Column("list_created", sa.Text),
    sa.Column("list_expires", sa.Text),
    sa.Column("list_sha512", sa.Text),
    sa.Column("known_images", sa.Text),
)

#: per (target, subscription): the last attempt, success and error
target_outcome = sa.Table(
    "target_outcome",
    metadata,
    sa.Column("target", sa.Text, primary_key=True),
    sa.Column("subscription", sa.Text, primary_key=True),
    sa.Column("last_attempt", sa.Text),
    sa.Column("last_success", sa.Text),
    sa.Column("last_error", sa.Text),
)

#: per target: how its last pass as a whole ended (``vmtrust status --target``)
target_pass = sa.Table(
    "target_pass",
    metadata,
    sa.Column("target", sa.Text, primary_key=True),
    sa.Column("last_attempt", sa.Text),
    sa.Column("last_success", sa.Text),
    sa.Column("last_error", sa.Text),
)

#: per (target, subscription): the images that failed in the last pass that reached them
image_failure = sa.Table(
    "image_failure",
    metadata,
    sa.Column("subscription", sa.Text, nullable=False),
    sa.Column("identifier", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("failed_at", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False, server_default="default"),
)
sa.Index("image_failure_by_target", image_failure.c.target, image_failure.c.subscription)

#: the revision a database is at: one row, the table Alembic's ``MigrationContext`` keeps
_version = sa.Table(
    VERSION_TABLE,
    sa.MetaData(),
    sa.Column("version_num", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
)


def open_engine(connection: str) -> tuple[sa.Engine, str]:
    """An engine for ``[sync] state_connection``, and how messages name it (no password).

    Only PostgreSQL is a shared database here (SQLite is the embedded default, in
    the state directory); ``postgresql://`` means the psycopg 3 driver.
    """
    what = "[sync] state_connection"
    try:
        url = sa.engine.make_url(connection)
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError(
            f"{what}: not a database URL (postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE)"
        ) from None
    if url.host and "@" in url.host:  # user:p@ss@host: the rest of the password became the host
        raise ConfigError(
            f"{what}: more than one '@' before the host; write an '@' of the password as %40"
        )
    shown = url.set(query={}).render_as_string(hide_password=True)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername != "postgresql+psycopg":
        raise ConfigError(
            f"{what} {redact(shown)}: only postgresql:// is supported "
            "(leave it empty for SQLite in [DEFAULT] state_dir)"
        )
    try:
        engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigError(f"{what} {shown}: {redact(exc)}") from None
    return engine, shown


#: the revision this version of vmtrust writes: the newest file in ``migrations/versions``
#: (tests/test_state_db.py checks it is Alembic's head), known without loading Alembic,
#: which a pass that finds the schema current never needs
HEAD = "0002"


def _config(conn: sa.Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def head() -> str:
    """The revision this version of vmtrust writes."""
    return HEAD


def alembic_head() -> str:
    """The head of the revision scripts, as Alembic finds it (what :data:`HEAD` must be)."""
    from alembic.script import ScriptDirectory

    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def current(conn: sa.Connection) -> str | None:
    """The database's revision; None: made before revisions, or empty.

    Read as Alembic's ``MigrationContext.get_current_revision`` reads it (the one row of
    the version table), without importing Alembic.
    """
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).fetchall()
    if len(rows) > 1:
        raise StateError(f"schema version table {VERSION_TABLE} has {len(rows)} rows, not one")
    return rows[0][0] if rows else None


def _known(revision: str) -> None:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        ScriptDirectory.from_config(_config()).get_revision(revision)
    except CommandError:
        raise StateError(
            f"schema revision {revision} is newer than this vmtrust's ({head()}): "
            "upgrade vmtrust on this host"
        ) from None


#: what upgrade_schema returns for a database that had no tables at all
EMPTY = "empty"


def upgrade_schema(engine: sa.Engine) -> str | None:
    """Bring the database to :func:`head`, in one transaction.

    Returns the revision it had (``"0001"`` for tables made before revisions,
    :data:`EMPTY` for none), or None when it was at head already.
    """
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
        revision = current(conn)
        if revision == head():
            return None
        if revision is not None:
            _known(revision)
        elif sa.inspect(conn).has_table("subscription_state"):
            revision = "0001"
        else:
            _create(conn)
            return EMPTY
        from alembic import command

        chatty = logging.getLogger("alembic")
        if chatty.level == logging.NOTSET:  # its INFO lines ("Context impl SQLiteImpl.")
            chatty.setLevel(logging.WARNING)  # are noise in the sync's log; ours says it
        command.upgrade(_config(conn), "head")
        return revision


def _create(conn: sa.Connection) -> None:
    """A new database: head's tables made at once from :data:`metadata`, and its revision.

    What running every revision from nothing makes (tests/test_state_db.py compares the
    two, on SQLite and PostgreSQL), without loading Alembic and Mako and replaying each
    step: a site's first pass, and each new worker's database, start that much sooner.
    """
    metadata.create_all(conn)
    _version.create(conn)
    conn.execute(_version.insert().values(version_num=HEAD))


def schema_check(engine: sa.Engine) -> bool:
    """For a reader: True if the database is at :func:`head`, False if it is empty.

    Any other revision is a StateError saying how to upgrade: a reader changes nothing.
    """
    with engine.connect() as conn:
        revision = current(conn)
        if revision == head():
            return True
        if revision is None and not sa.inspect(conn).has_table("subscription_state"):
            return False
    if revision is not None:
        _known(revision)
    raise StateError(
        f"schema revision {revision or 'before 0001'} is older than this vmtrust's "
        f"({head()}): the next sync pass upgrades it, or run 'vmtrust-sync --upgrade-state'"
    )


# --- SQLite, the embedded default --------------------------------------------------------


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


def sqlite_reader(path: Path) -> sa.Engine:
    """A read-only engine on an existing database that creates no file beside it."""
    # SQLite gives a read-only reader of a WAL database a -wal and -shm file when
    # there are none; a database the sync closed has none, and is read as it is
    # (immutable), so nothing is created.  While a sync runs, its -wal is there and
    # shared the ordinary way.
    wal = path.with_name(path.name + "-wal").exists()
    query = "mode=ro" if wal else "mode=ro&immutable=1"
    uri = f"{path.resolve().as_uri()}?{query}"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(
            uri, uri=True, timeout=30, isolation_level=None, check_same_thread=False
        )

    return sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.StaticPool)


def sqlite_writer(state_dir: Path, path: Path) -> sa.Engine:
    """The sync's own database: private modes, WAL, every write transaction immediate."""
    state_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _private(state_dir, DIR_MODE)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    for each in (path, *(path.with_name(path.name + s) for s in _SIDE)):
        if each.exists():
            _private(each, FILE_MODE)

    def connect() -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    # one connection, as SQLite wants of one process (its statements are serialised)
    engine = sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.StaticPool)

    @sa.event.listens_for(engine, "begin")
    def _immediate(conn: sa.Connection) -> None:
        # pysqlite's own transaction handling is off (isolation_level=None): take the
        # write lock at the start, so two writers wait rather than fail half-way.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def vacuum(engine: sa.Engine) -> None:
    """Give SQLite's free pages back (outside any transaction, as VACUUM must be)."""
    raw = engine.raw_connection()
    try:
        raw.driver_connection.execute("VACUUM")  # type: ignore[union-attr]
    finally:
        raw.close()
