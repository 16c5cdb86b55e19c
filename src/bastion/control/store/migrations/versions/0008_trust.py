"""Trust: each agent's earned tier and revocation, the hash-chained journal of every change, and the
run outcomes promotions are judged on.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_trust",
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("agent", sa.String(63), nullable=False),
        sa.Column("tier", sa.String(2), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("head", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "namespace", "agent", name="pk_agent_trust"),
    )
    op.create_table(
        "trust_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("agent", sa.String(63), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_tier", sa.String(2), nullable=False),
        sa.Column("to_tier", sa.String(2), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("rule_id", sa.String(64), nullable=True),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_trust_events"),
        sa.UniqueConstraint(
            "tenant_id", "namespace", "agent", "seq", name="uq_trust_events_tenant_id_namespace_agent_seq"
        ),
    )
    op.create_table(
        "trust_outcomes",
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("agent", sa.String(63), nullable=False),
        sa.Column("tier", sa.String(2), nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("violations", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_trust_outcomes"),
    )
    op.create_index(
        "ix_trust_outcomes_tenant_id_namespace_agent_at",
        "trust_outcomes",
        ["tenant_id", "namespace", "agent", "at"],
    )


def downgrade() -> None:
    op.drop_index("ix_trust_outcomes_tenant_id_namespace_agent_at", table_name="trust_outcomes")
    op.drop_table("trust_outcomes")
    op.drop_table("trust_events")
    op.drop_table("agent_trust")
