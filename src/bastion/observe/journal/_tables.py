"""The journal's tables: one row per gateway call, and content-addressed blobs for large payloads.

Created by the control plane's migrations (revision 0002)."""

from __future__ import annotations

from sqlalchemy import JSON, Column, Integer, LargeBinary, MetaData, String, Table, Text

from bastion.observe._db import UtcDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

journal_entries = Table(
    "journal_entries",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("attempt", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("request", JSON, nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("decision", String(24), nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("response", JSON, nullable=True),
    Column("error", JSON, nullable=True),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("duration_us", Integer, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

blobs = Table(
    "blobs",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("media_type", Text, nullable=False),
)

journal_checkpoints = Table(
    "journal_checkpoints",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("head", String(64), nullable=False),
    Column("verified_at", UtcDateTime(), nullable=False),
)
"""The last entry a *full* verification found intact, per run (revision 0011): where an
incremental verification starts (``Journal.verify(full=False)``)."""
