"""Model usage per budget scope and the reservations of model calls in flight.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

Timestamp = sa.DateTime(timezone=True)

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "llm_usage",
        sa.Column("scope", sa.String(200), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("scope", name="pk_llm_usage"),
    )
    op.create_table(
        "llm_reservations",
        sa.Column("key", sa.String(80), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_llm_reservations"),
    )


def downgrade() -> None:
    op.drop_table("llm_reservations")
    op.drop_table("llm_usage")
