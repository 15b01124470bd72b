"""The state as vmtrust wrote it before revisions: one outcome per subscription.

Revision ID: 0001
Revises:
A database made by that code has these tables already and no revision: they are
kept as they are (the upgrade goes on from here); an empty one gets them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    tables = sa.inspect(op.get_bind())
    if not tables.has_table("subscription_state"):
        op.create_table(
            "subscription_state",
            sa.Column("name", sa.Text, primary_key=True),
            *(
                sa.Column(name, sa.Text)
                for name in (
                    "list_identifier",
                    "list_version",
                    "list_created",
                    "list_expires",
                    "list_sha512",
                    "known_images",
                    "last_attempt",
                    "last_success",
                    "last_error",
                )
            ),
        )
    if not tables.has_table("image_failure"):
        op.create_table(
            "image_failure",
            *(
                sa.Column(name, sa.Text, nullable=False)
                for name in ("subscription", "identifier", "version", "title", "reason")
            ),
            sa.Column("failed_at", sa.Text, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("image_failure")
    op.drop_table("subscription_state")
