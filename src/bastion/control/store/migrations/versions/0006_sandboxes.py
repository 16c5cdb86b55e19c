"""The workers' pooled sandboxes, for the API (``GET /api/v1/sandboxes``) and metrics.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sandboxes",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("worker", sa.String(128), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("image", sa.String(80), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.Column("tenant_id", sa.String(36), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("changed_at", Timestamp, nullable=False),
        sa.Column("seen_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sandboxes"),
    )
    op.create_index("ix_sandboxes_worker", "sandboxes", ["worker"])
    op.create_index("ix_sandboxes_seen_at", "sandboxes", ["seen_at"])


def downgrade() -> None:
    op.drop_index("ix_sandboxes_seen_at", table_name="sandboxes")
    op.drop_index("ix_sandboxes_worker", table_name="sandboxes")
    op.drop_table("sandboxes")
