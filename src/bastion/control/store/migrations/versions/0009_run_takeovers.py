"""Runs count their takeovers: claims of a dead worker's expired lease, as opposed to attempts that
began after a suspension (an approval), which are not failures of anything.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("takeovers", sa.Integer(), nullable=False, server_default="0"))
    # Before this revision every attempt after the first was a takeover.
    op.execute("UPDATE runs SET takeovers = attempt - 1 WHERE attempt > 1")


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("takeovers")
