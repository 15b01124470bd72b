"""Per target: the outcome and the failing images of each (target, subscription).

And each target's last pass as a whole (``target_pass``).

Revision ID: 0002
Revises: 0001
The list state stays per subscription (rollback protection is shared by every
target); what each subscription's last attempt did moves to target ``default``,
the one target of a configuration without ``[sync] targets``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OUTCOME = ("last_attempt", "last_success", "last_error")


def upgrade() -> None:
    op.create_table(
        "target_outcome",
        sa.Column("target", sa.Text, primary_key=True),
        sa.Column("subscription", sa.Text, primary_key=True),
        *(sa.Column(name, sa.Text) for name in _OUTCOME),
    )
    op.create_table(
        "target_pass",
        sa.Column("target", sa.Text, primary_key=True),
        *(sa.Column(name, sa.Text) for name in _OUTCOME),
    )
    op.execute(
        "INSERT INTO target_outcome (target, subscription, last_attempt, last_success, "
        "last_error) SELECT 'default', name, last_attempt, last_success, last_error "
        "FROM subscription_state WHERE last_attempt IS NOT NULL "
        "OR last_success IS NOT NULL OR last_error IS NOT NULL"
    )
    with op.batch_alter_table("subscription_state") as table:
        for name in _OUTCOME:
            table.drop_column(name)
    with op.batch_alter_table("image_failure") as table:
        table.add_column(sa.Column("target", sa.Text, nullable=False, server_default="default"))
    op.create_index("image_failure_by_target", "image_failure", ["target", "subscription"])


def downgrade() -> None:
    op.drop_index("image_failure_by_target", "image_failure")
    with op.batch_alter_table("image_failure") as table:
        table.drop_column("target")
    with op.batch_alter_table("subscription_state") as table:
        for name in _OUTCOME:
            table.add_column(sa.Column(name, sa.Text))
    op.execute(
        "UPDATE subscription_state SET "
        + ", ".join(
            f"{name} = (SELECT {name} FROM target_outcome o WHERE o.target = 'default' "
            "AND o.subscription = subscription_state.name)"
            for name in _OUTCOME
        )
    )
    op.drop_table("target_outcome")
    op.drop_table("target_pass")
