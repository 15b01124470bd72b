# ruff: noqa: F401, F811  (pytest fixtures imported from pg_server, then requested by name)
"""The state database behind SQLAlchemy: SQLite (embedded) and a real PostgreSQL 15.

Every behaviour test runs against both; the upgrade tests open a SQLite file
written by the code before revisions (tests/data/state) and a PostgreSQL
database two hosts upgrade at once.
"""

from __future__ import annotations

import hashlib
import sqlite3
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from pg_server import PASSWORD, pg_url, postgres  # fixtures

from glance_sync import cli as sync_cli
from glance_sync.report import ImageFailure
from glance_sync.state import StateDB
from glance_sync.state_schema import EMPTY, VERSION_TABLE, head
from vmtrust.errors import ConfigError, StateError

DATA = Path(__file__).parent / "data" / "state"
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    """StateDB's arguments for a fresh database of each kind."""
    if request.param == "sqlite":
        return {"state_dir": tmp_path / "state"}
    return {"state_dir": tmp_path / "unused", "connection": request.getfixturevalue("pg_url")}


def _open(where: dict, **kwargs) -> StateDB:
    return StateDB(where["state_dir"], connection=where.get("connection"), **kwargs)


def _accept(db: StateDB, name: str, version: str, *, target: str = "default") -> None:
    db.record_success(
        name,
        identifier="list-1",
        version=version,
        created=T0 - timedelta(days=1),
        expires=T0 + timedelta(days=30),
        sha512="ab" * 64,
        known_images=frozenset({"img-a"}),
        now=T0,
        target=target,
    )


def test_each_target_has_its_own_outcome_and_failing_images(where):
    db = _open(where)
    _accept(db, "egi", "1", target="cloud-a")
    db.record_failure("egi", "https://user:pw@glance-b.example/v2: 503", T0, target="cloud-b")
    db.record_images("egi", [ImageFailure("egi", "img-a", "1", "A", "too big")], T0,
                     target="cloud-b")  # fmt: skip
    a, b = db.get("egi", target="cloud-a"), db.get("egi", target="cloud-b")
    # the list (rollback protection) is one per subscription, whatever target accepted it
    assert a.list_version == b.list_version == "1" and b.known_images == {"img-a"}
    assert a.last_success == T0 and a.last_error is None
    assert b.last_success is None and b.last_error == "https://***@glance-b.example/v2: 503"
    assert db.failing_images("egi", target="cloud-a") == []
    assert [f.reason for f in db.failing_images("egi", target="cloud-b")] == ["too big"]
    assert db.get("egi").last_attempt is None  # the default target never ran
    assert [(o.target, o.subscription) for o in db.outcomes()] == [
        ("cloud-a", "egi"),
        ("cloud-b", "egi"),
    ]
    # a failure keeps the target's last success; a success clears its error
    db.record_failure("egi", "timeout", T0 + timedelta(hours=1), target="cloud-a")
    a = db.get("egi", target="cloud-a")
    assert (a.last_success, a.last_attempt, a.last_error) == (
        T0,
        T0 + timedelta(hours=1),
        "timeout",
    )
    db.record_outcome("egi", target="cloud-b", now=T0 + timedelta(hours=2))
    assert db.outcome("egi", target="cloud-b").last_error is None
    # one target's new failing images replace only its own
    db.record_images("egi", [], T0, target="cloud-a")
    assert len(db.failing_images("egi", target="cloud-b")) == 1
    db.close()


def test_each_targets_last_pass_is_remembered(where):
    db = _open(where)
    assert db.target_outcome("cloud-a").last_attempt is None
    db.record_target("cloud-a", None, T0)
    db.record_target("cloud-a", "https://u:pw@glance-a/v2: 503", T0 + timedelta(hours=1))
    db.record_target("cloud-b", None, T0)
    a, b = db.target_outcome("cloud-a"), db.target_outcome("cloud-b")
    assert (a.last_success, a.last_attempt) == (T0, T0 + timedelta(hours=1))
    assert a.last_error == "https://***@glance-a/v2: 503"
    assert (b.last_success, b.last_error) == (T0, None)
    db.close()


def test_the_state_outlives_the_process_and_a_reader_sees_it(where):
    db = _open(where)
    _accept(db, "egi", "7")
    db.record_images("egi", [ImageFailure("egi", "img-a", "1", "A", "bad")], T0)
    db.close()
    reader = _open(where, readonly=True)
    assert reader.get("egi").list_version == "7"
    assert len(reader.failing_images("egi")) == 1
    with pytest.raises(StateError, match="read-only"):
        reader.record_failure("egi", "x")
    reader.close()


