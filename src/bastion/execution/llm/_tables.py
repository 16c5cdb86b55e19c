"""Model usage per budget scope, and the reservations in flight. Created by migration 0005."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, MetaData, String, Table

from bastion.observe import UtcDateTime

metadata = MetaData(
    naming_convention={"ix": "ix_%(table_name)s_%(column_0_N_name)s", "pk": "pk_%(table_name)s"}
)

llm_usage = Table(
    "llm_usage",
    metadata,
    Column(
        "scope", String(200), primary_key=True
    ),  # ``run:<id>``, ``agent:<tenant>/<namespace>/<agent>/<day>`` or ``tenant:<tenant>/<day>``.
    Column("tokens", BigInteger, nullable=False),  # Tokens used, plus those reserved by calls in flight.
    Column("cost_nanos", BigInteger, nullable=False),  # nano-dollars (USD * 1e9) used, plus those reserved.
    Column("updated_at", UtcDateTime(), nullable=False),
)

llm_reservations = Table(
    "llm_reservations",
    metadata,
    Column("key", String(80), primary_key=True),  # ``run_id:seq`` of the call that holds it.
    Column("scopes", JSON, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("cost_nanos", BigInteger, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)
