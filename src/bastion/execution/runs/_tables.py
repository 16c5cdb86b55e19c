"""Runs and their event stream. Created by the control plane's migrations (revision 0002)."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Index, Integer, MetaData, String, Table, Text, false

from bastion.observe import UtcDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("tenant_id", String(36), nullable=False),
    Column("namespace", String(63), nullable=False),
    Column("agent", String(63), nullable=False),
    Column("agent_spec", JSON, nullable=False),
    Column("input", JSON, nullable=True),
    Column("state", String(24), nullable=False),
    Column("reason", Text, nullable=True),
    Column("result", JSON, nullable=True),
    Column("attempt", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_expires_at", UtcDateTime(), nullable=True),
    Column("cancel_requested", Boolean, nullable=False),
    Column("journal_count", Integer, nullable=True),
    Column("journal_head", String(64), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("finished_at", UtcDateTime(), nullable=True),
    Column("parent_run_id", String(36), nullable=True),
    Column("fork_seq", Integer, nullable=True),
    Column("takeovers", Integer, nullable=False, server_default="0"),
    Column("quarantined", Boolean, nullable=False, server_default=false()),
    Index(None, "state", "lease_expires_at"),
    # A page of GET /runs, in one namespace or across them, in (created_at, id) order (revision 0011).
    Index(None, "tenant_id", "namespace", "created_at", "id"),
    Index(None, "tenant_id", "created_at", "id"),
)

run_events = Table(
    "run_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False),
    Column("type", String(16), nullable=False),
    Column("data", JSON, nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Index(None, "run_id", "id"),
)

run_attempts = Table(
    "run_attempts",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("claimed_at", UtcDateTime(), nullable=False),
    # Set when the attempt ends on its worker (finished or parked); NULL on an attempt that
    # died with its worker, or is still running.
    Column("ended_at", UtcDateTime(), nullable=True),
    # For an attempt taken over from a dead worker: the last journaled seq when it died, and
    # whether no other run's attempt died with that worker.
    Column("died_seq", Integer, nullable=True),
    Column("alone", Boolean, nullable=True),
    # When the attempt went live: it had replayed every journaled step (or there were none and
    # its agent started), so what it does next is new. A death before that (in a claim, a
    # sandbox start, a replay) is its worker's, not evidence against the run.
    Column("live_at", UtcDateTime(), nullable=True),
    Index(None, "owner", "ended_at"),
    Index(None, "claimed_at"),  # other runs' deaths since a time: the poison rule's churn check
)
"""One row per claim (revision 0010): the poison rule's evidence."""