def test_an_update_is_all_or_nothing(where):
    db = _open(where)
    db.record_images("egi", [ImageFailure("egi", "img-a", "1", "A", "first")], T0)
    broken = [
        ImageFailure("egi", "img-b", "1", "B", "second"),
        ImageFailure("egi", "img-c", "1", None, "no title"),  # type: ignore[arg-type]
    ]
    with pytest.raises(StateError) as caught:
        db.record_images("egi", broken, T0)
    assert "\n" not in str(caught.value) and "[SQL:" not in str(caught.value)
    # the delete that came first was rolled back with the failed insert
    assert [f.reason for f in db.failing_images("egi")] == ["first"]
    db.close()


def test_a_reader_of_an_empty_database_reads_nothing_and_writes_nothing(where):
    if where.get("connection"):
        reader = _open(where, readonly=True)  # an empty PostgreSQL database
        with sa.create_engine(
            where["connection"].replace("postgresql:", "postgresql+psycopg:")
        ).connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
    else:
        reader = _open(where, readonly=True)
        assert not where["state_dir"].exists()
    assert reader.get("egi").list_version is None and reader.outcomes() == []
    reader.close()


# --- SQLite: the file of the code before revisions, upgraded in place ------------------------


def _legacy(state_dir: Path) -> Path:
    state_dir.mkdir(mode=0o700)
    path = state_dir / "vmtrust.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript((DATA / "vmtrust-before-revisions.sql").read_text())
    conn.close()
    path.chmod(0o600)
    return path


def test_a_database_made_before_revisions_is_upgraded_in_place(tmp_path):
    path = _legacy(tmp_path / "state")
    db = StateDB(tmp_path / "state")
    assert db.upgraded_from == "0001"
    st = db.get("egi-base")
    assert st.list_version == "20261130" and st.known_images == {"img-a", "img-b"}
    assert st.list_expires == datetime(2026, 12, 29, tzinfo=UTC)
    # the last outcome became the default target's, as status showed it
    assert st.last_success == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert st.last_error == "http://127.0.0.1/x.list: HTTP 503 Service Unavailable"
    assert db.get("never-ok").last_error == "certificate expired"
    (failed,) = db.failing_images("egi-base")
    assert (failed.identifier, failed.title, failed.reason) == ("img-b", "Ubuntu 24.04",
                                                               "sha512 mismatch")  # fmt: skip
    db.record_failure("egi-base", "again", target="cloud-b")
    db.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [(head(),)]
        columns = {row[1] for row in conn.execute("PRAGMA table_info(subscription_state)")}
    assert "last_error" not in columns
    again = StateDB(tmp_path / "state")
    assert again.upgraded_from is None  # upgraded once
    again.close()


def test_a_reader_refuses_an_old_schema_and_changes_nothing(tmp_path):
    path = _legacy(tmp_path / "state")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StateError) as caught:
        StateDB(tmp_path / "state", readonly=True)
    line = str(caught.value)
    assert line.startswith(f"state database {path}: schema revision before 0001 is older")
    assert "vmtrust-sync --upgrade-state" in line
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["vmtrust.sqlite"]


def test_a_schema_newer_than_this_vmtrust_is_refused(tmp_path):
    StateDB(tmp_path).close()
    with sqlite3.connect(tmp_path / "vmtrust.sqlite") as conn:
        conn.execute(f"UPDATE {VERSION_TABLE} SET version_num = '0099'")
    for readonly in (False, True):
        with pytest.raises(StateError, match=r"schema revision 0099 is newer than this vmtrust"):
            StateDB(tmp_path, readonly=readonly)


