"""The state database's schema revisions (Alembic), applied by :mod:`glance_sync.state_schema`.

A new revision is ``versions/NNNN_what.py`` with ``revision = "NNNN"`` and
``down_revision`` the previous one, shaped as ``script.py.mako`` (there is no
alembic.ini: the sync runs the revisions on its own connection).  Write it for
SQLite and PostgreSQL alike (``op.batch_alter_table`` for SQLite's table
copies), keep what an existing database holds, and test it on a database of the
previous revision (tests/test_state_db.py).
"""
