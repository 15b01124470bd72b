"""Alembic's environment for the state database: always on the caller's connection.

:func:`glance_sync.state_schema.upgrade_schema` opens the transaction (and takes
the upgrade lock) and hands its connection over; there is no alembic.ini and no
offline (SQL script) mode.
"""

from alembic import context

from glance_sync.state_schema import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    # SQLite alters a table by copying it: Alembic's batch mode does that
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