def test_upgrade_state_command(tmp_path, capsys):
    _legacy(tmp_path / "state")
    conf = tmp_path / "vmtrust.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path / 'state'}\n")
    assert sync_cli.main(["--config-file", str(conf), "--upgrade-state"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"upgraded from 0001 to {head()}")
    assert sync_cli.main(["--config-file", str(conf), "--upgrade-state"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"at {head()} already")


# --- PostgreSQL: URLs, passwords, several hosts ---------------------------------------------


def test_several_hosts_upgrading_one_database_at_once_upgrade_it_once(tmp_path, pg_url):
    found: list[str | None] = []
    errors: list[BaseException] = []

    def host(n: int) -> None:
        try:
            db = StateDB(tmp_path / f"host{n}", connection=pg_url)
            found.append(db.upgraded_from)
            db.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=host, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(found, key=str) == [None, None, EMPTY]


def test_a_password_is_never_in_a_message(tmp_path, postgres):
    wrong = postgres.url("postgres", password="not-the-" + PASSWORD)
    with pytest.raises(StateError) as caught:
        StateDB(tmp_path, connection=wrong)
    line = str(caught.value)
    assert line.startswith(f"state database postgresql://vmtrust:***@127.0.0.1:{postgres.port}/")
    assert "password authentication failed" in line
    assert PASSWORD not in line and "\n" not in line
    closed = f"postgresql://vmtrust:{PASSWORD}@127.0.0.1:1/postgres"
    with pytest.raises(StateError) as caught:
        StateDB(tmp_path, connection=closed)
    assert PASSWORD not in str(caught.value) and "127.0.0.1:1" in str(caught.value)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("mysql://u:topsecret@db/vmtrust", r"mysql://\*\*\*@db/vmtrust: only postgresql://"),
        ("sqlite:////var/lib/x.sqlite", "only postgresql://"),
        ("topsecret", "not a database URL"),
        ("postgresql://u:topsecret@db:notaport/x", "not a database URL"),
    ],
)
def test_a_state_connection_that_is_not_postgresql_is_a_config_error(tmp_path, url, expected):
    with pytest.raises(ConfigError, match=expected) as caught:
        StateDB(tmp_path, connection=url)
    assert "topsecret" not in str(caught.value)
    assert str(caught.value).startswith("[sync] state_connection")


def test_a_connection_the_server_dropped_is_replaced_on_the_next_write(tmp_path, pg_url):
    db = StateDB(tmp_path, connection=pg_url)
    _accept(db, "egi", "1")
    admin = sa.create_engine(pg_url.replace("postgresql:", "postgresql+psycopg:"))
    with admin.connect() as conn:
        dropped = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    admin.dispose()
    assert dropped >= 1  # the state's pooled connection was cut by the server
    db.record_failure("egi", "after a database restart", T0)
    assert db.get("egi").last_error == "after a database restart"
    db.close()


def test_names_and_texts_are_data_whatever_they_contain(where):
    db = _open(where)
    hostile = "x'); DROP TABLE subscription_state; --"
    _accept(db, hostile, "1", target="t'--")
    db.record_failure("ünï\u202ecode", "🙂 " * 3000, T0, target='"; DELETE FROM target_pass')
    db.close()
    again = _open(where, readonly=True)
    assert again.get(hostile, target="t'--").list_version == "1"
    assert (
        again.get("ünï\u202ecode", target='"; DELETE FROM target_pass').last_error == "🙂 " * 3000
    )
    assert len(again.outcomes()) == 2
    again.close()


def test_revision_0002_goes_down_and_up_again_keeping_the_default_targets_outcome(tmp_path):
    from alembic import command

    from glance_sync import state_schema

    _legacy(tmp_path / "state")
    StateDB(tmp_path / "state").close()  # up to head
    engine = state_schema.sqlite_writer(tmp_path / "state", tmp_path / "state" / "vmtrust.sqlite")
    with engine.begin() as conn:
        command.downgrade(state_schema._config(conn), "0001")
    engine.dispose()
    with sqlite3.connect(tmp_path / "state" / "vmtrust.sqlite") as conn:
        row = conn.execute(
            "SELECT last_attempt, last_error FROM subscription_state WHERE name = 'never-ok'"
        ).fetchone()
    assert row == ("2026-12-01T10:00:00Z", "certificate expired")
    db = StateDB(tmp_path / "state")
    assert db.upgraded_from == "0001" and db.get("never-ok").last_error == "certificate expired"
    db.close()


