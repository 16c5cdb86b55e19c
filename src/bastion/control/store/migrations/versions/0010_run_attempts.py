"""Attempts of runs, one row per claim: which worker ran it, when it ended, and, for an attempt
whose worker died, where it died and whether it was alone there; and when the attempt went live
(its replay done, the agent past every journaled step), before which its death says nothing
about the run. The poison rule judges a run on
this evidence (its own deaths), not on its attempt count, which its neighbours' deaths raise too;
a suspect run is quarantined (run alone) until it ends.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "run_attempts",
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("claimed_at", Timestamp, nullable=False),
        sa.Column("ended_at", Timestamp, nullable=True),
        sa.Column("died_seq", sa.Integer(), nullable=True),
        sa.Column("alone", sa.Boolean(), nullable=True),
        sa.Column("live_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("run_id", "attempt", name="pk_run_attempts"),
    )
    op.create_index("ix_run_attempts_owner_ended_at", "run_attempts", ["owner", "ended_at"])
    op.create_index("ix_run_attempts_claimed_at", "run_attempts", ["claimed_at"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("quarantined", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("quarantined")
    op.drop_index("ix_run_attempts_claimed_at", table_name="run_attempts")
    op.drop_index("ix_run_attempts_owner_ended_at", table_name="run_attempts")
    op.drop_table("run_attempts")
