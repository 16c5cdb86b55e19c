"""The control plane's tables. Migrations create them (see ``migrations/``); a test checks that the
migrated schema and this metadata agree, so neither drifts."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from bastion.execution.gateway import approvals_metadata, policy_metadata
from bastion.execution.llm import metadata as llm_metadata
from bastion.execution.runs import metadata as runs_metadata
from bastion.observe import UtcDateTime as Timestamp
from bastion.observe.journal import metadata as journal_metadata

control_metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


tenants = Table(
    "tenants",
    control_metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(63), nullable=False, unique=True),
    Column("system", Boolean, nullable=False, default=False),
    Column("created_at", Timestamp(), nullable=False),
)

api_keys = Table(
    "api_keys",
    control_metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(36), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(63), nullable=False),
    Column("role", String(16), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", Timestamp(), nullable=False),
    Column("revoked_at", Timestamp(), nullable=True),
)

namespaces = Table(
    "namespaces",
    control_metadata,
    Column("tenant_id", String(36), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(63), primary_key=True),
    Column("created_at", Timestamp(), nullable=False),
)

resources = Table(
    "resources",
    control_metadata,
    Column("uid", String(36), primary_key=True),
    Column("tenant_id", String(36), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("namespace", String(63), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("name", String(63), nullable=False),
    Column("api_version", String(32), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("annotations", JSON, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("status", JSON, nullable=True),
    Column("sealed", LargeBinary, nullable=True),
    Column("generation", Integer, nullable=False),
    Column("resource_version", Integer, nullable=False),
    Column("created_at", Timestamp(), nullable=False),
    Column("updated_at", Timestamp(), nullable=False),
    UniqueConstraint("tenant_id", "kind", "namespace", "name"),
)

resource_labels = Table(
    "resource_labels",
    control_metadata,
    Column("resource_uid", String(36), ForeignKey("resources.uid", ondelete="CASCADE"), primary_key=True),
    Column("key", String(317), primary_key=True),
    Column("value", String(63), nullable=False),
    Index(None, "key", "value"),
)

record_keys = Table(
    "record_keys",
    control_metadata,
    Column("tenant_id", String(36), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("public_key", LargeBinary, nullable=False),
    Column("sealed_private_key", LargeBinary, nullable=False),
    Column("created_at", Timestamp(), nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    control_metadata,
    Column("tenant_id", String(36), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response_body", Text, nullable=False),
    Column("created_at", Timestamp(), nullable=False),
)


sandboxes = Table(
    "sandboxes",
    control_metadata,
    Column("id", String(32), primary_key=True),
    Column("worker", String(128), nullable=False, index=True),
    Column("backend", String(16), nullable=False),
    Column("image", String(80), nullable=False),
    Column("state", String(16), nullable=False),
    Column("run_id", String(36), nullable=True),
    Column("tenant_id", String(36), nullable=True),
    Column("reason", Text, nullable=True),
    Column("started_at", Timestamp(), nullable=False),
    Column("changed_at", Timestamp(), nullable=False),
    Column("seen_at", Timestamp(), nullable=False, index=True),
)
"""The workers' warm pools as the API shows them: one row per sandbox, written by its worker on
every state change and refreshed while the worker lives; a dead worker's rows expire."""


def all_metadata() -> MetaData:
    """Every plane's tables in one MetaData: what the migrations must produce."""
    combined = MetaData()
    for source in (
        control_metadata,
        runs_metadata,
        journal_metadata,
        approvals_metadata,
        llm_metadata,
        policy_metadata,
    ):
        for table in source.tables.values():
            table.to_metadata(combined)
    return combined


metadata = all_metadata()
