"""Human approvals: one row per call that waits for a person's decision.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("agent", sa.String(63), nullable=False),
        sa.Column("tool", sa.String(253), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_approvals"),
        sa.UniqueConstraint("run_id", "seq", name="uq_approvals_run_id_seq"),
    )
    op.create_index(
        "ix_approvals_tenant_id_state_created_at", "approvals", ["tenant_id", "state", "created_at"]
    )
    op.create_index("ix_approvals_state_expires_at", "approvals", ["state", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_approvals_state_expires_at", table_name="approvals")
    op.drop_index("ix_approvals_tenant_id_state_created_at", table_name="approvals")
    op.drop_table("approvals")
