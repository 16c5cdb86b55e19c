"""Costs that grew with the installation (issue 23):

* ``GET /runs`` across namespaces had no index serving ``tenant_id`` in ``(created_at, id)`` order,
  so a page read every run of the tenant and sorted them: an index on ``(tenant_id, created_at,
  id)`` answers a page with an index range scan, whatever the number of runs. The namespaced
  index gains ``id`` (the order's tie-break), and approvals get the same tenant-wide index
  (``GET /approvals`` of every state). bench/lists.py prints every list route's plan.
* Every gateway session re-read and recompiled its namespace's Policies and ToolGrants once a
  second. ``policy_stamps`` holds one random stamp per (tenant, namespace), replaced in the
  transaction that creates, changes or deletes a Policy or ToolGrant there: a session compares it
  (one primary-key read) before each decision and reloads only when it changed.
* ``Journal.verify`` recomputed every entry of a run each time (issue 23, item 8):
  ``journal_checkpoints`` keeps, per run, the last (seq, head) a full verification found intact,
  where an incremental one starts.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_tenant_id_created_at_id", "runs", ["tenant_id", "created_at", "id"])
    op.drop_index("ix_runs_tenant_id_namespace_created_at", table_name="runs")
    op.create_index(
        "ix_runs_tenant_id_namespace_created_at_id", "runs", ["tenant_id", "namespace", "created_at", "id"]
    )
    op.create_index("ix_approvals_tenant_id_created_at_id", "approvals", ["tenant_id", "created_at", "id"])
    op.create_table(
        "policy_stamps",
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("stamp", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "namespace", name="pk_policy_stamps"),
    )

    op.create_table(
        "journal_checkpoints",
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("head", sa.String(64), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_journal_checkpoints"),
    )


def downgrade() -> None:
    op.drop_table("journal_checkpoints")
    op.drop_table("policy_stamps")
    op.drop_index("ix_approvals_tenant_id_created_at_id", table_name="approvals")
    op.drop_index("ix_runs_tenant_id_namespace_created_at_id", table_name="runs")
    op.create_index(
        "ix_runs_tenant_id_namespace_created_at", "runs", ["tenant_id", "namespace", "created_at"]
    )
    op.drop_index("ix_runs_tenant_id_created_at_id", table_name="runs")