def test_the_accepted_list_never_moves_back_when_hosts_race(where, caplog):
    """Host B fetched version 1 just before version 2 was published and host A
    accepted it: B's success must not lower every host's rollback floor."""
    a, b = _open(where), _open(where)
    _accept(a, "egi", "2", target="cloud-a")
    _accept(b, "egi", "1", target="cloud-b")  # B's older acceptance, recorded later
    assert a.get("egi").list_version == "2"
    assert "version 2 (created 2026-11-30T10:00:00Z) is recorded already" in caplog.text
    assert b.get("egi", target="cloud-b").last_success == T0  # B's pass still succeeded
    # the same version is recorded again (known images, expiry may change)...
    b.record_success("egi", identifier="list-1", version="2", created=T0,
                     expires=T0 + timedelta(days=60), sha512="cd" * 64,
                     known_images=frozenset({"img-a", "img-b"}), now=T0)  # fmt: skip
    st = a.get("egi")
    assert st.list_expires == T0 + timedelta(days=60) and st.known_images == {"img-a", "img-b"}
    # ...but not one created before the recorded one, whatever its version says
    b.record_success("egi", identifier="list-1", version="2", created=T0 - timedelta(days=9),
                     expires=T0, sha512="ef" * 64, known_images=frozenset(), now=T0)  # fmt: skip
    assert a.get("egi").list_sha512 == "cd" * 64
    b.record_success("egi", identifier="list-1", version="10", created=T0 + timedelta(days=1),
                     expires=T0 + timedelta(days=30), sha512="01" * 64,
                     known_images=frozenset(), now=T0)  # fmt: skip
    # a newer one moves it forward (10 > 2: versions compare as versions, not as text)
    assert a.get("egi").list_version == "10"
    a.close()
    b.close()


# --- Alembic loads only when the schema changes -----------------------------------------------


def test_head_constant_is_alembics_head():
    from glance_sync.state_schema import HEAD, alembic_head

    assert HEAD == alembic_head() == head()


def test_a_current_database_is_opened_without_loading_alembic(tmp_path: Path):
    """Every pass opens the state; a schema already at head needs no Alembic (nor Mako),
    and a SQLite site no PostgreSQL dialect, even to write."""
    import subprocess
    import sys

    StateDB(tmp_path / "state").close()  # created and upgraded: Alembic ran here
    probe = (
        "import sys; from pathlib import Path; from glance_sync.state import StateDB; "
        f"db = StateDB(Path({str(tmp_path / 'state')!r})); db.get('x'); "
        "db.record_target('default', None); db.close(); "
        "print(sorted(m for m in ('alembic', 'mako', 'sqlalchemy.dialects.postgresql') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # nor PostgreSQL's dialect (and its async drivers)
    fresh = (
        "import sys; from pathlib import Path; from glance_sync.state import StateDB; "
        f"StateDB(Path({str(tmp_path / 'new')!r})).close(); print('alembic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # a new database is made from the tables at once


def _schema(engine: sa.Engine) -> dict:
    """Everything of a database's schema that the revisions decide, comparable."""
    inspector = sa.inspect(engine)
    found = {}
    for table in sorted(inspector.get_table_names()):
        found[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in inspector.get_columns(table)
            ],
            "primary key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(table)
            ),
        }
    with engine.connect() as conn:
        found["revision"] = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    return found


def test_a_new_database_has_exactly_the_schema_the_revisions_make(where):
    """A new database skips the revision scripts: it must come out as they would make it."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from glance_sync import state_schema

    db = _open(where)
    assert db.upgraded_from == EMPTY
    engine = db._engine
    made = _schema(engine)
    with engine.begin() as conn:
        state_schema.metadata.drop_all(conn)
        state_schema._version.drop(conn)
    assert set(sa.inspect(engine).get_table_names()) == set()
    with engine.begin() as conn:
        command.upgrade(state_schema._config(conn), "head")
    assert _schema(engine) == made
    with engine.connect() as conn:  # and the tables the code declares are those, to the column
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, state_schema.metadata) == []
    db.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:top@secret@127.0.0.1:1/db",  # an '@' of the password not encoded
        "postgresql://u:top@sec@ret@127.0.0.1:1/db",
        "postgresql://u@127.0.0.1:1/db?password=topsecret",  # libpq's own parameter
        "postgresql://u:topsecret@127.0.0.1:1/db?sslmode=bogus",
        "postgresql://u:top%40secret@127.0.0.1:1/db",
        "postgresql://u:topsecret@127.0.0.1:1/db?host=/nonexistent",
    ],
)
def test_no_shape_of_a_connection_url_puts_its_password_in_a_message(tmp_path, url):
    """The attack: a URL the parser reads otherwise than its author meant.  Before the
    fix, ``u:top@secret@host`` showed ``secret`` twice: in the URL and as the host
    psycopg could not resolve."""
    with pytest.raises((StateError, ConfigError)) as caught:
        StateDB(tmp_path, connection=url)
    line = str(caught.value)
    assert "secret" not in line and "sec" not in line.replace("second", "") and "\n" not in line
    assert line.startswith(("state database postgresql://u", "[sync] state_connection: "))
